"""Time differences of arrival between GPS-timed receivers (plain numpy/scipy).

Owns the step from each receiver's samples on its own fitted time axis to one time
difference per receiver pair with a standard error, or a reason why there is none.

Why it is done this way:
- Every receiver has its own sample clock (rates differ by some ppm: ~2 samples over
  30 s), so each segment of the common GPS window is cut from each receiver at the
  sample nearest the segment's GPS centre time, and the remaining fraction of a sample is
  removed exactly with a frequency-domain delay (the signals are band-limited).
- Local oscillators differ: each receiver's carrier is estimated (a spectral line of x,
  x^2 or x^4: AM/carrier, BPSK, QPSK) and mixed to 0 Hz, then the carrier itself is
  notched out: a carrier has no time-difference information and would only flatten the
  correlation.
- Receivers' passbands differ (+-500 Hz vs +-5 kHz): only the band that both receivers
  hear and that holds the signal is correlated.
- The per-receiver phase is unknown, so the magnitude of the complex cross-correlation
  is used; its peak is refined to a fraction of a sample with Newton steps on the exact
  band-limited correlation (no parabola bias).
- Segment lags are combined robustly (median/MAD inliers) into a lag, its standard error
  and a quality figure; a pair without a consistent peak is dropped with a reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from itertools import combinations

import numpy as np
from scipy import fft as sfft
from scipy import signal as ssignal

from tasks.errors import RfAcquisitionError
from tasks.geodesy import SPEED_OF_LIGHT, ecef

NS_PER_S = 1_000_000_000
CARRIER_ONLY = "unmodulated carrier: no time-difference information"
NO_SIGNAL = "no coherent signal (noise only or too weak)"
# The segments' scatter understates the error of their mean a little (a t-like tail from
# estimating it, heavy-tailed segment lags). With 1 s segments the errors were 1.27 x the
# scatter-based standard error (210 seed-network pairs); with quarter-second segments the
# stated errors, scaled by 1.25, were 1.15 x too large (bench/accuracy_locate.py: median
# |err|/sigma 0.58, 95th 1.70 over 630 pairs, honest is 0.67 and 1.96): 1.1 now.
STDERR_CALIBRATION = 1.1
# The standard error comes from the segments' scatter, so the segment count is its degrees
# of freedom: with 1 s segments a 10 s capture gave 9, and the stated error of a +-500 Hz
# receiver's pairs swung 0.25..1.1 us from seed to seed over errors of ~0.8 us (|err|/sigma
# up to 3.6). Quarter-second segments (up to 64) steady it; the total correlated is the same.
SEGMENT_TARGET_S = 0.25
MAX_SEGMENTS = 64
# samples mixed to baseband per step (a bounded complex128 temporary: 16 MB)
MIX_CHUNK = 1 << 20
# A correlation peak leaning more than this many standard errors is not noise: an echo.
LEAN_SIGNIFICANT = 3.0


@dataclass
class ReceiverSeries:
    """One receiver's input: where it is, its samples, and its clock.

    ``t0_ns`` is the UTC (integer ns) of sample 0 and ``sample_rate_hz`` the fitted rate.
    ``passband_hz`` is (low, high) relative to the tuned frequency, when known.
    ``timing_sigma_s`` is the standard error of this receiver's t0 (from its timing fit).
    """

    name: str
    latitude: float
    longitude: float
    altitude_m: float
    samples: np.ndarray
    t0_ns: int
    sample_rate_hz: float
    center_hz: float
    passband_hz: tuple[float, float] | None = None
    timing_sigma_s: float = 0.0
    flags: tuple[str, ...] = ()
    # (first sample, length) spans holding no signal (frames lost in the recording,
    # zero-filled so that every other sample keeps its GPS time): never correlated
    gaps: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sample_rate_hz) and self.sample_rate_hz > 0):
            raise ValueError(f"{self.name}: sample_rate_hz={self.sample_rate_hz} must be > 0")
        if not -90.0 <= self.latitude <= 90.0:
            raise ValueError(f"{self.name}: latitude={self.latitude} outside [-90, 90]")
        if not -180.0 <= self.longitude <= 180.0:
            raise ValueError(f"{self.name}: longitude={self.longitude} outside [-180, 180]")
        x = np.asarray(self.samples).ravel()
        # 16-bit receivers' complex64 stays complex64 (half the memory of long files)
        self.samples = x if x.dtype == np.complex64 else x.astype(np.complex128, copy=False)
        self.t0_ns = int(self.t0_ns)

    @property
    def end_ns(self) -> int:
        return self.t0_ns + round(self.samples.size * NS_PER_S / self.sample_rate_hz)

    @property
    def position(self) -> tuple[float, float, float]:
        return (self.latitude, self.longitude, self.altitude_m)


@dataclass
class Carrier:
    """What was learnt about one receiver's signal before correlating."""

    frequency_hz: float | None  # baseband carrier (or suppressed-carrier) frequency
    power_order: int | None  # 1: a carrier line, 2: BPSK-like, 4: QPSK-like
    line_fraction: float  # share of the in-band power in the carrier line (order 1)
    band_hz: tuple[float, float]  # occupied band, relative to frequency_hz
    line_only: bool = False  # a carrier line and nothing else above the noise


