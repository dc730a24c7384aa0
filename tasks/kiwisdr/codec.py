"""Byte-exact encoding and decoding of KiwiSDR websocket messages and GPS time.

Layout of an IQ ``SND`` frame (kiwisdr-protocol.md): 3-byte tag, 1 flag byte, uint32 LE
sequence, uint16 BE S-meter, 1 byte seconds-since-last-fix, 1 zero byte, uint32 LE GPS
seconds of week, uint32 LE nanoseconds, then 512 complex int16 samples (BE unless flag
0x80). The client and the simulator share this module, so a test that round-trips through
both checks the doc's table, and hand-built frames in the tests check this module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

import numpy as np

from tasks.errors import RfAcquisitionError

SAMPLES_PER_FRAME = 512
HEADER_BYTES = 20
IQ_FRAME_BYTES = HEADER_BYTES + SAMPLES_PER_FRAME * 4  # 2068

# The flag bits this client acts on (the byte also carries LPF 0x01, new-freq 0x04,
# restart 0x20 and squelched 0x40, which an IQ capture has no use for).
FLAG_ADC_OVERFLOW = 0x02
FLAG_IQ = 0x08
FLAG_COMPRESSED = 0x10
FLAG_LITTLE_ENDIAN = 0x80

NO_GPS = 255
GPS_SOLUTION_CAP = 252

GPS_EPOCH = datetime(1980, 1, 6, tzinfo=UTC)
GPS_UTC_LEAP_SECONDS = 18
SECONDS_PER_WEEK = 604800

# seq(LE u32), smeter(BE u16), last_gps_solution(u8), zero(u8), gpssec(LE u32), gpsnsec(LE u32)
_SEQ = struct.Struct("<I")
_SMETER = struct.Struct(">H")
_GPS = struct.Struct("<II")

_BE_I16 = np.dtype(">i2")
_LE_I16 = np.dtype("<i2")


class FrameError(RfAcquisitionError, ValueError):
    """A message does not match the protocol's layout."""


@dataclass(frozen=True)
class SndFrame:
    """One decoded IQ frame; ``iq`` is int16 of shape (512, 2) holding I and Q."""

    flags: int
    seq: int
    smeter: int
    last_gps_solution: int
    gpssec: int
    gpsnsec: int
    iq: np.ndarray

    @property
    def adc_overflow(self) -> bool:
        return bool(self.flags & FLAG_ADC_OVERFLOW)

    @property
    def has_gps(self) -> bool:
        return self.last_gps_solution != NO_GPS

    @property
    def rssi_dbm(self) -> float:
        return smeter_to_dbm(self.smeter)

    def complex_samples(self) -> np.ndarray:
        """Samples as complex64 with full scale 1.0 (int16 / 32768)."""
        return iq_to_complex(self.iq)


def smeter_to_dbm(raw: int) -> float:
    """S-meter field to dBm: the server sends (dBm + 127) * 10."""
    return 0.1 * raw - 127.0


def dbm_to_smeter(dbm: float) -> int:
    """Inverse of :func:`smeter_to_dbm`, clipped to the field's uint16 range."""
    return int(min(max(round((dbm + 127.0) * 10.0), 0), 0xFFFF))


def iq_to_complex(iq: np.ndarray) -> np.ndarray:
    """(N, 2) int16 I/Q pairs to complex64 normalised by 32768."""
    out = np.empty(iq.shape[0], dtype=np.complex64)
    out.real = iq[:, 0]
    out.imag = iq[:, 1]
    out *= np.float32(1.0 / 32768.0)
    return out


def encode_snd(
    iq: np.ndarray,
    *,
    seq: int,
    smeter: int,
    gpssec: int,
    gpsnsec: int,
    last_gps_solution: int = 0,
    flags: int = FLAG_IQ,
) -> bytes:
    """Build one IQ ``SND`` frame from (512, 2) int16 samples (endianness from ``flags``)."""
    if iq.shape != (SAMPLES_PER_FRAME, 2):
        raise FrameError(f"iq must have shape (512, 2), got {iq.shape}")
    dtype = _LE_I16 if flags & FLAG_LITTLE_ENDIAN else _BE_I16
    header = (
        b"SND"
        + bytes((flags & 0xFF,))
        + _SEQ.pack(seq & 0xFFFFFFFF)
        + _SMETER.pack(smeter & 0xFFFF)
        + bytes((last_gps_solution & 0xFF, 0))
        + _GPS.pack(gpssec & 0xFFFFFFFF, gpsnsec & 0xFFFFFFFF)
    )
    return header + np.ascontiguousarray(iq, dtype=dtype).tobytes()


