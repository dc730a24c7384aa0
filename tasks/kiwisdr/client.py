"""Async KiwiSDR IQ client: one websocket session that records one capture.

The sequence follows kiwisdr-protocol.md step by step: authenticate, acknowledge the
audio rate, tune in IQ mode with fixed gain (so power is comparable across receivers),
keep the session alive once a second, and collect ceil(duration * rate / 512) frames
counted by sequence number. Lost frames are zero-filled AND listed as gaps, so the time
axis stays true for time-difference work while no one mistakes the zeros for signal.

Timing never rests on one frame's stamp: real KiwiSDRs stamp the first frame of a session
0/0 (or minutes stale) and occasionally send a stamp hours off marked fresh. Frames are
collected from the session start with every stamp kept; the start-instant gate only
trusts a stamp that agrees with an earlier one (never the first frame's); at the end
:func:`tasks.timing.fit_timing` fits all stamps robustly and the samples are trimmed so
that sample 0 is the first sample at or after the start instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, overload
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from tasks.kiwisdr import codec
from tasks.kiwisdr.errors import (
    AuthenticationFailed,
    FrequencyOutOfRange,
    KiwiSDRError,
    ProtocolError,
    ReceiverBusy,
    ReceiverDown,
    ReceiverUnreachable,
    StreamDropped,
    StreamStalled,
    bad_password_error,
)
from tasks.timing import (
    NS_PER_S,
    FrameStamp,
    TimingModel,
    datetime_to_ns,
    fit_timing,
    gps_stamp_to_utc_ns,
    host_clock_model,
    ns_to_datetime,
    sample_at,
)

logger = logging.getLogger(__name__)

MAX_DURATION_S = 600.0
MIN_DURATION_S = 0.05
# Longest we wait for the common start instant; the planner picks one a few seconds out.
MAX_START_WAIT_S = 120.0


@dataclass(frozen=True)
class CaptureSettings:
    """What to record and how: RF frequency, length, gain and passband."""

    frequency_hz: float
    duration_s: float
    passband_hz: tuple[float, float] = (-5000.0, 5000.0)
    gain_db: float = 50.0
    agc: bool = False
    # The common start instant: an aware datetime or integer ns since 1970 (UTC).
    start_at: datetime | int | None = None
    little_endian: bool = False
    ident: str = "rf-acquisition"
    frame_timeout_s: float = 5.0
    open_timeout_s: float = 10.0
    # Where frames go as they arrive (a file per session) instead of memory: long
    # captures of many receivers then cost disk, not RAM. None keeps them in memory.
    spool_dir: str | None = None

    def __post_init__(self) -> None:
        if not (MIN_DURATION_S <= self.duration_s <= MAX_DURATION_S):
            raise ValueError(
                f"duration_s={self.duration_s} is out of range "
                f"[{MIN_DURATION_S}, {MAX_DURATION_S}] seconds"
            )
        if not (math.isfinite(self.frequency_hz) and self.frequency_hz > 0):
            raise ValueError(f"frequency_hz={self.frequency_hz} must be a positive number of Hz")
        low, high = self.passband_hz
        if not (-6000.0 <= low < high <= 6000.0):
            raise ValueError(
                f"passband_hz={self.passband_hz} must satisfy -6000 <= low < high <= 6000 Hz"
            )
        if self.start_at is not None and not isinstance(self.start_at, (datetime, int)):
            raise ValueError(
                f"start_at={self.start_at!r} must be an aware datetime or integer ns since 1970"
            )

    @property
    def start_at_ns(self) -> int | None:
        """The start instant as integer ns since 1970 (UTC), or None."""
        if self.start_at is None:
            return None
        if isinstance(self.start_at, datetime):
            return datetime_to_ns(self.start_at)
        return int(self.start_at)


@dataclass
class Capture:
    """One receiver's raw recording and everything known about how it was taken."""

    receiver: str
    frequency_hz: float
    tuned_khz: float
    freq_offset_khz: float
    sample_rate: float
    samples: np.ndarray
    start_utc: datetime
    gps_fix: bool
    frames_expected: int
    frames_received: int
    lost_frames: int
    gaps: list[tuple[int, int]]
    adc_overflow_frames: int
    smeter: np.ndarray
    frame_seq: np.ndarray
    frame_gps_s: np.ndarray  # GPS seconds of week of each received frame's first sample
    little_endian: bool
    server: dict[str, str] = field(default_factory=dict)
    attempts: int = 1
    # The fitted clock of ``samples`` (sample 0 = ``timing.t0_ns``).
    timing: TimingModel | None = None
    # Every received frame's raw stamp, ``sample_index`` relative to ``samples[0]``
    # (negative for frames received before the start instant).
    stamps: Sequence[FrameStamp] = field(default_factory=list)
    # Sample 0 minus the requested start instant (ns); None without a start instant.
    start_offset_ns: int | None = None
    # The file behind ``samples`` when the capture streamed to disk (see release()).
    spool_path: str | None = None

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate

    def release(self) -> None:
        """Drop the samples; a capture that streamed to disk deletes its file (safe while
        a memory map of it is still open: the data goes when the last map does)."""
        self.samples = np.zeros(0, dtype=np.complex64)
        if self.spool_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.spool_path)
            self.spool_path = None

    @property
    def first_sample_ns(self) -> int | None:
        """UTC of sample 0 in integer ns since 1970 (from the timing model)."""
        return None if self.timing is None else self.timing.t0_ns

    def frame_timing(self) -> dict[str, Any]:
        """Where each GPS-stamped frame starts in ``samples`` and its stamp relative to
        sample 0 (s): the raw material behind the timing model, kept so a reader can
        audit or refit it. Frames without a stamp (0/0, no GPS clock) are left out."""
        t0 = self.timing.t0_ns if self.timing is not None else None
        keep = [
            st
            for st in list(self.stamps)
            if 0 <= st.sample_index < self.samples.size
            and (st.gpssec or st.gpsnsec)
            and st.last_gps_solution != codec.NO_GPS
        ]
        first = keep[0] if keep else None
        rel = []
        if t0 is not None:
            rel = [
                round((gps_stamp_to_utc_ns(st.gpssec, st.gpsnsec, t0) - t0) / 1e9, 9) for st in keep
            ]
        else:
            keep = []
        week, _, _ = codec.utc_to_gps(self.start_utc)
        return {
            "gps_fix": self.gps_fix,
            "gps_week": week,
            "first_frame_gps_seconds_of_week": (
                round(first.gpssec + first.gpsnsec * 1e-9, 9) if first is not None else None
            ),
            "frame_sample_start": [int(st.sample_index) for st in keep],
            "frame_gps_offset_s": rel,
            "frame_last_gps_solution": [int(st.last_gps_solution) for st in keep],
        }


