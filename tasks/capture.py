"""Receiver health, the common start instant, and captures with retries.

Retries are for transient faults only (unreachable, busy, dropped, stalled); a wrong
password or an untunable frequency fails at once, so the acquisition window is not wasted
and the receiver is not hammered.

The start instant is fixed by a :class:`StartBarrier` once every capture of the
acquisition is connected, tuned and streaming (or a timeout passed), as ``now + margin``;
the sessions keep their frames meanwhile, and each capture is then trimmed to the first
sample at the instant on its own fitted GPS time axis. It never depends on how long the
task runner took to start the captures, so it holds at any size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from blocks.receiver import KiwiSDRReceiver
from tasks.errors import RfAcquisitionError
from tasks.kiwisdr.client import Capture, CaptureSettings, capture_iq
from tasks.kiwisdr.errors import KiwiSDRError, is_transient
from tasks.kiwisdr.status import ReceiverStatus, fetch_status

CAPTURE_RETRIES = 3


@dataclass(frozen=True)
class StatusCheck:
    """Outcome of a pre-flight look at one receiver's ``/status``."""

    receiver: str
    ok: bool
    reason: str = ""
    status: ReceiverStatus | None = None
    rtt_s: float | None = None  # the /status round trip: a measured connect time


async def check_status(
    name: str,
    receiver: KiwiSDRReceiver,
    timeout_s: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> StatusCheck:
    """Plain function: is ``receiver`` reachable, not full and not offline?"""
    t0 = time.perf_counter()
    try:
        status = await fetch_status(receiver.url, timeout_s=timeout_s, client=client)
    except KiwiSDRError as exc:
        return StatusCheck(name, False, f"status check failed: {exc}")
    except Exception as exc:  # a broken page or URL must skip one receiver, not the run
        return StatusCheck(name, False, f"status check failed: {type(exc).__name__}: {exc}")
    rtt = time.perf_counter() - t0
    if status.offline:
        return StatusCheck(name, False, "receiver reports offline", status, rtt)
    if status.full:
        return StatusCheck(
            name, False, f"receiver full ({status.users}/{status.users_max} users)", status, rtt
        )
    return StatusCheck(name, True, "", status, rtt)


async def check_receivers(
    receivers: dict[str, KiwiSDRReceiver], *, timeout_s: float = 5.0, concurrency: int = 64
) -> dict[str, StatusCheck]:
    """Every receiver's ``/status`` at once through ONE shared httpx client (one TLS
    context and connection pool for the whole plan, not one per receiver)."""
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def one(name: str, rx: KiwiSDRReceiver) -> StatusCheck:
            async with limit:
                return await check_status(name, rx, timeout_s, client)

        checks = await asyncio.gather(*(one(n, r) for n, r in receivers.items()))
    return dict(zip(receivers, checks, strict=True))


# --------------------------------------------------------------------------- alignment

# The instant is fixed once every capture is tuned and streaming, with its frames
# buffered, so it needs no lead for connecting or tuning. It lies a little ahead of "now"
# only because "now" is the host's clock while samples are placed on GPS time: the margin
# covers a host clock behind GPS (NTP keeps that to milliseconds) and one network trip.
MIN_START_MARGIN_S = 0.2
MAX_START_MARGIN_S = 30.0


def start_margin_s(round_trips_s: Sequence[float | None], captures: int) -> float:
    """How long after the last capture is ready the common instant lies: the slowest
    measured ``/status`` round trip plus ``MIN_START_MARGIN_S``, capped.

    ``captures`` no longer matters (every capture is already streaming when the instant
    is set) and is kept for callers that pass it.
    """
    del captures
    slowest = max((r for r in round_trips_s if r is not None), default=0.05)
    return min(MIN_START_MARGIN_S + slowest, MAX_START_MARGIN_S)


def ns_to_datetime(ns: int) -> datetime:
    """Integer ns since 1970 as an aware datetime (exact when ``ns`` is whole us)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


class StartBarrier:
    """The common start instant of one acquisition, fixed when every capture is ready.

    Each capture calls :meth:`ready` (from any thread and event loop: the task runner
    runs each async task in its own loop); when the last of ``parties`` arrives, or
    ``timeout_s`` after the first did, the instant becomes ``now + margin_s``, rounded up
    to a whole microsecond (never to a whole second), as integer ns since 1970.
    """

    def __init__(self, parties: int, margin_s: float, timeout_s: float = 10.0) -> None:
        self.parties = parties
        self.margin_ns = int(margin_s * 1e9)
        self.timeout_s = timeout_s
        self.arrived = 0
        self.instant_ns: int | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @classmethod
    def at(cls, instant_ns: int) -> StartBarrier:
        """A barrier whose instant is already set (a shard of an acquisition whose instant
        was chosen elsewhere, e.g. by the parent of sharded flow runs)."""
        barrier = cls(0, 0.0)
        barrier.instant_ns = instant_ns
        return barrier

    def _fix(self) -> None:
        """Set the instant (once) and wake every waiter; call with the lock held."""
        if self.instant_ns is None:
            ns = time.time_ns() + self.margin_ns
            self.instant_ns = -(-ns // 1000) * 1000  # whole microseconds, rounded up
            for loop, event in self._waiters:
                with contextlib.suppress(RuntimeError):  # that loop already closed
                    loop.call_soon_threadsafe(event.set)

    def leave(self) -> None:
        """A party that will not capture after all (it must not hold the others up)."""
        with self._lock:
            self.parties -= 1
            if self.arrived >= self.parties:
                self._fix()

    async def ready(self) -> int:
        """Register as connected-and-ready; returns the instant (ns since 1970)."""
        event = asyncio.Event()
        with self._lock:
            self.arrived += 1
            if self.instant_ns is None:
                self._waiters.append((asyncio.get_running_loop(), event))
            if self.arrived >= self.parties:
                self._fix()
            if self.instant_ns is not None:
                return self.instant_ns
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), self.timeout_s)
        with self._lock:
            self._fix()  # the timeout passed: go with the captures that are ready
            assert self.instant_ns is not None
            return self.instant_ns


# --------------------------------------------------------------------------- capture


class StageFailed(RfAcquisitionError):
    """A receiver's stage failed for good; says which stage and after how many attempts."""

    def __init__(self, stage: str, cause: BaseException, attempts: int) -> None:
        super().__init__(f"{stage} failed: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.attempts = attempts


async def capture_at(
    name: str,
    receiver: KiwiSDRReceiver,
    settings: CaptureSettings,
    barrier: StartBarrier,
    log: logging.Logger | logging.LoggerAdapter[Any],
    *,
    attempts: int = CAPTURE_RETRIES + 1,
    backoff_s: float = 1.0,
) -> Capture:
    """Capture from ``receiver`` at the barrier's instant, retrying transient errors.

    The session joins the barrier once it is tuned and streaming, and keeps every frame
    until the instant is known, so the instant needs no lead for connecting and tuning.
    A retry aims at the same instant, or starts at once when it has passed (late data
    beats no data; its recorded start says how late).

    Raises:
        StageFailed: a permanent error, or transient ones on every attempt.
    """
    asked = False

    async def instant() -> int:
        # Called by the session once it is tuned and streaming: the barrier then fixes the
        # instant when every capture is really receiving, not when its task started.
        nonlocal asked
        asked = True
        return await barrier.ready()

    first = replace(settings, start_at=None, gain_db=receiver.gain_db)
    for attempt in range(1, attempts + 1):
        try:
            result = await capture_iq(
                receiver.url,
                first,
                receiver=name,
                password=receiver.password.get_secret_value() if receiver.password else None,
                freq_offset_khz=receiver.freq_offset_khz,
                tunable_range_hz=receiver.tunable_range_hz,
                start_instant=instant if attempt == 1 else None,
            )
        except Exception as exc:
            if attempt == 1 and not asked:
                barrier.leave()  # never reached the barrier: the others must not wait for it
            # A retry aims at the same instant: aligned if it is still ahead, and otherwise
            # at once, with its lateness recorded (late data beats none).
            first = replace(first, start_at=barrier.instant_ns)
            if attempt == attempts or not is_transient(exc):
                raise StageFailed("capture", exc, attempt) from exc
            delay = backoff_s * 2 ** (attempt - 1) * (1 + 0.5 * random.random())
            log.info("%s: %s (attempt %d); retrying in %.1f s", name, exc, attempt, delay)
            await asyncio.sleep(delay)
            continue
        result.attempts = attempt
        return result
    raise AssertionError("unreachable")