def decode_snd(data: bytes) -> SndFrame:
    """Decode one IQ ``SND`` frame; raises :class:`FrameError` on any layout violation."""
    if len(data) < 3 or data[:3] != b"SND":
        raise FrameError(f"not an SND frame (starts with {bytes(data[:3])!r})")
    if len(data) != IQ_FRAME_BYTES:
        raise FrameError(f"IQ SND frame must be {IQ_FRAME_BYTES} bytes, got {len(data)}")
    flags = data[3]
    if not flags & FLAG_IQ:
        raise FrameError(f"SND frame without the IQ flag (flags=0x{flags:02x}): not IQ mode")
    if flags & FLAG_COMPRESSED:
        raise FrameError("compressed SND frame in IQ mode")
    (seq,) = _SEQ.unpack_from(data, 4)
    (smeter,) = _SMETER.unpack_from(data, 8)
    last_gps_solution = data[10]
    gpssec, gpsnsec = _GPS.unpack_from(data, 12)
    if gpsnsec >= 1_000_000_000:
        raise FrameError(f"gpsnsec {gpsnsec} is not below 1e9")
    dtype = _LE_I16 if flags & FLAG_LITTLE_ENDIAN else _BE_I16
    iq = np.frombuffer(data, dtype=dtype, offset=HEADER_BYTES).reshape(SAMPLES_PER_FRAME, 2)
    return SndFrame(
        flags=flags,
        seq=seq,
        smeter=smeter,
        last_gps_solution=last_gps_solution,
        gpssec=gpssec,
        gpsnsec=gpsnsec,
        iq=iq.astype(np.int16),
    )


def encode_msg(**pairs: object) -> bytes:
    """Build a ``MSG`` frame: ``MSG name=value ...`` (values URL-encoded where needed)."""
    parts = [f"{k}={quote(str(v), safe='.-_:/')}" if v is not None else k for k, v in pairs.items()]
    return ("MSG " + " ".join(parts)).encode()


def parse_msg(data: bytes) -> dict[str, str]:
    """Parse a ``MSG`` frame body into ``{name: value}`` (value '' for bare names)."""
    if data[:3] != b"MSG":
        raise FrameError(f"not a MSG frame (starts with {bytes(data[:3])!r})")
    text = data[3:].decode("utf-8", errors="replace").strip()
    out: dict[str, str] = {}
    for token in text.split():
        name, _, value = token.partition("=")
        out[name] = unquote(value)
    return out


def parse_set(text: str) -> tuple[str, dict[str, str]]:
    """Parse a client ``SET`` command: ``SET mod=iq low_cut=-5000`` -> ('mod', {...}).

    The first token names the command (``auth``, ``AR``, ``keepalive``, ``mod`` ...).
    """
    tokens = text.split()
    if not tokens or tokens[0] != "SET" or len(tokens) < 2:
        raise FrameError(f"not a SET command: {text[:60]!r}")
    pairs: dict[str, str] = {}
    for token in tokens[1:]:
        name, _, value = token.partition("=")
        pairs[name] = value
    return tokens[1].partition("=")[0], pairs


# --- GPS time -------------------------------------------------------------------------


def utc_to_gps(t: datetime) -> tuple[int, int, int]:
    """UTC datetime -> (GPS week, seconds of week, nanoseconds)."""
    delta = t.astimezone(UTC) - GPS_EPOCH + timedelta(seconds=GPS_UTC_LEAP_SECONDS)
    total_us = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    total_s, us = divmod(total_us, 1_000_000)
    week, sow = divmod(total_s, SECONDS_PER_WEEK)
    return week, sow, us * 1000


def gps_to_utc(gpssec: int, gpsnsec: int, *, now: datetime | None = None) -> datetime:
    """GPS seconds-of-week + ns -> UTC, taking the week from the host clock.

    The frame carries no week number, so pick the week that puts the result nearest to
    ``now`` (handles captures that straddle the Sunday rollover).
    """
    now = now or datetime.now(UTC)
    week, now_sow, _ = utc_to_gps(now)
    if gpssec - now_sow > SECONDS_PER_WEEK // 2:
        week -= 1
    elif now_sow - gpssec > SECONDS_PER_WEEK // 2:
        week += 1
    gps = timedelta(seconds=week * SECONDS_PER_WEEK + gpssec, microseconds=gpsnsec // 1000)
    return GPS_EPOCH + gps - timedelta(seconds=GPS_UTC_LEAP_SECONDS)


def gps_seconds(gpssec: int, gpsnsec: int) -> float:
    """Seconds of week as one float (ns resolution is kept to ~0.1 us, enough for a sample)."""
    return gpssec + gpsnsec * 1e-9