def tuned_khz(frequency_hz: float, freq_offset_khz: float) -> float:
    """The Kiwi's own dial frequency for an RF frequency behind a down-converter."""
    return frequency_hz / 1e3 - freq_offset_khz


def check_tunable(
    frequency_hz: float,
    *,
    tunable_range_hz: tuple[float, float] | None,
    freq_offset_khz: float,
    coverage_khz: tuple[float, float] = (0.0, 30000.0),
    receiver: str | None = None,
) -> float:
    """Return the dial frequency in kHz or raise :class:`FrequencyOutOfRange` (permanent)."""
    if tunable_range_hz is not None:
        low, high = tunable_range_hz
        if not low <= frequency_hz <= high:
            raise FrequencyOutOfRange(
                f"frequency_hz={frequency_hz:.0f} is outside this receiver's tunable range "
                f"[{low:.0f}, {high:.0f}] Hz",
                receiver=receiver,
            )
    dial = tuned_khz(frequency_hz, freq_offset_khz)
    if not coverage_khz[0] <= dial <= coverage_khz[1]:
        raise FrequencyOutOfRange(
            f"frequency_hz={frequency_hz:.0f} tunes the KiwiSDR to {dial:.3f} kHz, outside its "
            f"[{coverage_khz[0]:.0f}, {coverage_khz[1]:.0f}] kHz coverage "
            f"(down-converter offset {freq_offset_khz:.3f} kHz)",
            receiver=receiver,
        )
    return dial


