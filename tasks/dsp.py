"""Calibrated measurements of one IQ capture, honest about what it holds.

Samples are complex64 with full scale 1.0 (int16 / 32768), so every power here is in dBFS
and every density in dBFS/Hz. The caller passes the receiver's *true* sample rate (GPS
disciplined, e.g. 12001.135 Hz): densities, C/N0 and the carrier offset all scale with it.

What a measurement claims, and why:

* **Detection first.** A signal is reported only when some PSD bin, or the mean of some
  run of 8/64/256 bins, stands above the noise floor by more than chance allows at a
  false-alarm rate of :data:`DETECTION_PFA` per capture (chi-square thresholds from the
  Welch bins' equivalent degrees of freedom). Otherwise ``detected`` is False, the reason
  says so, and every signal field is None: an empty channel has no C/N0.
* **Noise floor from the quiet bins.** The floor is the trimmed mean (10-90 %) of every
  passband bin outside the detected signals and a guard around them, divided by that
  trimmed mean's expectation under the bins' chi-square law; iterated from a low quantile
  of 64-bin block means. A modulated signal filling most of the passband does not lift it,
  a receiver's filter skirts do not pull it down, and it is nearly as efficient as the
  plain mean: its error enters the signal power times the signal's bandwidth over its
  power, ~6 for a wide signal at 30 dB-Hz (``noise_method``).
* **Signal power over the signal only**: the PSD above the floor integrated over the
  detected signal's band, whose edges are placed where the PSD, smoothed at the signal's
  own scale, fades into the noise, grown by a roll-off allowance (and which may reach a
  few bins past the passband edge, so a carrier at the edge keeps its window lobe);
  ``occupied_bandwidth_hz`` holds 99 % of it. Around a carrier the PSD is also folded
  about it: an AM's sidebands mirror each other, and averaged they are found as one band
  where each half alone shows only pieces.
* **Carrier offset only where a carrier is**: a spectral line is found in the PSD, placed
  by a zoomed FFT of block sums and refined by maximum likelihood, and kept only when the
  tone fitted there explains its PSD lobe (a narrow PSK's main lobe, a few bins wide,
  stands above its shoulders like a line but holds no tone); it is a ``carrier``
  when the tone fitted there holds 95 % of the signal power, else ``am``. A suppressed
  carrier is recovered from the line of x^2 (``bpsk``) or x^4 (``qpsk``); otherwise the
  offset is None (``unknown``).
* **Receiver artefacts are measured, not measured as signal**: the DC offset is removed
  before the PSD (``dc_dbfs``), the fraction of clipped samples is reported
  (``clipped_fraction``), and ``edge_distance_hz`` says how close the signal is to the
  passband edge.

Lost frames are zero-filled in a capture. Given their positions (``gaps``), :func:`measure`
reports the figures of the samples that were received: powers average over the received
samples only, and the PSD uses only Welch segments without a lost sample.

Cost: one Welch PSD (batched FFTs, about one FFT pass over the capture) serves detection,
floor, power, band and the report's picture; a carrier adds O(N) block sums and a short
FFT, a suppressed carrier one full-length FFT of x^2 (and of x^4 for QPSK).

Plain numpy/scipy on purpose: no Prefect, no I/O, so the numbers can be unit-tested against
synthetic captures and benchmarked on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.signal
import scipy.stats

from tasks.errors import RfAcquisitionError

__all__ = [
    "DEFAULT_NPERSEG",
    "DEFAULT_PASSBAND_HZ",
    "DETECTION_PFA",
    "MAX_ABS_SAMPLE",
    "MIN_SAMPLES",
    "Measurements",
    "ProcessingError",
    "Spectrum",
    "carrier_offset_hz",
    "measure",
    "psd",
    "rssi_dbm",
]

DEFAULT_PASSBAND_HZ: tuple[float, float] = (-5000.0, 5000.0)
# 4096 points = 2.9 Hz bins at 12 kS/s: narrow enough that a carrier stands far above the
# noise in its bin, wide enough for a few dozen Welch segments in a 2 s capture.
DEFAULT_NPERSEG = 4096
# Below this a PSD has too few in-band bins for a noise floor.
MIN_SAMPLES = 256
# With gaps: the Welch segment is halved (down to MIN_SAMPLES) until this many segments
# hold no lost sample (or all of them do, for a capture of fewer segments).
_MIN_CLEAN_SEGMENTS = 4
# Samples are full scale 1.0; anything far beyond is not a receiver's output (and its
# squares would overflow float32): refused with a clear error instead of NaN figures.
MAX_ABS_SAMPLE = 1e6

# Design false-alarm probability of the detector for one noise-only capture (all tests
# together, Bonferroni). The chi-square model of correlated Welch bins is approximate: the
# achieved rate is a few times higher (bench/accuracy_dsp.py measures it; issue 12's
# target is <= 1 %).
DETECTION_PFA = 2e-4
# Scales (bins averaged) of the detector: 1 finds lines, the wider ones finds modulated
# signals whose bins are each below the noise but whose band is not.
_DETECTION_SCALES = (1, 8, 64, 256)
# Per-window probability above which a window is counted as signal when the noise floor
# is estimated (looser than detection: better to drop a noise bin than keep signal).
_MASK_P = 1e-4
# Wider runs tested only for that mask: a modulated signal spread over most of the
# passband (AM sidebands at 40 dB-Hz) lifts a floor it is not found against otherwise.
_MASK_ONLY_SCALES = (512,)
# A real receiver's noise is not flat: filter ripple and skirts move it by a few percent
# across the passband. Runs of bins must exceed the floor by this much more than chance
# allows, or an empty channel would read as a wideband "signal".
_RIPPLE = 0.03
_FLOOR_ITERATIONS = 4
# Sidebands folded about a carrier (see _mirrored): a folded region is kept when the
# weaker half holds at least this fraction of the stronger half's excess power, and the
# carrier needs this many bins of room on both sides to be folded about.
_MIRROR_BALANCE = 0.25
_MIRROR_MIN_BINS = 16
# False-alarm probability (all runs of all scales together) of the cheap look for
# sidebands that decides whether the noise floor is estimated again around them: loose
# at the wide scales (the floor of a capture not yet cleared of them is high), as a false
# alarm only costs that second estimate.
_SIDEBAND_GATE_P = 0.05
# Bins per block of the floor's first guess (see _low_quantile_floor).
_FLOOR_BLOCK = 64
# The noise floor is the mean of the quiet bins between these quantiles, divided by that
# trimmed mean's expectation under the bins' chi-square law: nearly as efficient as the
# plain mean (the floor's error enters the signal power multiplied by the signal's
# bandwidth over its power, ~6 for a wide signal at 30 dB-Hz), robust to a receiver's
# filter skirts and to a weak signal's remains like the median.
_FLOOR_TRIM = (0.1, 0.9)
# Signal edges: a detected region is grown or trimmed to where its PSD, smoothed over
# just enough bins that the region's mean level stands _EDGE_SMOOTH deviations of the
# smoothed noise above the floor (1.._EDGE_SMOOTH_MAX bins), exceeds the floor by
# _EDGE_SIGMA deviations, i.e. a bin is integrated when the signal it adds is likely
# more than the noise it brings. A wide roll-off is left out at low C/N0 (a few % of the
# power, less than the noise it would add) and taken in at high C/N0. The floor leaves
# out a guard of one smoothing width more.
_EDGE_SMOOTH = 3.0
_EDGE_SMOOTH_MAX = 128
_EDGE_SIGMA = 1.0
# Bins of a region at least this many deviations above the floor seed its edges.
_EDGE_SEED_SIGMA = 2.0
# The roll-off beyond those edges (a raised cosine's outer half, ~5 % of its power at
# 30 dB-Hz) is taken in by growing the band by this fraction of its width on each side.
_EDGE_EXTEND = 0.125
# Bins beyond the passband edge a detected signal may extend into (a carrier at the edge
# keeps its Hann main lobe, +-2 bins).
_EDGE_GUARD_BINS = 4
# Bins around 0 Hz (+-1) left out of the noise floor, the signal and the peak search: the
# receiver's DC offset lives there.
_DC_BINS = 1
# Alternations of the joint carrier + DC fit (least squares DC, ML frequency); each one
# shrinks the frequency error by the line-DC coupling, ~|sinc(f T)| ** 2.
_DC_FIT_ITERATIONS = 8
# A spectral line holding this fraction of the signal power -> 'carrier'; a line holding
# less -> 'am' (carrier plus sidebands: AM at index 0.3 leaves 92 %, DCF77-like keying
# ~89 %). The line's power is the tone fitted at the measured offset (a 1/T bin), not
# the PSD's bins around it, which also hold slow keying's sidebands.
_CARRIER_FRACTION = 0.95
_LINE_BINS = 3
# A PSD peak is a line only when the tone fitted at its refined frequency holds at least
# this fraction of the excess power in its +-_LINE_BINS bins (a Hann lobe holds a tone's
# all). A narrow PSK's main lobe (100-200 Hz: a few bins) stands as far above its
# shoulders as a line, but no tone explains it: its 1/T bin holds ~nperseg/(7 N) of the
# lobe's power, so it goes to the x^2 / x^4 recovery instead of reading as a carrier.
_LINE_TONE_FRACTION = 0.5
# Bins each side of a squared signal's strongest bin its line is compared with: the
# squared spectrum of a narrow PSK peaks at the line, so a wide median undervalues the
# level there (with 256, a 100 Hz QPSK's x^2 showed a false BPSK line); a narrow one is a
# noisy reference (with 64, QPSK at 40 dB-Hz was named 70 % instead of 77-80 %).
_LINE_LOCAL = 128
# Clipping: a component at the largest magnitude in the capture is clipped when at least
# this many samples share that magnitude (one peak sample is just the peak).
_MIN_CLIPPED_SAMPLES = 3

# Floor for powers before log10 of a quantity that is known to be positive.
_TINY_POWER = 1e-30
# CFO search: the coarse FFT is zero-padded only up to a fast FFT length; the coarse peak
# only has to land inside the main lobe, the ML refinement does the rest. _CFO_BLOCK is the
# block length used to decimate the capture before that refinement.
_CFO_ZERO_PAD = 1
# Welch segments transformed per batched FFT call.
_WELCH_BATCH = 16
_CFO_BLOCK = 32
_CFO_NEWTON_STEPS = 8


class ProcessingError(RfAcquisitionError, ValueError):
    """A capture or parameter the measurements cannot be computed from.

    The message names the offending field and the allowed range, because it ends up in a
    flow run's log where nobody has the capture at hand.
    """


@dataclass(frozen=True)
class Spectrum:
    """The capture's Welch PSD (DC offset removed): fftshifted frequencies (Hz) and
    density (FS^2/Hz). Computed once per capture, reused by the report's picture."""

    freqs: np.ndarray
    density: np.ndarray


