"""A KiwiSDR network simulator that speaks the real IQ protocol over real websockets.

One process (one background thread with its own event loop) serves any number of
simulated receivers on loopback, each on its own port with a ``/status`` page and a
``/<ts>/SND`` websocket, pacing frames in real time from the host clock. Samples come
from :mod:`tasks.kiwisdr.emitter` plus thermal noise, so what the client records can be
checked against ground truth. Faults are injected per receiver to exercise every error
path of the client and the flow.

Run standalone: ``python -m tasks.kiwisdr.simulator --network seed --base-port 8073``
(``--write-receivers FILE`` writes the receiver file that points blocks at it; it prints a
kiwirecorder command line that works against it).

:class:`SimulatorProcess` serves a network built here from a child process instead: the
simulator paces hundreds of sessions in real time, and sharing one GIL with the flow that
captures and processes them stalled frames by seconds (200 x 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tasks.kiwisdr import codec
from tasks.kiwisdr.emitter import Emitter, PathTruth, path_truth, received_signal

logger = logging.getLogger(__name__)

_SND_PATH = re.compile(r"^/(?:ws/kiwi/)?(\d+)/SND$")
KIWI_COVERAGE_KHZ = (0.0, 30000.0)


@dataclass(frozen=True)
class Faults:
    """Misbehaviour to inject into one simulated receiver (all off by default).

    ``drop_after_frames`` closes the socket after that many frames, on the first
    ``drop_attempts`` connections only (``None`` = always); ``lost_frames`` lists frame
    indexes (0-based, counted from the first frame sent) that are skipped while their
    sequence numbers are still consumed.
    """

    refuse: bool = False
    too_busy: bool = False
    down: bool = False
    drop_after_frames: int | None = None
    drop_attempts: int | None = None
    stall_after_frames: int | None = None
    malformed_at_frame: int | None = None
    lost_frames: tuple[int, ...] = ()
    no_gps: bool = False
    redirect_to: str | None = None
    # Timing defects of real KiwiSDRs (kiwisdr-protocol.md, "What real KiwiSDRs do"):
    # the first frame of every session is stamped 0/0 with last_gps_solution=0 (on by
    # default, as on every real receiver); or that first stamp is this many seconds stale;
    # (frame index, seconds) stamps off by that much yet marked fresh; GPS timestamps
    # turned off by the operator (all 0/0, /status tdoa_ch=-1).
    zero_first_frame: bool = True
    stale_first_s: float | None = None
    outlier_stamps: tuple[tuple[int, float], ...] = ()
    timestamps_off: bool = False
    # Answer the auth with ``MSG badp=<code>`` (2 starting, 6 database update ...).
    badp: int | None = None


@dataclass(frozen=True)
class SimulatedReceiver:
    """One simulated KiwiSDR: position, hardware character and faults."""

    name: str
    latitude: float
    longitude: float
    altitude_m: float = 0.0
    sample_rate: float = 12001.135
    noise_density_dbfs_hz: float = -110.0
    lo_ppm: float = 0.0
    full_scale_dbm: float = -30.0
    noise_figure_db: float | None = None
    freq_offset_khz: float = 0.0
    password: str | None = None
    users_max: int = 4
    antenna: str = "simulated vertical"
    faults: Faults = field(default_factory=Faults)
    # Sample-clock error relative to ``sample_rate`` (ppm): the true rate is announced,
    # stamped and sampled consistently, as a GPS-disciplined KiwiSDR does.
    clock_ppm: float = 0.0
    # A fresh GPS fix this often (last_gps_solution counts whole seconds since one, so
    # a fix is only visible as a decrease when the interval exceeds 1 s).
    gps_fix_interval_s: float = 1.1

    @property
    def true_sample_rate(self) -> float:
        """The rate the receiver really samples at, to the 1e-6 Hz it announces."""
        return round(self.sample_rate * (1.0 + self.clock_ppm * 1e-6), 6)

    @property
    def rate_fraction(self) -> Fraction:
        """The true rate as an exact fraction, so stamps are exact to the nanosecond."""
        return Fraction(f"{self.true_sample_rate:.6f}")

    @property
    def position(self) -> tuple[float, float, float]:
        return (self.latitude, self.longitude, self.altitude_m)

    @property
    def noise_density(self) -> float:
        """Thermal noise density in dBFS/Hz: kT (-174 dBm/Hz) plus the noise figure, referred
        to the input level that reads full scale; ``noise_density_dbfs_hz`` when no noise
        figure is given."""
        if self.noise_figure_db is None:
            return self.noise_density_dbfs_hz
        return THERMAL_NOISE_DBM_HZ + self.noise_figure_db - self.full_scale_dbm


THERMAL_NOISE_DBM_HZ = -174.0


@dataclass
class _Session:
    """What one connected client has asked for so far."""

    authenticated: bool = False
    ar_ok: bool = False
    mod: str | None = None
    passband: tuple[float, float] | None = None
    freq_khz: float | None = None
    agc_set: bool = False
    little_endian: bool = False
    last_message: float = field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return bool(
            self.ar_ok and self.mod and self.passband and self.freq_khz is not None and self.agc_set
        )


class SimulatedNetwork:
    """Serve simulated receivers on loopback from a background thread.

    Use as a context manager; ``url(name)`` gives each receiver's base URL.
    ``commands(name)`` is the log of client commands the receiver saw (passwords masked)
    and ``connections(name)`` counts websocket attempts, which is how tests observe the
    handshake order and the retry count.
    """

    def __init__(
        self,
        receivers: Iterable[SimulatedReceiver],
        emitter: Emitter,
        *,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        seed: int = 0,
    ) -> None:
        self.receivers = {r.name: r for r in receivers}
        self.emitter = emitter
        self.host = host
        self.seed = seed
        self._requested_ports = ports or {}
        self.ports: dict[str, int] = {}
        # Sample n of every receiver is taken at GPS time epoch + n / fs. The epoch is the
        # start of the GPS week, so the emitted signal is the same function of absolute time
        # in every process, not just this one.
        week, _, _ = codec.utc_to_gps(datetime.now(UTC))
        self.epoch_gps_s = week * codec.SECONDS_PER_WEEK
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[Server] = []
        self._commands: dict[str, list[str]] = {name: [] for name in self.receivers}
        self._connections: dict[str, int] = dict.fromkeys(self.receivers, 0)
        self._active: dict[str, int] = dict.fromkeys(self.receivers, 0)
        self._lock = threading.Lock()
        self._sources: dict[tuple[str, float, tuple[float, float] | None], _FrameSource] = {}
        self._noise: np.ndarray | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> SimulatedNetwork:
        """Start serving; returns once every port is listening.

        The noise table is built here, in the caller's thread: built lazily on the event
        loop at the first stream, it held up every receiver's first frames (~100 ms).
        """
        self.noise_table()
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_servers())
            except BaseException as exc:  # surfaced to the caller of start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop_servers())
            loop.close()

        self._thread = threading.Thread(target=run, name="kiwisdr-simulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> SimulatedNetwork:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start_servers(self) -> None:
        for name, rx in self.receivers.items():
            port = self._requested_ports.get(name, 0)
            if rx.faults.refuse:
                # Reserve nothing: a port with no listener refuses connections, as a
                # receiver that is switched off does.
                self.ports[name] = port or _unused_port(self.host)
                continue
            server = await serve(
                lambda conn, _name=name: self._handle(_name, conn),
                self.host,
                port,
                process_request=lambda conn, req, _name=name: self._http(_name, conn, req),
                max_size=2**16,
                compression=None,
                ping_interval=None,
            )
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    async def _stop_servers(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    # --- observation -------------------------------------------------------------------

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.ports[name]}"

    def commands(self, name: str) -> list[str]:
        with self._lock:
            return list(self._commands[name])

    def connections(self, name: str) -> int:
        with self._lock:
            return self._connections[name]

    def truth(self, name: str, frequency_hz: float) -> PathTruth:
        """Ground truth for receiver ``name`` tuned to RF ``frequency_hz``."""
        rx = self.receivers[name]
        return path_truth(
            self.emitter,
            rx.position,
            tuned_hz=frequency_hz,
            lo_ppm=rx.lo_ppm,
            full_scale_dbm=rx.full_scale_dbm,
            noise_density_dbfs_hz=rx.noise_density,
        )

    def frame_iq(
        self,
        name: str,
        sample_index: int,
        frequency_hz: float,
        passband_hz: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, bool]:
        """The int16 (512, 2) samples receiver ``name`` sends for the frame starting at
        absolute sample ``sample_index`` when tuned to RF ``frequency_hz``, and whether it
        clipped. Deterministic: tests regenerate frames to check the client bit for bit.
        A carrier outside the passband (default: the Nyquist band) is filtered out.
        """
        key = (name, frequency_hz, passband_hz)
        source = self._sources.get(key)
        if source is None:
            source = self._sources[key] = self._make_source(name, frequency_hz, passband_hz)
        return source.frame(sample_index)

    def noise_table(self) -> np.ndarray:
        """One shared table of unit normals; each frame reads a window at a hashed offset.

        Drawing fresh normals per frame cost ~4x the rest of a frame, and the capacity
        target (200 real-time receivers on < 1 core) needs it cheap.
        """
        if self._noise is None:
            rng = np.random.default_rng(self.seed)
            self._noise = rng.standard_normal((_NOISE_TABLE, 2)).astype(np.float32)
        return self._noise

    def _make_source(
        self, name: str, frequency_hz: float, passband_hz: tuple[float, float] | None
    ) -> _FrameSource:
        rx = self.receivers[name]
        truth = self.truth(name, frequency_hz)
        low, high = passband_hz or (-rx.true_sample_rate / 2, rx.true_sample_rate / 2)
        return _FrameSource(
            emitter=self.emitter,
            truth=truth,
            in_band=low <= truth.frequency_offset_hz <= high,
            sample_rate=rx.true_sample_rate,
            sigma=math.sqrt(10.0 ** (rx.noise_density / 10.0) * rx.true_sample_rate / 2.0),
            noise=self.noise_table(),
            stream=(self.seed << 20) ^ list(self.receivers).index(name),
        )

    # --- HTTP /status ------------------------------------------------------------------

    def _http(self, name: str, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/status":
            return connection.respond(HTTPStatus.OK, self.status_text(name))
        if _SND_PATH.match(path):
            return None
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")

    def status_text(self, name: str) -> str:
        """The ``/status`` page: ``key=value`` lines as a KiwiSDR serves them."""
        rx = self.receivers[name]
        with self._lock:
            users = self._active[name]
        gps_good = 0 if rx.faults.no_gps else 9
        stamps_off = rx.faults.no_gps or rx.faults.timestamps_off
        lines = {
            "status": "active" if not rx.faults.down else "offline",
            "offline": "yes" if rx.faults.down else "no",
            "name": f"{rx.name} (simulated)",
            "sdr_hw": "KiwiSDR v1.711 (simulated) ⁣ 📡 GPS",
            "op_email": "",
            "bands": "0-30000000",
            "freq_offset": f"{rx.freq_offset_khz:.3f}",
            "users": str(users),
            "users_max": str(rx.users_max),
            "avatar_ctime": "0",
            "gps": f"({rx.latitude:.6f}, {rx.longitude:.6f})",
            "gps_good": str(gps_good),
            "fixes": "0" if rx.faults.no_gps else "1200",
            "fixes_min": "0" if rx.faults.no_gps else str(round(60 / rx.gps_fix_interval_s)),
            "fixes_hour": "0" if rx.faults.no_gps else "1200",
            "tdoa_id": rx.name.replace(" ", ""),
            "tdoa_ch": "-1" if stamps_off else str(rx.users_max - users),
            "asl": str(int(rx.altitude_m)),
            "loc": rx.name,
            "sw_version": "KiwiSDR_v1.711",
            "antenna": rx.antenna,
            "snr": "0,0",
            "adc_ov": "0",
            "uptime": str(int(time.monotonic())),
            "gps_host": "0",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    # --- websocket SND -----------------------------------------------------------------

    def _log(self, name: str, text: str) -> None:
        if text.startswith("SET auth"):
            text = re.sub(r"\bp=\S*", "p=***", text)
        with self._lock:
            self._commands[name].append(text)

    async def _handle(self, name: str, ws: ServerConnection) -> None:
        rx = self.receivers[name]
        with self._lock:
            self._connections[name] += 1
            attempt = self._connections[name]
            self._active[name] += 1
        try:
            await self._serve_snd(name, rx, ws, attempt)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._active[name] -= 1

    async def _serve_snd(
        self, name: str, rx: SimulatedReceiver, ws: ServerConnection, attempt: int
    ) -> None:
        session = _Session()
        await ws.send(codec.encode_msg(sample_rate=f"{rx.true_sample_rate:.6f}"))
        streamer: asyncio.Task[None] | None = None
        try:
            while True:
                timeout = 20.0 if not session.authenticated else 60.0
                try:
                    message = await asyncio.wait_for(ws.recv(), timeout)
                except TimeoutError:
                    if not session.authenticated:
                        await ws.send(codec.encode_msg(password_timeout=1))
                    await ws.close()
                    return
                if not isinstance(message, str):
                    continue
                self._log(name, message)
                session.last_message = time.monotonic()
                if not await self._apply(name, rx, session, ws, message, attempt):
                    return
                if session.ready and streamer is None:
                    streamer = asyncio.create_task(self._stream(name, rx, session, ws, attempt))
        finally:
            if streamer is not None:
                streamer.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await streamer

    async def _apply(
        self,
        name: str,
        rx: SimulatedReceiver,
        session: _Session,
        ws: ServerConnection,
        message: str,
        attempt: int,
    ) -> bool:
        """Apply one client command; returns False when the connection is over."""
        try:
            command, args = codec.parse_set(message)
        except codec.FrameError:
            return True  # a real Kiwi ignores what it does not understand
        if command == "auth":
            if rx.faults.badp is not None:
                await ws.send(codec.encode_msg(badp=rx.faults.badp))
                await ws.close()
                return False
            if rx.password and args.get("p", "") != rx.password:
                await ws.send(codec.encode_msg(badp=1))
                await ws.close()
                return False
            with self._lock:
                busy = self._active[name] > rx.users_max
            if rx.faults.too_busy or busy:
                await ws.send(codec.encode_msg(too_busy=rx.users_max))
                await ws.close()
                return False
            if rx.faults.down:
                await ws.send(codec.encode_msg(down=None))
                await ws.close()
                return False
            if rx.faults.redirect_to and attempt == 1:
                await ws.send(codec.encode_msg(redirect=rx.faults.redirect_to))
                await ws.close()
                return False
            session.authenticated = True
            await ws.send(codec.encode_msg(rx_chans=rx.users_max))
            await ws.send(codec.encode_msg(chan_no_pwd=0))
            await ws.send(codec.encode_msg(badp=0))
            await ws.send(
                codec.encode_msg(
                    version_maj=1, version_min=711, freq_offset=f"{rx.freq_offset_khz:.3f}"
                )
            )
            await ws.send(
                codec.encode_msg(center_freq=15000000, bandwidth=30000000, adc_clk_nom=66666600)
            )
            await ws.send(codec.encode_msg(audio_init=0, audio_rate=12000))
        elif not session.authenticated:
            return True
        elif command == "AR":
            session.ar_ok = float(args.get("out", "0") or 0) != 0
        elif command == "mod":
            session.mod = args.get("mod")
            session.passband = (float(args["low_cut"]), float(args["high_cut"]))
            session.freq_khz = float(args["freq"])
        elif command == "agc":
            session.agc_set = True
        elif command == "little-endian":
            session.little_endian = True
        return True

    async def _stream(
        self,
        name: str,
        rx: SimulatedReceiver,
        session: _Session,
        ws: ServerConnection,
        attempt: int,
    ) -> None:
        """Send IQ frames in real time until the client goes away or a fault ends it."""
        faults = rx.faults
        assert session.freq_khz is not None
        rf_hz = (session.freq_khz + rx.freq_offset_khz) * 1e3
        fs = rx.true_sample_rate
        frame_s = codec.SAMPLES_PER_FRAME / fs
        # Next frame boundary on this receiver's sample grid.
        now_rel = self._gps_now() - self.epoch_gps_s
        frame_no = math.ceil(now_rel / frame_s)
        seq = 1
        flags = codec.FLAG_IQ | (codec.FLAG_LITTLE_ENDIAN if session.little_endian else 0)
        drop = faults.drop_after_frames is not None and (
            faults.drop_attempts is None or attempt <= faults.drop_attempts
        )
        loop = asyncio.get_running_loop()
        mono_offset = time.time() - loop.time()
        index = 0
        while True:
            if drop and index >= (faults.drop_after_frames or 0):
                await ws.close()
                return
            if faults.stall_after_frames is not None and index >= faults.stall_after_frames:
                await asyncio.sleep(3600)
            start = frame_no * codec.SAMPLES_PER_FRAME
            # A frame leaves the receiver once its last sample has been taken.
            send_at_gps = self.epoch_gps_s + (start + codec.SAMPLES_PER_FRAME) / fs
            send_at_unix = send_at_gps - codec.GPS_UTC_LEAP_SECONDS + _GPS_UNIX_OFFSET
            delay = send_at_unix - mono_offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if index in faults.lost_frames:
                index += 1
                seq += 1
                frame_no += 1
                continue
            iq, clipped = self.frame_iq(name, start, rf_hz, session.passband)
            mean_sq = float(np.mean(iq.astype(np.float64) ** 2)) * 2.0 / 32768.0**2
            power_dbfs = 10.0 * math.log10(mean_sq + 1e-20)
            gpssec, nsec, lgs = self._stamp(rx, start, index)
            frame = codec.encode_snd(
                iq,
                seq=seq,
                smeter=codec.dbm_to_smeter(power_dbfs + rx.full_scale_dbm),
                gpssec=gpssec,
                gpsnsec=nsec,
                last_gps_solution=lgs,
                flags=flags | (codec.FLAG_ADC_OVERFLOW if clipped else 0),
            )
            if faults.malformed_at_frame is not None and index == faults.malformed_at_frame:
                frame = frame[: codec.IQ_FRAME_BYTES // 2]
            await ws.send(frame)
            index += 1
            seq += 1
            frame_no += 1

    def sample_gps_ns(self, name: str, index: int) -> int:
        """Exact GPS time (ns since the GPS epoch) of absolute sample ``index`` of ``name``."""
        rate = self.receivers[name].rate_fraction
        num, den = rate.numerator, rate.denominator
        # round(index * 1e9 / rate) in integers: half up, exact.
        return self.epoch_gps_s * 1_000_000_000 + (2 * index * 1_000_000_000 * den + num) // (
            2 * num
        )

    def sample_utc_ns(self, name: str, index: int) -> int:
        """Ground truth: UTC (integer ns since 1970) of absolute sample ``index``."""
        return self.sample_gps_ns(name, index) + _GPS_UNIX_OFFSET_NS - _LEAP_NS

    def sample_index_at(self, name: str, utc_ns: int) -> float:
        """Ground truth: fractional absolute sample index at UTC ``utc_ns``."""
        gps_ns = int(utc_ns) - _GPS_UNIX_OFFSET_NS + _LEAP_NS - self.epoch_gps_s * 1_000_000_000
        return float(Fraction(gps_ns, 1_000_000_000) * self.receivers[name].rate_fraction)

    def samples_iq(
        self,
        name: str,
        start_index: int,
        count: int,
        frequency_hz: float,
        passband_hz: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """(count, 2) int16 samples from absolute ``start_index``, any alignment."""
        n = codec.SAMPLES_PER_FRAME
        first = start_index // n
        last = (start_index + count - 1) // n
        frames = [
            self.frame_iq(name, k * n, frequency_hz, passband_hz)[0] for k in range(first, last + 1)
        ]
        out = np.concatenate(frames)
        off = start_index - first * n
        return out[off : off + count]

    def _stamp(self, rx: SimulatedReceiver, start: int, index: int) -> tuple[int, int, int]:
        """(gpssec, gpsnsec, last_gps_solution) of the frame starting at absolute sample
        ``start``, the ``index``-th frame of its session, with the receiver's defects."""
        faults = rx.faults
        if faults.no_gps:
            return 0, 0, codec.NO_GPS
        if faults.timestamps_off or (
            index == 0 and faults.zero_first_frame and faults.stale_first_s is None
        ):
            return 0, 0, 0
        gps_ns = self.sample_gps_ns(rx.name, start)
        rel_s = (gps_ns - self.epoch_gps_s * 1_000_000_000) / 1e9
        since_fix = rel_s % rx.gps_fix_interval_s
        lgs = min(int(since_fix), codec.GPS_SOLUTION_CAP)
        if index == 0 and faults.stale_first_s is not None:
            gps_ns -= round(faults.stale_first_s * 1e9)
        for k, offset_s in faults.outlier_stamps:
            if k == index:
                gps_ns += round(offset_s * 1e9)
                lgs = 0  # marked fresh, as the real ones are
        sec, nsec = divmod(gps_ns, 1_000_000_000)
        return int(sec % codec.SECONDS_PER_WEEK), int(nsec), lgs

    @staticmethod
    def _gps_now() -> float:
        return time.time() - _GPS_UNIX_OFFSET + codec.GPS_UTC_LEAP_SECONDS