def snd_url(base_url: str, ts: int | None = None) -> str:
    """``http://host:port`` -> ``ws://host:port/<ts>/SND``."""
    parts = urlsplit(base_url if "//" in base_url else f"http://{base_url}")
    scheme = {"https": "wss", "wss": "wss"}.get(parts.scheme, "ws")
    ts = int(time.time()) & 0xFFFFFFFF if ts is None else ts
    return urlunsplit((scheme, parts.netloc, f"/{ts}/SND", "", ""))


async def capture_iq(
    base_url: str,
    settings: CaptureSettings,
    *,
    receiver: str = "",
    password: str | None = None,
    freq_offset_khz: float = 0.0,
    tunable_range_hz: tuple[float, float] | None = None,
    start_instant: Callable[[], Awaitable[int]] | None = None,
) -> Capture:
    """Record one IQ capture from the KiwiSDR at ``base_url``.

    Args:
        base_url: the receiver's ``http://host:port``.
        settings: frequency (RF Hz), duration, gain, start instant.
        receiver: name used in errors and the result.
        password: the receiver's password, if it has one (never logged).
        freq_offset_khz: the configured down-converter offset; the server's own
            ``freq_offset`` wins when it sends one.
        tunable_range_hz: RF range this receiver can tune; checked before connecting.
        start_instant: called once the session is tuned and its first IQ frame has
            arrived; returns the common start instant (integer ns since 1970) while the
            frames keep being buffered. This is how captures of one acquisition agree on
            an instant only when all of them are really streaming. Overrides
            ``settings.start_at``.

    Returns:
        A :class:`Capture` with complex64 samples (full scale 1.0).

    Example:
        >>> cap = asyncio.run(capture_iq("http://127.0.0.1:8073",
        ...                              CaptureSettings(145.5e6, 2.0)))  # doctest: +SKIP
    """
    if tunable_range_hz is not None:
        check_tunable(
            settings.frequency_hz,
            tunable_range_hz=tunable_range_hz,
            freq_offset_khz=freq_offset_khz,
            receiver=receiver,
        )
    url = base_url
    for _ in range(2):  # the original URL plus one redirect
        session = _Session(receiver, settings, password, freq_offset_khz, start_instant)
        start_instant = None  # asked once: a redirected session starts when it can
        redirect = await session.run(url)
        if redirect is None:
            assert session.result is not None
            return session.result
        logger.info("%s redirected to %s", receiver or base_url, redirect)
        if urlsplit(redirect).hostname != urlsplit(url).hostname:
            # The password belongs to the receiver it was configured for: never hand it
            # to whatever host a redirect names (it travels in clear over ws://).
            password = None
        url = redirect
    raise ProtocolError("redirected more than once", receiver=receiver)


