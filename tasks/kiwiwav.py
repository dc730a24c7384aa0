"""kiwirecorder ``--kiwi-wav`` IQ files: reader, writer and the station position files.

Most existing KiwiSDR IQ data (including the KiwiSDR TDoA service's inputs) is stored in
this format (kiwisdr-protocol.md, "kiwirecorder IQ files"): a RIFF/WAVE file whose
``fmt `` chunk says PCM, 2 channels, 16 bits at the nominal rate, followed for every SND
frame by a 10-byte ``kiwi`` chunk (last_gps_solution, 0, gpssec, gpsnsec) and a ``data``
chunk of that frame's samples. Real files are damaged in known ways (stale RIFF size,
a cut-off last chunk, odd-sized chunks with a pad byte, frames without a ``kiwi`` chunk,
frames lost in a network hiccup, all stamps zero): the reader recovers what can be
recovered (lost frames are zero-filled so every sample keeps its GPS time) and lists each
repair in ``defects``; what cannot be used raises :class:`KiwiWavError` naming the file
and the defect. The writer produces the same format (and each defect on request) for
tests.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tasks.errors import RfAcquisitionError
from tasks.timing import (
    DEFAULT_MAX_HOST_OFFSET_S,
    NS_PER_S,
    FrameStamp,
    TimingError,
    TimingModel,
    datetime_to_ns,
    fit_timing,
    gps_stamp_to_utc_ns,
)

_CHUNK = struct.Struct("<4sI")
_KIWI = struct.Struct("<4sIBBII")  # b'kiwi', 10, last_gps_solution, 0, gpssec, gpsnsec
_KIWI_BODY = 10
_FMT = struct.Struct("<HHIIHH")
_NAME = re.compile(
    r"^(?P<ts>\d{8}T\d{6}Z)_(?P<freq>\d+(?:\.\d+)?)_(?P<station>[^/]+?)_iq\.wav$", re.IGNORECASE
)
_NO_STATION = re.compile(r"^\d{8}T\d{6}Z_\d+(?:\.\d+)?_iq\.wav$", re.IGNORECASE)
_POS = re.compile(
    r"d\.(?P<station>[\w.-]+)\s*=\s*struct\(\s*'coord'\s*,\s*\[\s*(?P<lat>[-+0-9.eE]+)\s*,\s*"
    r"(?P<lon>[-+0-9.eE]+)\s*\]\s*(?:,\s*'host'\s*,\s*'(?P<host>[^']*)'\s*)?"
    r"(?:,\s*'port'\s*,\s*(?P<port>\d+)\s*)?\)"
)


class KiwiWavError(RfAcquisitionError, ValueError):
    """A kiwi-wav file (or position file) that cannot be used; the message names it."""

    def __init__(self, path: str | Path, defect: str) -> None:
        self.path = str(path)
        self.defect = defect
        super().__init__(f"{Path(path).name}: {defect}")


@dataclass(frozen=True)
class FileName:
    """What a kiwirecorder file name says: UTC start (host clock), tuned kHz, station."""

    start_utc: datetime
    frequency_hz: float
    station: str


@dataclass
class KiwiWav:
    """One decoded kiwi-wav file."""

    path: Path
    station: str
    frequency_hz: float
    file_start_utc: datetime
    nominal_rate_hz: int
    samples: np.ndarray  # complex64, full scale 1.0
    stamps: list[FrameStamp]
    timing: TimingModel
    defects: list[str] = field(default_factory=list)
    # spans (first sample, length) zero-filled for frames lost in the recording
    gaps: list[tuple[int, int]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.timing.sample_rate_hz


@dataclass(frozen=True)
class StationPosition:
    """A ``gnss_pos/<station>.txt`` entry."""

    station: str
    latitude: float
    longitude: float
    host: str | None = None
    port: int | None = None


# What a KiwiSDR tunes: 10 kHz - 30 MHz, more behind a down-converter.
MIN_FREQUENCY_HZ = 10e3
MAX_FREQUENCY_HZ = 10e9


def parse_file_name(path: str | Path, *, frequency_hz: float | None = None) -> FileName:
    """``YYYYMMDDTHHMMSSZ_<frequency>_<station>_iq.wav`` -> :class:`FileName`.

    kiwirecorder writes the frequency as whole Hz (``int(kHz * 1000)``: ``77500``); names
    written by hand or by other tools carry kHz with a decimal point (``77.50``,
    ``10000.00``). So a field with a decimal point is kHz and a whole number is Hz, and
    either must lie in [10 kHz, 10 GHz]. Older tools (and this project before) wrote
    whole kHz (``60``, ``4625``): read as Hz that is below what a KiwiSDR tunes, so such
    a name is refused, not misread; ``frequency_hz`` (``--frequency-hz``) then gives the
    frequency instead of the name. A whole number from 10000 to 30000 is read as Hz (10 to
    30 kHz); written by such a tool it meant 10 to 30 MHz, and only ``frequency_hz`` can
    say so.
    """
    name = Path(path).name
    m = _NAME.match(name)
    if not m:
        hint = (
            "no station in the name (kiwirecorder without --station): rename it to "
            "..._<station>_iq.wav"
            if _NO_STATION.match(name)
            else "rename it (kiwirecorder -m iq --kiwi-wav --station=NAME writes such names)"
        )
        raise KiwiWavError(
            path,
            "file name does not match YYYYMMDDTHHMMSSZ_<frequency Hz, or kHz with a decimal "
            f"point>_<station>_iq.wav: {hint}",
        )
    start = datetime.strptime(m["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    allowed = f"[{MIN_FREQUENCY_HZ / 1e3:g} kHz, {MAX_FREQUENCY_HZ / 1e9:g} GHz]"
    if frequency_hz is not None:
        if not MIN_FREQUENCY_HZ <= frequency_hz <= MAX_FREQUENCY_HZ:
            raise KiwiWavError(
                path, f"frequency_hz={frequency_hz:g} (--frequency-hz) outside {allowed} (Hz)"
            )
        return FileName(start, float(frequency_hz), m["station"])
    field_ = m["freq"]
    khz = "." in field_
    value = float(field_) * 1e3 if khz else float(field_)
    if not MIN_FREQUENCY_HZ <= value <= MAX_FREQUENCY_HZ:
        read = f"{field_} kHz" if khz else f"{field_} Hz"
        raise KiwiWavError(
            path,
            f"frequency field {field_!r} of the file name: read as {read}, outside the "
            f"{allowed} a KiwiSDR tunes (10 kHz - 30 MHz, more behind a down-converter). "
            "A whole number is Hz, as kiwirecorder writes it (77500); kHz needs a decimal "
            f"point (77.50). Rename the file, or give the frequency with --frequency-hz",
        )
    return FileName(start, value, m["station"])


def file_name(start_utc: datetime, frequency_hz: float, station: str) -> str:
    """The kiwirecorder name for a recording (frequency in whole Hz, as kiwirecorder
    writes it)."""
    return f"{start_utc.astimezone(UTC):%Y%m%dT%H%M%SZ}_{round(frequency_hz)}_{station}_iq.wav"


def read_kiwi_wav(
    path: str | Path,
    *,
    strict: bool = False,
    max_host_offset_s: float = DEFAULT_MAX_HOST_OFFSET_S,
    frequency_hz: float | None = None,
) -> KiwiWav:
    """Read one kiwi-wav file and fit its timing model.

    Args:
        path: the file; its name gives station, frequency and the host-clock start.
        strict: raise on any defect instead of repairing it (stale RIFF size, truncated
            last chunk, odd data chunk, frames without a ``kiwi`` chunk).
        max_host_offset_s: GPS stamps further than this from the file name's time are
            not trusted.
        frequency_hz: the tuned frequency, instead of the one in the file name (for
            names whose frequency field cannot be read: see :func:`parse_file_name`).
    """
    path = Path(path)
    name = parse_file_name(path, frequency_hz=frequency_hz)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KiwiWavError(path, f"cannot read: {exc.strerror or exc}") from None
    defects: list[str] = []

    def defect(text: str) -> None:
        if strict:
            raise KiwiWavError(path, text)
        defects.append(text)

    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise KiwiWavError(path, "not a RIFF/WAVE file")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if riff_size + 8 != len(data):
        defect(f"stale RIFF size ({riff_size + 8} bytes declared, {len(data)} present)")
    fmt: tuple[int, ...] | None = None
    pieces: list[np.ndarray] = []
    stamps: list[FrameStamp] = []
    pending: tuple[int, int, int] | None = None
    kiwi_chunks = 0
    unstamped = 0
    n = 0
    pos = 12
    view = memoryview(data)
    while pos < len(data):
        if len(data) - pos < _CHUNK.size:
            defect(f"truncated chunk header at byte {pos} ({len(data) - pos} bytes left)")
            break
        cid, size = _CHUNK.unpack_from(data, pos)
        body = view[pos + 8 : pos + 8 + size]  # a view: the samples are copied once, below
        truncated = len(body) < size
        pos += 8 + size + (size & 1)  # odd chunks are followed by a pad byte
        if cid == b"fmt ":
            if truncated or size < _FMT.size:
                raise KiwiWavError(path, f"fmt chunk too short ({len(body)} bytes)")
            fmt = _FMT.unpack_from(body)
            tag, channels, rate, _, _, bits = fmt
            if (tag, channels, bits) != (1, 2, 16):
                what = (
                    " (real audio, not IQ: record with kiwirecorder -m iq)" if channels == 1 else ""
                )
                raise KiwiWavError(
                    path,
                    f"fmt chunk is format {tag}, {channels} channel(s), {bits} bits{what}; "
                    "a kiwi-wav IQ file is PCM (1), 2 channels, 16 bits",
                )
            if not 1_000 <= rate <= 1_000_000:
                raise KiwiWavError(path, f"fmt sample rate {rate} Hz outside [1000, 1000000]")
        elif cid == b"kiwi":
            if truncated or size != _KIWI_BODY:
                if truncated:
                    defect(f"truncated last kiwi chunk at byte {pos - 8 - size}")
                    break
                raise KiwiWavError(path, f"kiwi chunk of {size} bytes (must be {_KIWI_BODY})")
            lgs, _, sec, nsec = struct.unpack_from("<BBII", body)
            if nsec >= 1_000_000_000:
                # One garbled stamp must not cost the recording: it is "no stamp", and
                # the timing fit works from the others.
                defect(f"kiwi chunk at byte {pos - 8 - size} has gpsnsec={nsec} (>= 1e9)")
                lgs, sec, nsec = lgs, 0, 0
            pending = (lgs, sec, nsec)
            kiwi_chunks += 1
        elif cid == b"data":
            if fmt is None:
                raise KiwiWavError(path, "data chunk before the fmt chunk")
            if truncated:
                defect(f"truncated last data chunk ({len(body)} of {size} bytes)")
            usable = len(body) - len(body) % 4
            if usable != len(body) and not truncated:
                defect(f"data chunk of {size} bytes is not whole I/Q pairs (odd chunk size)")
            if usable:
                iq = np.frombuffer(body[:usable], dtype="<i2").reshape(-1, 2)
                if pending is None:
                    unstamped += 1
                    stamps.append(FrameStamp(n, 0, 0, 0))
                else:
                    stamps.append(FrameStamp(n, pending[1], pending[2], pending[0]))
                pieces.append(iq)
                n += iq.shape[0]
            pending = None
            if truncated:
                break
        elif truncated:
            defect(f"truncated last {cid!r} chunk")
            break
        # other chunks (LIST ...) are skipped
    if fmt is None:
        raise KiwiWavError(path, "no fmt chunk")
    if n == 0:
        raise KiwiWavError(path, "no samples (no data chunk)")
    if kiwi_chunks == 0:
        raise KiwiWavError(path, "no kiwi chunks: the file carries no GPS timestamps")
    if unstamped:
        defect(f"{unstamped} data chunks without a kiwi chunk")
    if all(s.gpssec == 0 and s.gpsnsec == 0 for s in stamps):
        raise KiwiWavError(path, f"all {len(stamps)} GPS stamps are zero (timestamps off)")
    host_ref_ns = datetime_to_ns(name.start_utc)
    frame = int(np.median([p.shape[0] for p in pieces]))
    plan = plan_frame_gaps(stamps, float(fmt[2]), host_ref_ns, frame, sample_count=n)
    for text in plan.notes:
        defect(text)
    # the file name's time is that of the file's first sample, before any dropped frames
    host_ref_index = -stamps[plan.first_frame].sample_index
    samples, stamps, gaps = _assemble(pieces, stamps, plan)
    try:
        timing = fit_timing(
            stamps,
            nominal_rate_hz=float(fmt[2]),
            host_ref_ns=host_ref_ns,
            host_ref_index=host_ref_index,
            max_host_offset_s=max_host_offset_s,
            host_fallback=False,
            drop_first=plan.first_frame == 0,
        )
    except TimingError as exc:
        raise KiwiWavError(path, f"no usable GPS timing: {exc}") from None
    if gaps:
        timing = replace(timing, flags=(*timing.flags, "gaps_filled"))
    return KiwiWav(
        path=path,
        station=name.station,
        frequency_hz=name.frequency_hz,
        file_start_utc=name.start_utc,
        nominal_rate_hz=int(fmt[2]),
        samples=samples,
        stamps=stamps,
        timing=timing,
        defects=defects,
        gaps=gaps,
    )


# A network hiccup longer than this is not zero-filled (memory, and a receiver clock
# that coasts that long is no longer the same line): the longest part is kept instead.
MAX_GAP_FILL_S = 60.0


@dataclass(frozen=True)
class GapPlan:
    """Where samples were lost inside a recording, from its GPS stamps.

    ``fills`` maps a frame number to the whole samples lost just before it; ``zeroed``
    frames sit between lost frames where no stamp of theirs says where they belong: their
    samples are zeroed and counted in the gap. Frames outside ``first_frame .. end_frame``
    (exclusive) are dropped; ``notes`` say why.
    """

    fills: dict[int, int]
    first_frame: int
    end_frame: int
    notes: tuple[str, ...] = ()
    zeroed: tuple[int, ...] = ()


def plan_frame_gaps(
    stamps: Sequence[FrameStamp],
    nominal_rate_hz: float,
    host_ref_ns: int,
    frame_samples: int | None = None,
    *,
    sample_count: int | None = None,
) -> GapPlan:
    """Find lost frames: runs of stamps that each lie on one line, stepping forward.

    kiwi-wav files keep no sequence numbers, so a network hiccup shows only in the GPS
    stamps: after it they jump ahead by the time of the lost frames while the sample
    count does not. Concatenated as they are, every sample after the gap would get a
    time one or more frames (tens of ms) wrong, and the timing fit would take the stamps
    of the shorter side as outliers. Stamps are grouped into runs that agree with the
    nominal rate (a lost frame is a step of >= 21 ms; rate errors drift < 1 us per
    frame). Between two runs the step, measured with the longest run's own rate, is the
    whole number of samples lost: zero-filled, so every sample keeps its GPS time. A step
    backwards, not close to whole samples, or longer than ``MAX_GAP_FILL_S`` cannot be
    filled: then only the longest consistent part of the file is kept. With
    ``frame_samples`` (the file's usual data-chunk size) only whole lost frames are
    filled: a step of any other size is a clock step, not lost data. ``sample_count``
    (the file's samples) ends the last part; without it the last frame is taken to be
    ``frame_samples`` long.

    A stamp alone (a frame kept between two lost ones, or before a gap at the start) is
    placed by its own stamp when that lies on the longest run's line a whole number of
    frames ahead of the run before it and behind the run after it. Otherwise a lone stamp
    is an outlier (stale, hours-off) left to the fit, unless it sits inside a gap:
    frames between two runs with lost samples between them, without a stamp that places
    them, could belong anywhere in the gap, so they are zeroed and become part of it.
    The first frame's stamp (0/0 or stale on real KiwiSDRs) is used here only when it
    lies on the line; a gap right after an unstamped first frame cannot be seen.
    """
    n_frames = len(stamps)
    none = GapPlan({}, 0, n_frames)
    ns_nom = NS_PER_S / nominal_rate_hz
    points: list[tuple[int, int, int]] = []  # (frame, sample index, utc ns)
    for k, s in enumerate(stamps):
        if s.empty or s.no_gps_clock:
            continue
        near = host_ref_ns + round(s.sample_index * ns_nom)
        points.append((k, s.sample_index, gps_stamp_to_utc_ns(s.gpssec, s.gpsnsec, near)))
    runs: list[list[tuple[int, int, int]]] = []
    for p in points:
        level = p[2] - round(p[1] * ns_nom)
        for run in reversed(runs[-4:]):
            _, i0, t0 = run[-1]
            tol = 1e6 + 2e-4 * (p[1] - i0) * ns_nom  # 1 ms + 200 ppm of the distance
            if abs(level - (t0 - round(i0 * ns_nom))) <= tol:
                run.append(p)
                break
        else:
            runs.append([p])
    real = sorted((r for r in runs if len(r) >= 2), key=lambda r: r[0][0])
    if not real:
        return none
    if any(a[-1][0] > b[0][0] for a, b in itertools.pairwise(real)):
        return none  # interleaved families of stamps: not a gap; the fit decides
    longest = max(real, key=len)
    _, i_ref, t_ref = longest[0]
    xs = np.array([i - i_ref for _, i, _ in longest], dtype=np.float64)
    ys = np.array([t - t_ref for _, _, t in longest], dtype=np.float64)
    slope = float(np.polyfit(xs, ys, 1)[0]) if xs[-1] > xs[0] else ns_nom
    if not abs(slope / ns_nom - 1.0) < 1e-3:
        slope = ns_nom
    if frame_samples:
        frame = frame_samples
    else:
        steps = np.diff([s.sample_index for s in stamps])
        frame = int(np.median(steps)) if steps.size else 0

    def offset(run: list[tuple[int, int, int]]) -> float:
        """ns off the longest run's line."""
        return float(np.median([(t - t_ref) - (i - i_ref) * slope for _, i, t in run]))

    def step(a: float, b: float) -> tuple[float, int, bool]:
        """Samples lost between offsets a and b, rounded, and whether that is a gap."""
        missing = (b - a) / slope
        whole = round(missing)
        ok = (
            whole >= 1
            and abs(missing - whole) <= 0.25
            and missing * slope <= MAX_GAP_FILL_S * NS_PER_S
            and (not frame_samples or whole % frame_samples == 0)
        )
        return missing, whole, ok

    def whole_frames(o: float) -> bool:
        ahead = o / slope
        return abs(ahead - round(ahead)) <= 0.25 and (not frame or round(ahead) % frame == 0)

    sequence = list(real)
    for run in runs:
        if len(run) != 1:
            continue
        k = run[0][0]
        if any(r[0][0] < k < r[-1][0] for r in real):
            continue  # an outlier inside a run: the fit leaves it out
        before = [r for r in real if r[-1][0] < k]
        after = [r for r in real if r[0][0] > k]
        o = offset(run)
        if (
            whole_frames(o)
            and (not before or step(offset(before[-1]), o)[2])
            and (not after or step(o, offset(after[0]))[2])
        ):
            sequence.append(run)
    sequence.sort(key=lambda r: r[0][0])

    fills: dict[int, int] = {}
    zeroed: list[int] = []
    notes: list[str] = []
    parts: list[tuple[int, int]] = []  # (first frame, end frame) of parts that hold together
    start = 0
    for a, b in itertools.pairwise(sequence):
        missing, whole, ok = step(offset(a), offset(b))
        if ok:
            fills[b[0][0]] = whole
            notes.append(
                f"{whole} samples ({whole * slope / NS_PER_S:.3f} s) lost before frame "
                f"{b[0][0]} (the GPS stamps jump ahead): zero-filled so every sample keeps "
                "its GPS time; correlation segments over the gap are left out"
            )
            for k in range(a[-1][0] + 1, b[0][0]):
                zeroed.append(k)
                notes.append(
                    f"frame {k}'s position is not known (kept between lost frames, its GPS "
                    "stamp missing or off the line): zeroed as part of the gap"
                )
        else:
            parts.append((start, b[0][0]))
            start = b[0][0]
            notes.append(
                f"the GPS stamps step by {missing * slope / 1e6:+.3f} ms before frame {b[0][0]}, "
                "which no lost-frames gap explains (backwards, not whole frames or longer "
                f"than {MAX_GAP_FILL_S:.0f} s)"
            )
    parts.append((start, n_frames))
    if len(parts) == 1:
        return GapPlan(fills, 0, n_frames, tuple(notes), tuple(zeroed))

    n = sample_count if sample_count is not None else stamps[-1].sample_index + frame

    def size(part: tuple[int, int]) -> int:
        lo, hi = part
        return (stamps[hi].sample_index if hi < n_frames else n) - stamps[lo].sample_index

    lo, hi = max(parts, key=size)
    notes.append(f"only frames {lo}..{hi - 1} are kept (the longest part on one GPS line)")
    return GapPlan(
        {k: v for k, v in fills.items() if lo < k < hi},
        lo,
        hi,
        tuple(notes),
        tuple(k for k in zeroed if lo < k < hi),
    )


def _assemble(
    pieces: list[np.ndarray], stamps: list[FrameStamp], plan: GapPlan
) -> tuple[np.ndarray, list[FrameStamp], list[tuple[int, int]]]:
    """complex64 samples (full scale 1.0) of the kept frames with the lost samples
    zero-filled, the stamps re-indexed to them, and the filled spans (start, length):
    zeroed frames (their stamps blanked) and the lost samples next to them are one span."""
    keep = range(plan.first_frame, plan.end_frame)
    zeroed = set(plan.zeroed)
    total = sum(pieces[k].shape[0] for k in keep) + sum(plan.fills.values())
    samples = np.zeros(total, dtype=np.complex64)
    re, im = samples.real, samples.imag  # views into samples
    out: list[FrameStamp] = []
    gaps: list[tuple[int, int]] = []

    def gap(at: int, count: int) -> None:
        if gaps and gaps[-1][0] + gaps[-1][1] == at:
            gaps[-1] = (gaps[-1][0], gaps[-1][1] + count)
        else:
            gaps.append((at, count))

    at = 0
    for k in keep:
        lost = plan.fills.get(k, 0)
        if lost:
            gap(at, lost)
            at += lost
        iq = pieces[k]
        if k in zeroed:
            gap(at, iq.shape[0])
            out.append(replace(stamps[k], sample_index=at, gpssec=0, gpsnsec=0))
        else:
            re[at : at + iq.shape[0]] = iq[:, 0]
            im[at : at + iq.shape[0]] = iq[:, 1]
            out.append(replace(stamps[k], sample_index=at))
        at += iq.shape[0]
    samples *= np.float32(1.0 / 32768.0)
    return samples, out, gaps


def write_kiwi_wav(
    path: str | Path,
    samples: np.ndarray,
    stamps: Sequence[FrameStamp],
    *,
    sample_rate_hz: float,
    stale_riff_size: bool = False,
    truncate_bytes: int = 0,
    odd_chunk: bool = False,
    drop_kiwi: Iterable[int] | str = (),
    zero_stamps: bool = False,
) -> Path:
    """Write ``samples`` (complex, full scale 1.0) as a kiwi-wav file.

    Frames are cut at each stamp's ``sample_index``; samples before the first stamp get a
    data chunk of their own without a kiwi chunk. The defect options write what real
    damaged files look like: a RIFF size from before the last frames, the file cut
    ``truncate_bytes`` short, an odd-sized chunk with its pad byte, no kiwi chunk for the
    given frame numbers (``"all"`` for none at all), every stamp zero.
    """
    path = Path(path)
    iq = np.empty((samples.size, 2), dtype="<i2")
    iq[:, 0] = np.clip(np.rint(samples.real * 32768.0), -32768, 32767)
    iq[:, 1] = np.clip(np.rint(samples.imag * 32768.0), -32768, 32767)
    rate = round(sample_rate_hz)
    body = bytearray(b"WAVE")
    body += _CHUNK.pack(b"fmt ", _FMT.size) + _FMT.pack(1, 2, rate, rate * 4, 4, 16)
    if odd_chunk:
        body += _CHUNK.pack(b"note", 3) + b"rf\x00" + b"\x00"  # odd size + pad byte
    drop_all = drop_kiwi == "all"
    dropped = set() if drop_all else set(drop_kiwi)  # type: ignore[arg-type]
    bounds = [s.sample_index for s in stamps if 0 <= s.sample_index < samples.size]
    if not bounds or bounds[0] != 0:
        body += _data_chunk(iq[: bounds[0] if bounds else samples.size])
    usable = [s for s in stamps if 0 <= s.sample_index < samples.size]
    riff_at = 0
    for k, s in enumerate(usable):
        end = usable[k + 1].sample_index if k + 1 < len(usable) else samples.size
        if not (drop_all or k in dropped):
            sec, nsec = (0, 0) if zero_stamps else (s.gpssec, s.gpsnsec)
            body += _KIWI.pack(b"kiwi", _KIWI_BODY, s.last_gps_solution & 0xFF, 0, sec, nsec)
        body += _data_chunk(iq[s.sample_index : end])
        if k == len(usable) - 3:
            riff_at = len(body)
    riff_size = riff_at if stale_riff_size and riff_at else len(body)
    out = b"RIFF" + struct.pack("<I", riff_size) + bytes(body)
    if truncate_bytes:
        out = out[:-truncate_bytes]
    path.write_bytes(out)
    return path


def _data_chunk(iq: np.ndarray) -> bytes:
    raw = np.ascontiguousarray(iq, dtype="<i2").tobytes()
    return _CHUNK.pack(b"data", len(raw)) + raw + (b"\x00" if len(raw) & 1 else b"")


def read_station_position(path: str | Path) -> StationPosition:
    """Parse ``gnss_pos/<station>.txt``:
    ``d.<station> = struct('coord', [lat,lon], 'host', '<host>', 'port', <port>);``"""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise KiwiWavError(path, f"cannot read: {exc.strerror or exc}") from None
    m = _POS.search(text)
    if not m:
        raise KiwiWavError(path, "no \"d.<station> = struct('coord', [lat,lon], ...)\" entry")
    lat, lon = float(m["lat"]), float(m["lon"])
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise KiwiWavError(path, f"coord [{lat}, {lon}] outside [-90, 90] x [-180, 180]")
    return StationPosition(
        station=m["station"],
        latitude=lat,
        longitude=lon,
        host=m["host"],
        port=int(m["port"]) if m["port"] else None,
    )


def write_station_position(directory: str | Path, position: StationPosition) -> Path:
    """Write ``<directory>/<station>.txt`` in the gnss_pos format."""
    path = Path(directory) / f"{position.station}.txt"
    path.write_text(
        f"d.{position.station} = struct('coord', [{position.latitude:.6f},"
        f"{position.longitude:.6f}], 'host', '{position.host or ''}', "
        f"'port', {position.port or 8073});\n",
        encoding="utf-8",
    )
    return path


def find_station_position(directory: str | Path, station: str) -> StationPosition:
    """The position of ``station`` from ``<directory>/<station>.txt``."""
    path = Path(directory) / f"{station}.txt"
    if not path.exists():
        # station names are written in whatever case the operator chose
        same = [p for p in Path(directory).glob("*.txt") if p.stem.lower() == station.lower()]
        if len(same) != 1:
            raise KiwiWavError(path, f"no position file for station {station!r}")
        path = same[0]
    return read_station_position(path)
