"""Emitter models: band-limited spectra, unit power, exact fractional delays."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.kiwisdr.emitter import MODULATIONS, Emitter, rrc_pulse

FS = 12_000.0


def occupied(x: np.ndarray) -> tuple[float, float]:
    spec = np.abs(np.fft.fftshift(np.fft.fft(x))) ** 2
    f = np.fft.fftshift(np.fft.fftfreq(x.size, 1 / FS))
    c = np.cumsum(spec) / spec.sum()
    return float(f[np.searchsorted(c, 0.005)]), float(f[np.searchsorted(c, 0.995)])


@pytest.mark.parametrize(
    ("modulation", "half_width_hz"),
    [("rrc-bpsk", 1200 * 1.35 / 2), ("rrc-qpsk", 1200 * 1.35 / 2), ("pm", 1200 * 1.35 / 2)],
)
def test_pulse_shaped_spectra_are_band_limited(modulation: str, half_width_hz: float) -> None:
    e = Emitter(45, 8, 0, 1e6, modulation=modulation)
    x = e.envelope(1000.0 + np.arange(120_000) / FS)
    lo, hi = occupied(x)
    assert -half_width_hz <= lo and hi <= half_width_hz  # 99 % inside (1+beta) Rs
    assert np.mean(np.abs(x) ** 2) == pytest.approx(1.0, rel=0.05)


def test_am_is_a_carrier_with_band_limited_sidebands() -> None:
    e = Emitter(45, 8, 0, 1e6, modulation="am", audio_bandwidth_hz=3000.0)
    x = e.envelope(50.0 + np.arange(120_000) / FS)
    assert np.all(x.real > 0)  # modulation index < 1: never over-modulated
    spec = np.abs(np.fft.fft(x)) ** 2
    f = np.fft.fftfreq(x.size, 1 / FS)
    assert spec[0] / spec.sum() > 0.5  # the carrier
    side = spec[(np.abs(f) > 5)]
    fs_side = f[np.abs(f) > 5]
    assert side[np.abs(fs_side) > 3000 * 1.01].sum() < 0.01 * side.sum()


def test_rrc_pulse_is_a_nyquist_pulse_after_matching() -> None:
    u = np.arange(-12, 12, 1 / 64)
    p = rrc_pulse(u, 0.35)
    full = np.convolve(p, p) / 64  # raised cosine: 1 at 0, 0 at other integers
    mid = 24 * 64  # u = 0
    assert full[mid] == pytest.approx(1.0, abs=0.01)
    for k in (1, 2, 3):
        assert abs(full[mid + 64 * k]) < 0.01


def test_delay_is_exact_for_a_fraction_of_a_sample() -> None:
    """The envelope is a function of continuous time: delaying by 0.3 samples equals
    evaluating at t - 0.3/fs, which band-limited interpolation of the samples confirms."""
    e = Emitter(45, 8, 0, 1e6, modulation="rrc-bpsk")
    t = 10.0 + np.arange(8192) / FS
    x = e.envelope(t)
    y = e.envelope(t - 0.3 / FS)
    f = np.fft.fftfreq(t.size, 1 / FS)
    shifted = np.fft.ifft(np.fft.fft(x) * np.exp(-2j * np.pi * f * 0.3 / FS))
    core = slice(500, -500)  # away from the circular wrap
    assert np.max(np.abs(shifted[core] - y[core])) < 0.02


def test_bad_modulation_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="modulation must be one of"):
        Emitter(45, 8, 0, 1e6, modulation="fm")
    assert set(MODULATIONS) >= {"carrier", "bpsk", "rrc-bpsk", "rrc-qpsk", "am"}
    with pytest.raises(ValueError, match="rolloff"):
        Emitter(45, 8, 0, 1e6, modulation="rrc-bpsk", rolloff=0.0)