@dataclass
class PairTdoa:
    """``tdoa_s`` = arrival time at ``a`` minus arrival time at ``b``."""

    a: str
    b: str
    tdoa_s: float | None
    stderr_s: float | None
    quality: float
    segments: int
    segments_used: int
    band_hz: tuple[float, float] | None
    baseline_m: float
    reason: str | None = None
    snr_z: float = 0.0
    # how far the middle of the correlation peak's half-power width lies from its top (s):
    # ~0 for one path; an unresolved echo leans it (and then widens stderr_s)
    lean_s: float = 0.0
    multipath: bool = False  # the lean was significant: stderr_s was widened to cover it

    @property
    def ok(self) -> bool:
        return self.reason is None and self.tdoa_s is not None

    def as_row(self) -> dict[str, object]:
        return {
            "pair": f"{self.a}-{self.b}",
            "tdoa_us": None if self.tdoa_s is None else round(self.tdoa_s * 1e6, 4),
            "stderr_us": None if self.stderr_s is None else round(self.stderr_s * 1e6, 4),
            "quality": round(self.quality, 3),
            "segments": f"{self.segments_used}/{self.segments}",
            "band_hz": None if self.band_hz is None else [round(b, 1) for b in self.band_hz],
            "baseline_km": round(self.baseline_m / 1e3, 2),
            "dropped": self.reason,
            "peak_lean_us": round(self.lean_s * 1e6, 3),
            "multipath": self.multipath,
        }


@dataclass
class TdoaResult:
    pairs: list[PairTdoa]
    window_start_ns: int
    window_end_ns: int
    carriers: dict[str, Carrier] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def good_pairs(self) -> list[PairTdoa]:
        return [p for p in self.pairs if p.ok]

    @property
    def carrier_only(self) -> bool:
        """True when no pair has time information because the signal is a bare carrier."""
        return not self.good_pairs and any(p.reason == CARRIER_ONLY for p in self.pairs)


class TdoaError(RfAcquisitionError, ValueError):
    """The inputs cannot give any time difference (no common window, too few receivers)."""


def best_overlap(
    spans: dict[str, tuple[int, int]], min_window_ns: int
) -> tuple[list[str], tuple[int, int]]:
    """The largest set of receivers whose (start, end) spans share ``min_window_ns``
    (ties: the longer common window), and that window.

    Recorders start seconds apart and stop at different times; one that missed the
    others must not take the common window of all of them to nothing.
    """
    best: tuple[int, int, list[str], tuple[int, int]] = (0, 0, [], (0, 0))
    for s0, _ in spans.values():
        members = [n for n, (a, b) in spans.items() if a <= s0 and b >= s0 + min_window_ns]
        if not members:
            continue
        start = max(spans[n][0] for n in members)
        end = min(spans[n][1] for n in members)
        key = (len(members), end - start)
        if key > best[:2]:
            best = (*key, members, (start, end))
    return best[2], best[3]


def common_window(receivers: Sequence[ReceiverSeries]) -> tuple[int, int]:
    """The GPS time span (integer ns) that every receiver recorded."""
    start = max(r.t0_ns for r in receivers)
    end = min(r.end_ns for r in receivers)
    return start, end