@dataclass(frozen=True)
class Measurements:
    """Calibrated figures for one capture (dBFS = relative to int16 full scale).

    Signal fields (``signal_power_dbfs``, ``cn0_dbhz``, ``snr_db``,
    ``occupied_bandwidth_hz``, ``edge_distance_hz``, ``modulation``) are None unless
    ``detected``; ``frequency_offset_hz`` is None also when there is no carrier to measure.
    ``power_dbfs`` and the noise floor are None only for an all-zero capture.
    """

    power_dbfs: float | None
    noise_floor_dbfs_hz: float | None
    signal_power_dbfs: float | None
    cn0_dbhz: float | None
    snr_db: float | None
    snr_bandwidth_hz: float
    frequency_offset_hz: float | None
    sample_count: int
    detected: bool = False
    detection_reason: str = ""
    occupied_bandwidth_hz: float | None = None
    noise_method: str | None = None
    modulation: str | None = None
    clipped_fraction: float = 0.0
    dc_dbfs: float | None = None
    edge_distance_hz: float | None = None
    spectrum: Spectrum | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, float | int | bool | str | None]:
        """Plain dict of the figures (the spectrum left out) for SigMF and rows."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spectrum"}


# --------------------------------------------------------------------------- validation


def _check_rate(sample_rate: float) -> float:
    try:
        fs = float(sample_rate)
    except (TypeError, ValueError):
        raise ProcessingError(
            f"sample_rate: must be a finite number > 0 Hz, got {sample_rate!r}"
        ) from None
    if not math.isfinite(fs) or fs <= 0.0:
        raise ProcessingError(f"sample_rate: must be a finite number > 0 Hz, got {sample_rate!r}")
    return fs


def _check_passband(passband_hz: Sequence[float], fs: float) -> tuple[float, float]:
    half = fs / 2.0
    allowed = f"must satisfy -{half:g} <= low < high <= +{half:g} Hz (±fs/2)"
    try:
        lo, hi = (float(v) for v in passband_hz)
    except (TypeError, ValueError):
        raise ProcessingError(
            f"passband_hz: {passband_hz!r} is not a (low, high) pair; {allowed}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and -half <= lo < hi <= half):
        raise ProcessingError(f"passband_hz: ({lo:g}, {hi:g}) {allowed}")
    return lo, hi


def _as_capture(samples: np.ndarray, minimum: int) -> np.ndarray:
    """Validate and return the capture as contiguous complex64."""
    arr = np.asarray(samples)
    if arr.dtype.kind != "c":
        raise ProcessingError(
            f"samples: dtype must be complex (complex64, full scale 1.0), got {arr.dtype}"
        )
    if arr.ndim != 1:
        raise ProcessingError(f"samples: must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ProcessingError(f"samples: capture is empty; need at least {minimum} samples")
    if arr.size < minimum:
        raise ProcessingError(
            f"samples: {arr.size} samples are too few for the PSD; need at least {minimum}"
        )
    x = np.ascontiguousarray(arr, dtype=np.complex64)
    parts = x.view(np.float32)
    top, bottom = float(parts.max()), float(parts.min())  # NaN and Inf show up here
    if not (math.isfinite(top) and math.isfinite(bottom)):
        bad = np.flatnonzero(~np.isfinite(x))
        raise ProcessingError(
            f"samples: {bad.size} non-finite (NaN/Inf) values, first at index {bad[0]}; "
            "all samples must be finite (write lost frames as zeros)"
        )
    biggest = max(top, -bottom)
    if biggest > MAX_ABS_SAMPLE:
        raise ProcessingError(
            f"samples: a component of magnitude {biggest:.3g} is beyond the allowed "
            f"±{MAX_ABS_SAMPLE:g} (samples are full scale 1.0, int16 / 32768)"
        )
    return x


def _lost_mask(gaps: Sequence[tuple[int, int]], n: int) -> np.ndarray | None:
    """Boolean mask of the zero-filled samples the gaps name, or None for no gaps."""
    if isinstance(gaps, str | bytes) or not isinstance(gaps, Sequence | np.ndarray):
        raise ProcessingError(
            f"gaps: must be a sequence of (sample_start, sample_count) pairs, got {gaps!r}"
        )
    if len(gaps) == 0:
        return None
    lost = np.zeros(n, dtype=bool)
    for gap in gaps:
        pair = tuple(gap) if isinstance(gap, Sequence | np.ndarray) else ()
        if len(pair) != 2 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in pair
        ):
            raise ProcessingError(
                f"gaps: {gap!r} is not a (sample_start, sample_count) pair of integers"
            )
        start, count = int(pair[0]), int(pair[1])
        if start < 0 or count <= 0 or start + count > n:
            raise ProcessingError(
                f"gaps: ({start}, {count}) must have 0 <= sample_start, sample_count > 0 and "
                f"sample_start + sample_count <= {n} (the sample count)"
            )
        lost[start : start + count] = True
    return lost


def _check_nperseg(nperseg: int) -> int:
    if isinstance(nperseg, bool) or not isinstance(nperseg, int | np.integer) or nperseg < 16:
        raise ProcessingError(f"nperseg: must be an integer >= 16, got {nperseg!r}")
    return int(nperseg)


# --------------------------------------------------------------------------- PSD


def psd(
    samples: np.ndarray, sample_rate: float, nperseg: int = DEFAULT_NPERSEG
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Welch PSD: (frequencies in Hz, density in FS²/Hz), both fftshifted.

    Hann window, 50 % overlap, no detrending (a carrier at 0 Hz is signal, not a trend),
    density scaling so white noise of power P reads P/fs everywhere.
    """
    fs = _check_rate(sample_rate)
    nperseg = _check_nperseg(nperseg)
    x = _as_capture(samples, max(nperseg, MIN_SAMPLES))
    return _welch(x, fs, nperseg)