class _Session:
    """State of one websocket session; ``run`` returns a redirect URL or sets ``result``."""

    def __init__(
        self,
        receiver: str,
        settings: CaptureSettings,
        password: str | None,
        offset_khz: float,
        start_instant: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.start_instant = start_instant
        self.instant_task: asyncio.Future[int] | None = None
        self.frames: _MemoryFrames | _FileFrames | None = None
        self.receiver = receiver
        self.settings = settings
        self.password = password or ""
        self.freq_offset_khz = offset_khz
        self.sample_rate: float | None = None
        self.server: dict[str, str] = {}
        self.configured = False
        self.tuned_khz = 0.0
        self.result: Capture | None = None

    def _err(self, cls: type[KiwiSDRError], message: str) -> KiwiSDRError:
        return cls(message, receiver=self.receiver)

    async def run(self, base_url: str) -> str | None:
        try:
            ws = await connect(
                snd_url(base_url),
                open_timeout=self.settings.open_timeout_s,
                max_size=2**20,
                compression=None,
                ping_interval=None,
                user_agent_header="rf-acquisition",
            )
        except InvalidURI as exc:
            raise self._err(ProtocolError, f"invalid receiver URL: {exc}") from None
        except InvalidStatus as exc:
            code = exc.response.status_code
            cls = ReceiverUnreachable if code >= 500 else ProtocolError
            raise self._err(cls, f"websocket upgrade refused with HTTP {code}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise self._err(ReceiverUnreachable, f"cannot connect: {_describe(exc)}") from None
        keepalive: asyncio.Task[None] | None = None
        try:
            await ws.send(f"SET auth t=kiwi p={self.password}")
            keepalive = asyncio.create_task(self._keepalive(ws))
            return await self._receive(ws)
        except ConnectionClosed as exc:
            # _receive maps a close seen by recv(); this is one seen by a send (the auth
            # or the tuning commands), which must be just as typed and just as transient.
            raise self._err(
                StreamDropped,
                f"connection closed during the handshake "
                f"(code {exc.rcvd.code if exc.rcvd else 'none'})",
            ) from None
        finally:
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await keepalive
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)

    async def _keepalive(self, ws: ClientConnection) -> None:
        # The server drops a session after 60 s without one; once a second matches the
        # reference client and costs nothing.
        while True:
            await asyncio.sleep(1.0)
            if self.configured:
                await ws.send("SET keepalive")

    async def _receive(self, ws: ClientConnection) -> str | None:
        try:
            return await self._receive_frames(ws)
        finally:
            if self.instant_task is not None and not self.instant_task.done():
                self.instant_task.cancel()  # the session ended before the instant was set
            if self.result is None and self.frames is not None:
                self.frames.discard()  # a failed session leaves no file behind

    async def _receive_frames(self, ws: ClientConnection) -> str | None:
        collector: _FrameCollector | None = None
        deadline_start = time.monotonic() + MAX_START_WAIT_S
        s = self.settings
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), s.frame_timeout_s)
            except TimeoutError:
                what = "an IQ frame" if self.configured else "the handshake"
                raise self._err(
                    StreamStalled, f"no data for {s.frame_timeout_s:.1f} s while waiting for {what}"
                ) from None
            except ConnectionClosed as exc:
                got = collector.frames_received if collector else 0
                raise self._err(
                    StreamDropped,
                    f"connection closed after {got} of "
                    f"{collector.frames_needed if collector else '?'} frames "
                    f"(code {exc.rcvd.code if exc.rcvd else 'none'})",
                ) from None
            if isinstance(message, str):
                continue  # the server never sends text frames; ignore rather than fail
            tag = message[:3]
            if tag == b"MSG":
                redirect = await self._on_msg(ws, codec.parse_msg(message))
                if redirect is not None:
                    return redirect
            elif tag == b"SND":
                if not self.configured or self.sample_rate is None:
                    raise self._err(ProtocolError, "SND frame before the session was configured")
                try:
                    frame = codec.decode_snd(message)
                except codec.FrameError as exc:
                    raise self._err(ProtocolError, f"malformed SND frame: {exc}") from None
                if collector is None:
                    collector = _FrameCollector(
                        self.sample_rate,
                        s.duration_s,
                        frame.seq,
                        s.start_at_ns,
                        pending=self.start_instant is not None,
                        frames=_frame_store(s.spool_dir, self.receiver),
                    )
                    self.frames = collector.iq
                    if self.start_instant is not None:
                        # Tuned and streaming: ask for the instant, keep buffering meanwhile.
                        self.instant_task = asyncio.ensure_future(self.start_instant())
                if self.instant_task is not None and self.instant_task.done():
                    collector.set_start(self.instant_task.result())
                    self.instant_task = None
                try:
                    done = collector.add(frame, time.time_ns())
                except ValueError as exc:
                    raise self._err(ProtocolError, str(exc)) from None
                if done:
                    little = bool(frame.flags & codec.FLAG_LITTLE_ENDIAN)
                    self.result = collector.capture(self, little)
                    return None
                if not collector.started and time.monotonic() > deadline_start:
                    raise self._err(StreamStalled, "start instant never reached")
            # W/F and EXT frames are not requested and are ignored.

    async def _on_msg(self, ws: ClientConnection, msg: dict[str, str]) -> str | None:
        self.server.update(msg)
        if "badp" in msg and msg["badp"] not in ("0", ""):
            raise bad_password_error(msg["badp"], receiver=self.receiver)
        if "password_timeout" in msg:
            raise self._err(AuthenticationFailed, "authentication timed out (password_timeout)")
        if "too_busy" in msg:
            raise self._err(ReceiverBusy, f"all {msg['too_busy']} channels are in use (too_busy)")
        if "down" in msg:
            raise self._err(ReceiverDown, "receiver reports it is down")
        if "redirect" in msg:
            target = msg["redirect"]
            if not target.startswith(("http://", "https://", "ws://", "wss://")):
                raise self._err(ProtocolError, f"redirect to an unusable URL {target!r}")
            return target
        if "sample_rate" in msg:
            try:
                rate = float(msg["sample_rate"])
            except ValueError:
                raise self._err(ProtocolError, f"sample_rate={msg['sample_rate']!r}") from None
            if not (1000.0 <= rate <= 100000.0):
                raise self._err(ProtocolError, f"implausible sample_rate={rate}")
            self.sample_rate = rate
        if "freq_offset" in msg:
            with contextlib.suppress(ValueError):
                self.freq_offset_khz = float(msg["freq_offset"])
        if "audio_rate" in msg and not self.configured:
            await self._configure(ws, int(float(msg["audio_rate"])))
        return None

    async def _configure(self, ws: ClientConnection, audio_rate: int) -> None:
        s = self.settings
        coverage = (0.0, 30000.0)
        if "center_freq" in self.server and "bandwidth" in self.server:
            centre = float(self.server["center_freq"]) / 1e3
            half = float(self.server["bandwidth"]) / 2e3
            coverage = (centre - half, centre + half)
        dial = check_tunable(
            s.frequency_hz,
            tunable_range_hz=None,
            freq_offset_khz=self.freq_offset_khz,
            coverage_khz=coverage,
            receiver=self.receiver,
        )
        low, high = s.passband_hz
        commands = [
            f"SET AR OK in={audio_rate} out=44100",
            "SET squelch=0 max=0",
            "SET genattn=0",
            "SET gen=0 mix=-1",
            f"SET ident_user={s.ident}",
        ]
        if s.little_endian:
            commands.append("SET little-endian")
        commands += [
            f"SET mod=iq low_cut={low:.0f} high_cut={high:.0f} freq={dial:.3f}",
            f"SET agc={int(s.agc)} hang=0 thresh=-100 slope=6 decay=1000 manGain={s.gain_db:.0f}",
            "SET keepalive",
        ]
        for command in commands:
            await ws.send(command)
        self.tuned_khz = dial
        self.configured = True