def _spectral_line(x: np.ndarray, fs: float, order: int, nfft: int) -> tuple[float, float, float]:
    """Strongest line of x**order: (frequency of the line / order, peak/median, fraction)."""
    y = x**order
    y = y - 0.0  # copy
    w = np.hanning(y.size)
    spec = np.abs(sfft.fft(y * w, nfft)) ** 2
    k = int(np.argmax(spec))
    # compare with the bins around the peak (+-~25 Hz, the line itself left out): a
    # modulated spectrum is ragged but never one bin hundreds of times its neighbours
    span = max(8, int(25.0 * nfft / fs))
    around = np.concatenate([spec[max(k - span, 0) : max(k - 4, 0)], spec[k + 5 : k + span]])
    med = float(np.median(around)) if around.size else float(np.median(spec))
    med = med or 1e-300
    ratio = float(spec[k] / med)
    # parabolic interpolation of the log peak (a few mHz on a long FFT is plenty)
    lm, l0, lp = (math.log(spec[(k + d) % nfft] + 1e-300) for d in (-1, 0, 1))
    den = lm - 2 * l0 + lp
    delta = 0.5 * (lm - lp) / den if den < 0 else 0.0
    freq = (k + delta) / nfft * fs
    if freq >= fs / 2:
        freq -= fs
    band = spec[max(k - 3, 0) : k + 4].sum() / max(spec.sum(), 1e-300)
    return freq / order, ratio, float(band)


def estimate_carrier(
    x: np.ndarray, fs: float, passband: tuple[float, float] | None = None
) -> Carrier:
    """The carrier (or suppressed carrier) and occupied band of one receiver's signal."""
    n = min(x.size, int(fs * 20))
    seg = x[:n]
    nfft = sfft.next_fast_len(4 * n)
    frequency: float | None = None
    order: int | None = None
    fraction = 0.0
    for p in (1, 2, 4):
        f, ratio, frac = _spectral_line(seg, fs, p, nfft)
        if ratio > 400.0:  # > 26 dB over the median bin: not a noise maximum
            frequency, order = f, p
            fraction = frac if p == 1 else 0.0
            break
    ref = frequency or 0.0
    band, found = occupied_band(x, fs, ref, passband)
    return Carrier(frequency, order, fraction, band, line_only=order == 1 and not found)


def occupied_band(
    x: np.ndarray, fs: float, ref_hz: float, passband: tuple[float, float] | None
) -> tuple[tuple[float, float], bool]:
    """Contiguous band around ``ref_hz`` where the spectrum stands above the noise floor.

    Returned relative to ``ref_hz``. The floor is a low percentile of the whole spectrum,
    so either the signal or the receiver's passband (noise above the stopband) sets the
    edges; a known passband clips them. The flag says whether anything but a
    carrier line stood out of the noise.
    """
    nper = int(min(x.size, max(256, fs / 4)))
    f, p = ssignal.welch(x, fs=fs, nperseg=nper, return_onesided=False, detrend=False)
    order = np.argsort(f)
    f, p = f[order], p[order]
    p = ssignal.medfilt(p, 5)
    df = f[1] - f[0]
    if passband is not None:
        p = np.where((f < passband[0]) | (f > passband[1]), 0.0, p)
    stop = float(np.percentile(p, 5))
    # The receiver's passband shows as noise standing above the stopband; inside it, the
    # signal is what stands above the passband's own low-percentile noise. The carrier
    # line itself is not "occupied band".
    region = p > 4.0 * stop if stop > 0 else p > 0
    carrier = np.abs(f - ref_hz) <= 3.0 * df
    if not region.any():
        region = np.ones_like(region)
    noise = float(np.percentile(p[region], 10))
    excess = np.where(region & ~carrier, np.clip(p - 3.0 * noise, 0.0, None), 0.0)
    found = bool(excess.sum() > 0)
    inside = region & ~carrier
    if found:
        c = np.cumsum(excess) / excess.sum()
        low = float(f[np.searchsorted(c, 0.005)]) - df
        high = float(f[min(np.searchsorted(c, 0.995), f.size - 1)]) + df
    elif inside.any():
        # nothing but noise (or a signal filling the passband): the passband seen
        low, high = float(f[inside][0]) - df, float(f[inside][-1]) + df
    else:
        low, high = float(f[0]), float(f[-1])
    if passband is not None:
        low, high = max(low, passband[0]), min(high, passband[1])
    if high - low < 50.0:
        low, high = passband if passband is not None else (float(f[0]), float(f[-1]))
        found = False
    return (float(low - ref_hz), float(high - ref_hz)), found


