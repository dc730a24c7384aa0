"""Prefect tasks around the KiwiSDR client: receiver health and one capture per receiver.

Retries are for transient faults only (unreachable, busy, dropped, stalled); a wrong
password or an untunable frequency fails at once, so the acquisition window is not wasted
and the receiver is not hammered.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.logging import get_run_logger
from prefect.runtime import task_run as runtime_task_run
from prefect.states import State
from prefect.tasks import Task, exponential_backoff

from blocks.receiver import KiwiSDRReceiver
from tasks.kiwisdr.client import Capture, CaptureSettings, capture_iq
from tasks.kiwisdr.errors import KiwiSDRError, is_transient
from tasks.kiwisdr.status import ReceiverStatus, fetch_status

CAPTURE_RETRIES = 3


def retry_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: only errors the receiver layer classifies as transient."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return exc is not None and is_transient(exc)


def note_attempts(exc: BaseException) -> None:
    """Tag a task's exception with its attempt number, so the flow can record how many
    attempts a failed receiver had without asking the API (whose task-run records lag)."""
    with contextlib.suppress(AttributeError):  # __slots__ exceptions: the flow assumes 1
        exc.attempts = runtime_task_run.run_count or 1  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StatusCheck:
    """Outcome of a pre-flight look at one receiver's ``/status``."""

    receiver: str
    ok: bool
    reason: str = ""
    status: ReceiverStatus | None = None


async def check_status(name: str, receiver: KiwiSDRReceiver, timeout_s: float = 5.0) -> StatusCheck:
    """Plain function: is ``receiver`` reachable, not full and not offline?"""
    try:
        status = await fetch_status(receiver.url, timeout_s=timeout_s)
    except KiwiSDRError as exc:
        return StatusCheck(name, False, f"status check failed: {exc}")
    except Exception as exc:  # a broken page or URL must skip one receiver, not the run
        return StatusCheck(name, False, f"status check failed: {type(exc).__name__}: {exc}")
    if status.offline:
        return StatusCheck(name, False, "receiver reports offline", status)
    if status.full:
        return StatusCheck(
            name, False, f"receiver full ({status.users}/{status.users_max} users)", status
        )
    return StatusCheck(name, True, "", status)


@task(name="check-receiver", cache_policy=NO_CACHE, task_run_name="check-{name}")
async def check_receiver(name: str, receiver: KiwiSDRReceiver) -> StatusCheck:
    """Health of one receiver before the acquisition (never raises: a skip is an outcome)."""
    result = await check_status(name, receiver)
    if not result.ok:
        get_run_logger().warning("%s will be skipped: %s", name, result.reason)
    return result


@task(
    name="capture",
    retries=CAPTURE_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=1.0),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    task_run_name="capture-{name}",
)
async def capture(name: str, receiver: KiwiSDRReceiver, settings: CaptureSettings) -> Capture:
    """Capture IQ from one receiver over its KiwiSDR websocket.

    Args:
        name: the receiver's name (its block name).
        receiver: the receiver's configuration.
        settings: frequency, duration, gain and the common start instant. A retry after
            that instant has passed starts at once: late data beats no data, and the
            recorded start time says how late.

    Returns:
        The :class:`Capture`, with ``attempts`` set to this task run's attempt number.
    """
    logger = get_run_logger()
    attempt = runtime_task_run.run_count or 1
    if settings.start_at is not None and settings.start_at <= datetime.now(UTC):
        late = (datetime.now(UTC) - settings.start_at).total_seconds()
        # On a retry this is expected; on the first attempt it means the planner's lead
        # was too short for this receiver, and the capture is not aligned with the others.
        log = logger.info if attempt > 1 else logger.warning
        log("%s: start instant passed %.2f s ago; capturing now (not aligned)", name, late)
        settings = replace(settings, start_at=None)
    logger.info(
        "%s: capturing %.3f MHz for %.2f s (attempt %d)",
        name,
        settings.frequency_hz / 1e6,
        settings.duration_s,
        attempt,
    )
    try:
        result = await capture_iq(
            receiver.url,
            replace(settings, gain_db=receiver.gain_db),
            receiver=name,
            password=receiver.password.get_secret_value() if receiver.password else None,
            freq_offset_khz=receiver.freq_offset_khz,
            tunable_range_hz=receiver.tunable_range_hz,
        )
    except Exception as exc:
        note_attempts(exc)
        raise
    result.attempts = attempt
    logger.info(
        "%s: %d samples at %.3f Hz, first sample %s, %d lost frames, %d ADC overflows",
        name,
        result.samples.size,
        result.sample_rate,
        result.start_utc.isoformat(),
        result.lost_frames,
        result.adc_overflow_frames,
    )
    return result
