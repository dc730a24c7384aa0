"""One receiver's way through an acquisition: capture -> process -> store, as soon as its
own data is ready, into one :class:`~tasks.report.ReceiverOutcome`; then the rows and the
record step (one batch, with the manifest kept when the database refuses it).

Nothing captured is lost: a process failure spools the raw samples, a store failure
spools the recording, and each stage's error stays in the outcome. Samples live only
until their recording is stored. Receivers are grouped into task runs (one per receiver
for small networks) so the UI stays useful without paying a task run per stage.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import io
import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.logging import get_run_logger
from prefect.runtime import task_run as runtime_task_run
from prefect.tasks import exponential_backoff
from sqlalchemy import Engine

from blocks.receiver import KiwiSDRReceiver
from tasks.capture import StageFailed, StartBarrier, capture_at, ns_to_datetime
from tasks.kiwisdr.client import Capture, CaptureSettings
from tasks.process import process_capture
from tasks.reconcile import save_manifest
from tasks.records import is_transient_db_error, record, retry_transient_db
from tasks.records.tasks import record_run_name
from tasks.report import ReceiverOutcome
from tasks.storage import FileSystem, recording_key, store_or_spool

# Processing is CPU and memory bound (measure needs a few times the raw samples): at
# most this many at once in the whole process, whatever the number of receivers.
PROCESS_SLOTS = max(2, os.cpu_count() or 2)
_process_slots = threading.BoundedSemaphore(PROCESS_SLOTS)
PROCESS_ATTEMPTS = 3
# Captures at least this long stream to disk as their frames arrive (see AcquisitionRun).
STREAM_TO_DISK_S = 10.0
# Up to this many receiver task runs per acquisition; larger networks share them.
MAX_RECEIVER_TASKS = 16


class AcquisitionRun:
    """What every receiver of one acquisition shares (not a dataclass on purpose: Prefect
    walks dataclass parameters, and this holds locks and blocks)."""

    def __init__(
        self,
        acquisition_id: str,
        settings: CaptureSettings,
        barrier: StartBarrier,
        storage: FileSystem,
        spool: Path,
        store_deadline_s: float,
        simulated: bool = False,
    ) -> None:
        self.acquisition_id = acquisition_id
        self.simulated = simulated  # marks the recordings (SigMF rfacq:simulated) and rows
        if settings.duration_s >= STREAM_TO_DISK_S and settings.spool_dir is None:
            # Long captures stream to files as frames arrive: RAM then grows with the
            # receivers being processed, not with duration x receivers.
            settings = replace(settings, spool_dir=str(spool / "capturing" / acquisition_id))
        self.settings = settings
        self.barrier = barrier
        self.storage = storage
        self.spool = spool
        self.store_deadline_s = store_deadline_s

    @property
    def start_at(self) -> datetime:
        """The common instant (once fixed; before that, or with no captures, now)."""
        ns = self.barrier.instant_ns
        return ns_to_datetime(ns) if ns is not None else datetime.now(UTC)


def _process(
    capture: Capture,
    receiver: KiwiSDRReceiver,
    acquisition_id: str,
    name: str,
    simulated: bool = False,
) -> Any:
    with _process_slots:
        return process_capture(
            capture, receiver, acquisition_id=acquisition_id, name=name, simulated=simulated
        )


async def process_with_retries(
    capture: Capture,
    receiver: KiwiSDRReceiver,
    acquisition_id: str,
    name: str,
    simulated: bool = False,
) -> Any:
    """Process in a worker thread (the event loop keeps receiving the other captures).

    Retried on ``SystemError`` only: CPython 3.11's ``ast.literal_eval``, reached from
    numpy's .npy header parser, can fail that way when threads race; the same input then
    succeeds. Anything else is a real error.
    """
    for attempt in range(1, PROCESS_ATTEMPTS + 1):
        try:
            return await asyncio.to_thread(
                _process, capture, receiver, acquisition_id, name, simulated
            )
        except SystemError as exc:
            if attempt == PROCESS_ATTEMPTS:
                raise StageFailed("process", exc, attempt) from exc
        except Exception as exc:
            raise StageFailed("process", exc, attempt) from exc
    raise AssertionError("unreachable")


M_ARENA_MAX = -8  # glibc mallopt parameters
M_MMAP_THRESHOLD = -3
MALLOC_ARENAS = 2
# Blocks this large or larger get their own mapping, unmapped as soon as they are freed.
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def limit_malloc_arenas(
    arenas: int = MALLOC_ARENAS, mmap_threshold: int = MMAP_THRESHOLD_BYTES
) -> bool:
    """Make freed sample buffers go back to the system (once per process; glibc only).

    Processing runs in worker threads, and glibc gives each thread its own arena whose
    freed pages it keeps: at the end of a 50 x 20 s acquisition that held ~250 MB of
    already-freed recordings (peak 667 MB; 410 MB with two arenas). glibc also raises
    its mmap threshold each time a large mapped block is freed (up to 32 MB), after
    which long captures' arrays (5.8 MB a minute) come from the arenas and stay there
    once freed: RSS then grew with duration, not with receivers in flight. A fixed
    threshold keeps every buffer of 1 MB or more in its own mapping, returned on free
    (two processing threads over 60 s captures: 180 -> 115 MB retained afterwards).
    Handing memory back with ``malloc_trim`` after each receiver was tried and
    rejected: it locks every arena while other threads hold the GIL, and starved the
    event loops into 5 s stalls.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: nothing to do
        return False
    return bool(mallopt(M_ARENA_MAX, int(arenas))) and bool(
        mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))
    )