def _welch(
    x: np.ndarray, fs: float, nperseg: int, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.welch`` (Hann, 50 % overlap, no detrend, two-sided density),
    fftshifted. ``keep`` (one bool per segment) averages only the segments it marks."""
    hop = nperseg - nperseg // 2
    frames = np.lib.stride_tricks.sliding_window_view(x, nperseg)[::hop]
    if keep is not None:
        frames = frames[keep]
    window = _periodic_hann(nperseg)
    density = np.zeros(nperseg, dtype=np.float64)
    # All segments in one batched FFT (chunked to stay in cache), not one call per segment
    # as scipy.signal.welch makes: the PSD costs about one FFT pass over the capture.
    for start in range(0, frames.shape[0], _WELCH_BATCH):
        spec = scipy.fft.fft(frames[start : start + _WELCH_BATCH] * window, axis=-1)
        density += (spec.real * spec.real + spec.imag * spec.imag).sum(axis=0, dtype=np.float64)
    density /= max(frames.shape[0], 1) * fs * float(np.dot(window, window))
    freqs = scipy.fft.fftfreq(nperseg, 1.0 / fs)
    return scipy.fft.fftshift(freqs), scipy.fft.fftshift(density)


@lru_cache(maxsize=8)
def _periodic_hann(n: int) -> np.ndarray:
    w = scipy.signal.get_window("hann", n).astype(np.float32)
    w.flags.writeable = False
    return w


@lru_cache(maxsize=8)
def _overlap_rho(nperseg: int) -> tuple[float, ...]:
    """Correlation of the periodograms of two segments ``lag`` hops apart (lag 1, 2, ...)
    for white noise, as long as the segments overlap."""
    hop = nperseg - nperseg // 2
    w = scipy.signal.get_window("hann", nperseg)
    energy = float(np.dot(w, w))
    return tuple(
        (float(np.dot(w[:-shift], w[shift:])) / energy) ** 2 for shift in range(hop, nperseg, hop)
    )


def _welch_dof(keep: np.ndarray, nperseg: int) -> float:
    """Equivalent chi-square degrees of freedom of one Welch bin of complex white noise,
    averaging the segments ``keep`` marks (overlapping ones are correlated)."""
    segments = int(np.count_nonzero(keep))
    var_factor = 1.0
    for lag, rho in enumerate(_overlap_rho(nperseg), start=1):
        pairs = int(np.count_nonzero(keep[:-lag] & keep[lag:])) if keep.size > lag else 0
        var_factor += 2.0 * pairs / segments * rho
    return 2.0 * segments / var_factor


def _segment_count(n: int, nperseg: int) -> int:
    return 1 + (n - nperseg) // (nperseg - nperseg // 2)


# Correlation of the periodogram values of two adjacent (and next-adjacent) Hann bins of
# white noise: (2/3)^2 and (1/6)^2. A run of w bins therefore averages fewer independent
# values than w.
_BIN_RHO = (4.0 / 9.0, 1.0 / 36.0)
_BIN_VAR_FACTOR = 1.0 + 2.0 * sum(_BIN_RHO)


def _run_dof(nu: float, w: int) -> float:
    """Equivalent degrees of freedom of the mean of ``w`` adjacent bins of ``nu`` each."""
    var_factor = 1.0 + sum(
        2.0 * rho * max(w - lag, 0) / w for lag, rho in enumerate(_BIN_RHO, start=1)
    )
    return nu * w / var_factor


@lru_cache(maxsize=256)
def _threshold(nu: float, p: float) -> float:
    """Level (in units of the mean) a chi-square(nu)/nu variable exceeds with prob. p."""
    return float(scipy.stats.chi2.isf(p, nu) / nu)


@lru_cache(maxsize=64)
def _quantile_to_mean(nu: float, q: float) -> float:
    return float(scipy.stats.chi2.ppf(q, nu) / nu)


# --------------------------------------------------------------------------- CFO


@lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    w = scipy.signal.get_window("hann", n, fftbins=False).astype(np.float32)
    w.flags.writeable = False
    return w


def _peak_bin(mag2: np.ndarray, k_lo: int, k_hi: int) -> int:
    """Signed FFT bin of the largest value in [k_lo, k_hi] (negative bins wrap)."""
    nfft = mag2.size
    best_k, best_v = k_lo, -1.0
    for a, b in ((k_lo, min(k_hi, -1)), (max(k_lo, 0), k_hi)):
        if a > b:
            continue
        seg = mag2[a % nfft : b % nfft + 1]
        i = int(np.argmax(seg))
        if seg[i] > best_v:
            best_k, best_v = a + i, float(seg[i])
    return best_k


def _coarse_offset(x: np.ndarray, fs: float, lo: float, hi: float) -> tuple[float, int]:
    """Hann-windowed, zero-padded FFT peak in the passband + log-parabolic interpolation."""
    n = x.size
    nfft = scipy.fft.next_fast_len(_CFO_ZERO_PAD * n)
    spec = scipy.fft.fft(x * _hann(n), nfft, overwrite_x=True)
    mag2 = spec.real * spec.real + spec.imag * spec.imag
    k_lo = math.ceil(lo * nfft / fs)
    k_hi = math.floor(hi * nfft / fs)
    if k_lo > k_hi:  # passband narrower than one bin
        return 0.5 * (lo + hi), nfft
    k = _peak_bin(mag2, k_lo, k_hi)
    if not mag2[k % nfft] > 0.0:  # silent capture: there is no carrier to find
        return 0.0, nfft
    a, b, c = (math.log(max(float(mag2[(k + d) % nfft]), 1e-38)) for d in (-1, 0, 1))
    denom = a - 2.0 * b + c
    frac = 0.5 * (a - c) / denom if denom < 0.0 else 0.0
    frac = min(max(frac, -0.5), 0.5)
    return (k + frac) * fs / nfft, nfft


def _zoom_offset(x: np.ndarray, fs: float, centre: float, half_span: float) -> float:
    """The strongest line within +-``half_span`` of ``centre``, to a fraction of 1/T.

    Where the PSD has already placed a line within a few of its bins, a full-length FFT
    is not needed to find it: the capture is mixed down by ``centre``, summed in blocks
    (a decimation whose alias-free band holds the span), and only that short series is
    transformed (Hann window, zero-padded 4x).
    """
    n = x.size
    m = int(max(1, min(fs / (8.0 * half_span), n // 64)))
    blocks = n // m
    w0 = 2.0 * math.pi * centre / fs
    inner = np.exp(-1j * w0 * np.arange(m)).astype(np.complex64)
    z = (x[: blocks * m].reshape(blocks, m) @ inner).astype(np.complex128)
    z *= np.exp(-1j * w0 * m * np.arange(blocks))
    rate = fs / m
    nfft = scipy.fft.next_fast_len(4 * blocks)
    spec = scipy.fft.fft(z * _hann(blocks), nfft)
    mag2 = spec.real * spec.real + spec.imag * spec.imag
    k_max = max(1, math.floor(half_span * nfft / rate))
    k = _peak_bin(mag2, -k_max, k_max)
    a, b, c = (math.log(max(float(mag2[(k + d) % nfft]), 1e-300)) for d in (-1, 0, 1))
    denom = a - 2.0 * b + c
    frac = min(max(0.5 * (a - c) / denom, -0.5), 0.5) if denom < 0.0 else 0.0
    # the block sum's centre is (m - 1) / 2 samples in: a pure delay, no frequency shift
    return centre + (k + frac) * rate / nfft


def _tone_power(x: np.ndarray, fs: float, f: float, received: int, n0: float) -> float:
    """Power of the tone at ``f`` in the received samples: |mean of x e^-jwt|^2 less the
    noise N0 fs / N that mean holds (block sums, so no N-point exponential)."""
    n = x.size
    m = max(1, min(_CFO_BLOCK, n // 64))
    blocks = n // m
    w = 2.0 * math.pi * f / fs
    inner = np.exp(-1j * w * np.arange(m)).astype(np.complex64)
    z = (x[: blocks * m].reshape(blocks, m) @ inner).astype(np.complex128)
    total = complex(np.dot(z, np.exp(-1j * w * m * np.arange(blocks))))
    if blocks * m < n:
        total += complex(x[blocks * m :] @ inner[: n - blocks * m]) * complex(
            np.exp(-1j * w * blocks * m)
        )
    return abs(total / received) ** 2 - n0 * fs / received


def _refine_offset(x: np.ndarray, fs: float, f0: float) -> float:
    """Maximise the unwindowed |DTFT| (the ML estimator) near f0 by safeguarded Newton.

    The capture is first mixed down by f0 and summed in short blocks: the residual offset
    is a fraction of a 1/T bin, so a block of 32 samples sees almost no phase rotation and
    the block sums keep all the information while making each Newton step ~32x cheaper.
    Mixing uses an intra-block and a per-block phasor (an outer product), so no N-point
    complex exponential is ever computed.
    """
    n = x.size
    m = max(1, min(_CFO_BLOCK, n // 64))  # short captures keep enough blocks
    blocks = n // m
    w0 = 2.0 * math.pi * f0 / fs
    inner = np.exp(-1j * w0 * np.arange(m)).astype(np.complex64)
    starts = np.arange(blocks, dtype=np.float64) * m
    z = (x[: blocks * m].reshape(blocks, m) @ inner).astype(np.complex128)
    z *= np.exp(-1j * w0 * starts)
    t = starts + (m - 1) / 2.0
    tail = n - blocks * m
    if tail:
        zt = complex(x[blocks * m :] @ inner[:tail]) * complex(np.exp(-1j * w0 * blocks * m))
        z = np.append(z, zt)
        t = np.append(t, blocks * m + (tail - 1) / 2.0)
    t -= (n - 1) / 2.0  # centred time keeps the derivatives well conditioned

    def objective(delta: float) -> tuple[float, float, float]:
        ze = z * np.exp(-1j * delta * t)
        a0 = ze.sum()
        ze_t = ze * t
        a1 = -1j * ze_t.sum()
        a2 = -(ze_t * t).sum()
        j0 = abs(a0) ** 2
        j1 = 2.0 * (a0.conjugate() * a1).real
        j2 = 2.0 * (abs(a1) ** 2 + (a0.conjugate() * a2).real)
        return j0, j1, j2

    bin_rad = 2.0 * math.pi / n
    start = objective(0.0)[0]
    if not start > 0.0:
        return f0
    delta = 0.0
    for _ in range(_CFO_NEWTON_STEPS):
        _, j1, j2 = objective(delta)
        step = -j1 / j2 if j2 < 0.0 else math.copysign(0.25 * bin_rad, j1)
        step = min(max(step, -0.5 * bin_rad), 0.5 * bin_rad)
        delta += step
        if abs(step) < 1e-7 * bin_rad:
            break
    if abs(delta) > 2.0 * bin_rad or objective(delta)[0] < start:
        return f0  # wandered off the peak (noise-only capture): keep the FFT estimate
    return f0 + delta * fs / (2.0 * math.pi)


def carrier_offset_hz(
    samples: np.ndarray,
    sample_rate: float,
    *,
    passband_hz: tuple[float, float] = DEFAULT_PASSBAND_HZ,
) -> float:
    """Frequency of the strongest carrier in the passband, relative to the tuned centre."""
    fs = _check_rate(sample_rate)
    lo, hi = _check_passband(passband_hz, fs)
    x = _as_capture(samples, MIN_SAMPLES)
    return _carrier_offset(x, fs, lo, hi)


def _carrier_offset(x: np.ndarray, fs: float, lo: float, hi: float) -> float:
    f0, _ = _coarse_offset(x, fs, lo, hi)
    return float(_refine_offset(x, fs, f0))


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class _SpectralModel:
    """Noise floor and the detected signal's bins, over the analysis band's PSD bins."""

    floor: float  # FS^2/Hz
    method: str
    signal: np.ndarray  # bool per analysis bin: the detected signal (DC bins excluded)
    line_threshold: float  # single-bin detection level, in units of the floor
    reason: str


def _run_mean(d: np.ndarray, w: int) -> np.ndarray:
    """Mean of the w bins starting at each index (length d.size - w + 1)."""
    c = np.concatenate(([0.0], np.cumsum(d)))
    return (c[w:] - c[:-w]) / w


def _flagged(
    d: np.ndarray, floor: float, nu: float, nu_floor: float, p_of: dict[int, float]
) -> tuple[np.ndarray, list[int]]:
    """Bins inside a run of w bins (w in ``p_of``, smallest first) whose mean exceeds the
    floor by more than chance allows at probability ``p_of[w]`` per run, and the scales
    that fired.

    Bins a smaller run flagged (and 2 bins around them) are set to the floor before the
    wider runs are tested, so a carrier does not make a 256-bin run of noise "signal".
    The floor is itself estimated, so its uncertainty widens the threshold.
    """
    marks = np.zeros(d.size, dtype=bool)
    fired = []
    work = d.copy()
    for w, p in sorted(p_of.items()):
        nu_w = _run_dof(nu, w)
        nu_eff = 1.0 / (1.0 / nu_w + 1.0 / nu_floor)
        margin = 1.0 if w == 1 or w in _MASK_ONLY_SCALES else 1.0 + _RIPPLE
        hot = _run_mean(work, w) > floor * margin * _threshold(round(nu_eff, 1), p)
        if hot.any():
            fired.append(w)
            new = np.convolve(hot.astype(np.int8), np.ones(w, dtype=np.int8), "full") > 0
            marks |= _dilated(new, 2)
            work[marks] = floor
    return marks, fired


def _dilated(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` grown by ``r`` bins on each side (a running count, O(m) for any r)."""
    c = np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))
    idx = np.arange(mask.size)
    return c[np.minimum(idx + r + 1, mask.size)] > c[np.maximum(idx - r, 0)]