_NOISE_TABLE = 1 << 20
_OFFSETS = np.arange(codec.SAMPLES_PER_FRAME, dtype=np.float64)
_MASK64 = (1 << 64) - 1


def _mix(value: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash of an integer."""
    z = value & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@dataclass
class _FrameSource:
    """Everything fixed for one receiver tuned to one frequency; makes frames cheaply."""

    emitter: Emitter
    truth: PathTruth
    in_band: bool
    sample_rate: float
    sigma: float
    noise: np.ndarray
    stream: int

    def frame(self, sample_index: int) -> tuple[np.ndarray, bool]:
        t = (sample_index + _OFFSETS) / self.sample_rate
        start = _mix(self.stream * 0x9E3779B97F4A7C15 + sample_index) % (
            _NOISE_TABLE - codec.SAMPLES_PER_FRAME
        )
        iq = self.noise[start : start + codec.SAMPLES_PER_FRAME].astype(np.float64)
        iq *= self.sigma
        if self.in_band:
            x = received_signal(self.emitter, self.truth, t)
            iq[:, 0] += x.real
            iq[:, 1] += x.imag
        iq *= 32768.0
        np.rint(iq, out=iq)
        clipped = bool(iq.max() > 32767 or iq.min() < -32768)
        if clipped:
            np.clip(iq, -32768, 32767, out=iq)
        return iq.astype(np.int16), clipped


_GPS_UNIX_OFFSET = (codec.GPS_EPOCH - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
_GPS_UNIX_OFFSET_NS = 315_964_800 * 1_000_000_000
_LEAP_NS = codec.GPS_UTC_LEAP_SECONDS * 1_000_000_000


def _unused_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def receivers_document(network: SimulatedNetwork, receivers: list[Any]) -> dict[str, Any]:
    """The receiver file (``rfacq configure receivers FILE``) of a started network: each
    receiver as configured, with the URL it is served on."""
    entries = []
    for rx in receivers:
        name = rx._block_document_name or ""
        entry = rx.model_dump(mode="json", exclude={"password"})
        if rx.password is not None:
            entry["password"] = rx.password.get_secret_value()
        entries.append({"name": name, **entry, "url": network.url(name)})
    return {"receivers": entries}


def kiwirecorder_command(network: SimulatedNetwork, name: str, frequency_hz: float) -> str:
    """A kiwirecorder command line that records IQ from receiver ``name`` at RF
    ``frequency_hz``. Behind a down-converter the KiwiSDR tunes RF minus its offset, so
    ``-o`` passes the offset (kHz); ``-f`` alone at the RF frequency would tune outside
    the 0-30 MHz the receiver covers."""
    rx = network.receivers[name]
    offset = f" -o {rx.freq_offset_khz:g}" if rx.freq_offset_khz else ""
    return (
        f"python3 kiwirecorder.py -s {network.host} -p {network.ports[name]} "
        f"-f {frequency_hz / 1e3:g}{offset} -m iq --kiwi-wav --tlimit 10"
    )


# --- a network served by a child process ---------------------------------------------

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
_READY = "READY "


def network_spec(network: SimulatedNetwork) -> dict[str, Any]:
    """Everything that defines ``network`` as JSON-able data, to serve it elsewhere: the
    receivers (faults included), the emitter, the noise seed, the ports asked for, and
    the sample-grid epoch (so ground truth computed here matches what the child sends)."""
    return {
        "receivers": [dataclasses.asdict(r) for r in network.receivers.values()],
        "emitter": dataclasses.asdict(network.emitter),
        "host": network.host,
        "ports": dict(network._requested_ports),
        "seed": network.seed,
        "epoch_gps_s": network.epoch_gps_s,
    }


def network_from_spec(spec: dict[str, Any]) -> SimulatedNetwork:
    """The :class:`SimulatedNetwork` that :func:`network_spec` describes."""
    receivers = []
    for entry in spec["receivers"]:
        fields = dict(entry)
        faults = dict(fields.pop("faults"))
        faults["lost_frames"] = tuple(faults["lost_frames"])
        faults["outlier_stamps"] = tuple(tuple(x) for x in faults["outlier_stamps"])
        receivers.append(SimulatedReceiver(**fields, faults=Faults(**faults)))
    network = SimulatedNetwork(
        receivers,
        Emitter(**spec["emitter"]),
        host=spec["host"],
        ports=spec["ports"],
        seed=spec["seed"],
    )
    network.epoch_gps_s = int(spec["epoch_gps_s"])
    return network


class SimulatorProcess:
    """Serve a built (not started) :class:`SimulatedNetwork` from a child process.

    Same use as the network itself for a flow: a context manager, ``url(name)``,
    ``receivers``, ``emitter`` and ``truth()``; the command logs and connection counts of
    the in-process network are not available (tests that read them serve in-process).

    The child gets the network on its stdin and answers one ``READY {ports}`` line on its
    stdout once every port listens (no sleeping on a guess). Its stdin stays open as a
    lifeline: it exits at end-of-file, so it goes with this process however that ends,
    even killed. It runs in its own session, so a Ctrl-C reaches only this process, whose
    :meth:`stop` (from ``with`` or the flow's exit stack) then ends it in order.
    """

    def __init__(self, network: SimulatedNetwork, *, ready_timeout_s: float = READY_TIMEOUT_S):
        self.receivers = network.receivers
        self.emitter = network.emitter
        self.host = network.host
        self.epoch_gps_s = network.epoch_gps_s
        self.ports: dict[str, int] = {}
        self.ready_timeout_s = ready_timeout_s
        self.network = network  # what the child serves; ground truth here, never started
        self._spec = network_spec(network)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> SimulatorProcess:
        """Start the child; returns once every port listens (raises if it fails to)."""
        root = Path(__file__).resolve().parents[2]  # the child imports this package
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.kiwisdr.simulator", "--serve-stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            start_new_session=True,
        )
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(self._spec).encode() + b"\n")
            self._proc.stdin.flush()
            self.ports = self._await_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _await_ready(self) -> dict[str, int]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout_s
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"simulator process not ready within {self.ready_timeout_s:g} s"
                        f"{self._stderr_tail()}"
                    )
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(
                        f"simulator process exited ({proc.wait()}) before it was ready"
                        f"{self._stderr_tail()}"
                    )
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith(_READY):
            raise RuntimeError(f"simulator process answered {line[:200]!r}, not READY")
        return {name: int(port) for name, port in json.loads(line[len(_READY) :]).items()}

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return f": {text[-2000:]}" if text else ""

    def stop(self) -> None:
        """End the child: end-of-file on its lifeline, then SIGTERM, then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()
            for step in (None, proc.terminate, proc.kill):
                if step is not None:
                    with contextlib.suppress(OSError):
                        step()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if proc.stdout:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.ports[name]}"

    def truth(self, name: str, frequency_hz: float) -> PathTruth:
        return self.network.truth(name, frequency_hz)


def serve_stdin() -> None:
    """The child side of :class:`SimulatorProcess`: read the network from stdin, serve
    it, say READY with the ports, and serve until stdin closes (or SIGTERM)."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(sys.stdin.buffer.readline())
    network = network_from_spec(spec).start()
    sys.stdout.write(_READY + json.dumps(network.ports) + "\n")
    sys.stdout.flush()
    while sys.stdin.buffer.read(65536):  # the lifeline: EOF when the parent is gone
        pass
    # Nothing to keep or flush: the kernel closes every socket at once, where an orderly
    # stop waits for each server (~0.1 s on the flow's wall time).
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """Serve a simulated network until interrupted (for kiwiclient or manual testing)."""
    if argv is None and sys.argv[1:] == ["--serve-stdin"]:
        serve_stdin()  # before argparse: only numpy and websockets are imported
        return
    from tasks.kiwisdr.network import simulated_network

    parser = argparse.ArgumentParser(
        prog=os.environ.get("RF_COMMAND_NAME") or "python -m tasks.kiwisdr.simulator",
        description="Serve simulated KiwiSDR receivers on loopback until interrupted.",
    )
    parser.add_argument("--network", default="seed", help="'seed' or a receiver YAML/JSON file")
    parser.add_argument("--base-port", type=int, default=8073, help="0: any free ports")
    parser.add_argument("--count", type=int, default=None, help="repeat receivers up to N")
    parser.add_argument(
        "--write-receivers",
        metavar="FILE",
        default=None,
        help="write the receiver file (JSON) pointing at this simulator, for "
        "`rfacq configure receivers FILE`",
    )
    args = parser.parse_args(argv)
    path = None if args.network == "seed" else args.network
    network, receivers = simulated_network(path, count=args.count)
    if args.base_port:
        names = [r._block_document_name or "" for r in receivers]
        network = SimulatedNetwork(
            network.receivers.values(),
            network.emitter,
            ports={name: args.base_port + i for i, name in enumerate(names)},
        )
    logging.basicConfig(level=logging.WARNING)
    with network:
        for name in network.receivers:
            print(f"{name} {network.url(name)}", flush=True)
        if args.write_receivers:
            target = Path(args.write_receivers)
            target.write_text(json.dumps(receivers_document(network, receivers), indent=1))
            print(f"receivers file: {target} (rfacq configure receivers {target})")
        first = next(iter(network.receivers))
        print(f"kiwirecorder: {kiwirecorder_command(network, first, network.emitter.frequency_hz)}")
        print("READY", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
