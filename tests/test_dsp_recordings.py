"""tasks.dsp on what imported KiwiSDR recordings hold: narrow and wide IQ passbands.

Two sources, neither made by tasks.dsp nor by the project's simulator:

* tests/lf_scenario.py's kiwirecorder files (a DCF77-like station with phase chips,
  +-500 Hz, +-3 kHz and +-5 kHz passbands), read back with the project's reader and
  measured as ``rfacq ingest`` does (passband from the spectrum, then ``measure``);
* captures built here: a carrier keyed down to 15 % for 100/200 ms every second (the
  DCF77 amplitude keying), in white noise, both through a receiver's FIR passband filter
  with real skirts, quantised to int16 like a file. Signal and noise are filtered
  separately (the filter is linear), so the truth is exact: the filtered signal's power
  and the noise density inside the passband.
"""

from __future__ import annotations

import math
from pathlib import Path

import lf_scenario
import numpy as np
import pytest

from tasks.dsp import estimate_passband, measure
from tasks.kiwiwav import read_kiwi_wav

RATE = 12001.07


def db(x: float) -> float:
    return 10.0 * math.log10(x)


def keyed_carrier(n: int, rate: float, offset_hz: float, *, keyed: bool = True) -> np.ndarray:
    """Unit-amplitude carrier at ``offset_hz``, keyed to 15 % amplitude for 100 ms (200 ms
    every third second) at the start of each second with 5 ms raised-cosine edges."""
    t = np.arange(n) / rate
    envelope = np.ones(n)
    if keyed:
        edge = 0.005
        into = t - np.floor(t)
        length = np.where(np.floor(t) % 3 == 0, 0.2, 0.1)
        ramp_down = np.clip(into / edge, 0.0, 1.0)
        ramp_up = np.clip((into - length) / edge, 0.0, 1.0)
        down = 0.5 - 0.5 * np.cos(np.pi * ramp_down) - (0.5 - 0.5 * np.cos(np.pi * ramp_up))
        envelope = 1.0 - 0.85 * down
    return envelope * np.exp(1j * (2 * math.pi * offset_hz * t + 0.7))


def iq_filter(x: np.ndarray, half_width_hz: float) -> np.ndarray:
    """A receiver's IQ passband: flat to 92 % of ``half_width_hz``, raised-cosine skirts
    to it, 70 dB down beyond (a KiwiSDR's filter is of this kind)."""
    f = np.abs(np.fft.fftfreq(x.size, 1 / RATE))
    inner = 0.92 * half_width_hz
    skirt = 0.5 + 0.5 * np.cos(np.pi * np.clip((f - inner) / (half_width_hz - inner), 0, 1))
    return np.fft.ifft(np.fft.fft(x) * np.maximum(skirt, 10 ** (-70 / 20)))


def receiver(
    rng: np.random.Generator,
    signal: np.ndarray,
    *,
    half_width_hz: float,
    cn0_dbhz: float,
    n0: float = 1e-8,
) -> tuple[np.ndarray, float, float]:
    """(int16-quantised capture, true signal power, true N0) after the IQ filter."""
    n = signal.size
    noise = math.sqrt(n0 * RATE / 2) * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
    mean_square = float(np.mean(np.abs(signal) ** 2))
    s_power = n0 * 10 ** (cn0_dbhz / 10) / mean_square if mean_square > 0 else 0.0
    s = iq_filter(math.sqrt(s_power) * signal, half_width_hz)
    w = iq_filter(noise, half_width_hz)
    x = np.round((s + w) * 32768) / 32768
    return x.astype(np.complex64), float(np.mean(np.abs(s) ** 2)), n0


def measured(x: np.ndarray):
    """As rfacq ingest measures a file: the passband read from the spectrum first."""
    passband = estimate_passband(x, RATE)
    return passband, measure(x, RATE, passband_hz=passband)


@pytest.mark.parametrize(
    ("half_width_hz", "offset_hz"), [(500.0, 120.0), (3000.0, -1500.0), (6000.0, 2000.0)]
)
def test_keyed_carrier_in_narrow_and_wide_passbands(half_width_hz: float, offset_hz: float) -> None:
    rng = np.random.default_rng(int(half_width_hz))
    n = round(10 * RATE)
    x, s_power, n0 = receiver(
        rng, keyed_carrier(n, RATE, offset_hz), half_width_hz=half_width_hz, cn0_dbhz=45.0
    )
    (low, high), m = measured(x)
    if half_width_hz < 5000.0:  # the filter edge is in sight: the passband is read from it
        assert -half_width_hz <= low < -0.85 * half_width_hz
        assert 0.85 * half_width_hz < high <= half_width_hz
    else:  # noise up to Nyquist: the default +-5 kHz
        assert (low, high) == (-5000.0, 5000.0)
    assert m.detected, m.detection_reason
    assert m.noise_method == "quiet-bins"
    assert m.modulation == "am"  # the line holds ~89 % of the power: keyed, not pure
    assert abs(m.noise_floor_dbfs_hz - db(n0)) < 0.3
    assert abs(m.signal_power_dbfs - db(s_power)) < 0.3
    assert abs(m.cn0_dbhz - db(s_power / n0)) < 0.5
    assert abs(m.frequency_offset_hz - offset_hz) < 0.05
    assert 0.0 < m.edge_distance_hz < min(high - offset_hz, offset_hz - low)
    assert 0.0 < m.occupied_bandwidth_hz < 0.5 * (high - low)
    assert m.clipped_fraction == 0.0


