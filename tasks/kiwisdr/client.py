"""Async KiwiSDR IQ client: one websocket session that records one capture.

The sequence follows kiwisdr-protocol.md step by step: authenticate, acknowledge the
audio rate, tune in IQ mode with fixed gain (so power is comparable across receivers),
keep the session alive once a second, and collect ceil(duration * rate / 512) frames
counted by sequence number. Lost frames are zero-filled AND listed as gaps, so the time
axis stays true for time-difference work while no one mistakes the zeros for signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
    start_at: datetime | None = None
    little_endian: bool = False
    ident: str = "rf-acquisition"
    frame_timeout_s: float = 5.0
    open_timeout_s: float = 10.0

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

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate

    def frame_timing(self) -> dict[str, list[float] | list[int]]:
        """Where each received frame starts in ``samples`` and its GPS time relative to the
        first received frame (s): the raw material for time-difference work, which needs
        more than one timestamp per capture to see clock steps or rate errors."""
        first_seq = int(self.frame_seq[0]) if self.frame_seq.size else 0
        gaps_before = self.gaps[0][1] if self.gaps and self.gaps[0][0] == 0 else 0
        starts = (self.frame_seq - first_seq) * codec.SAMPLES_PER_FRAME + gaps_before
        rel = self.frame_gps_s - (self.frame_gps_s[0] if self.frame_gps_s.size else 0.0)
        half_week = codec.SECONDS_PER_WEEK / 2
        rel = (rel + half_week) % codec.SECONDS_PER_WEEK - half_week  # across a week rollover
        week, _, _ = codec.utc_to_gps(self.start_utc)
        return {
            "gps_fix": self.gps_fix,
            "gps_week": week,
            "first_frame_gps_seconds_of_week": (
                round(float(self.frame_gps_s[0]), 9) if self.frame_gps_s.size else None
            ),
            "frame_sample_start": [int(v) for v in starts],
            "frame_gps_offset_s": [round(float(v), 9) for v in rel],
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
        session = _Session(receiver, settings, password, freq_offset_khz)
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
        self, receiver: str, settings: CaptureSettings, password: str | None, offset_khz: float
    ) -> None:
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
        s = self.settings
        collector: _FrameCollector | None = None
        deadline_start = time.monotonic() + MAX_START_WAIT_S
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
                    if s.start_at is not None and _frame_utc(frame) < s.start_at:
                        if time.monotonic() > deadline_start:
                            raise self._err(StreamStalled, "start instant never reached")
                        continue
                    collector = _FrameCollector(self.sample_rate, s.duration_s, frame.seq)
                try:
                    done = collector.add(frame)
                except ValueError as exc:
                    raise self._err(ProtocolError, str(exc)) from None
                if done:
                    little = bool(frame.flags & codec.FLAG_LITTLE_ENDIAN)
                    self.result = collector.capture(self, little)
                    return None
            # W/F and EXT frames are not requested and are ignored.

    async def _on_msg(self, ws: ClientConnection, msg: dict[str, str]) -> str | None:
        self.server.update(msg)
        if "badp" in msg and msg["badp"] not in ("0", ""):
            raise self._err(
                AuthenticationFailed, f"receiver rejected the password (badp={msg['badp']})"
            )
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


class _FrameCollector:
    """Accumulates frames by sequence number into one contiguous sample array."""

    def __init__(self, sample_rate: float, duration_s: float, first_seq: int) -> None:
        self.sample_rate = sample_rate
        self.frames_needed = max(1, math.ceil(duration_s * sample_rate / codec.SAMPLES_PER_FRAME))
        self.first_seq = first_seq
        n = self.frames_needed * codec.SAMPLES_PER_FRAME
        self.samples = np.zeros(n, dtype=np.complex64)
        self.present = np.zeros(self.frames_needed, dtype=bool)
        self.smeter: list[int] = []
        self.seqs: list[int] = []
        self.gps: list[float] = []
        self.overflows = 0
        self.first: codec.SndFrame | None = None
        self.last_seq = first_seq - 1

    @property
    def frames_received(self) -> int:
        return len(self.seqs)

    def add(self, frame: codec.SndFrame) -> bool:
        if frame.seq <= self.last_seq:
            raise ValueError(f"sequence went from {self.last_seq} to {frame.seq}")
        k = frame.seq - self.first_seq
        if k >= self.frames_needed:
            return True
        if self.first is None:
            self.first = frame
        a = k * codec.SAMPLES_PER_FRAME
        self.samples[a : a + codec.SAMPLES_PER_FRAME] = frame.complex_samples()
        self.present[k] = True
        self.smeter.append(frame.smeter)
        self.seqs.append(frame.seq)
        self.gps.append(codec.gps_seconds(frame.gpssec, frame.gpsnsec))
        self.overflows += int(frame.adc_overflow)
        self.last_seq = frame.seq
        return k == self.frames_needed - 1

    def gaps(self) -> list[tuple[int, int]]:
        """(first sample, sample count) of each run of missing frames."""
        out: list[tuple[int, int]] = []
        k = 0
        while k < self.frames_needed:
            if self.present[k]:
                k += 1
                continue
            start = k
            while k < self.frames_needed and not self.present[k]:
                k += 1
            out.append((start * codec.SAMPLES_PER_FRAME, (k - start) * codec.SAMPLES_PER_FRAME))
        return out

    def capture(self, session: _Session, little_endian: bool) -> Capture:
        assert self.first is not None
        first = self.first
        gps_fix = first.has_gps
        if gps_fix:
            start = codec.gps_to_utc(first.gpssec, first.gpsnsec)
        else:
            # No GPS clock: the best estimate is the host clock when the capture ended,
            # minus its length. Flagged, so time-difference work can leave it out.
            start = datetime.now(UTC) - timedelta(
                seconds=self.frames_needed * 512 / self.sample_rate
            )
        # When the first frame itself was lost, the first sample precedes the first
        # received frame by the frames that went missing before it.
        k0 = first.seq - self.first_seq
        start -= timedelta(seconds=k0 * codec.SAMPLES_PER_FRAME / self.sample_rate)
        return Capture(
            receiver=session.receiver,
            frequency_hz=session.settings.frequency_hz,
            tuned_khz=session.tuned_khz,
            freq_offset_khz=session.freq_offset_khz,
            sample_rate=self.sample_rate,
            samples=self.samples,
            start_utc=start,
            gps_fix=gps_fix,
            frames_expected=self.frames_needed,
            frames_received=self.frames_received,
            lost_frames=int(self.frames_needed - self.present.sum()),
            gaps=self.gaps(),
            adc_overflow_frames=self.overflows,
            smeter=np.asarray(self.smeter, dtype=np.uint16),
            frame_seq=np.asarray(self.seqs, dtype=np.int64),
            frame_gps_s=np.asarray(self.gps, dtype=np.float64),
            little_endian=little_endian,
            server={k: v for k, v in session.server.items() if k != "load_cfg"},
        )


def _frame_utc(frame: codec.SndFrame) -> datetime:
    if not frame.has_gps:
        return datetime.now(UTC)
    return codec.gps_to_utc(frame.gpssec, frame.gpsnsec)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
