"""Accuracy of tasks.dsp on synthetic captures with known truth.

Each capture is a complex tone of known amplitude and offset plus circular white Gaussian
noise of known density N0 (FS^2/Hz), so every expected figure is exact: power = A^2 + N0*fs,
noise floor = N0, C/N0 = A^2/N0. All randomness is seeded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from tasks import dsp
from tasks.dsp import Measurements, ProcessingError, carrier_offset_hz, measure, psd, rssi_dbm

FS = 12001.135  # a true (GPS-measured) KiwiSDR rate, deliberately not 12000
AMPLITUDE = 0.1  # -20 dBFS carrier


def db(x: float) -> float:
    return 10.0 * math.log10(x)


def capture(
    rng: np.random.Generator,
    *,
    seconds: float,
    cn0_dbhz: float,
    offset_hz: float,
    amplitude: float = AMPLITUDE,
    fs: float = FS,
) -> tuple[np.ndarray, float]:
    """Tone + noise as complex64; returns (samples, N0 in FS^2/Hz)."""
    n = round(seconds * fs)
    n0 = amplitude**2 / 10 ** (cn0_dbhz / 10)
    sigma = math.sqrt(n0 * fs / 2.0)  # per real component
    phase = rng.uniform(0.0, 2.0 * math.pi)
    tone = amplitude * np.exp(1j * (2.0 * math.pi * offset_hz / fs * np.arange(n) + phase))
    noise = sigma * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
    return (tone + noise).astype(np.complex64), n0


def crb_std_hz(cn0_dbhz: float, n: int, fs: float = FS) -> float:
    """Cramer-Rao bound on the std of a single-tone frequency estimate."""
    eta = 10 ** (cn0_dbhz / 10) / fs  # per-sample SNR A^2/sigma^2 with sigma^2 = N0*fs
    var = 6.0 * fs**2 / ((2.0 * math.pi) ** 2 * eta * n * (n * n - 1.0))
    return math.sqrt(var)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("cn0_dbhz", [30, 40, 50, 60, 70, 80])
def test_power_noise_floor_and_cn0_10s(cn0_dbhz: float) -> None:
    rng = np.random.default_rng(100 + cn0_dbhz)
    x, n0 = capture(rng, seconds=10.0, cn0_dbhz=cn0_dbhz, offset_hz=1234.5)
    m = measure(x, FS)

    assert m.sample_count == x.size
    assert abs(m.power_dbfs - db(AMPLITUDE**2 + n0 * FS)) < 0.1
    assert abs(m.noise_floor_dbfs_hz - db(n0)) < 0.5
    assert abs(m.cn0_dbhz - cn0_dbhz) < 1.0
    assert abs(m.signal_power_dbfs - db(AMPLITUDE**2)) < 1.0
    assert m.snr_bandwidth_hz == 10000.0
    assert m.snr_db == pytest.approx(m.cn0_dbhz - db(10000.0))


@pytest.mark.parametrize("cn0_dbhz", [30, 50, 80])
def test_cn0_holds_for_a_2s_capture_and_other_levels(cn0_dbhz: float) -> None:
    rng = np.random.default_rng(200 + cn0_dbhz)
    x, n0 = capture(rng, seconds=2.0, cn0_dbhz=cn0_dbhz, offset_hz=-2500.0, amplitude=0.5)
    m = measure(x, FS)
    assert abs(m.power_dbfs - db(0.25 + n0 * FS)) < 0.1
    assert abs(m.noise_floor_dbfs_hz - db(n0)) < 0.5
    assert abs(m.cn0_dbhz - cn0_dbhz) < 1.0


@pytest.mark.parametrize("offset_hz", [0.0, 0.37, -1.5, 1234.5678, -3210.987, 4900.25, -4990.0])
def test_cfo_within_1hz_at_50dbhz_2s(offset_hz: float) -> None:
    rng = np.random.default_rng(7)
    x, _ = capture(rng, seconds=2.0, cn0_dbhz=50.0, offset_hz=offset_hz, fs=12000.0)
    m = measure(x, 12000.0)
    assert abs(m.frequency_offset_hz - offset_hz) < 1.0
    # the estimator is near the CRB (0.4 mHz here); 1 Hz is a loose guard.
    assert abs(m.frequency_offset_hz - offset_hz) < 0.01


@pytest.mark.parametrize("cn0_dbhz", [30, 40, 50, 60])
def test_cfo_rms_error_within_10x_cramer_rao(cn0_dbhz: float) -> None:
    rng = np.random.default_rng(300 + cn0_dbhz)
    trials = 30
    errors = []
    n = round(2.0 * FS)
    for _ in range(trials):
        offset = rng.uniform(-4500.0, 4500.0)
        x, _ = capture(rng, seconds=2.0, cn0_dbhz=cn0_dbhz, offset_hz=offset)
        errors.append(carrier_offset_hz(x, FS) - offset)
    rms = math.sqrt(float(np.mean(np.square(errors))))
    assert rms < 10.0 * crb_std_hz(cn0_dbhz, n)


def test_measure_and_carrier_offset_agree() -> None:
    rng = np.random.default_rng(11)
    x, _ = capture(rng, seconds=1.0, cn0_dbhz=45.0, offset_hz=-777.7)
    # measure removes the DC offset first; the carrier's estimate moves by far less than
    # its Cramer-Rao bound (~3 mHz here)
    assert measure(x, FS).frequency_offset_hz == pytest.approx(carrier_offset_hz(x, FS), abs=1e-4)


def test_cfo_search_is_limited_to_the_passband() -> None:
    rng = np.random.default_rng(12)
    x, _ = capture(rng, seconds=1.0, cn0_dbhz=70.0, offset_hz=5500.0)  # strong, out of band
    y, _ = capture(rng, seconds=1.0, cn0_dbhz=50.0, offset_hz=-100.25)
    f = carrier_offset_hz(x + y, FS, passband_hz=(-5000.0, 5000.0))
    assert abs(f - (-100.25)) < 0.05


def test_psd_density_scaling_and_axis() -> None:
    rng = np.random.default_rng(13)
    power = 0.02
    n = 60000
    x = (math.sqrt(power / 2) * (rng.standard_normal(n) + 1j * rng.standard_normal(n))).astype(
        np.complex64
    )
    freqs, density = psd(x, FS, nperseg=1024)
    assert freqs.shape == density.shape == (1024,)
    assert density.dtype == np.float64
    assert np.all(np.diff(freqs) > 0)
    assert freqs[512] == 0.0
    assert freqs[0] == pytest.approx(-FS / 2)
    assert float(np.mean(density)) == pytest.approx(power / FS, rel=0.02)
    # integrating the density gives the power back (Parseval with density scaling)
    assert float(density.sum()) * FS / 1024 == pytest.approx(power, rel=0.02)


@pytest.mark.parametrize(
    ("n", "nperseg"),
    [
        (120011, 4096),  # 10 s at the true rate: not a multiple of nperseg, tail dropped
        (60000, 1024),
        (50001, 1000),  # hop 500, odd length
        (5003, 999),  # odd nperseg: noverlap 499, hop 500
        (4096, 4096),  # a single segment
    ],
)
def test_psd_matches_scipy_welch(n: int, nperseg: int) -> None:
    rng = np.random.default_rng(n)
    x = (0.05 * (rng.standard_normal(n) + 1j * rng.standard_normal(n))).astype(np.complex64)
    freqs, density = psd(x, FS, nperseg=nperseg)
    ref_freqs, ref_density = scipy.signal.welch(
        x,
        fs=FS,
        window="hann",
        nperseg=nperseg,
        noverlap=nperseg // 2,
        detrend=False,
        return_onesided=False,
        scaling="density",
    )
    np.testing.assert_array_equal(freqs, np.fft.fftshift(ref_freqs))
    assert density.dtype == np.float64
    # a lone periodogram has bins near zero, whose float32-FFT error is relatively large
    atol = 1e-6 * float(ref_density.mean()) if n == nperseg else 0.0
    np.testing.assert_allclose(density, np.fft.fftshift(ref_density), rtol=1e-5, atol=atol)


def test_lost_frames_written_as_zeros_are_fine() -> None:
    rng = np.random.default_rng(14)
    x, n0 = capture(rng, seconds=10.0, cn0_dbhz=50.0, offset_hz=321.0)
    x[5000:6024] = 0  # two lost 512-sample frames
    x[90000:90512] = 0
    m = measure(x, FS)
    assert abs(m.noise_floor_dbfs_hz - db(n0)) < 0.5
    assert abs(m.cn0_dbhz - 50.0) < 1.0
    assert abs(m.frequency_offset_hz - 321.0) < 0.01


def lose_frames(
    rng: np.random.Generator, x: np.ndarray, fraction: float, frame: int = 512
) -> list[tuple[int, int]]:
    """Zero ``fraction`` of the whole frames of ``x`` at random, as a client zero-fills lost
    frames; returns their (sample_start, sample_count) runs, merged like Capture.gaps."""
    frames = x.size // frame
    lost = np.sort(rng.choice(frames, size=round(fraction * frames), replace=False))
    gaps: list[tuple[int, int]] = []
    for k in lost.tolist():
        x[k * frame : (k + 1) * frame] = 0
        if gaps and gaps[-1][0] + gaps[-1][1] == k * frame:
            gaps[-1] = (gaps[-1][0], gaps[-1][1] + frame)
        else:
            gaps.append((k * frame, frame))
    return gaps


def test_gaps_keep_zero_filled_frames_out_of_power_and_noise_floor() -> None:
    rng = np.random.default_rng(21)
    x, n0 = capture(rng, seconds=10.0, cn0_dbhz=40.0, offset_hz=1234.5)
    gaps = lose_frames(rng, x, 0.10)
    true_power, true_floor = db(AMPLITUDE**2 + n0 * FS), db(n0)

    m = measure(x, FS, gaps=gaps)
    assert abs(m.power_dbfs - true_power) < 0.1
    assert abs(m.noise_floor_dbfs_hz - true_floor) < 0.5
    assert abs(m.signal_power_dbfs - db(AMPLITUDE**2)) < 0.5
    assert abs(m.cn0_dbhz - 40.0) < 1.0
    assert abs(m.frequency_offset_hz - 1234.5) < 0.05
    assert m.sample_count == x.size  # the zeros still count as samples of the recording

    # without the gaps the zeros pull every power down by ~10*log10(0.9) = -0.46 dB
    biased = measure(x, FS)
    assert biased.power_dbfs - true_power < -0.3
    assert biased.noise_floor_dbfs_hz - true_floor < -0.3


@pytest.mark.parametrize(("seconds", "fraction"), [(2.0, 0.1), (2.0, 0.5), (10.0, 0.3)])
def test_gaps_keep_a_strong_carrier_out_of_the_noise_floor(seconds: float, fraction: float) -> None:
    # A gap cuts a hole in the carrier, whose spectrum leaks across the band: averaging
    # such Welch segments would raise an 80 dB-Hz capture's floor by ~5 dB.
    rng = np.random.default_rng(22)
    x, n0 = capture(rng, seconds=seconds, cn0_dbhz=80.0, offset_hz=-777.0)
    gaps = lose_frames(rng, x, fraction)
    m = measure(x, FS, gaps=gaps)
    assert abs(m.power_dbfs - db(AMPLITUDE**2 + n0 * FS)) < 0.1
    assert abs(m.noise_floor_dbfs_hz - db(n0)) < 0.5
    assert abs(m.signal_power_dbfs - db(AMPLITUDE**2)) < 0.1
    assert abs(m.cn0_dbhz - 80.0) < 1.0
    assert abs(measure(x, FS).cn0_dbhz - 80.0) > 2.0  # what the zeros alone do


def test_gaps_that_miss_every_welch_segment_change_nothing_but_power() -> None:
    rng = np.random.default_rng(23)
    x, _ = capture(rng, seconds=2.0, cn0_dbhz=50.0, offset_hz=100.0)
    # 24002 samples, 4096-point segments every 2048: the last 1474 samples are in none
    x[-1024:] = 0
    plain, gapped = measure(x, FS), measure(x, FS, gaps=[(x.size - 1024, 1024)])
    # only the DC estimate differs (the plain mean counts the zeros): far below 0.001 dB
    assert gapped.noise_floor_dbfs_hz == pytest.approx(plain.noise_floor_dbfs_hz, abs=1e-3)
    assert gapped.cn0_dbhz == pytest.approx(plain.cn0_dbhz, abs=1e-3)
    assert gapped.power_dbfs - plain.power_dbfs == pytest.approx(-db(1 - 1024 / x.size))
    assert measure(x, FS, gaps=()) == plain


def test_noise_only_and_silent_captures_are_flagged_not_faked() -> None:
    rng = np.random.default_rng(15)
    noise = (0.01 * (rng.standard_normal(24000) + 1j * rng.standard_normal(24000))).astype(
        np.complex64
    )
    m = measure(noise, FS)
    assert not m.detected
    assert m.detection_reason.startswith("no signal")
    assert (m.signal_power_dbfs, m.cn0_dbhz, m.snr_db, m.frequency_offset_hz) == (None,) * 4
    assert (m.occupied_bandwidth_hz, m.modulation, m.edge_distance_hz) == (None,) * 3
    assert abs(m.noise_floor_dbfs_hz - db(2e-4 / FS)) < 0.2
    assert m.noise_method == "quiet-bins"

    silent = measure(np.zeros(24000, np.complex64), FS)
    assert not silent.detected
    assert silent.detection_reason.startswith("silent capture")
    assert silent.power_dbfs is None and silent.noise_floor_dbfs_hz is None
    for value in silent.as_dict().values():
        assert not (isinstance(value, float) and not math.isfinite(value))


def test_complex128_input_and_custom_passband() -> None:
    rng = np.random.default_rng(16)
    x, _ = capture(rng, seconds=2.0, cn0_dbhz=60.0, offset_hz=1000.0)
    m = measure(x.astype(np.complex128), FS, passband_hz=(0.0, 3000.0))
    assert m.snr_bandwidth_hz == 3000.0
    assert abs(m.frequency_offset_hz - 1000.0) < 0.01
    assert abs(m.cn0_dbhz - 60.0) < 1.0


def test_as_dict_types() -> None:
    rng = np.random.default_rng(17)
    x, _ = capture(rng, seconds=0.5, cn0_dbhz=50.0, offset_hz=10.0)
    m = measure(x, FS)
    d = m.as_dict()
    assert isinstance(m, Measurements)
    assert list(d) == [
        "power_dbfs",
        "noise_floor_dbfs_hz",
        "signal_power_dbfs",
        "cn0_dbhz",
        "snr_db",
        "snr_bandwidth_hz",
        "frequency_offset_hz",
        "sample_count",
        "detected",
        "detection_reason",
        "occupied_bandwidth_hz",
        "noise_method",
        "modulation",
        "clipped_fraction",
        "dc_dbfs",
        "edge_distance_hz",
    ]
    assert type(d["sample_count"]) is int and d["detected"] is True
    assert all(type(d[k]) is str for k in ("detection_reason", "noise_method", "modulation"))
    floats = set(d) - {"sample_count", "detected", "detection_reason", "noise_method", "modulation"}
    assert all(type(d[k]) is float for k in floats), d
    assert m.spectrum is not None and m.spectrum.freqs.size == m.spectrum.density.size


# --------------------------------------------------------------------------- bad input

_GOOD = np.ones(1000, np.complex64)


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        (np.zeros(0, np.complex64), r"samples: capture is empty; need at least 256"),
        (np.ones(100, np.complex64), r"samples: 100 samples are too few .* at least 256"),
        (np.ones(1000, np.float32), r"samples: dtype must be complex .* got float32"),
        (np.ones(1000, np.int16), r"samples: dtype must be complex .* got int16"),
        (np.ones((2, 1000), np.complex64), r"samples: must be 1-D, got shape \(2, 1000\)"),
        (
            np.where(np.arange(1000) == 17, np.nan, 1.0).astype(np.complex64),
            r"samples: 1 non-finite \(NaN/Inf\) values, first at index 17",
        ),
        (
            np.where(np.arange(1000) >= 990, np.inf, 1.0).astype(np.complex64),
            r"samples: 10 non-finite \(NaN/Inf\) values, first at index 990",
        ),
    ],
)
def test_bad_samples(samples: np.ndarray, match: str) -> None:
    with pytest.raises(ProcessingError, match=match):
        measure(samples, FS)


@pytest.mark.parametrize("rate", [0.0, -12000.0, float("nan"), float("inf"), "fast", None])
def test_bad_sample_rate(rate: object) -> None:
    with pytest.raises(ProcessingError, match=r"sample_rate: must be a finite number > 0 Hz"):
        measure(_GOOD, rate)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "passband",
    [(-7000.0, 5000.0), (-5000.0, 6001.0), (100.0, 100.0), (200.0, -200.0), (float("nan"), 10.0)],
)
def test_bad_passband(passband: tuple[float, float]) -> None:
    with pytest.raises(
        ProcessingError,
        match=r"passband_hz: .* -6000.57 <= low < high <= "
        r"\+6000.57 Hz \(±fs/2\)",
    ):
        measure(_GOOD, FS, passband_hz=passband)


_ZEROED = np.where(np.arange(4096) < 2048, 1.0, 0.0).astype(np.complex64)


@pytest.mark.parametrize(
    ("gaps", "match"),
    [
        ([(2048, 0)], r"gaps: \(2048, 0\) must have 0 <= sample_start, sample_count > 0 and "),
        ([(-1, 10)], r"gaps: \(-1, 10\) must have 0 <= sample_start"),
        ([(4000, 200)], r"gaps: \(4000, 200\) .* sample_start \+ sample_count <= 4096 \(the"),
        ([(2048.0, 512)], r"gaps: \(2048.0, 512\) is not a \(sample_start, sample_count\) pair"),
        ([(True, 512)], r"gaps: \(True, 512\) is not a \(sample_start, sample_count\) pair"),
        ([(2048, 512, 1)], r"gaps: \(2048, 512, 1\) is not a \(sample_start, sample_count\)"),
        ([2048], r"gaps: 2048 is not a \(sample_start, sample_count\) pair"),
        ("2048,512", r"gaps: must be a sequence of \(sample_start, sample_count\) pairs"),
        ([(2000, 512)], r"gaps: sample 2000 inside a gap is not zero"),
        ([(0, 2048), (2048, 2048)], r"gaps: cover all 4096 samples; nothing was received"),
        (
            [(i, 1) for i in range(2048, 4096, 100)] + [(0, 2048)],
            r"gaps: no Welch segment of 256 samples is free of lost samples",
        ),
    ],
)
def test_bad_gaps(gaps: object, match: str) -> None:
    x = _ZEROED.copy()
    if "cover all" in match:
        x[:] = 0
    if "Welch" in match:
        x[:2048] = 0
        x[2048::100] = 0
    with pytest.raises(ProcessingError, match=match):
        measure(x, FS, gaps=gaps)  # type: ignore[arg-type]


def test_numpy_integer_gaps_and_overlaps_are_accepted() -> None:
    x = _ZEROED.copy()
    gaps = [(np.int64(2048), np.int32(1024)), (3000, 1096)]  # overlapping runs
    m = measure(x, FS, gaps=gaps)
    assert m.power_dbfs == pytest.approx(0.0, abs=1e-6)  # the received samples are all 1.0
    as_array = measure(x, FS, gaps=np.array([[2048, 2048]]))  # type: ignore[arg-type]
    assert as_array == m


def test_passband_narrower_than_psd_resolution() -> None:
    with pytest.raises(ProcessingError, match=r"passband_hz: .* fewer than 3 PSD bins"):
        measure(np.ones(20000, np.complex64), FS, passband_hz=(10.0, 12.0))


def test_processing_error_is_a_value_error() -> None:
    assert issubclass(ProcessingError, ValueError)


def test_psd_bad_input() -> None:
    with pytest.raises(ProcessingError, match=r"samples: 1000 samples are too few .* 4096"):
        psd(_GOOD, FS)
    with pytest.raises(ProcessingError, match=r"nperseg: must be an integer >= 16"):
        psd(_GOOD, FS, nperseg=8)
    with pytest.raises(ProcessingError, match=r"sample_rate"):
        psd(_GOOD, -1.0, nperseg=256)


# --------------------------------------------------------------------------- RSSI


def test_rssi_dbm_is_median_of_converted_values() -> None:
    raw = np.array([470, 480, 490, 10000], dtype=np.uint16)  # one transient frame
    assert rssi_dbm(raw) == pytest.approx(0.1 * 485 - 127.0)
    assert rssi_dbm(np.array([0], np.uint16)) == -127.0


def test_rssi_dbm_rejects_empty_and_non_numeric() -> None:
    with pytest.raises(ProcessingError, match=r"smeter_raw: empty"):
        rssi_dbm(np.array([], dtype=np.uint16))
    with pytest.raises(ProcessingError, match=r"smeter_raw: must be numeric"):
        rssi_dbm(np.array(["a"]))
    with pytest.raises(ProcessingError, match=r"smeter_raw: contains NaN/Inf"):
        rssi_dbm(np.array([1.0, np.nan]))


def test_welch_dof_counts_overlap() -> None:
    # one segment: a periodogram bin of complex noise is chi-square with 2 dof
    assert dsp._welch_dof(np.ones(1, bool), 4096) == pytest.approx(2.0)
    # 58 Hann segments at 50 % overlap: correlated neighbours give fewer than 2 * 58 dof
    assert 90.0 < dsp._welch_dof(np.ones(58, bool), 4096) < 116.0


# --------------------------------------------------------------------------- real signals
# Modulated signals for the tests below: raised-cosine PSK and AM-like, shaped in the
# frequency domain so their band is exact; truth is the realised signal power.


def _noise(rng: np.random.Generator, n: int, n0: float) -> np.ndarray:
    sigma = math.sqrt(n0 * FS / 2.0)
    return sigma * (rng.standard_normal(n) + 1j * rng.standard_normal(n))


def psk(
    rng: np.random.Generator, n: int, *, order: int, band_hz: float, centre_hz: float
) -> np.ndarray:
    """Unit-power raised-cosine (roll-off 0.35) PSK of ``order`` 2 or 4, ``band_hz`` wide."""
    rate = band_hz / 1.35
    sps = FS / rate
    count = int(n / sps)
    phases = rng.integers(0, order, count) * (2 * math.pi / order) + (math.pi / 4) * (order == 4)
    impulses = np.zeros(n, complex)
    impulses[(np.arange(count) * sps).astype(int)] = np.exp(1j * phases)
    f = np.abs(np.fft.fftfreq(n, 1 / FS))
    inner, outer = rate * 0.65 / 2, rate * 1.35 / 2
    shape = np.where(
        f <= inner,
        1.0,
        np.where(f <= outer, 0.5 + 0.5 * np.cos(np.pi / (0.35 * rate) * (f - inner)), 0),
    )
    s = np.fft.ifft(np.fft.fft(impulses) * shape) * np.exp(
        2j * math.pi * centre_hz / FS * np.arange(n)
    )
    return s / math.sqrt(np.mean(np.abs(s) ** 2))


def am(rng: np.random.Generator, n: int, *, band_hz: float, centre_hz: float) -> np.ndarray:
    """Unit-power carrier at ``centre_hz`` modulated (rms index 0.3) by band-limited noise."""
    f = np.fft.fftfreq(n, 1 / FS)
    msg = np.fft.ifft(rng.standard_normal(n) * (np.abs(f) <= band_hz / 2)).real
    msg /= math.sqrt(np.mean(msg**2))
    s = (1 + 0.3 * msg) * np.exp(2j * math.pi * centre_hz / FS * np.arange(n))
    return s / math.sqrt(np.mean(np.abs(s) ** 2))


def at_cn0(
    rng: np.random.Generator, s: np.ndarray, cn0_dbhz: float, n0: float = 1e-7
) -> np.ndarray:
    return (s * math.sqrt(n0 * 10 ** (cn0_dbhz / 10)) + _noise(rng, s.size, n0)).astype(
        np.complex64
    )


@pytest.mark.parametrize("kind", ["bpsk", "qpsk", "am"])
@pytest.mark.parametrize("cn0_dbhz", [30, 50, 80])
def test_modulated_signal_filling_60_percent_keeps_floor_and_power_within_half_a_db(
    kind: str, cn0_dbhz: float
) -> None:
    # Issue 12's target at 10 s captures: 95th percentile within 0.5 dB. Eight trials per
    # case: the worst of them must be within 0.5 dB (bench/accuracy_dsp.py runs 300).
    rng = np.random.default_rng(300 + cn0_dbhz + len(kind))
    n, n0 = round(10 * FS), 1e-7
    for _ in range(8):
        centre = rng.uniform(-1900.0, 1900.0)
        if kind == "am":
            s = am(rng, n, band_hz=6000.0, centre_hz=centre)
        else:
            s = psk(rng, n, order=2 if kind == "bpsk" else 4, band_hz=6000.0, centre_hz=centre)
        m = measure(at_cn0(rng, s, cn0_dbhz, n0), FS)
        assert m.detected, m.detection_reason
        # At 30 dB-Hz an AM's sidebands (0.37 dB of its power) lie 18 dB under the noise
        # density: no detector sees them, the carrier alone is measured.
        unseen = 10 * math.log10(1.09) if kind == "am" and cn0_dbhz < 40 else 0.0
        assert abs(m.noise_floor_dbfs_hz - db(n0)) < 0.5
        assert abs(m.signal_power_dbfs - db(n0) - cn0_dbhz + unseen) < 0.5
        assert abs(m.cn0_dbhz - cn0_dbhz + unseen) < 0.5
        assert m.noise_method == "quiet-bins"
        if cn0_dbhz >= 50:
            assert m.modulation == kind
            # 99 % of a roll-off 0.35 raised cosine 6 kHz wide: ~4.7 kHz
            assert 4400.0 < m.occupied_bandwidth_hz < 6100.0 or kind == "am"


def test_false_detections_on_noise_only_at_most_1_percent() -> None:
    rng = np.random.default_rng(400)
    false = sum(
        measure(_noise(rng, 6000, 1e-7).astype(np.complex64), FS).detected for _ in range(300)
    )
    assert false <= 3  # 1 % of 300 (issue 12's target)


@pytest.mark.parametrize("kind", ["carrier", "bpsk"])
def test_detection_at_30_dbhz_in_2s(kind: str) -> None:
    rng = np.random.default_rng(401)
    n = round(2 * FS)
    hits = 0
    for _ in range(40):
        if kind == "carrier":
            s = np.exp(2j * math.pi * rng.uniform(-4000, 4000) / FS * np.arange(n))
        else:
            s = psk(rng, n, order=2, band_hz=2000.0, centre_hz=rng.uniform(-3000, 3000))
        hits += measure(at_cn0(rng, s, 30.0), FS).detected
    assert hits == 40


@pytest.mark.parametrize("kind", ["carrier", "am"])
def test_cfo_rms_within_1_2_cramer_rao_where_a_carrier_exists(kind: str) -> None:
    rng = np.random.default_rng(402)
    n, n0, cn0 = round(FS), 1e-7, 50.0
    errors, carrier_power = [], 1.0
    for _ in range(60):
        f0 = rng.uniform(-3000, 3000)
        if kind == "carrier":
            s = np.exp(1j * (2 * math.pi * f0 / FS * np.arange(n) + rng.uniform(0, 6.3)))
        else:
            s = am(rng, n, band_hz=2000.0, centre_hz=f0)
            carrier_power = 1 / 1.09  # 0.3^2 of the power is in the sidebands
        m = measure(at_cn0(rng, s, cn0, n0), FS)
        assert m.modulation == kind
        errors.append(m.frequency_offset_hz - f0)
    rms = math.sqrt(float(np.mean(np.square(errors))))
    crb = crb_std_hz(cn0 + db(carrier_power), n)
    assert rms < 1.2 * crb * 1.25  # 60 trials: the RMS itself scatters ~10 %


@pytest.mark.parametrize(("order", "name"), [(2, "bpsk"), (4, "qpsk")])
def test_suppressed_carrier_is_recovered_by_squaring(order: int, name: str) -> None:
    rng = np.random.default_rng(403 + order)
    for centre in (-3700.25, 123.4, 2900.5):  # aliased lines of x^2 / x^4 included
        s = psk(rng, round(2 * FS), order=order, band_hz=2500.0, centre_hz=centre)
        m = measure(at_cn0(rng, s, 60.0), FS)
        assert m.modulation == name
        assert abs(m.frequency_offset_hz - centre) < 0.5


def test_no_carrier_no_offset() -> None:
    rng = np.random.default_rng(404)
    n = round(2 * FS)
    f = np.fft.fftfreq(n, 1 / FS)
    band = np.fft.ifft(
        (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * (np.abs(f - 500) < 1500)
    )
    m = measure(at_cn0(rng, band / np.sqrt(np.mean(np.abs(band) ** 2)), 60.0), FS)
    assert m.detected and m.modulation == "unknown" and m.frequency_offset_hz is None
    assert abs(m.cn0_dbhz - 60.0) < 0.3


def test_dc_above_the_carrier_is_measured_and_left_out() -> None:
    rng = np.random.default_rng(405)
    x, _ = capture(rng, seconds=2.0, cn0_dbhz=60.0, offset_hz=1000.25)
    dc = 0.3 * np.exp(0.7j)  # +10 dB over the -20 dBFS carrier
    m = measure((x + dc).astype(np.complex64), FS)
    assert abs(m.frequency_offset_hz - 1000.25) < 0.01
    assert abs(m.dc_dbfs - db(0.09)) < 0.05
    assert abs(m.signal_power_dbfs - db(AMPLITUDE**2)) < 0.1
    assert abs(m.cn0_dbhz - 60.0) < 0.3
    assert m.modulation == "carrier"


@pytest.mark.parametrize("offset_hz", [0.37, -1.5, 4.0])
def test_carrier_next_to_a_dc_offset_is_separated(offset_hz: float) -> None:
    rng = np.random.default_rng(406)
    x, _ = capture(rng, seconds=2.0, cn0_dbhz=60.0, offset_hz=offset_hz)
    m = measure((x + 0.05).astype(np.complex64), FS)  # DC 6 dB under the carrier
    assert abs(m.frequency_offset_hz - offset_hz) < 0.01
    assert abs(m.dc_dbfs - db(0.0025)) < 0.2
    assert abs(m.signal_power_dbfs - db(AMPLITUDE**2)) < 0.1


@pytest.mark.parametrize("offset_hz", [4999.0, -4998.5, 4995.0])
def test_carrier_at_the_passband_edge_keeps_its_power(offset_hz: float) -> None:
    rng = np.random.default_rng(407)
    x, _ = capture(rng, seconds=2.0, cn0_dbhz=60.0, offset_hz=offset_hz)
    m = measure(x, FS)
    assert abs(m.signal_power_dbfs - db(AMPLITUDE**2)) < 0.1
    assert abs(m.cn0_dbhz - 60.0) < 0.3
    assert abs(m.frequency_offset_hz - offset_hz) < 0.01
    assert m.edge_distance_hz == pytest.approx(5000.0 - abs(offset_hz), abs=3.0)


def test_clipping_is_flagged() -> None:
    rng = np.random.default_rng(408)
    x, _ = capture(rng, seconds=2.0, cn0_dbhz=60.0, offset_hz=700.0)
    biggest = np.maximum(np.abs(x.real), np.abs(x.imag))
    level = float(np.quantile(biggest, 0.25))  # 75 % of the samples reach it
    clipped = (np.clip(x.real, -level, level) + 1j * np.clip(x.imag, -level, level)).astype(
        np.complex64
    )
    m = measure(clipped, FS)
    at_rail = np.mean((np.abs(clipped.real) >= level) | (np.abs(clipped.imag) >= level))
    assert 0.7 < at_rail < 0.8  # ~75 % of the samples have a clipped component
    assert m.clipped_fraction == pytest.approx(at_rail, abs=1e-6)
    assert measure(x, FS).clipped_fraction == 0.0
    assert m.detected and abs(m.frequency_offset_hz - 700.0) < 0.05


def test_huge_finite_samples_are_refused_not_nan() -> None:
    x = np.full(4096, 1e30 + 0j, np.complex64)
    with pytest.raises(ProcessingError, match=r"samples: a component of magnitude 1e\+30"):
        measure(x, FS)
    ok = measure(
        (np.ones(4096) * 1e5 + _noise(np.random.default_rng(1), 4096, 1.0)).astype(np.complex64), FS
    )
    assert all(
        v is None or not isinstance(v, float) or math.isfinite(v) for v in ok.as_dict().values()
    )


def test_receiver_filter_skirts_are_not_a_signal() -> None:
    # An empty channel through a receiver's IQ filter rolling off from ~4.6 to ~5.2 kHz:
    # the noise is lower at the passband edges, which must not make the middle "signal".
    rng = np.random.default_rng(409)
    taps = scipy.signal.firwin(301, 4900.0, width=600.0, fs=FS)
    false = 0
    for _ in range(100):
        w = rng.standard_normal(24302) + 1j * rng.standard_normal(24302)
        x = scipy.signal.lfilter(taps, 1.0, w)[300:].astype(np.complex64)
        m = measure(x, FS)
        false += m.detected
        assert abs(m.noise_floor_dbfs_hz - db(2.0 / FS)) < 0.3
    assert false <= 2  # issue 12: <= 1 % on noise only (measured ~0.5 % with skirts)


def test_gap_welch_equals_scipy_welch_when_every_segment_is_kept() -> None:
    # the gap path averages scipy.signal.spectrogram's periodograms; with all segments kept
    # it must be scipy.signal.welch
    rng = np.random.default_rng(410)
    x = (rng.standard_normal(20000) + 1j * rng.standard_normal(20000)).astype(np.complex64)
    keep = np.ones(dsp._segment_count(x.size, 1024), dtype=bool)
    f1, d1 = dsp._welch(x, FS, 1024)
    f2, d2 = dsp._welch(x, FS, 1024, keep)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6)


def test_signal_filling_the_passband_is_flagged_as_a_bound() -> None:
    # rectangular-pulse BPSK: its sinc^2 sidelobes cover the passband, no bin is quiet
    rng = np.random.default_rng(411)
    n = round(2 * FS)
    symbols = rng.choice([-1.0, 1.0], n // 5 + 1).repeat(5)[:n]
    m = measure(at_cn0(rng, symbols.astype(complex), 90.0), FS)
    assert m.detected and m.noise_method == "low-quantile"
    assert "upper bound" in m.detection_reason
    assert m.cn0_dbhz < 90.0  # a lower bound, never above the truth


@pytest.mark.parametrize("half_width_hz", [300.0, 500.0, 3000.0])
def test_the_passband_of_an_imported_recording_is_read_from_its_spectrum(
    half_width_hz: float,
) -> None:
    """kiwirecorder files do not carry the passband: a +-500 Hz recording must not be
    measured over +-5 kHz (its stopband would pass for the noise floor)."""
    from tasks.dsp import estimate_passband

    rate = 12001.07
    rng = np.random.default_rng(5)
    n = int(20 * rate)
    x = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    spec = np.fft.fft(x)
    f = np.fft.fftfreq(n, 1 / rate)
    spec[np.abs(f) > half_width_hz] *= 10 ** (-45 / 20)  # the filter's stopband
    low, high = estimate_passband(np.fft.ifft(spec).astype(np.complex64), rate)
    assert -half_width_hz <= low < -0.85 * half_width_hz
    assert 0.85 * half_width_hz < high <= half_width_hz


def test_a_recording_filled_with_noise_keeps_the_default_passband() -> None:
    from tasks.dsp import estimate_passband

    rng = np.random.default_rng(6)
    x = (rng.standard_normal(240_000) + 1j * rng.standard_normal(240_000)).astype(np.complex64)
    assert estimate_passband(x, 12001.07) == (-5000.0, 5000.0)
    assert estimate_passband(x[:100], 12001.07) == (-5000.0, 5000.0)


def test_trimmed_floor_is_unbiased_for_the_bins_chi_square_law() -> None:
    # the floor's bias enters a wide signal's power ~6-fold at 30 dB-Hz: it must be ~0
    rng = np.random.default_rng(412)
    for nu in (8.0, 19.0, 95.0):
        bins = rng.chisquare(nu, 200_000) / nu * 3.0e-7
        assert dsp._trimmed_floor(bins, nu) == pytest.approx(3.0e-7, rel=2e-3)


def test_dilation_matches_scipy() -> None:
    rng = np.random.default_rng(413)
    mask = rng.random(500) < 0.02
    for r in (1, 2, 7, 64):
        np.testing.assert_array_equal(
            dsp._dilated(mask, r), scipy.ndimage.binary_dilation(mask, iterations=r)
        )


def test_a_wide_psk_keeps_its_roll_off_in_the_band() -> None:
    # a raised cosine's roll-off holds ~29 % of its power: the band's edges must reach into
    # it, not stop at the flat top the detector's runs of bins see
    rng = np.random.default_rng(414)
    n = round(10 * FS)
    errors = []
    for _ in range(6):
        s = psk(rng, n, order=2, band_hz=6000.0, centre_hz=rng.uniform(-1900, 1900))
        m = measure(at_cn0(rng, s, 40.0), FS)
        errors.append(m.signal_power_dbfs - db(1e-7) - 40.0)
        assert 4400.0 < m.occupied_bandwidth_hz < 6100.0
    assert abs(float(np.mean(errors))) < 0.05  # no bias from a lost roll-off


def test_am_sidebands_filling_60_percent_are_found_whole_in_2s() -> None:
    # AM at 40 dB-Hz whose message fills 60 % of the passband: the sidebands stand 13 %
    # above the noise. Found in each half alone they came in pieces (floor up to +0.3 dB,
    # C/N0 0.65 dB at the 95th percentile); folded about the carrier they are one band.
    rng = np.random.default_rng(900)
    n, n0 = round(2 * FS), 1e-7
    named = 0
    for _ in range(20):
        s = am(rng, n, band_hz=6000.0, centre_hz=rng.uniform(-1900.0, 1900.0))
        m = measure(at_cn0(rng, s, 40.0, n0), FS)
        assert abs(m.noise_floor_dbfs_hz - db(n0)) < 0.25
        assert abs(m.cn0_dbhz - 40.0) < 0.4
        named += m.modulation == "am"
        if m.modulation == "am":
            assert 4500.0 < m.occupied_bandwidth_hz < 7600.0  # + the roll-off allowance
    assert named >= 18


def test_a_signal_beside_a_carrier_is_not_mirrored_as_a_sideband() -> None:
    # On a PSD of chi-square bins: a carrier with a 40 % step 300-600 bins above it folds
    # onto plain noise below it, which is no sideband; the same step on both sides (an
    # AM's sidebands) is found on both.
    from tasks.dsp import _mirrored, _run_dof

    rng = np.random.default_rng(901)
    nu, m, centre = 20.0, 3000, 1400
    p_of = {8: 1e-4, 64: 1e-4, 256: 1e-4}
    pool = np.ones(m, dtype=bool)
    for sides in ((1,), (1, -1)):
        d = rng.chisquare(nu, m) / nu
        d[centre] = 500.0
        for side in sides:
            d[centre + side * np.arange(300, 600)] += 0.4
        region, guarded = _mirrored(d, 1.0, nu, _run_dof(nu, 2000), p_of, centre, pool)
        if sides == (1,):  # found by the unfolded tests, not here; its mirror is noise
            assert not region.any() and not guarded.any()
        else:
            assert region[centre + 300 : centre + 600].mean() > 0.9
            assert region[centre - 600 : centre - 300].mean() > 0.9
            assert region.sum() < 2 * 300 * 1.3 and guarded[region].all()


def rrc_psk(
    rng: np.random.Generator, n: int, *, order: int, symbol_rate: float, centre_hz: float
) -> np.ndarray:
    """Unit-power root-raised-cosine (roll-off 0.35) PSK built in the time domain: random
    symbols at ``symbol_rate`` (a non-integer number of samples per symbol) convolved
    with a truncated RRC pulse, mixed to ``centre_hz``."""
    beta = 0.35
    sps = FS / symbol_rate
    count = int(n / sps) + 1
    phases = rng.integers(0, order, count) * (2 * math.pi / order) + (math.pi / 4) * (order == 4)
    impulses = np.zeros(n, complex)
    idx = np.round(np.arange(count) * sps).astype(int)
    impulses[idx[idx < n]] = np.exp(1j * phases[idx < n])
    t = np.arange(-8 * round(sps), 8 * round(sps) + 1) / sps  # in symbols
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (np.sin(np.pi * t * (1 - beta)) + 4 * beta * t * np.cos(np.pi * t * (1 + beta))) / (
            np.pi * t * (1 - (4 * beta * t) ** 2)
        )
    h[t == 0] = 1 - beta + 4 * beta / np.pi
    singular = np.isclose(np.abs(t), 1 / (4 * beta))
    h[singular] = (beta / math.sqrt(2)) * (
        (1 + 2 / np.pi) * math.sin(np.pi / (4 * beta))
        + (1 - 2 / np.pi) * math.cos(np.pi / (4 * beta))
    )
    s = np.convolve(impulses, h, mode="same") * np.exp(2j * math.pi * centre_hz / FS * np.arange(n))
    return s / math.sqrt(np.mean(np.abs(s) ** 2))


@pytest.mark.parametrize("symbol_rate", [100.0, 200.0])
@pytest.mark.parametrize(("order", "name"), [(2, "bpsk"), (4, "qpsk")])
def test_narrow_psk_is_not_taken_for_a_carrier(order: int, name: str, symbol_rate: float) -> None:
    """A 100-200 Hz PSK's main lobe spans a few PSD bins and stands far above the noise
    like a line; no tone explains it, so it is no carrier (issue 12): the offset is the
    suppressed carrier's (x^2 / x^4) or None, never the lobe's peak bin."""
    centre = 1234.5
    for seed in range(3):
        rng = np.random.default_rng(1200 + 10 * order + seed + int(symbol_rate))
        s = rrc_psk(rng, round(2 * FS), order=order, symbol_rate=symbol_rate, centre_hz=centre)
        m = measure(at_cn0(rng, s, 60.0), FS)
        assert m.detected
        assert m.modulation not in ("carrier", "am"), (m.modulation, m.frequency_offset_hz)
        assert m.frequency_offset_hz is None or abs(m.frequency_offset_hz - centre) < 1.0
        if order == 2:  # the x^2 line of BPSK at 60 dB-Hz is strong: it must be recovered
            assert m.modulation == "bpsk"
            assert abs(m.frequency_offset_hz - centre) < 1.0
        assert abs(m.cn0_dbhz - 60.0) < 0.5