# A stamp is a gate anchor only when it agrees with an earlier stamp to this much plus
# the rate uncertainty (200 ppm covers every KiwiSDR's true rate against its nominal).
_ANCHOR_TOLERANCE_NS = 100_000
_ANCHOR_RATE_TOLERANCE = 2e-4
# Frames this far before the provisional start are released (their stamps are kept).
_KEEP_BEFORE_START_FRAMES = 8


class FrameStamps(Sequence[FrameStamp]):
    """Frame stamps as int64 columns (sample_index, gpssec, gpsnsec, last_gps_solution):
    32 bytes a frame instead of ~250 as objects. Every capture keeps one stamp per frame
    until it is processed, and 200 receivers x 60 s are 280 000 frames."""

    __slots__ = ("_rows",)

    def __init__(self, rows: np.ndarray) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, i: int) -> FrameStamp: ...
    @overload
    def __getitem__(self, i: slice) -> list[FrameStamp]: ...
    def __getitem__(self, i: int | slice) -> FrameStamp | list[FrameStamp]:
        if isinstance(i, slice):
            return [FrameStamp(*row) for row in self._rows[i].tolist()]
        return FrameStamp(*self._rows[i].tolist())

    def __iter__(self) -> Iterator[FrameStamp]:
        return (FrameStamp(*row) for row in self._rows.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrameStamps({len(self)} frames)"


class _FrameLog:
    """What each received frame said, one int64 row a frame in a growing array (frames
    arrive in sequence order, so ``k`` is sorted): a frame's facts as Python objects cost
    ~500 bytes, which at 200 receivers x 60 s held ~140 MB until the captures ended."""

    K, INDEX, GPSSEC, GPSNSEC, LGS, HOST_REF, SMETER, OVERFLOW = range(8)

    def __init__(self, capacity: int) -> None:
        self._rows = np.zeros((max(16, capacity), 8), dtype=np.int64)
        self.n = 0

    def append(self, row: tuple[int, int, int, int, int, int, int, int]) -> None:
        if self.n == len(self._rows):
            grown = np.zeros((2 * self.n, 8), dtype=np.int64)
            grown[: self.n] = self._rows
            self._rows = grown
        self._rows[self.n] = row
        self.n += 1

    def column(self, c: int) -> np.ndarray:
        return self._rows[: self.n, c]

    def stamps(self, shift: int = 0) -> FrameStamps:
        """The stamps, ``sample_index`` minus ``shift`` (a copy, trimmed to the frames)."""
        rows = self._rows[: self.n, self.INDEX : self.LGS + 1].copy()
        rows[:, 0] -= shift
        return FrameStamps(rows)

    def rows_of(self, ks: Sequence[int]) -> np.ndarray:
        """Row numbers of frames ``ks`` (all of which were received)."""
        return np.searchsorted(self.column(self.K), np.asarray(ks, dtype=np.int64))


class _FrameCollector:
    """Accumulates frames by sequence number from the session start, with every stamp.

    Without a start instant the capture is the first ``frames_needed`` frames. With one,
    frames are kept until a provisional clock (the latest stamp that agrees with an
    earlier one; the host clock for receivers without GPS) says the window from the
    instant is complete; then the robust fit of all stamps decides, to the sample, where
    the capture starts.
    """

    def __init__(
        self,
        sample_rate: float,
        duration_s: float,
        first_seq: int,
        start_ns: int | None,
        *,
        pending: bool = False,
        frames: _MemoryFrames | _FileFrames | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.ns_per_sample = NS_PER_S / sample_rate
        self.frames_needed = max(1, math.ceil(duration_s * sample_rate / codec.SAMPLES_PER_FRAME))
        self.n_out = self.frames_needed * codec.SAMPLES_PER_FRAME
        self.first_seq = first_seq
        self.start_ns = start_ns
        # frame number -> complex64 samples, in memory or in a file
        self.iq: _MemoryFrames | _FileFrames = frames if frames is not None else _MemoryFrames()
        # Every frame's stamp, smeter, overflow and the host clock's idea of the time of
        # sample 0 from its arrival.
        self.log = _FrameLog(self.frames_needed + 64)
        self._host_cache: int | None = None
        self.no_gps_frames = 0
        self.stamped_frames = 0  # non-empty stamps after the first frame
        self.prune_next = 0
        self.last_seq = first_seq - 1
        self.anchor: tuple[int, int] | None = None  # (sample index, UTC ns) trusted so far
        self.candidate: tuple[int, int] | None = None
        self.started = start_ns is None and not pending
        # The instant is still being agreed on: keep every frame, decide nothing yet.
        self.pending = pending
        self.little_endian = False

    def set_start(self, start_ns: int) -> None:
        """The instant is known now; frames before it are dropped from here on."""
        self.start_ns = int(start_ns)
        self.pending = False

    @property
    def frames_received(self) -> int:
        return self.log.n

    def add(self, frame: codec.SndFrame, host_ns: int) -> bool:
        if frame.seq <= self.last_seq:
            raise ValueError(f"sequence went from {self.last_seq} to {frame.seq}")
        k = frame.seq - self.first_seq
        index = k * codec.SAMPLES_PER_FRAME
        self.last_seq = frame.seq
        self.iq[k] = frame.complex_samples()
        stamp = FrameStamp(index, frame.gpssec, frame.gpsnsec, frame.last_gps_solution)
        host_ref = host_ns - round((index + codec.SAMPLES_PER_FRAME) * self.ns_per_sample)
        stamp_row = (index, frame.gpssec, frame.gpsnsec, frame.last_gps_solution)
        self.log.append((k, *stamp_row, host_ref, frame.smeter, int(frame.adc_overflow)))
        self.no_gps_frames += frame.last_gps_solution == codec.NO_GPS
        self.stamped_frames += bool(k and (frame.gpssec or frame.gpsnsec))
        if self.start_ns is None and not self.pending:
            return k >= self.frames_needed - 1
        self._update_anchor(stamp, k, host_ns)
        if self.pending:
            return False
        start = self._provisional_start()
        if start is None:
            return False
        self.started = self.started or index + codec.SAMPLES_PER_FRAME > start
        while (self.prune_next + _KEEP_BEFORE_START_FRAMES) * 512 < start:
            self.iq.pop(self.prune_next, None)
            self.prune_next += 1
        if index + codec.SAMPLES_PER_FRAME < start + self.n_out + codec.SAMPLES_PER_FRAME:
            return False
        # The provisional clock says the window is complete: the fit has the last word.
        model = self.fit()
        return index + codec.SAMPLES_PER_FRAME >= self._first_index(model) + self.n_out

    def _update_anchor(self, stamp: FrameStamp, k: int, host_ns: int) -> None:
        if k == 0 or stamp.last_gps_solution == codec.NO_GPS or not (stamp.gpssec or stamp.gpsnsec):
            return  # the first frame and empty stamps never open the gate
        t = gps_stamp_to_utc_ns(stamp.gpssec, stamp.gpsnsec, host_ns)
        if abs(t - host_ns) > 60 * NS_PER_S:
            return
        if self.candidate is not None:
            i0, t0 = self.candidate
            predicted = t0 + (stamp.sample_index - i0) * self.ns_per_sample
            tolerance = _ANCHOR_TOLERANCE_NS + _ANCHOR_RATE_TOLERANCE * abs(t - t0)
            if abs(t - predicted) <= tolerance:
                self.anchor = (stamp.sample_index, t)
        self.candidate = (stamp.sample_index, t)

    def _provisional_start(self) -> int | None:
        """Sample index of the start instant by the provisional clock."""
        assert self.start_ns is not None
        if self.anchor is not None:
            i, t = self.anchor
            return i + math.ceil((self.start_ns - t) / self.ns_per_sample)
        if self.no_gps_frames == self.log.n or (self.log.n > 3 and self.stamped_frames == 0):
            # No GPS clock, or GPS timestamps turned off: the host clock is all there is.
            n = self.log.n
            if self._host_cache is None or n & (n - 1) == 0 or n % 64 == 0:
                self._host_cache = self._host_ref_ns()
            model = host_clock_model(self._host_cache, self.sample_rate)
            return self._first_index(model)
        return None

    def _host_ref_ns(self) -> int:
        """Host clock's UTC of sample 0: a frame leaves the receiver once its last sample
        is taken, so arrival minus the frame's end; the median rides out network jitter."""
        return int(np.median(self.log.column(_FrameLog.HOST_REF)))

    def _host_model(self) -> TimingModel:
        flags = ["no_gps"] if self.no_gps_frames == self.log.n else []
        return host_clock_model(
            self._host_ref_ns(), self.sample_rate, frames=self.log.n, flags=flags
        )

    def fit(self) -> TimingModel:
        stamps = list(self.log.stamps())  # objects only while fitting
        model = fit_timing(
            stamps, nominal_rate_hz=self.sample_rate, host_ref_ns=self._host_ref_ns()
        )
        if not model.gps and self.no_gps_frames == self.log.n:
            return self._host_model()
        return model

    def _first_index(self, model: TimingModel) -> int:
        """First sample at or after the start instant (0 without one, or when it passed)."""
        if self.start_ns is None:
            return 0
        return max(0, math.ceil(sample_at(model, self.start_ns) - 1e-6))

    def capture(self, session: _Session, little_endian: bool) -> Capture:
        model = self.fit()
        i0 = self._first_index(model)
        n = self.n_out
        k_first, k_last = i0 // 512, (i0 + n - 1) // 512
        present = [k for k in range(k_first, k_last + 1) if k in self.iq]
        samples = self.iq.window(i0, n)
        model = model.shifted(i0)
        missing = np.ones(n, dtype=bool)
        for k in present:
            a, b = max(k * 512 - i0, 0), min((k + 1) * 512 - i0, n)
            missing[a:b] = False
        gaps = _runs(missing)
        window = present
        window_set = set(window)
        lost = sum(1 for k in range(k_first, k_last + 1) if k not in window_set)
        seq_first = self.first_seq
        log = self.log
        rows = log.rows_of(window)
        start = ns_to_datetime(model.t0_ns)
        if not model.gps:
            # No GPS clock, or its timestamps are off: flagged (gps_fix=False) so
            # time-difference work leaves this capture out.
            logger.warning(
                "%s: no usable GPS stamps (%s): start time from the host clock",
                session.receiver,
                ", ".join(model.flags),
            )
        return Capture(
            receiver=session.receiver,
            frequency_hz=session.settings.frequency_hz,
            tuned_khz=session.tuned_khz,
            freq_offset_khz=session.freq_offset_khz,
            sample_rate=self.sample_rate,
            samples=samples,
            start_utc=start,
            gps_fix=model.gps,
            frames_expected=self.frames_needed,
            frames_received=len(window),
            lost_frames=lost,
            gaps=gaps,
            adc_overflow_frames=int(log.column(_FrameLog.OVERFLOW)[rows].sum()),
            smeter=log.column(_FrameLog.SMETER)[rows].astype(np.uint16),
            frame_seq=np.asarray(window, dtype=np.int64) + seq_first,
            frame_gps_s=(
                log.column(_FrameLog.GPSSEC)[rows] + log.column(_FrameLog.GPSNSEC)[rows] * 1e-9
            ),
            little_endian=little_endian,
            server={k: v for k, v in session.server.items() if k != "load_cfg"},
            timing=model,
            stamps=log.stamps(shift=i0),
            start_offset_ns=(None if self.start_ns is None else model.t0_ns - self.start_ns),
            spool_path=self.iq.path,
        )


class _MemoryFrames(dict[int, np.ndarray]):
    """Frames kept in memory: frame number -> 512 complex64 samples."""

    path: str | None = None

    def discard(self) -> None:
        self.clear()

    def window(self, i0: int, n: int) -> np.ndarray:
        """Samples ``i0 .. i0+n`` (zeros where frames were lost)."""
        k_first, k_last = i0 // 512, (i0 + n - 1) // 512
        buf = np.zeros((k_last - k_first + 1) * 512, dtype=np.complex64)
        for k in range(k_first, k_last + 1):
            if k in self:
                a = (k - k_first) * 512
                buf[a : a + 512] = self[k]
        off = i0 - k_first * 512
        return buf[off : off + n]


class _FileFrames:
    """Frames written to a file as they arrive, each at its own place (frame k at byte
    k * 512 * 8), so a lost frame is a hole that reads as zeros and the capture window is
    one contiguous memory map of the file: RAM no longer grows with duration."""

    def __init__(self, path: str) -> None:
        self.path: str | None = path
        self._file = open(path, "w+b")  # noqa: SIM115 - closed in window()
        self._present = bytearray()  # one byte a frame number, 1 = on file (not a set of
        # ints: ~60 bytes a frame, which is what streaming to disk is meant to save)

    def __contains__(self, k: object) -> bool:
        return isinstance(k, int) and 0 <= k < len(self._present) and self._present[k] == 1

    def __setitem__(self, k: int, samples: np.ndarray) -> None:
        self._file.seek(k * 512 * 8)
        self._file.write(np.ascontiguousarray(samples, dtype=np.complex64).tobytes())
        if k >= len(self._present):
            self._present.extend(bytes(k + 1 - len(self._present)))
        self._present[k] = 1

    def pop(self, k: int, default: Any = None) -> Any:
        """Pruning before the instant: the bytes stay on disk (cheap); the frame is gone."""
        if k in self:
            self._present[k] = 0
        return default

    def discard(self) -> None:
        """Close and delete the file (the session failed: nothing to keep)."""
        if not self._file.closed:
            self._file.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self.path = None

    def window(self, i0: int, n: int) -> np.ndarray:
        """Samples ``i0 .. i0+n`` as a read-only memory map of the file."""
        end = (i0 + n) * 8
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() < end:
            self._file.truncate(end)  # lost trailing frames read as zeros
        self._file.close()
        assert self.path is not None
        return np.memmap(self.path, dtype=np.complex64, mode="r", offset=i0 * 8, shape=(n,))


def _frame_store(spool_dir: str | None, receiver: str) -> _MemoryFrames | _FileFrames:
    if spool_dir is None:
        return _MemoryFrames()
    os.makedirs(spool_dir, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f"{receiver or 'capture'}-", suffix=".c64", dir=spool_dir)
    os.close(fd)
    return _FileFrames(path)


def _runs(missing: np.ndarray) -> list[tuple[int, int]]:
    """(first sample, sample count) of each run of True."""
    out: list[tuple[int, int]] = []
    n = missing.size
    k = 0
    while k < n:
        if not missing[k]:
            k += 1
            continue
        start = k
        while k < n and missing[k]:
            k += 1
        out.append((start, k - start))
    return out


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