def _segment_spectra(
    r: ReceiverSeries,
    x: np.ndarray,
    centres_ns: Sequence[int],
    length: int,
    nfft: int,
    grid_rate_hz: float,
    remove_carrier: bool = False,
    bins: np.ndarray | None = None,
) -> np.ndarray:
    """FFTs of one receiver's segments resampled onto the common GPS time grid.

    Sample j of a segment is the signal at ``tc + (j - length//2) / grid_rate_hz``: the
    fraction of a sample by an exact frequency-domain delay, the clock-rate stretch
    (a few ppm: < 0.1 sample at the segment ends) by a first-order derivative term.
    """
    fs = r.sample_rate_hz
    omega = 2.0 * np.pi * sfft.fftfreq(nfft, 1.0 / fs)
    # only the FFT bins some pair can use are kept (``bins``): the rest is stopband
    out = np.zeros((len(centres_ns), nfft if bins is None else bins.size), dtype=np.complex128)
    half = length // 2
    j = np.arange(length, dtype=np.float64)
    # Tapered edges: hard block edges ring in the correlation and bias the lag.
    taper = _tukey(j, length)
    stretch = (j - half) * (fs / grid_rate_hz - 1.0) / fs  # seconds, per grid sample
    for s, tc in enumerate(centres_ns):
        c = (tc - r.t0_ns) * fs / NS_PER_S  # fractional sample index of the centre
        ic = round(c)
        frac = c - ic
        a = ic - half
        block = np.zeros(length, dtype=np.complex128)
        lo, hi = max(a, 0), min(a + length, x.size)
        if hi > lo:  # a segment shifted past the recording's end is zero-filled
            block[lo - a : hi - a] = x[lo:hi]
        if remove_carrier:
            # the carrier sits at 0 Hz: take it out before the taper, or its leakage
            # (identical in every receiver) correlates at zero window offset
            block -= np.sum(block * taper) / np.sum(taper)
        # block sample j sits at index c + (j - half) - frac: advance it by frac samples
        spec = sfft.fft(block, nfft) * np.exp(1j * omega * frac / fs)
        y = sfft.ifft(spec)[:length]
        if np.any(stretch):
            y = y + sfft.ifft(1j * omega * spec)[:length] * stretch
        spec = sfft.fft(y * taper, nfft)
        out[s] = spec if bins is None else spec[bins]
    return out


def _clean_segments(
    r: ReceiverSeries, centres_ns: Sequence[int], length: int, max_lag_s: float
) -> np.ndarray:
    """Which segments hold no sample of the receiver's gaps (lost frames).

    A pair moves b's segments by up to the largest possible lag (baseline / v plus the
    timing margin: 13 ms over 4000 km), so the margin around each segment covers that,
    plus 5 % of a segment for the refinement passes."""
    ok = np.ones(len(centres_ns), dtype=bool)
    if not r.gaps:
        return ok
    fs = r.sample_rate_hz
    margin = length // 20 + math.ceil(max_lag_s * fs)
    for s, tc in enumerate(centres_ns):
        a = round((tc - r.t0_ns) * fs / NS_PER_S) - length // 2
        ok[s] = all(a + length + margin <= g0 or g0 + n <= a - margin for g0, n in r.gaps)
    return ok