def test_an_unkeyed_carrier_is_a_carrier() -> None:
    rng = np.random.default_rng(11)
    x, s_power, n0 = receiver(
        rng, keyed_carrier(round(5 * RATE), RATE, -210.0, keyed=False), half_width_hz=500.0,
        cn0_dbhz=45.0,
    )  # fmt: skip
    _, m = measured(x)
    assert m.modulation == "carrier"
    assert abs(m.cn0_dbhz - db(s_power / n0)) < 0.3
    assert m.edge_distance_hz == pytest.approx(m.frequency_offset_hz - (-500.0), abs=40.0)


def test_a_carrier_at_the_edge_of_a_narrow_passband_is_flagged() -> None:
    rng = np.random.default_rng(12)
    x, s_power, _ = receiver(
        rng, keyed_carrier(round(5 * RATE), RATE, 470.0, keyed=False), half_width_hz=500.0,
        cn0_dbhz=50.0,
    )  # fmt: skip
    (_, high), m = measured(x)
    assert m.detected
    assert abs(m.frequency_offset_hz - 470.0) < 0.05
    assert m.edge_distance_hz < 30.0  # the flag: close to (or past) the passband edge
    assert m.edge_distance_hz == pytest.approx(high - m.frequency_offset_hz, abs=0.01)
    assert abs(m.signal_power_dbfs - db(s_power)) < 0.5  # the filtered power


@pytest.mark.parametrize("half_width_hz", [500.0, 3000.0])
def test_an_empty_channel_reads_no_signal(half_width_hz: float) -> None:
    rng = np.random.default_rng(13)
    x, _, n0 = receiver(
        rng, np.zeros(round(5 * RATE), complex), half_width_hz=half_width_hz, cn0_dbhz=0.0
    )
    _, m = measured(x)
    assert not m.detected and m.detection_reason.startswith("no signal")
    assert m.signal_power_dbfs is None and m.cn0_dbhz is None and m.frequency_offset_hz is None
    assert m.noise_method == "quiet-bins"
    assert abs(m.noise_floor_dbfs_hz - db(n0)) < 0.3


@pytest.fixture(scope="module")
def lf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    truth = lf_scenario.write_scenario(tmp_path_factory.mktemp("lf"))
    return {Path(p).name.split("_")[2]: Path(p) for p in truth["files"]}


@pytest.mark.parametrize("station", [s.name for s in lf_scenario.STATIONS])
def test_lf_scenario_recordings_give_plausible_flagged_measurements(
    lf_files: dict[str, Path], station: str
) -> None:
    spec = next(s for s in lf_scenario.STATIONS if s.name == station)
    wav = read_kiwi_wav(lf_files[station])
    rate = wav.timing.sample_rate_hz
    passband = estimate_passband(wav.samples, rate)
    m = measure(wav.samples, rate, passband_hz=passband)
    # The scenario's noise: 0.3 * sqrt(6000 / passband) * (power 10^(-snr/10) per sample),
    # brick-wall filtered to +-passband: a flat density inside it.
    n0 = 0.09 * 10 ** (-spec.snr_db / 10) * (6000.0 / spec.passband_hz) / spec.true_rate_hz
    total = 10 ** (m.power_dbfs / 10)
    s_power = total - n0 * 2 * spec.passband_hz
    assert spec.passband_hz * 0.9 < passband[1] <= spec.passband_hz
    assert m.detected and m.modulation == "am"
    assert abs(m.frequency_offset_hz) < 0.35  # the scenario's carrier error is +-0.3 Hz
    assert abs(m.signal_power_dbfs - db(s_power)) < 0.2
    assert m.clipped_fraction == 0.0 and m.edge_distance_hz > 0.0
    if spec.passband_hz >= 5000.0:
        # the phase chips' sidebands fade into the noise inside +-4.7 kHz: quiet bins exist
        assert m.noise_method == "quiet-bins"
        assert abs(m.noise_floor_dbfs_hz - db(n0)) < 0.5
        assert abs(m.cn0_dbhz - db(s_power / n0)) < 0.5
    else:
        # the sidebands stand above the noise across the whole passband: no quiet bin, and
        # the measurement says the floor is an upper bound and C/N0 a lower one
        assert m.noise_method == "low-quantile"
        assert "upper bound" in m.detection_reason
        assert m.noise_floor_dbfs_hz > db(n0) - 0.5
        assert m.cn0_dbhz < db(s_power / n0) + 0.5