def _edges(
    d: np.ndarray, floor: float, nu: float, core: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The detected regions ``core`` marks, with their edges placed where the signal
    fades into the noise (see :data:`_EDGE_SMOOTH`), and the same grown by a guard.

    A test flags whole runs of bins, so a core overshoots a band edge by up to a run and
    misses the roll-off the tests could not see; both are fixed here, per region, on the
    PSD smoothed at the region's own scale.
    """
    labels, count = scipy.ndimage.label(core)
    region = np.zeros(d.size, dtype=bool)
    guarded = np.zeros(d.size, dtype=bool)
    if count == 0:
        return region, guarded
    smoothed: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for piece in scipy.ndimage.find_objects(labels):
        start, stop = piece[0].start, piece[0].stop
        level = float(np.median(d[start:stop])) / floor - 1.0
        # the run whose noise deviation sqrt(2 / nu_w) is level / _EDGE_SMOOTH
        # (adjacent bins correlate: nu_w = nu w / _BIN_VAR_FACTOR for a long run)
        w_dof = 2.0 * (_EDGE_SMOOTH / max(level, 1e-6)) ** 2
        w = int(min(max(math.ceil(w_dof * _BIN_VAR_FACTOR / nu), 1), _EDGE_SMOOTH_MAX))
        if w not in smoothed:
            sigma = math.sqrt(2.0 / _run_dof(nu, w)) * floor
            excess = scipy.ndimage.uniform_filter1d(d, w, mode="nearest") - floor
            runs, _ = scipy.ndimage.label(excess > _EDGE_SIGMA * sigma)
            smoothed[w] = (excess, runs, excess > _EDGE_SEED_SIGMA * sigma)
        excess, runs, strong = smoothed[w]
        seeds = runs[start:stop][strong[start:stop]]
        if seeds.size == 0:  # a weak region: keep its strongest bin's run, if any
            seeds = runs[start + int(np.argmax(excess[start:stop]))].reshape(1)
        ids = np.unique(seeds[seeds > 0])
        grown = np.isin(runs, ids) if ids.size else np.zeros(d.size, dtype=bool)
        grown[start:stop] |= core[start:stop] & ~grown[start:stop] & (ids.size == 0)
        # One signal, one band: the dips of its noisy PSD below the threshold are filled,
        # and the band grown by the roll-off allowance.
        inside = np.flatnonzero(grown)
        a, b = int(inside[0]), int(inside[-1]) + 1
        ext = int(_EDGE_EXTEND * (b - a))
        grown[max(a - ext, 0) : b + ext] = True
        region |= grown
        guarded |= _dilated(grown, w) if w > 1 else grown
    guarded = _dilated(guarded, 2)
    return region, guarded


def _low_quantile_floor(d: np.ndarray, nu: float) -> float:
    """The 10 % quantile of the means of :data:`_FLOOR_BLOCK`-bin blocks, as a floor.

    Blocks, not bins: a weak wide signal (13 % above the noise over 60 % of the passband)
    shifts bins scattered by +-30 % into the low quantile, blocks scattered by +-6 % far
    less, so the first mask already sees it.
    """
    blocks = d.size // _FLOOR_BLOCK
    if blocks < 20:
        return float(np.quantile(d, 0.1)) / _quantile_to_mean(round(nu, 1), 0.1)
    means = d[: blocks * _FLOOR_BLOCK].reshape(blocks, _FLOOR_BLOCK).mean(axis=1)
    nu_block = _run_dof(nu, _FLOOR_BLOCK)
    return float(np.quantile(means, 0.1)) / _quantile_to_mean(round(nu_block, 1), 0.1)


@lru_cache(maxsize=64)
def _trimmed_to_mean(nu: float) -> float:
    """Expectation of the :data:`_FLOOR_TRIM` trimmed mean of chi-square(nu)/nu values
    (x f_nu(x) = nu f_{nu+2}(x), so the partial mean is a chi-square(nu + 2) probability)."""
    q_lo, q_hi = _FLOOR_TRIM
    a, b = scipy.stats.chi2.ppf([q_lo, q_hi], nu)
    inner = scipy.stats.chi2.cdf(b, nu + 2) - scipy.stats.chi2.cdf(a, nu + 2)
    return float(inner / (q_hi - q_lo))


def _trimmed_floor(quiet: np.ndarray, nu: float) -> float:
    lo, hi = np.quantile(quiet, _FLOOR_TRIM)
    inside = quiet[(quiet >= lo) & (quiet <= hi)]
    return float(inside.mean()) / _trimmed_to_mean(round(nu, 1)) if inside.size else 0.0


def _mirrored(
    d: np.ndarray,
    floor: float,
    nu: float,
    nu_floor: float,
    p_of: dict[int, float],
    centre: int,
    pool: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sidebands symmetric about the carrier in bin ``centre``, found on the PSD folded
    about it, as (region, guarded) masks over ``d`` (see :func:`_edges`).

    An AM's two sidebands mirror each other; averaging the bins at +-delta doubles each
    folded bin's degrees of freedom, so a wide weak message (13 % above the noise at
    40 dB-Hz, 2 s) stands ~1.4x more deviations above the floor than in either half and is
    found as one band instead of in pieces (which lift the floor and hide the rest).
    A folded region is kept only when both halves hold excess power (each half's median
    above a noise bin's by at least :data:`_MIRROR_BALANCE` of the other's): an unrelated
    signal on one side of the carrier folds onto noise on the other, and that noise is no
    sideband.
    """
    m = d.size
    region = np.zeros(m, dtype=bool)
    guarded = np.zeros(m, dtype=bool)
    k = min(centre, m - 1 - centre)
    if k < _MIRROR_MIN_BINS:
        return region, guarded
    delta = np.arange(1, k + 1)
    up, down = centre + delta, centre - delta
    folded = 0.5 * (d[up] + d[down])
    folded[~(pool[up] & pool[down])] = floor  # DC or beyond the passband: neutral
    marks, fired = _flagged(folded, floor, 2.0 * nu, nu_floor, p_of)
    if not fired:
        return region, guarded
    reg_f, guard_f = _edges(folded, floor, 2.0 * nu, marks)
    labels, _ = scipy.ndimage.label(reg_f)
    median = floor * _quantile_to_mean(round(nu, 1), 0.5)  # a noise bin's median
    for i, piece in enumerate(scipy.ndimage.find_objects(labels), start=1):
        inside = labels[piece] == i
        # medians: a carrier's window lobes (lopsided for an off-bin tone) are few bins
        upper = float(np.median(d[up[piece][inside]])) - median
        lower = float(np.median(d[down[piece][inside]])) - median
        if not min(upper, lower) >= _MIRROR_BALANCE * max(upper, lower) > 0.0:
            reg_f[piece][inside] = False
    if not reg_f.any():
        return region, guarded
    g_labels, _ = scipy.ndimage.label(guard_f)
    kept = np.unique(g_labels[reg_f])
    guard_f = np.isin(g_labels, kept[kept > 0])
    region[up[reg_f]] = region[down[reg_f]] = True
    guarded[up[guard_f]] = guarded[down[guard_f]] = True
    return region, guarded


def _mask_p(m: int) -> dict[int, float]:
    """Scales (bins per run) and per-run probability of the floor's signal mask."""
    return dict.fromkeys(
        [w for w in _DETECTION_SCALES + _MASK_ONLY_SCALES if w <= max(1, m // 4)], _MASK_P
    )


def _has_sidebands(
    d: np.ndarray, model: _SpectralModel, nu: float, centre: int, pool: np.ndarray
) -> bool:
    """Whether the PSD folded about the carrier in bin ``centre`` shows sidebands the
    model has not already counted as signal (then the model is redone around them; a
    plain carrier, the common case, is not measured twice)."""
    k = min(centre, d.size - 1 - centre)  # folded bins
    if k < _MIRROR_MIN_BINS:
        return False
    quiet = int(np.count_nonzero(pool & ~model.signal))
    scales = [w for w in _mask_p(d.size) if w <= max(1, k // 2)]
    gate = {w: _SIDEBAND_GATE_P / (len(scales) * max(1.0, 2.0 * k / w)) for w in scales}
    delta = np.arange(1, k + 1)
    up, down = centre + delta, centre - delta
    folded = 0.5 * (d[up] + d[down])
    folded[~(pool[up] & pool[down])] = model.floor
    # the runs that fire, not yet placed by _edges nor checked for balance: only a gate
    marks, _ = _flagged(folded, model.floor, 2.0 * nu, _run_dof(nu, max(quiet, 1)), gate)
    new = marks & ~(model.signal[up] & model.signal[down])
    return int(np.count_nonzero(new)) > _MIRROR_MIN_BINS


def _spectral_model(
    d: np.ndarray, passband: np.ndarray, dc: np.ndarray, nu: float, centre: int | None = None
) -> _SpectralModel:
    """Noise floor from the quiet bins, then detection at :data:`DETECTION_PFA`.

    ``d`` is the PSD over the analysis band (the passband plus a few guard bins),
    ``passband`` and ``dc`` mark its passband and DC bins. Only passband bins feed the
    floor; the DC bins are set to the floor for the tests so the receiver's DC neither
    counts as signal nor hides one. ``centre``, the bin of a carrier already found, adds
    the sidebands symmetric about it (:func:`_mirrored`) to the signal and keeps them out
    of the floor.
    """
    m = d.size
    pool = passband & ~dc
    count = int(np.count_nonzero(pool))
    scales = [w for w in _DETECTION_SCALES if w <= max(1, m // 4)]
    mask_p = _mask_p(m)
    # Bonferroni over scales and runs; overlapping runs of w bins count as 2m/w tests.
    det_p = {
        w: DETECTION_PFA / (len(scales) * max(1.0, m / w * (1 if w == 1 else 2))) for w in scales
    }

    floor = _low_quantile_floor(d[pool], nu)
    method = "low-quantile"
    quiet_count = count
    previous = None
    for _ in range(_FLOOR_ITERATIONS):
        if not floor > 0.0:
            break
        nu_floor = _run_dof(nu, max(quiet_count, 1))
        flagged, _ = _flagged(d, floor, nu, nu_floor, mask_p)
        _, guarded = _edges(d, floor, nu, flagged)
        if centre is not None:
            guarded |= _mirrored(d, floor, nu, nu_floor, mask_p, centre, pool)[1]
        quiet = pool & ~guarded
        if previous is not None and np.array_equal(quiet, previous):
            break  # converged: the same quiet bins give the same floor
        previous = quiet
        quiet_count = int(np.count_nonzero(quiet))
        if quiet_count < max(16, count // 20):
            method = "low-quantile"  # the signal fills the passband: no quiet part left
            quiet_count = count
            break
        floor = _trimmed_floor(d[quiet], nu)
        method = "quiet-bins"

    empty = np.zeros(m, dtype=bool)
    line_threshold = _threshold(
        round(1.0 / (1.0 / nu + 1.0 / _run_dof(nu, quiet_count)), 1), det_p[1]
    )
    if not floor > 0.0:
        return _SpectralModel(
            0.0, method, empty, line_threshold, "no noise: the capture is constant"
        )
    hits, fired = _flagged(d, floor, nu, _run_dof(nu, quiet_count), det_p)
    if not fired:
        return _SpectralModel(
            floor,
            method,
            empty,
            line_threshold,
            f"no signal: no PSD bin or run of {'/'.join(map(str, scales[1:]))} bins above "
            f"the noise floor at false-alarm rate {DETECTION_PFA:g}",
        )
    flagged, _ = _flagged(d, floor, nu, _run_dof(nu, quiet_count), mask_p)
    labels, _ = scipy.ndimage.label(flagged | hits)
    ids = np.unique(labels[hits])
    signal, _ = _edges(d, floor, nu, np.isin(labels, ids[ids > 0]))
    if centre is not None and signal[centre]:
        signal |= _mirrored(d, floor, nu, _run_dof(nu, quiet_count), mask_p, centre, pool)[0]
    reason = f"detected: PSD runs of {'/'.join(map(str, fired))} bins above the noise floor"
    if method == "low-quantile":
        reason = (
            "signal fills the passband (no quiet bins): noise floor an upper bound, C/N0 and "
            "SNR lower bounds; " + reason
        )
    return _SpectralModel(
        floor, method, signal, line_threshold, reason + f" (Pfa {DETECTION_PFA:g})"
    )


# --------------------------------------------------------------------------- measure


def _db(power: float) -> float:
    return 10.0 * math.log10(max(power, _TINY_POWER))


def _clipped_fraction(x: np.ndarray, lost: np.ndarray | None, received: int) -> float:
    """Fraction of received samples with a component at the capture's largest magnitude,
    when enough share it to be a clip level rather than one peak."""
    parts = x.view(np.float32)
    peak = max(float(parts.max()), -float(parts.min()))
    if peak == 0.0:
        return 0.0
    components = int(np.count_nonzero(parts == peak)) + int(np.count_nonzero(parts == -peak))
    if components < max(_MIN_CLIPPED_SAMPLES, 1e-3 * received):
        return 0.0  # the usual case, decided without a per-sample pass
    at_peak = (np.abs(parts) == peak).reshape(-1, 2).any(axis=1)
    if lost is not None:
        at_peak &= ~lost
    count = int(np.count_nonzero(at_peak))
    if count < max(_MIN_CLIPPED_SAMPLES, 1e-3 * received):
        return 0.0
    return count / received


def _line(y: np.ndarray, fs: float) -> tuple[float, float]:
    """Strongest line of ``y`` (Hz, ML-refined) and its strength over the median bin,
    scaled so noise bins are ~exponential with mean 1."""
    n = y.size
    nfft = scipy.fft.next_fast_len(n)
    spec = scipy.fft.fft(y * _hann(n), nfft)
    mag2 = spec.real * spec.real + spec.imag * spec.imag
    k = int(np.argmax(mag2))
    # Against the spectrum around the peak, not the whole: a squared modulated signal has a
    # continuous spectrum far above the empty parts, and only a line stands out of it.
    around = np.concatenate(
        [
            mag2.take(range(k - _LINE_LOCAL, k - _LINE_BINS), mode="wrap"),
            mag2.take(range(k + _LINE_BINS + 1, k + _LINE_LOCAL + 1), mode="wrap"),
        ]
    )
    mean_local = float(np.median(around)) / math.log(2.0)
    strength = float(mag2[k]) / mean_local if mean_local > 0.0 else math.inf
    a, b, c = (math.log(max(float(mag2[(k + d) % nfft]), 1e-38)) for d in (-1, 0, 1))
    denom = a - 2.0 * b + c
    frac = min(max(0.5 * (a - c) / denom, -0.5), 0.5) if denom < 0.0 else 0.0
    signed = k if k < nfft // 2 else k - nfft
    return _refine_offset(y, fs, (signed + frac) * fs / nfft), strength


def _suppressed_carrier(
    xs: np.ndarray, fs: float, centre: float, lo: float, hi: float
) -> tuple[float | None, str]:
    """Carrier offset recovered from the line of x^2 (BPSK) or x^4 (QPSK), or None.

    The line sits at k times the carrier, aliased modulo fs; of the k candidates the one
    nearest the occupied band's centre inside the band is taken.
    """
    y = xs.astype(np.complex64)
    threshold = math.log(xs.size / DETECTION_PFA)
    for power, name in ((2, "bpsk"), (4, "qpsk")):
        y = y * y
        f_line, strength = _line(y, fs)
        if strength > threshold:
            candidates = [(f_line + j * fs) / power for j in range(-power, power + 1)]
            inside = [f for f in candidates if lo <= f <= hi] or candidates
            return float(min(inside, key=lambda f: abs(f - centre))), name
    return None, "unknown"


@dataclass(frozen=True)
class _Analysis:
    """The PSD-based figures of a DC-free capture (see :func:`_analyse`)."""

    spectrum: Spectrum
    model: _SpectralModel
    signal: float  # FS^2, 0 when nothing is detected
    f_lo: float
    f_hi: float
    line_hz: float | None  # the spectral line's PSD bin, when there is one
    df: float
    line_local: float = 0.0  # FS^2/Hz: the signal's density around the line, floor included
    line_cfo: float | None = None  # the line's frequency refined to a fraction of 1/T


def _analyse(
    xs: np.ndarray,
    fs: float,
    nperseg: int,
    keep: np.ndarray,
    gaps: bool,
    lo: float,
    hi: float,
    received: int,
) -> _Analysis:
    """Welch PSD, noise floor, detection, signal power and band, and the spectral line."""
    freqs, density = _welch(xs, fs, nperseg, keep if gaps else None)
    df = fs / nperseg
    guard = _EDGE_GUARD_BINS * df
    band = (freqs >= lo - guard) & (freqs <= hi + guard)
    f_band, d_band = freqs[band], density[band]
    passband = (f_band >= lo) & (f_band <= hi)
    dc_bins = np.abs(f_band) <= (_DC_BINS + 0.5) * df
    if np.count_nonzero(passband & ~dc_bins) < 3:
        raise ProcessingError(
            f"passband_hz: ({lo:g}, {hi:g}) holds fewer than 3 PSD bins of {df:.3g} Hz; "
            "it must be wider"
        )
    nu = _welch_dof(keep, nperseg)
    model = _spectral_model(d_band, passband, dc_bins, nu)
    spectrum = Spectrum(freqs=freqs, density=density)
    if not model.signal.any():
        return _Analysis(spectrum, model, 0.0, 0.0, 0.0, None, df)

    # A spectral line: one bin far above both the noise and the signal around it.
    floor = model.floor
    i_sig = np.flatnonzero(model.signal)
    peak = int(i_sig[np.argmax(d_band[model.signal])])
    near = model.signal.copy()
    near[: max(peak - 64, 0)] = False
    near[peak + 65 :] = False
    near[max(peak - _LINE_BINS - 1, 0) : peak + _LINE_BINS + 2] = False
    local = float(np.median(d_band[near] - floor)) if near.any() else 0.0
    line = d_band[peak] > (floor + max(local, 0.0)) * model.line_threshold
    line_cfo: float | None = None
    if line:
        line_cfo = _refine_offset(xs, fs, _zoom_offset(xs, fs, float(f_band[peak]), 2.0 * df))
        lobe = d_band[max(peak - _LINE_BINS, 0) : peak + _LINE_BINS + 1] - floor
        tone = _tone_power(xs, fs, line_cfo, received, floor)
        line = tone >= _LINE_TONE_FRACTION * float(lobe.sum()) * df
    pool = passband & ~dc_bins
    if line and _has_sidebands(d_band, model, nu, peak, pool):
        # sidebands mirror each other about a carrier: found on the folded PSD
        model = _spectral_model(d_band, passband, dc_bins, nu, centre=peak)
        floor = model.floor
    excess = (d_band - floor)[model.signal]
    signal = float(excess.sum()) * df if model.signal.any() else 0.0
    if not signal > 0.0:
        return _Analysis(spectrum, model, 0.0, 0.0, 0.0, None, df)
    f_sig = f_band[model.signal]
    cum = np.cumsum(np.clip(excess, 0.0, None))
    cum /= cum[-1]
    f_lo = float(f_sig[min(int(np.searchsorted(cum, 0.005)), f_sig.size - 1)])
    f_hi = float(f_sig[min(int(np.searchsorted(cum, 0.995)), f_sig.size - 1)])
    if not line:
        return _Analysis(spectrum, model, signal, f_lo, f_hi, None, df)
    return _Analysis(
        spectrum,
        model,
        signal,
        f_lo,
        f_hi,
        float(f_band[peak]),
        df,
        floor + max(local, 0.0),
        line_cfo,
    )


def _line_class(xs: np.ndarray, fs: float, cfo: float, received: int, a: _Analysis) -> str:
    """'carrier' when the tone at the offset holds the signal, 'am' when sidebands remain."""
    if not a.signal > 0.0:
        return "carrier"
    tone = _tone_power(xs, fs, cfo, received, a.model.floor)
    return "carrier" if tone >= _CARRIER_FRACTION * a.signal else "am"


def _dc_free(x: np.ndarray, lost: np.ndarray | None, dc: complex) -> np.ndarray:
    xs = x - np.complex64(dc)
    if lost is not None:
        xs[lost] = 0
    return xs


def _carrier_and_dc(
    x: np.ndarray, lost: np.ndarray | None, fs: float, f0: float
) -> tuple[float, complex | None]:
    """Carrier offset and DC offset fitted jointly (least squares on [1, exp(j w t)]).

    The DC is a line at exactly 0 Hz; a carrier a fraction of a bin 1/T away is another
    line, and removing the plain mean would take part of the carrier with it. Fitted
    together they separate down to ~0.1/T; closer than that they are one line (returned
    DC None: not separable, the line is taken as the carrier).
    """
    n = x.size
    w = np.ones(n) if lost is None else (~lost).astype(np.float64)
    count = float(w.sum())
    f = f0
    dc: complex | None = complex(x.sum(dtype=np.complex128)) / count
    t = np.arange(n, dtype=np.float64)
    for _ in range(_DC_FIT_ITERATIONS):
        e = np.exp(2j * math.pi * f / fs * t) * w
        s_e = complex(e.sum())
        det = count * count - abs(s_e) ** 2
        if det < 0.01 * count * count:
            return f, None
        b0 = complex(x.sum(dtype=np.complex128))
        b1 = complex(np.vdot(e, x))
        dc = (count * b0 - s_e * b1) / det
        f = _refine_offset(_dc_free(x, lost, dc), fs, f)
    return f, dc


def measure(
    samples: np.ndarray,
    sample_rate: float,
    *,
    passband_hz: tuple[float, float] = DEFAULT_PASSBAND_HZ,
    gaps: Sequence[tuple[int, int]] = (),
) -> Measurements:
    """Detection, power, noise floor, signal power, C/N0, SNR, carrier offset and quality
    flags of one capture (see the module docstring for the method).

    ``power_dbfs`` is the mean power of the received samples, DC included. The SNR is
    quoted in the whole passband (``snr_bandwidth_hz``), C/N0 per Hz. The DC offset is the
    capture's mean, fitted jointly with a carrier near 0 Hz when there is one, and removed
    before the PSD; its bins are left out of the noise floor.

    ``gaps`` are (sample_start, sample_count) runs of zero-filled lost frames (as
    :class:`~tasks.kiwisdr.client.Capture` lists them; they may overlap). The figures are
    then those of the received samples: powers average over them only, and the PSD
    averages only the Welch segments that hold no lost sample, shortening the segment
    (down to ``MIN_SAMPLES``) until at least 4 such segments exist. ``sample_count``
    stays the length of ``samples``, zeros included.

    Raises:
        ProcessingError: naming the field and the allowed range (non-finite samples or
            samples beyond +-MAX_ABS_SAMPLE included); for ``gaps`` also when a gap
            holds a non-zero sample, every sample is lost, or no run of ``MIN_SAMPLES``
            received samples in a row is left for the PSD.
    """
    fs = _check_rate(sample_rate)
    lo, hi = _check_passband(passband_hz, fs)
    x = _as_capture(samples, MIN_SAMPLES)
    n = x.size
    lost = _lost_mask(gaps, n)

    nperseg = min(DEFAULT_NPERSEG, 1 << (n.bit_length() - 1))
    if lost is None:
        received = n
        keep = np.ones(_segment_count(n, nperseg), dtype=bool)
    else:
        received = n - int(np.count_nonzero(lost))
        if received == 0:
            raise ProcessingError(f"gaps: cover all {n} samples; nothing was received to measure")
        if np.any(x[lost]):
            first = int(np.flatnonzero(lost & (x != 0))[0])
            raise ProcessingError(
                f"gaps: sample {first} inside a gap is not zero; gaps must name only "
                "zero-filled lost frames"
            )
        nperseg, keep = _clean_segments(lost, nperseg)
    total = float(np.vdot(x, x).real) / received
    dc: complex | None = complex(x.sum(dtype=np.complex128)) / received
    xs = _dc_free(x, lost, dc)
    a = _analyse(xs, fs, nperseg, keep, lost is not None, lo, hi, received)
    snr_bandwidth = hi - lo
    common = {
        "sample_count": n,
        "snr_bandwidth_hz": snr_bandwidth,
        "clipped_fraction": _clipped_fraction(x, lost, received),
    }
    if total == 0.0:
        return Measurements(
            power_dbfs=None,
            noise_floor_dbfs_hz=None,
            signal_power_dbfs=None,
            cn0_dbhz=None,
            snr_db=None,
            frequency_offset_hz=None,
            detected=False,
            detection_reason="silent capture: every received sample is zero",
            spectrum=a.spectrum,
            **common,
        )

    cfo: float | None = None
    modulation = "unknown"
    floor = a.model.floor
    # The mean as a line: significant when far above what the spectrum around 0 Hz
    # (noise or a modulated signal, density S) puts into a mean (variance S fs / N).
    near_dc = np.abs(a.spectrum.freqs) <= (_DC_BINS + 3.5) * a.df
    level = float(a.spectrum.density[near_dc].max()) if near_dc.any() else floor
    mean_is_line = floor > 0.0 and abs(dc or 0.0) ** 2 > 20.0 * max(level, floor) * fs / received
    if a.line_hz is None and mean_is_line:
        # The only line is at 0 Hz: a carrier there, or the receiver's DC; they cannot be
        # told apart, so it is measured as a carrier (and no DC is reported).
        f0 = _zoom_offset(x, fs, 0.0, 2.0 * a.df)
        cfo, dc = _carrier_and_dc(x, lost, fs, _refine_offset(x, fs, f0))
        xs = _dc_free(x, lost, 0.0 if dc is None else dc)
        a = _analyse(xs, fs, nperseg, keep, lost is not None, lo, hi, received)
        modulation = _line_class(xs, fs, cfo, received, a)
    elif a.line_hz is not None:
        cfo = a.line_hz if a.line_cfo is None else a.line_cfo
        if abs(a.line_hz) <= (_DC_BINS + 2.5) * a.df:  # the line and the DC overlap
            joint, dc = _carrier_and_dc(x, lost, fs, cfo)
            # A DC no larger than what the signal's own spectrum around the line puts
            # into a mean (an AM's sidebands cover 0 Hz) is no receiver artefact: fitted,
            # it would only pull the carrier; the carrier alone is measured then.
            if dc is None or abs(dc) ** 2 > 20.0 * a.line_local * fs / received:
                cfo = joint
            else:
                cfo = _refine_offset(x, fs, cfo)
            xs = _dc_free(x, lost, 0.0 if dc is None else dc)
            a = _analyse(xs, fs, nperseg, keep, lost is not None, lo, hi, received)
        modulation = _line_class(xs, fs, cfo, received, a)
    elif a.signal > 0.0:
        guard = _EDGE_GUARD_BINS * a.df
        cfo, modulation = _suppressed_carrier(
            xs, fs, 0.5 * (a.f_lo + a.f_hi), lo - guard, hi + guard
        )

    floor = a.model.floor
    common["dc_dbfs"] = _db(abs(dc) ** 2) if dc else None
    common["noise_method"] = a.model.method if floor > 0.0 else None
    if not a.signal > 0.0:
        reason = a.model.reason
        if a.model.signal.any():
            reason = "no signal: the flagged bins hold no power above the floor"
        return Measurements(
            power_dbfs=_db(total),
            noise_floor_dbfs_hz=_db(floor) if floor > 0.0 else None,
            signal_power_dbfs=None,
            cn0_dbhz=None,
            snr_db=None,
            frequency_offset_hz=None,
            detected=False,
            detection_reason=reason,
            spectrum=a.spectrum,
            **common,
        )
    cn0 = a.signal / floor
    # A carrier's edge is its frequency (finer than the PSD bins); a band's, its 99 % limits.
    edge_lo, edge_hi = (
        (cfo, cfo) if modulation == "carrier" and cfo is not None else (a.f_lo, a.f_hi)
    )
    return Measurements(
        power_dbfs=_db(total),
        noise_floor_dbfs_hz=_db(floor),
        signal_power_dbfs=_db(a.signal),
        cn0_dbhz=_db(cn0),
        snr_db=_db(cn0 / snr_bandwidth),
        frequency_offset_hz=None if cfo is None else float(cfo),
        detected=True,
        detection_reason=a.model.reason,
        occupied_bandwidth_hz=float(a.f_hi - a.f_lo + a.df),
        modulation=modulation,
        edge_distance_hz=float(min(edge_lo - lo, hi - edge_hi)),
        spectrum=a.spectrum,
        **common,
    )


def _clean_segments(lost: np.ndarray, nperseg: int) -> tuple[int, np.ndarray]:
    """The longest Welch segment (<= ``nperseg``, halving down to ``MIN_SAMPLES``) with
    enough segments free of lost samples, and which segments those are."""
    n = lost.size
    lost_before = np.concatenate(([0], np.cumsum(lost, dtype=np.int64)))
    while True:
        hop = nperseg - nperseg // 2
        starts = np.arange(1 + (n - nperseg) // hop) * hop
        keep = lost_before[starts + nperseg] == lost_before[starts]
        clean = int(np.count_nonzero(keep))
        if clean >= min(_MIN_CLEAN_SEGMENTS, keep.size):
            return nperseg, keep
        if nperseg // 2 < MIN_SAMPLES:
            if clean:
                return nperseg, keep
            raise ProcessingError(
                f"gaps: no Welch segment of {nperseg} samples is free of lost samples; the "
                f"PSD needs runs of at least {MIN_SAMPLES} received samples in a row"
            )
        nperseg //= 2


# --------------------------------------------------------------------------- RSSI


def rssi_dbm(smeter_raw: np.ndarray) -> float:
    """Median RSSI in dBm from KiwiSDR S-meter words (dBm = 0.1 * v - 127).

    The median, not the mean, so one frame caught during a transient doesn't move it.
    """
    raw = np.asarray(smeter_raw)
    if raw.size == 0:
        raise ProcessingError("smeter_raw: empty; need at least one S-meter value (0..65535)")
    if raw.dtype.kind not in "uif":
        raise ProcessingError(f"smeter_raw: must be numeric S-meter values, got {raw.dtype}")
    values = raw.astype(np.float64).ravel()
    if not np.isfinite(values).all():
        raise ProcessingError("smeter_raw: contains NaN/Inf; S-meter values are 0..65535")
    return float(np.median(0.1 * values - 127.0))


def estimate_passband(
    samples: np.ndarray, sample_rate: float, *, default: tuple[float, float] | None = None
) -> tuple[float, float]:
    """The receiver's IQ passband as the data show it: where the spectrum stands above
    the filter's stopband, around 0 Hz.

    Imported recordings (kiwirecorder files) do not say which passband the operator set,
    and real ones come at +-500 Hz as often as at +-5 kHz; measuring a +-500 Hz recording
    over +-5 kHz would take the stopband for the noise floor. With no visible filter
    edge (noise fills the band) the answer is ``default`` (+-5 kHz, within Nyquist).
    """
    half = 0.45 * sample_rate
    fallback = default or (-min(5000.0, half), min(5000.0, half))
    x = np.asarray(samples)
    if x.size < 4096 or not np.isfinite(sample_rate) or sample_rate <= 0:
        return fallback
    nperseg = 1024
    f, p = scipy.signal.welch(
        x[: int(min(x.size, 60 * sample_rate))],
        fs=sample_rate,
        nperseg=nperseg,
        return_onesided=False,
        detrend=False,
    )
    order = np.argsort(f)
    f, p = f[order], p[order]
    p_db = 10 * np.log10(np.maximum(scipy.signal.medfilt(p, 9), np.finfo(float).tiny))
    stop = float(np.percentile(p_db, 2))
    raised = p_db > stop + 10.0
    if not raised.any() or raised.mean() > 0.9:
        return fallback  # no stopband in sight: the filter is at least as wide as the data
    threshold = stop + 0.5 * (float(np.median(p_db[raised])) - stop)
    centre = int(np.argmin(np.abs(f)))
    if p_db[centre] <= threshold:
        return fallback
    lo = hi = centre
    while lo > 0 and p_db[lo - 1] > threshold:
        lo -= 1
    while hi < f.size - 1 and p_db[hi + 1] > threshold:
        hi += 1
    low, high = float(f[lo]), float(f[hi])
    if high - low < 100.0:
        return fallback
    margin = 0.03 * (high - low)  # keep clear of the filter skirts
    return max(low + margin, -half), min(high - margin, half)