def _peak_asymmetry(
    cross: np.ndarray, omega: np.ndarray, tau: float, band_hz: float, level: float = 0.5
) -> float:
    """How far the middle of the correlation peak's half-power width lies from its top (s).

    A single path gives a peak symmetric about the lag (|r(t)| of a pure delay is the
    magnitude of a real-spectrum transform); a delayed echo that the band cannot resolve
    leans it towards the echo and pulls the top with it by an unknown part of the lean
    (from a fraction to all of it in the LF scenarios tried), a bias the segments' scatter
    cannot see (every segment has the same echo). The half-power lean bounds it in those
    scenarios, so it is what a significant lean adds to the error.
    """
    mag = np.abs(cross).sum(axis=0)
    rms_hz = math.sqrt(float(np.sum(mag * omega**2) / max(float(mag.sum()), 1e-300))) / (2 * np.pi)
    # the peak's width is set by where the cross-spectrum's power is, not by the band edges
    width = 1.0 / max(min(rms_hz, band_hz), 1.0)
    grid = tau + np.linspace(-2.0 * width, 2.0 * width, 201)
    prof = np.zeros(grid.size)
    for rows in np.array_split(np.arange(grid.size), max(1, grid.size * omega.size // 500_000)):
        steer = np.exp(1j * np.outer(grid[rows], omega))  # a bounded block at a time
        prof[rows] = np.abs(cross @ steer.T).sum(axis=0)
    k = int(np.argmax(prof))
    return _lean(grid, prof, k, level)


def _lean(grid: np.ndarray, prof: np.ndarray, k: int, level: float) -> float:
    cut = prof[k] * level
    left = np.flatnonzero(prof[:k] < cut)
    right = np.flatnonzero(prof[k:] < cut)
    if not left.size or not right.size:
        return float(grid[-1] - grid[0]) / 2.0  # wider than the window: as uncertain
    i, j = left[-1], k + right[0]
    t_left = grid[i] + (cut - prof[i]) / (prof[i + 1] - prof[i]) * (grid[i + 1] - grid[i])
    t_right = grid[j - 1] + (cut - prof[j - 1]) / (prof[j] - prof[j - 1]) * (grid[j] - grid[j - 1])
    return float((t_left + t_right) / 2.0 - grid[k])


def _tukey(pos: np.ndarray, length: int, alpha: float = 0.2) -> np.ndarray:
    """A Tukey window evaluated at fractional sample positions (0 .. length-1)."""
    x = np.clip(pos / (length - 1), 0.0, 1.0)
    edge = alpha / 2.0
    w = np.ones_like(x)
    left, right = x < edge, x > 1.0 - edge
    w[left] = 0.5 * (1.0 - np.cos(np.pi * x[left] / edge))
    w[right] = 0.5 * (1.0 - np.cos(np.pi * (1.0 - x[right]) / edge))
    return w


def _corr_at(cross: np.ndarray, omega: np.ndarray, tau: float) -> tuple[complex, complex, complex]:
    e = cross * np.exp(1j * omega * tau)
    return e.sum(), (1j * omega * e).sum(), (-(omega**2) * e).sum()


def _refine(cross: np.ndarray, omega: np.ndarray, tau0: float, step: float) -> float:
    """Newton steps to the maximum of |r(tau)|^2, r(tau) = sum C(w) e^{j w tau}."""
    tau = tau0
    for _ in range(8):
        r, r1, r2 = _corr_at(cross, omega, tau)
        g = 2.0 * (r1 * r.conjugate()).real
        h = 2.0 * (abs(r1) ** 2 + (r2 * r.conjugate()).real)
        if h >= 0:  # not near a maximum: stay on the coarse grid
            return tau0
        d = -g / h
        d = max(-step, min(step, d))
        tau += d
        if abs(d) < 1e-12:
            break
    if abs(tau - tau0) > 2 * step:
        return tau0
    return tau


def to_common_rate(receivers: Sequence[ReceiverSeries]) -> list[ReceiverSeries]:
    """Receivers whose rate differs from the slowest by more than 0.5 % resampled to it.

    KiwiSDR firmware with 3 channels samples IQ at ~20250 Hz, the others at ~12000 Hz:
    the per-segment alignment below corrects ppm-sized rate differences only. A polyphase
    resampler by a small rational factor keeps sample 0 at the same instant (so ``t0_ns``
    holds) and scales the fitted rate exactly, so the receiver's own clock error survives.
    """
    slowest = min(r.sample_rate_hz for r in receivers)
    out = []
    for r in receivers:
        ratio = Fraction(slowest / r.sample_rate_hz).limit_denominator(64)
        if abs(float(ratio) - 1.0) < 5e-3:
            out.append(r)
            continue
        up, down = ratio.numerator, ratio.denominator
        y = ssignal.resample_poly(r.samples, up, down)
        # resample_poly's filter spans 10 * max(up, down) input-rate taps each side: a gap's
        # edges smear over that many output samples
        pad = math.ceil(10 * max(up, down) / down) + 2
        gaps = tuple((max(int(a * ratio) - pad, 0), int(n * ratio) + 2 * pad) for a, n in r.gaps)
        out.append(replace(r, samples=y, sample_rate_hz=r.sample_rate_hz * float(ratio), gaps=gaps))
    return out


def estimate_tdoas(
    receivers: Sequence[ReceiverSeries],
    *,
    speed_m_s: float = SPEED_OF_LIGHT,
    segment_s: float | None = None,
    margin_s: float = 50e-6,
    notch_hz: float | None = None,
    min_window_s: float = 0.2,
) -> TdoaResult:
    """Pairwise TDOAs of every receiver pair over the common GPS window.

    Args:
        receivers: at least two, each on its own fitted time axis.
        speed_m_s: propagation speed; bounds the physically possible lag (baseline/v).
        segment_s: segment length (default: ~0.25 s, the window split into 8..64 segments).
        margin_s: added to baseline/v before a lag is called impossible (timing errors).
        notch_hz: half-width of the carrier notch (default: 2 segment-spectrum bins).
        min_window_s: a shorter common window is an error.
    """
    if len(receivers) < 2:
        raise TdoaError(f"need at least 2 receivers, got {len(receivers)}")
    names = [r.name for r in receivers]
    if len(set(names)) != len(names):
        raise TdoaError(f"receiver names must be unique, got {names}")
    receivers = to_common_rate(receivers)
    start, end = common_window(receivers)
    window_s = (end - start) / NS_PER_S
    if window_s < min_window_s:
        raise TdoaError(
            f"common GPS window is {window_s:.3f} s (< {min_window_s} s): the recordings do "
            "not overlap in time"
        )
    fs_common = min(r.sample_rate_hz for r in receivers)
    if segment_s is None:
        nseg = int(min(MAX_SEGMENTS, max(8, round(window_s / SEGMENT_TARGET_S))))
        segment_s = window_s / nseg  # (window_s // segment_s could round to nseg - 1)
    else:
        nseg = max(1, int(window_s // segment_s))
    length = int(segment_s * fs_common) - 2  # margin for the per-receiver rounding
    if length < 64:
        raise TdoaError(f"segments of {length} samples are too short; use a longer window")
    seg_ns = round(segment_s * NS_PER_S)
    centres = [start + seg_ns // 2 + k * seg_ns for k in range(nseg)]
    nfft = sfft.next_fast_len(2 * length)
    result = TdoaResult([], start, end)

    mixed: dict[str, np.ndarray] = {}
    for r in receivers:
        fs = r.sample_rate_hz
        i0 = max(0, math.floor((start - r.t0_ns) * fs / NS_PER_S))
        i1 = min(r.samples.size, math.ceil((end - r.t0_ns) * fs / NS_PER_S))
        pb = r.passband_hz
        car = estimate_carrier(r.samples[i0:i1], fs, pb)
        result.carriers[r.name] = car
        x = r.samples
        if car.frequency_hz is not None:
            # complex64 is exact enough for samples from 16-bit receivers and halves the
            # memory of long recordings; the phase (float64, exact at any length) is made a
            # chunk at a time so no full-length complex128 temporary exists
            step = -2.0 * np.pi * car.frequency_hz / fs
            x = np.empty(r.samples.size, dtype=np.complex64)
            for i in range(0, x.size, MIX_CHUNK):
                j = min(i + MIX_CHUNK, x.size)
                turn = np.exp(1j * (np.arange(i, j, dtype=np.float64) * step))
                np.multiply(r.samples[i:j], turn.astype(np.complex64), out=x[i:j])
        mixed[r.name] = x
    full_freqs = sfft.fftfreq(nfft, 1.0 / fs_common)
    # every pair correlates inside both receivers' bands: the union of the bands is all
    # any pair can use (a tenth of the spectrum for an LF time signal in a 20 kHz stream)
    low_all = min(c.band_hz[0] for c in result.carriers.values())
    high_all = max(c.band_hz[1] for c in result.carriers.values())
    bins = np.flatnonzero((full_freqs >= low_all) & (full_freqs <= high_all))
    freqs = full_freqs[bins]
    notch = notch_hz if notch_hz is not None else 2.5 * fs_common / nfft * 2
    spectra = {
        r.name: _segment_spectra(
            r,
            mixed[r.name],
            centres,
            length,
            nfft,
            fs_common,
            result.carriers[r.name].power_order == 1,
            bins,
        )
        for r in receivers
    }
    max_lag_s = margin_s + max(
        float(np.linalg.norm(ecef(*ra.position) - ecef(*rb.position))) / speed_m_s
        for ra, rb in combinations(receivers, 2)
    )
    clean = {r.name: _clean_segments(r, centres, length, max_lag_s) for r in receivers}
    for r in receivers:
        if r.gaps:
            result.notes.append(
                f"{r.name}: {int((~clean[r.name]).sum())} of {nseg} segments fall on lost "
                "frames and are not correlated"
            )
    upsample = 4
    for ra, rb in combinations(receivers, 2):
        use = clean[ra.name] & clean[rb.name]
        if use.sum() < 2:
            result.pairs.append(
                PairTdoa(
                    ra.name, rb.name, None, None, 0.0, nseg, 0, None,
                    float(np.linalg.norm(ecef(*ra.position) - ecef(*rb.position))),
                    "lost frames leave fewer than 2 segments both receivers recorded",
                )
            )  # fmt: skip
            continue
        result.pairs.append(
            _pair(
                ra,
                rb,
                result.carriers[ra.name],
                result.carriers[rb.name],
                spectra[ra.name][use],
                spectra[rb.name][use],
                lambda shift_ns, rb=rb, use=use: _segment_spectra(
                    rb,
                    mixed[rb.name],
                    [c + shift_ns for c, u in zip(centres, use, strict=True) if u],
                    length,
                    nfft,
                    fs_common,
                    result.carriers[rb.name].power_order == 1,
                    bins,
                ),
                freqs,
                bins,
                nfft,
                fs_common,
                notch,
                upsample,
                speed_m_s,
                margin_s,
            )
        )
    for p in result.pairs:
        if p.multipath:
            result.notes.append(
                f"{p.a}-{p.b}: the correlation peak leans {p.lean_s * 1e6:+.1f} us (an echo "
                "the band cannot resolve, e.g. skywave): its error is widened to cover it"
            )
    return result


def _pair(
    ra: ReceiverSeries,
    rb: ReceiverSeries,
    ca: Carrier,
    cb: Carrier,
    sa: np.ndarray,
    sb: np.ndarray,
    shifted_b: Callable[[int], np.ndarray],
    freqs: np.ndarray,
    bins: np.ndarray,
    nfft: int,
    fs: float,
    notch: float,
    upsample: int,
    speed: float,
    margin_s: float,
) -> PairTdoa:
    baseline = float(np.linalg.norm(ecef(*ra.position) - ecef(*rb.position)))
    nseg = sa.shape[0]

    def dropped(reason: str, band: tuple[float, float] | None = None) -> PairTdoa:
        return PairTdoa(ra.name, rb.name, None, None, 0.0, nseg, 0, band, baseline, reason)

    low = max(ca.band_hz[0], cb.band_hz[0])
    high = min(ca.band_hz[1], cb.band_hz[1])
    if high - low < 4 * notch:
        return dropped(f"no common band (A {ca.band_hz}, B {cb.band_hz} Hz)")
    band = (low, high)
    mask = (freqs >= low) & (freqs <= high)
    if ca.power_order == 1 or cb.power_order == 1:
        mask &= np.abs(freqs) > notch
    if mask.sum() < 8:
        return dropped("common band too narrow", band)
    cross = sa[:, mask] * np.conj(sb[:, mask])
    energy = np.sqrt(
        (np.abs(sa[:, mask]) ** 2).sum(axis=1) * (np.abs(sb[:, mask]) ** 2).sum(axis=1)
    )
    energy[energy == 0] = 1.0
    big = nfft * upsample
    idx = bins[mask]  # FFT bin numbers of the pair's band
    # place bins at their signed frequency in the upsampled spectrum
    kk = np.where(freqs[mask] >= 0, idx, idx + big - nfft)
    lags = sfft.fftfreq(big, 1.0 / big) / (upsample * fs)  # seconds
    limit = baseline / speed + margin_s
    inside = np.abs(lags) <= limit
    # A few segments at a time: the upsampled correlations of all segments at once are
    # nseg x 4 nfft complex values (~150 MB per pair for 60 s at 20250 Hz); ~16 MB here.
    total = np.zeros(big)
    seg_k = np.zeros(nseg, dtype=np.int64)
    block = max(1, 1_000_000 // big)
    full = np.zeros((min(block, nseg), big), dtype=np.complex128)
    for lo in range(0, nseg, block):
        rows = slice(lo, min(lo + block, nseg))
        part = full[: rows.stop - lo]
        part[:] = 0.0
        part[:, kk] = cross[rows]
        mag = np.abs(sfft.ifft(part, axis=1, overwrite_x=False)) * (big / energy[rows, None])
        total += mag.sum(axis=0)
        mag[:, ~inside] = -1.0
        seg_k[rows] = np.argmax(mag, axis=1)
    del full
    k_all = int(np.argmax(total))
    k_in = int(np.flatnonzero(inside)[np.argmax(total[inside])])
    med = float(np.median(total))
    sigma = 1.4826 * float(np.median(np.abs(total - med))) or 1e-12
    z = (total[k_in] - med) / sigma
    z_all = (total[k_all] - med) / sigma
    if k_all != k_in and z_all >= 8.0 and total[k_all] > 1.2 * total[k_in]:
        out = dropped(
            f"correlation peak at {lags[k_all] * 1e6:.1f} us is beyond the physical limit "
            f"+-{limit * 1e6:.1f} us (baseline {baseline / 1e3:.1f} km)",
            band,
        )
        out.snr_z = float(z_all)
        return out
    step = 1.0 / (upsample * fs)
    consistent = np.abs(lags[seg_k] - lags[k_in]) <= 2.5 * step
    frac_consistent = float(consistent.mean())
    if z < 8.0 or (nseg >= 4 and frac_consistent < 0.5):
        carrier_only = ca.line_only or cb.line_only
        reason = CARRIER_ONLY if carrier_only else NO_SIGNAL
        out = dropped(reason, band)
        out.snr_z = float(z)
        return out
    omega = 2.0 * np.pi * freqs[mask]
    # Cut b's segments earlier by the coarse lag so both windows hold the same stretch of
    # signal: correlating windows offset by the lag biases the peak towards zero lag.
    shift_ns = round(float(lags[k_in]) * NS_PER_S)
    for _ in range(2):  # the second pass removes the residual window offset
        used_ns = shift_ns  # the shift this pass's cross-spectra were built with
        cross = sa[:, mask] * np.conj(shifted_b(-used_ns)[:, mask])
        seg_tau = np.array([_refine(cross[s], omega, 0.0, step) for s in range(nseg)])
        seg_tau += used_ns / NS_PER_S
        shift_ns = round(float(np.median(seg_tau)) * NS_PER_S)
    peak = np.array([abs(_corr_at(cross[s], omega, seg_tau[s])[0]) for s in range(nseg)])
    med_tau = float(np.median(seg_tau))
    mad = 1.4826 * float(np.median(np.abs(seg_tau - med_tau)))
    keep = np.abs(seg_tau - med_tau) <= max(4.0 * mad, 0.05 * step)
    weights = peak[keep] ** 2
    tau = float(np.sum(weights * seg_tau[keep]) / np.sum(weights))
    n = int(keep.sum())
    if n >= 3:
        # standard error of a weighted mean from the segments' own scatter (the weights
        # make fewer than n segments count: sum(w^2 r^2) / sum(w)^2, not var / n)
        resid = seg_tau[keep] - tau
        stderr = math.sqrt(n / (n - 1) * float(np.sum(weights**2 * resid**2))) / float(
            np.sum(weights)
        )
    else:
        stderr = step / 2
    stderr = math.hypot(STDERR_CALIBRATION * stderr, ra.timing_sigma_s, rb.timing_sigma_s, 1e-9)
    # r(tau) = sum A conj(B) e^{jw tau} peaks at tau = delay(a) - delay(b)
    tdoa = tau
    if abs(tdoa) > limit + 3 * stderr:
        return dropped(
            f"lag {tdoa * 1e6:.1f} us is beyond the physical limit +-{limit * 1e6:.1f} us",
            band,
        )
    quality = float(n / nseg * min(1.0, float(np.mean(peak[keep] / energy[keep])) * 4))
    lean = _peak_asymmetry(cross[keep], omega, tau - used_ns / NS_PER_S, high - low)
    multipath = abs(lean) > LEAN_SIGNIFICANT * stderr
    if multipath:
        # an echo the band cannot resolve has pulled the peak by an unknown part of the
        # lean: the error must cover it (the segments all share the echo, so their
        # scatter cannot)
        stderr = math.hypot(stderr, lean)
    return PairTdoa(
        ra.name,
        rb.name,
        tdoa,
        stderr,
        quality,
        nseg,
        n,
        band,
        baseline,
        None,
        float(z),
        lean,
        multipath,
    )
