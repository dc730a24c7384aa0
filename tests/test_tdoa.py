"""Pairwise TDOA: known fractional delays back within stated tolerances, receivers on
different clocks and passbands, and the pairs that must be dropped with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.kiwisdr.emitter import SPEED_OF_LIGHT, Emitter
from tasks.tdoa import CARRIER_ONLY, NO_SIGNAL, ReceiverSeries, TdoaError, estimate_tdoas

NS = 1_000_000_000
EPOCH = 1_800_000_000 * NS


def series(
    name: str,
    lat: float,
    lon: float,
    emitter: Emitter,
    delay_s: float,
    *,
    rate: float = 12_001.135,
    start_ns: int = 0,
    seconds: float = 10.0,
    cfo_hz: float = 0.0,
    noise: float = 0.05,
    passband: tuple[float, float] | None = None,
    seed: int = 0,
) -> ReceiverSeries:
    """A receiver's capture: sample i taken at EPOCH + start_ns + i/rate (GPS time)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = start_ns / NS + np.arange(n) / rate  # seconds after EPOCH
    x = emitter.envelope(t - delay_s) * np.exp(1j * (2 * np.pi * cfo_hz * t + rng.uniform(0, 6)))
    x = x + noise * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
    if passband is not None:
        f = np.fft.fftfreq(n, 1 / rate)
        spec = np.fft.fft(x)
        spec[(f < passband[0]) | (f > passband[1])] *= 0.01
        x = np.fft.ifft(spec)
    return ReceiverSeries(
        name, lat, lon, 0.0, x.astype(np.complex64), EPOCH + start_ns, rate, 1e6, passband
    )


PSK = Emitter(45.0, 8.0, 0.0, 1e6, modulation="rrc-bpsk")


def test_fractional_delay_recovered_across_different_clocks_and_offsets() -> None:
    """Delays of 1.48 and 0.41 samples, rates 15 ppm apart, starts 3 ms apart, LOs 50 Hz
    apart, C/N0 77 dB-Hz: back within 50 ns (the bound is ~13 ns); noise-free within 2 ns."""
    kw = {"noise": 0.01, "cfo_hz": 30.0}
    a = series("a", 45.0, 7.5, PSK, 1.234567e-4, rate=12001.03, start_ns=123_457, **kw)
    kw["cfo_hz"] = -20.0
    b = series("b", 45.3, 8.4, PSK, 3.456789e-5, rate=12001.21, start_ns=3_000_789, seed=1, **kw)
    (pair,) = estimate_tdoas([a, b]).pairs
    assert pair.ok, pair.reason
    assert pair.tdoa_s == pytest.approx(1.234567e-4 - 3.456789e-5, abs=50e-9)
    assert 3e-9 < pair.stderr_s < 40e-9
    assert pair.segments_used >= 8

    clean_a = series("a", 45.0, 7.5, PSK, 4.0e-5, rate=12001.03, start_ns=11, noise=0.0)
    clean_b = series("b", 45.3, 8.4, PSK, 1.3e-5, rate=12001.21, start_ns=77_777, noise=0.0)
    (pair,) = estimate_tdoas([clean_a, clean_b]).pairs
    assert pair.tdoa_s == pytest.approx(2.7e-5, abs=2e-9)


def test_sample_clocks_matter_and_are_used() -> None:
    """Rates differ by 100 ppm: with each receiver's own fitted rate the lag is right;
    treating both as nominal would drift by many microseconds over 10 s."""
    a = series("a", 45.0, 7.5, PSK, 2.0e-4, rate=12000.0, noise=0.0)
    b = series("b", 45.3, 8.4, PSK, 1.0e-4, rate=12001.2, noise=0.0)
    (pair,) = estimate_tdoas([a, b]).pairs
    assert pair.tdoa_s == pytest.approx(1.0e-4, abs=5e-9)
    b.sample_rate_hz = 12000.0  # wrong clock: the lag walks over the capture
    (wrong,) = estimate_tdoas([a, b]).pairs
    assert not wrong.ok or abs(wrong.tdoa_s - 1.0e-4) > 1e-6


