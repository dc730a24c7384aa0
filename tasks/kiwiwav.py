"""kiwirecorder ``--kiwi-wav`` IQ files: reader, writer and the station position files.

Most existing KiwiSDR IQ data (including the KiwiSDR TDoA service's inputs) is stored in
this format (kiwisdr-protocol.md, "kiwirecorder IQ files"): a RIFF/WAVE file whose
``fmt `` chunk says PCM, 2 channels, 16 bits at the nominal rate, followed for every SND
frame by a 10-byte ``kiwi`` chunk (last_gps_solution, 0, gpssec, gpsnsec) and a ``data``
chunk of that frame's samples. Real files are damaged in known ways (stale RIFF size,
a cut-off last chunk, odd-sized chunks with a pad byte, frames without a ``kiwi`` chunk,
all stamps zero): the reader recovers what can be recovered and lists each repair in
``defects``; what cannot be used raises :class:`KiwiWavError` naming the file and the
defect. The writer produces the same format (and each defect on request) for tests.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tasks.errors import RfAcquisitionError
from tasks.timing import (
    DEFAULT_MAX_HOST_OFFSET_S,
    FrameStamp,
    TimingError,
    TimingModel,
    datetime_to_ns,
    fit_timing,
)

_CHUNK = struct.Struct("<4sI")
_KIWI = struct.Struct("<4sIBBII")  # b'kiwi', 10, last_gps_solution, 0, gpssec, gpsnsec
_KIWI_BODY = 10
_FMT = struct.Struct("<HHIIHH")
_NAME = re.compile(
    r"^(?P<ts>\d{8}T\d{6}Z)_(?P<khz>\d+(?:\.\d+)?)_(?P<station>[^/]+?)_iq\.wav$", re.IGNORECASE
)
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


def parse_file_name(path: str | Path) -> FileName:
    """``YYYYMMDDTHHMMSSZ_<frequency kHz>_<station>_iq.wav`` -> :class:`FileName`."""
    name = Path(path).name
    m = _NAME.match(name)
    if not m:
        raise KiwiWavError(
            path, "file name does not match YYYYMMDDTHHMMSSZ_<frequency kHz>_<station>_iq.wav"
        )
    start = datetime.strptime(m["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return FileName(start, float(m["khz"]) * 1e3, m["station"])


def file_name(start_utc: datetime, frequency_hz: float, station: str) -> str:
    """The kiwirecorder name for a recording (frequency in kHz, as the recorder writes it)."""
    khz = f"{frequency_hz / 1e3:.3f}".rstrip("0").rstrip(".")
    return f"{start_utc.astimezone(UTC):%Y%m%dT%H%M%SZ}_{khz}_{station}_iq.wav"


def read_kiwi_wav(
    path: str | Path,
    *,
    strict: bool = False,
    max_host_offset_s: float = DEFAULT_MAX_HOST_OFFSET_S,
) -> KiwiWav:
    """Read one kiwi-wav file and fit its timing model.

    Args:
        path: the file; its name gives station, frequency and the host-clock start.
        strict: raise on any defect instead of repairing it (stale RIFF size, truncated
            last chunk, odd data chunk, frames without a ``kiwi`` chunk).
        max_host_offset_s: GPS stamps further than this from the file name's time are
            not trusted.
    """
    path = Path(path)
    name = parse_file_name(path)
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
    while pos < len(data):
        if len(data) - pos < _CHUNK.size:
            defect(f"truncated chunk header at byte {pos} ({len(data) - pos} bytes left)")
            break
        cid, size = _CHUNK.unpack_from(data, pos)
        body = data[pos + 8 : pos + 8 + size]
        truncated = len(body) < size
        pos += 8 + size + (size & 1)  # odd chunks are followed by a pad byte
        if cid == b"fmt ":
            if truncated or size < _FMT.size:
                raise KiwiWavError(path, f"fmt chunk too short ({len(body)} bytes)")
            fmt = _FMT.unpack_from(body)
            tag, channels, _rate, _, _, bits = fmt
            if (tag, channels, bits) != (1, 2, 16):
                raise KiwiWavError(
                    path,
                    f"fmt chunk is format {tag}, {channels} channels, {bits} bits; "
                    "a kiwi-wav IQ file is PCM (1), 2 channels, 16 bits",
                )
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
    try:
        timing = fit_timing(
            stamps,
            nominal_rate_hz=float(fmt[2]),
            host_ref_ns=datetime_to_ns(name.start_utc),
            max_host_offset_s=max_host_offset_s,
            host_fallback=False,
        )
    except TimingError as exc:
        raise KiwiWavError(path, f"no usable GPS timing: {exc}") from None
    iq = np.concatenate(pieces)
    samples = np.empty(iq.shape[0], dtype=np.complex64)
    samples.real = iq[:, 0]
    samples.imag = iq[:, 1]
    samples *= np.float32(1.0 / 32768.0)
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
    )


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
        raise KiwiWavError(path, f"no position file for station {station!r}")
    return read_station_position(path)