def _fmt(value: float | None, spec: str) -> str:
    """A measurement for a log line; "-" where there is none (nothing detected)."""
    return "-" if value is None else format(value, spec)


def spool_capture(spool: Path, key: str, capture: Capture) -> Path:
    """Keep raw samples that could not be processed: ``<spool>/<key>.capture.npy`` plus a
    JSON of how they were taken, so they can be processed again later by hand."""
    path = spool / f"{key}.capture.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(capture.samples), allow_pickle=False)
    path.write_bytes(buf.getvalue())
    info = {
        "receiver": capture.receiver,
        "frequency_hz": capture.frequency_hz,
        "sample_rate": capture.sample_rate,
        "start_utc": capture.start_utc.isoformat(),
        "gps_fix": capture.gps_fix,
        "gaps": capture.gaps,
        "attempts": capture.attempts,
    }
    path.with_suffix(".json").write_text(json.dumps(info))
    return path


async def acquire_receiver(
    name: str,
    receiver: KiwiSDRReceiver,
    run: AcquisitionRun,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> ReceiverOutcome:
    """capture -> process -> store for one receiver; never raises (a failure is an outcome)."""
    try:
        capture = await capture_at(name, receiver, run.settings, run.barrier, log)
    except StageFailed as exc:
        log.warning("%s: %s", name, exc)
        return ReceiverOutcome(name, "failed", str(exc), exc.attempts)
    except Exception as exc:  # anything unexpected fails this receiver, not the others
        log.error("%s: capture failed: %s: %s", name, type(exc).__name__, exc)
        return ReceiverOutcome(name, "failed", f"capture failed: {type(exc).__name__}: {exc}", 1)
    attempts = capture.attempts
    key = recording_key(run.acquisition_id, run.start_at, name)
    return await _process_and_store(name, receiver, run, log, capture, key, attempts)


async def _process_and_store(
    name: str,
    receiver: KiwiSDRReceiver,
    run: AcquisitionRun,
    log: logging.Logger | logging.LoggerAdapter[Any],
    capture: Capture,
    key: str,
    attempts: int,
) -> ReceiverOutcome:
    try:
        processed = await process_with_retries(
            capture, receiver, run.acquisition_id, name, run.simulated
        )
    except StageFailed as exc:
        try:
            where = await asyncio.to_thread(spool_capture, run.spool, key, capture)
            error = f"{exc}; raw samples spooled to {where}"
        except Exception as spool_exc:
            error = f"{exc}; spooling the raw samples failed too: {spool_exc}"
            log.error("%s: %s", name, error)
            return ReceiverOutcome(name, "failed", error, attempts)  # its file stays
        capture.release()
        log.error("%s: %s", name, error)
        return ReceiverOutcome(name, "failed", error, attempts)
    capture.release()  # the recording holds the samples now
    row = processed.row
    log.info(
        "%s: power %s dBFS, SNR %s dB, offset %s Hz%s",
        name,
        _fmt(row.get("power_dbfs"), ".1f"),
        _fmt(row.get("snr_db"), ".1f"),
        _fmt(row.get("frequency_offset_hz"), "+.2f"),
        "" if row.get("detected", True) else f" (no signal: {row.get('detection_reason')})",
    )
    try:
        stored = await store_or_spool(
            run.storage, key, processed.recording, run.spool, deadline_s=run.store_deadline_s
        )
    except Exception as exc:  # the storage and the spool both refused: say so loudly
        log.error("%s: %s", name, exc)
        return ReceiverOutcome(
            name, "failed", str(exc), attempts, row, spectrum=processed.spectrum, psd=processed.psd
        )
    if stored.spooled:
        log.warning("%s: %s", name, stored.error)
        return ReceiverOutcome(
            name,
            "spooled",
            stored.error,
            attempts,
            row,
            spectrum=processed.spectrum,
            psd=processed.psd,
        )
    log.info("%s: stored at %s", name, stored.stored.location)
    return ReceiverOutcome(
        name,
        "ok",
        None,
        attempts,
        row,
        object_key=stored.stored.data_key,
        location=stored.stored.location,
        spectrum=processed.spectrum,
        psd=processed.psd,
    )


@dataclass(frozen=True)
class ReceiverGroup:
    """Receivers served by one task run."""

    label: str
    receivers: dict[str, KiwiSDRReceiver]


def group_receivers(
    receivers: dict[str, KiwiSDRReceiver], max_tasks: int = MAX_RECEIVER_TASKS
) -> list[ReceiverGroup]:
    """One group per receiver up to ``max_tasks`` receivers, else ``max_tasks`` groups."""
    names = list(receivers)
    size = max(1, math.ceil(len(names) / max_tasks))
    groups = []
    for i in range(0, len(names), size):
        part = names[i : i + size]
        label = part[0] if len(part) == 1 else f"{part[0]}..{part[-1]} ({len(part)})"
        groups.append(ReceiverGroup(label, {n: receivers[n] for n in part}))
    return groups


@task(name="acquire-receivers", cache_policy=NO_CACHE, task_run_name="receivers-{group.label}")
async def acquire_receivers(group: ReceiverGroup, run: AcquisitionRun) -> list[ReceiverOutcome]:
    """capture -> process -> store for each receiver of ``group``, concurrently; each
    receiver moves on as soon as its own data is ready."""
    log = get_run_logger()
    return list(
        await asyncio.gather(
            *(acquire_receiver(n, r, run, log) for n, r in group.receivers.items())
        )
    )


async def outcomes_of(
    futures: Sequence[PrefectFuture[list[ReceiverOutcome]]], groups: Sequence[ReceiverGroup]
) -> list[ReceiverOutcome]:
    """Wait for every group; a group whose task run itself failed becomes one failed
    outcome per receiver (completed and failed futures split in one place)."""
    await asyncio.to_thread(wait, list(futures))
    out: list[ReceiverOutcome] = []
    for future, group in zip(futures, groups, strict=True):
        if future.state.is_completed():
            out.extend(future.result())
            continue
        exc = future.result(raise_on_failure=False)
        error = f"task failed: {type(exc).__name__}: {exc}"
        out.extend(ReceiverOutcome(n, "failed", error, 1) for n in group.receivers)
    return out


def measurement_row(
    outcome: ReceiverOutcome,
    receiver: KiwiSDRReceiver,
    *,
    acquisition_id: str,
    start_at: datetime,
    frequency_hz: float,
    simulated: bool = False,
) -> dict[str, Any]:
    """The database row of one outcome. Spooled recordings are ``failed`` rows (they point
    at no object until reconcile uploads them and turns the row ok). ``simulated`` marks
    samples from the simulator, so they are never mistaken for the sky."""
    status = "failed" if outcome.status == "spooled" else outcome.status
    if outcome.row is not None:
        return {
            **outcome.row,
            "acquisition_id": acquisition_id,
            "status": status,
            "error": outcome.error,
            "object_key": outcome.object_key,
            "simulated": simulated,
        }
    return {
        "simulated": simulated,
        "time": start_at,
        "acquisition_id": acquisition_id,
        "receiver": outcome.receiver,
        "status": status,
        "error": outcome.error,
        "attempts": outcome.attempts,
        "latitude": receiver.latitude,
        "longitude": receiver.longitude,
        "altitude_m": receiver.altitude_m,
        "frequency_hz": frequency_hz,
    }


def acquisition_row(
    acquisition_id: str,
    frequency_hz: float,
    duration_s: float,
    start_at: datetime,
    rows: Sequence[dict[str, Any]],
    flow_run_id: str | None,
    simulated: bool = False,
) -> dict[str, Any]:
    return {
        "simulated": simulated,
        "id": acquisition_id,
        "frequency_hz": frequency_hz,
        "duration_s": duration_s,
        "start_at": start_at,
        "receivers_requested": len(rows),
        "receivers_ok": sum(r["status"] == "ok" for r in rows),
        "receivers_failed": sum(r["status"] == "failed" for r in rows),
        "receivers_skipped": sum(r["status"] == "skipped" for r in rows),
        "status": "completed",
        "flow_run_id": flow_run_id,
    }


RECORD_RETRIES = 3


@task(
    name="record",
    retries=RECORD_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=2.0),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient_db,
    cache_policy=NO_CACHE,
    task_run_name=record_run_name,
)
async def record_acquisition(
    engine: Engine,
    acquisition: dict[str, Any],
    rows: list[dict[str, Any]],
    storage: FileSystem,
    spool: Path,
) -> int:
    """Upsert the acquisition and its rows in one batch (:func:`tasks.records.record`).

    When the last attempt fails, the acquisition row and the rows without an object are
    kept as a manifest (in storage, else the spool) before the error is raised, so the
    reconcile flow can write them later.
    """
    try:
        return await asyncio.to_thread(record.fn, engine, acquisition, rows)
    except Exception as exc:
        attempt = runtime_task_run.run_count or 1
        if is_transient_db_error(exc) and attempt <= RECORD_RETRIES:
            raise
        logger = get_run_logger()
        try:
            where = await save_manifest(storage, spool, acquisition, rows)
            logger.info("kept the acquisition's manifest for reconcile at %s", where)
        except Exception as manifest_exc:
            logger.error("could not keep the manifest either: %s", manifest_exc)
        raise


def rows_of(
    outcomes: Sequence[ReceiverOutcome],
    receivers: dict[str, KiwiSDRReceiver],
    *,
    acquisition_id: str,
    start_at: datetime,
    frequency_hz: float,
    duration_s: float,
    flow_run_id: str | None,
    simulated: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The acquisition row and one measurement row per outcome, all marked ``simulated``
    (True for the simulator's samples, False for real receivers)."""
    rows = [
        measurement_row(
            o,
            receivers[o.receiver],
            acquisition_id=acquisition_id,
            start_at=start_at,
            frequency_hz=frequency_hz,
            simulated=simulated,
        )
        for o in outcomes
    ]
    acquisition = acquisition_row(
        acquisition_id, frequency_hz, duration_s, start_at, rows, flow_run_id, simulated
    )
    return acquisition, rows


async def record_result(recorded: PrefectFuture[int]) -> tuple[int, str | None]:
    """(rows recorded, None), or (0, the error) when the record step failed."""
    await asyncio.to_thread(wait, [recorded])
    if recorded.state.is_completed():
        return recorded.result(), None
    exc = recorded.result(raise_on_failure=False)
    get_run_logger().error("rows were not recorded: %s", exc)
    return 0, f"{type(exc).__name__}: {exc}"