def test_mixed_passbands_use_the_common_band() -> None:
    """+-500 Hz and +-5 kHz receivers: only the shared band is correlated."""
    am = Emitter(45.0, 8.0, 0.0, 1e6, modulation="am", audio_bandwidth_hz=3000.0)
    a = series("a", 45.0, 7.5, am, 3.0e-4, passband=(-500.0, 500.0), noise=0.02, seconds=20)
    b = series(
        "b", 45.3, 8.4, am, 1.5e-4, passband=(-5000.0, 5000.0), noise=0.02, seconds=20, seed=3
    )
    result = estimate_tdoas([a, b])
    (pair,) = result.pairs
    assert pair.ok, pair.reason
    assert pair.band_hz[0] >= -501.0 and pair.band_hz[1] <= 501.0
    assert pair.stderr_s < 0.7e-6  # ~0.5 us over 20 s seeds (64 segments)
    assert pair.tdoa_s == pytest.approx(1.5e-4, abs=4 * pair.stderr_s)
    assert result.carriers["a"].power_order == 1  # AM has a carrier line


def test_pure_carrier_says_no_time_information() -> None:
    carrier = Emitter(45.0, 8.0, 0.0, 1e6, modulation="carrier")
    a = series("a", 45.0, 7.5, carrier, 3.0e-4, cfo_hz=12.0)
    b = series("b", 45.3, 8.4, carrier, 1.0e-4, cfo_hz=-7.0, seed=2)
    result = estimate_tdoas([a, b])
    (pair,) = result.pairs
    assert not pair.ok and pair.tdoa_s is None
    assert pair.reason == CARRIER_ONLY
    assert result.carrier_only


def test_noise_only_pair_is_dropped() -> None:
    a = series("a", 45.0, 7.5, PSK, 0.0, noise=0.3)
    b = series("b", 45.3, 8.4, PSK, 0.0, noise=0.3, seed=5)
    a.samples = (np.random.default_rng(8).standard_normal(a.samples.size) * (1 + 0j)).astype(
        np.complex64
    )
    b.samples = (np.random.default_rng(9).standard_normal(b.samples.size) * 1j).astype(np.complex64)
    (pair,) = estimate_tdoas([a, b]).pairs
    assert not pair.ok and pair.reason == NO_SIGNAL


def test_physically_impossible_lag_is_rejected() -> None:
    """Receivers 1 km apart cannot see 1 ms of TDOA: the peak is outside +-baseline/c."""
    a = series("a", 45.0, 7.5, PSK, 1.0e-3, noise=0.0)
    b = series("b", 45.009, 7.5, PSK, 0.0, noise=0.0)
    (pair,) = estimate_tdoas([a, b]).pairs
    assert pair.baseline_m / SPEED_OF_LIGHT < 5e-6
    assert not pair.ok and "physical limit" in (pair.reason or "")


def test_no_common_window_is_an_error() -> None:
    a = series("a", 45.0, 7.5, PSK, 0.0, seconds=1.0)
    b = series("b", 45.3, 8.4, PSK, 0.0, seconds=1.0, start_ns=5 * NS)
    with pytest.raises(TdoaError, match="common GPS window"):
        estimate_tdoas([a, b])


def test_a_three_channel_kiwisdr_at_20250_hz_pairs_with_12_khz_ones() -> None:
    """KiwiSDRs with 3-channel firmware sample IQ at ~20250 Hz: resampled to the common
    rate, sample 0 keeps its instant and the pair's lag is right to within 50 ns."""
    kw = {"noise": 0.01, "cfo_hz": 5.0}
    a = series("a", 45.0, 7.5, PSK, 1.234567e-4, rate=12001.03, start_ns=123_457, **kw)
    b = series("b", 45.3, 8.4, PSK, 3.456789e-5, rate=20250.07, start_ns=3_000_789, seed=1, **kw)
    (pair,) = estimate_tdoas([a, b]).pairs
    assert pair.ok, pair.reason
    assert pair.tdoa_s == pytest.approx(1.234567e-4 - 3.456789e-5, abs=50e-9)
