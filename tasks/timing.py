"""GPS timing of one capture: a robust line of GPS time against sample index.

Real KiwiSDRs stamp the first frame of a session with 0/0, sometimes send a first stamp
minutes stale or an early stamp hours off while marked fresh, and sample at a rate that
differs from the nominal one by tens of ppm. Time-difference work needs the UTC of every
sample to well under a microsecond, so the time of a capture is never one frame's stamp:
it is the straight line through every trustworthy stamp, fitted robustly, and its slope
is the receiver's true sample rate.

Times are integer nanoseconds since 1970 (UTC) throughout. A float64 holding seconds
since 1970 has a resolution of ~240 ns, so floats only ever hold small offsets from an
integer reference. Plain numpy, no Prefect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

NS_PER_S = 1_000_000_000
SECONDS_PER_WEEK = 604_800
GPS_UTC_LEAP_SECONDS = 18
# 1980-01-06T00:00:00Z (the GPS epoch) in ns since 1970.
GPS_EPOCH_UNIX_NS = 315_964_800 * NS_PER_S
NO_GPS = 255

# A stamp further than this from the host clock is not trusted: NTP keeps hosts within
# milliseconds, network latency adds well under a second, while the real defects are
# minutes to days.
DEFAULT_MAX_HOST_OFFSET_S = 60.0
# Residual floor for outlier rejection: real stamps lie on the line to well under 1 us.
DEFAULT_MIN_OUTLIER_NS = 1_000.0
# Robust scale multiple for outlier rejection.
_K_MAD = 6.0


@dataclass(frozen=True)
class FrameStamp:
    """One frame's GPS stamp, as sent by the receiver, and where the frame starts.

    ``sample_index`` counts samples from the first sample of the session's first frame.
    """

    sample_index: int
    gpssec: int
    gpsnsec: int
    last_gps_solution: int

    @property
    def empty(self) -> bool:
        """0/0 is "no stamp" (first frame of a session; GPS timestamps turned off)."""
        return self.gpssec == 0 and self.gpsnsec == 0

    @property
    def no_gps_clock(self) -> bool:
        return self.last_gps_solution == NO_GPS


@dataclass(frozen=True)
class TimingModel:
    """UTC of every sample of one capture: ``t0_ns + i * 1e9 / sample_rate_hz``.

    ``locked`` means a fit from >= 2 fresh fixes whose stamps agree with the host clock;
    ``flags`` say what was wrong (``no_gps``, ``host_clock``, ``few_fixes``,
    ``far_from_host``, ``first_frame_dropped`` ...), so consumers can leave a capture out
    of time-difference work rather than guess.
    """

    t0_ns: int
    sample_rate_hz: float
    residual_ns: float | None
    fixes: int
    outliers: int
    frames: int
    locked: bool
    host_clock_offset_s: float | None
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gps(self) -> bool:
        """True when t0 comes from GPS stamps rather than the host clock."""
        return "host_clock" not in self.flags

    def as_dict(self) -> dict[str, Any]:
        """The SigMF ``rfacq:timing_model`` object (SCHEMA.md)."""
        d = asdict(self)
        d["t0_ns"] = int(self.t0_ns)
        d["flags"] = list(self.flags)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimingModel:
        return cls(
            t0_ns=int(d["t0_ns"]),
            sample_rate_hz=float(d["sample_rate_hz"]),
            residual_ns=None if d.get("residual_ns") is None else float(d["residual_ns"]),
            fixes=int(d.get("fixes") or 0),
            outliers=int(d.get("outliers") or 0),
            frames=int(d.get("frames") or 0),
            locked=bool(d.get("locked")),
            host_clock_offset_s=d.get("host_clock_offset_s"),
            flags=tuple(d.get("flags") or ()),
        )

    def shifted(self, samples: int) -> TimingModel:
        """The same clock for an array that starts ``samples`` later (after trimming)."""
        return TimingModel(
            t0_ns=time_of_sample(self, samples),
            sample_rate_hz=self.sample_rate_hz,
            residual_ns=self.residual_ns,
            fixes=self.fixes,
            outliers=self.outliers,
            frames=self.frames,
            locked=self.locked,
            host_clock_offset_s=self.host_clock_offset_s,
            flags=self.flags,
        )

    def row_fields(self) -> dict[str, Any]:
        """The measurement-row fields of SCHEMA.md."""
        return {
            "sample_rate_fitted_hz": self.sample_rate_hz if self.gps else None,
            "timing_residual_ns": self.residual_ns,
            "gps_locked": self.locked,
            "timing_fixes": self.fixes,
            "timing_outliers": self.outliers,
            "first_sample_ns": int(self.t0_ns),
        }


class TimingError(ValueError):
    """The stamps cannot give a timing model (and no host-clock fallback was allowed)."""


# --- time conversions ------------------------------------------------------------------


def datetime_to_ns(t: datetime) -> int:
    """Aware datetime -> integer ns since 1970 (exact: datetime has us resolution)."""
    if t.utcoffset() is None:
        raise ValueError(f"datetime {t!r} must be timezone-aware (UTC)")
    delta = t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1_000


def ns_to_datetime(t_ns: int) -> datetime:
    """Integer ns since 1970 -> aware UTC datetime (truncated to the microsecond)."""
    from datetime import timedelta

    us = int(t_ns) // 1_000
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def ns_to_iso(t_ns: int) -> str:
    """ISO 8601 with nanoseconds: ``2026-01-02T03:04:05.123456789Z``."""
    s, ns = divmod(int(t_ns), NS_PER_S)
    return ns_to_datetime(s * NS_PER_S).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def gps_stamp_to_utc_ns(gpssec: int, gpsnsec: int, near_ns: int) -> int:
    """GPS seconds-of-week + ns -> UTC ns, in the GPS week that puts it nearest ``near_ns``.

    The frame carries no week number; the host clock decides it (UTC = GPS - 18 s).
    """
    gps_near_s = (near_ns - GPS_EPOCH_UNIX_NS) // NS_PER_S + GPS_UTC_LEAP_SECONDS
    week, sow = divmod(gps_near_s, SECONDS_PER_WEEK)
    if gpssec - sow > SECONDS_PER_WEEK // 2:
        week -= 1
    elif sow - gpssec > SECONDS_PER_WEEK // 2:
        week += 1
    gps_ns = (week * SECONDS_PER_WEEK + int(gpssec)) * NS_PER_S + int(gpsnsec)
    return GPS_EPOCH_UNIX_NS + gps_ns - GPS_UTC_LEAP_SECONDS * NS_PER_S


def utc_ns_to_gps_stamp(t_ns: int) -> tuple[int, int]:
    """UTC ns -> (GPS seconds of week, ns): what a receiver puts in a frame."""
    gps_ns = int(t_ns) - GPS_EPOCH_UNIX_NS + GPS_UTC_LEAP_SECONDS * NS_PER_S
    s, ns = divmod(gps_ns, NS_PER_S)
    return s % SECONDS_PER_WEEK, ns


def time_of_sample(model: TimingModel, i: int | float) -> int:
    """UTC (integer ns) of sample ``i`` of the capture."""
    return int(model.t0_ns) + round(float(i) * NS_PER_S / model.sample_rate_hz)


def sample_at(model: TimingModel, t_ns: int) -> float:
    """Fractional sample index at UTC ``t_ns`` (integer ns)."""
    return (int(t_ns) - int(model.t0_ns)) * model.sample_rate_hz / NS_PER_S


# --- the fit ---------------------------------------------------------------------------


def host_clock_model(
    host_ref_ns: int,
    sample_rate_hz: float,
    *,
    host_ref_index: int = 0,
    frames: int = 0,
    flags: Sequence[str] = (),
) -> TimingModel:
    """The fallback for receivers without GPS stamps: the host clock at a known sample."""
    t0 = int(host_ref_ns) - round(host_ref_index * NS_PER_S / sample_rate_hz)
    return TimingModel(
        t0_ns=t0,
        sample_rate_hz=float(sample_rate_hz),
        residual_ns=None,
        fixes=0,
        outliers=0,
        frames=frames,
        locked=False,
        host_clock_offset_s=None,
        flags=tuple(dict.fromkeys(("host_clock", *flags))),
    )


def fit_timing(
    stamps: Sequence[FrameStamp],
    *,
    nominal_rate_hz: float,
    host_ref_ns: int,
    host_ref_index: int = 0,
    max_host_offset_s: float = DEFAULT_MAX_HOST_OFFSET_S,
    min_outlier_ns: float = DEFAULT_MIN_OUTLIER_NS,
    drop_first: bool = True,
    host_fallback: bool = True,
) -> TimingModel:
    """Fit UTC against sample index through the trustworthy stamps of one capture.

    Args:
        stamps: every frame's stamp in arrival order, ``sample_index`` from the session's
            first frame.
        nominal_rate_hz: the rate the receiver announced (a starting slope only).
        host_ref_ns: the host clock's UTC (ns) of sample ``host_ref_index``; resolves the
            GPS week and is the sanity check for every stamp.
        max_host_offset_s: stamps further than this from the host clock are not trusted.
        min_outlier_ns: residuals below this never make a stamp an outlier.
        drop_first: the first frame of a connection is never trusted (real KiwiSDRs
            send 0/0 or a stale stamp there).
        host_fallback: without two usable stamps, return the host-clock model (flagged)
            instead of raising :class:`TimingError`.
    """
    if not (math.isfinite(nominal_rate_hz) and nominal_rate_hz > 0):
        raise ValueError(f"nominal_rate_hz={nominal_rate_hz} must be a positive number of Hz")
    if not max_host_offset_s > 0:
        raise ValueError(f"max_host_offset_s={max_host_offset_s} must be > 0")
    frames = len(stamps)
    flags: list[str] = []
    ns_per_sample = NS_PER_S / nominal_rate_hz

    def host_at(index: int) -> int:
        return int(host_ref_ns) + round((index - host_ref_index) * ns_per_sample)

    def fallback(reason: str, extra: Sequence[str] = ()) -> TimingModel:
        if not host_fallback:
            raise TimingError(reason)
        return host_clock_model(
            host_ref_ns,
            nominal_rate_hz,
            host_ref_index=host_ref_index,
            frames=frames,
            flags=(*flags, *extra),
        )

    if frames and all(s.no_gps_clock for s in stamps):
        return fallback("the receiver has no GPS clock (last_gps_solution=255)", ("no_gps",))
    # Freshness is judged on the whole sequence, before any frame is set aside.
    fresh = [False] * frames
    for k in range(1, frames):
        fresh[k] = stamps[k].last_gps_solution < stamps[k - 1].last_gps_solution
    candidates: list[int] = []
    empty = 0
    for k, s in enumerate(stamps):
        if s.no_gps_clock:
            continue
        if s.empty:
            empty += 1
            continue
        if k == 0 and drop_first:
            flags.append("first_frame_dropped")
            continue
        candidates.append(k)
    if empty:
        flags.append("empty_stamps")
    if not candidates:
        return fallback(
            f"no usable GPS stamp in {frames} frames ({empty} zero stamps)", ("no_gps_stamps",)
        )
    t = np.array(
        [
            gps_stamp_to_utc_ns(
                stamps[k].gpssec, stamps[k].gpsnsec, host_at(stamps[k].sample_index)
            )
            for k in candidates
        ],
        dtype=np.int64,
    )
    idx = np.array([stamps[k].sample_index for k in candidates], dtype=np.int64)
    host = np.array([host_at(int(i)) for i in idx], dtype=np.int64)
    off_s = (t - host).astype(np.float64) / NS_PER_S
    near = np.abs(off_s) <= max_host_offset_s
    far_count = int((~near).sum())
    if far_count:
        flags.append("far_from_host")
    use = near
    trusted_host = True
    if near.sum() < 2:
        if (~near).sum() >= 2:
            # Every stamp disagrees with the host clock: believe GPS, but never call it locked.
            use = ~near
            trusted_host = False
            flags.append("host_clock_disagrees")
        else:
            return fallback("fewer than two GPS stamps agree with the host clock", ("few_stamps",))
    sel = np.flatnonzero(use)
    t_ref = int(t[sel[0]])
    i_ref = int(idx[sel[0]])
    x = (idx[sel] - i_ref).astype(np.float64)
    y = (t[sel] - t_ref).astype(np.float64)  # small offsets: float64 is exact here
    inlier = _robust_inliers(x, y, ns_per_sample, min_outlier_ns)
    if inlier.sum() < 2:
        return fallback("the GPS stamps do not lie on one line", ("inconsistent_stamps",))
    slope, intercept = np.polyfit(x[inlier], y[inlier], 1)
    resid = y - (intercept + slope * x)
    # Second pass: least-squares line, then the same rejection rule around it.
    scale = _mad_sigma(resid[inlier])
    inlier &= np.abs(resid) <= max(_K_MAD * scale, min_outlier_ns)
    if inlier.sum() >= 2:
        slope, intercept = np.polyfit(x[inlier], y[inlier], 1)
        resid = y - (intercept + slope * x)
    if not slope > 0:
        return fallback("the fitted GPS slope is not positive", ("inconsistent_stamps",))
    rms = float(np.sqrt(np.mean(resid[inlier] ** 2)))
    outliers = far_count if trusted_host else int(near.sum())
    outliers += int((~inlier).sum())
    if (~inlier).any():
        flags.append("outliers")
    t0_ns = t_ref + round(intercept - slope * i_ref)
    kept = [candidates[int(j)] for j in sel[inlier]]
    fixes = sum(1 for k in kept if fresh[k])
    if fixes < 2:
        flags.append("few_fixes")
    offset = float(np.median(off_s[sel[inlier]]))
    return TimingModel(
        t0_ns=int(t0_ns),
        sample_rate_hz=float(NS_PER_S / slope),
        residual_ns=rms,
        fixes=fixes,
        outliers=outliers,
        frames=frames,
        locked=bool(fixes >= 2 and trusted_host),
        host_clock_offset_s=offset,
        flags=tuple(dict.fromkeys(flags)),
    )


def _mad_sigma(r: np.ndarray) -> float:
    if r.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def _robust_inliers(
    x: np.ndarray, y: np.ndarray, ns_per_sample: float, min_outlier_ns: float
) -> np.ndarray:
    """Stamps on the consensus line: residuals against the nominal rate first remove the
    gross errors (seconds to days), then a Theil-Sen slope over stamp pairs half the
    span apart and a MAD threshold remove the subtle ones."""
    n = x.size
    if n <= 2:
        return np.ones(n, dtype=bool)
    r = y - x * ns_per_sample
    med = float(np.median(r))
    # The rate error (<~200 ppm) cannot move a stamp by more than this over the capture.
    span_ns = float(x.max() - x.min()) * ns_per_sample
    coarse = np.abs(r - med) <= max(2e-4 * span_ns, 0.0) + 1e6
    if coarse.sum() < 2:
        coarse = np.ones(n, dtype=bool)
    xs, ys = x[coarse], y[coarse]
    m = xs.size
    half = max(m // 2, 1)
    if m > 2:
        a = np.arange(m - half)
        dx = xs[a + half] - xs[a]
        ok = dx > 0
        slope = float(np.median((ys[a + half] - ys[a])[ok] / dx[ok])) if ok.any() else ns_per_sample
    else:
        slope = ns_per_sample
    intercept = float(np.median(ys - slope * xs))
    resid = y - (intercept + slope * x)
    scale = _mad_sigma(resid[coarse])
    return coarse & (np.abs(resid) <= max(_K_MAD * scale, min_outlier_ns))
