"""The parent acquisition flow: plan, capture, process, store, record, report.

Run it from Python (``asyncio.run(acquire(145.5e6, 2.0))``), from a deployment (see
prefect.yaml), or from the command line: ``python -m flows.acquisition --help``.

With nothing configured it captures from the built-in simulated seed network, stores
recordings in ``./data/recordings`` and rows in ``./data/rf_acquisition.db``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from pathlib import Path
from typing import Any, Literal

from prefect import flow, unmapped
from prefect.futures import PrefectFuture, wait
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from blocks.receiver import KiwiSDRReceiver, bind_urls, simulated_network
from blocks.resolve import (
    default_data_dir,
    resolve_database,
    resolve_storage,
    saved_receivers,
    select_receivers,
)
from flows import cli
from tasks.capture import StatusCheck, capture, check_receiver
from tasks.kiwisdr.client import CaptureSettings
from tasks.plan import Plan, check_range, choose_start, split_by_frequency, validate_request
from tasks.process import ProcessedCapture, process
from tasks.reconcile import save_manifest
from tasks.records import record
from tasks.report import AcquisitionSummary, Progress, ReceiverOutcome, format_table, publish
from tasks.storage import recording_key, spool_recording, store

Network = Literal["auto", "simulated", "blocks"]


@flow(name="acquire", description="Capture IQ from every receiver at one instant and record it.")
async def acquire(
    frequency_hz: float = 145_500_000.0,
    duration_s: float = 2.0,
    receivers: list[str] | None = None,
    tag: str | None = None,
    network: Network = "auto",
    storage: str = "auto",
    database: str = "auto",
    data_dir: str | None = None,
    start_lead_s: float = 2.0,
    require_gps: bool = False,
) -> State[dict[str, Any]]:
    """One synchronised acquisition.

    Args:
        frequency_hz: RF frequency to tune (down-converter offsets are applied per receiver).
        duration_s: capture length, 0.05-600 s.
        receivers: receiver names to use (default: all enabled ones).
        tag: only receivers carrying this tag.
        network: ``"blocks"`` (saved KiwiSDR Receiver blocks), ``"simulated"`` (the built-in
            seed network on loopback) or ``"auto"`` (blocks when any are saved).
        storage: ``"auto"``, ``"local"`` or ``"<block-type>/<name>"``, e.g.
            ``"s3-bucket/rf-acquisition"``.
        database: ``"auto"``, ``"sqlite"`` or ``"timescaledb-connection/<name>"``.
        data_dir: folder of the local defaults (default ``$RF_DATA_DIR`` or ``./data``).
        start_lead_s: how far ahead of the end of planning the common start instant is
            set (0.5-60 s): time for every capture task to connect and tune.
        require_gps: skip receivers whose /status shows no GPS fix (their timestamps come
            from a host clock and are useless for time differences).

    Returns:
        A Completed state saying "N/M receivers ok" whose result is the summary dict, or a
        Failed state when no receiver succeeded or rows could not be recorded.
    """
    logger = get_run_logger()
    validate_request(frequency_hz, duration_s)
    check_range(start_lead_s, "start_lead_s", 0.5, 60.0, "s")
    folder = Path(data_dir).resolve() if data_dir else default_data_dir()
    acquisition_id = str(uuid.uuid4())
    progress = Progress()
    await progress.start(f"acquisition {acquisition_id} at {frequency_hz / 1e6:.6f} MHz")

    async with contextlib.AsyncExitStack() as stack:
        # 1. plan: receivers, health, frequency, start instant
        available = await _receivers(network, frequency_hz, stack)
        chosen = select_receivers(available, receivers, tag)
        tunable, skipped = split_by_frequency(chosen, frequency_hz)
        checks = check_receiver.map(list(tunable), list(tunable.values()))
        store_choice = await resolve_storage(storage, folder)
        db_choice = await resolve_database(database, folder)
        stack.callback(db_choice.engine.dispose)
        await asyncio.to_thread(wait, checks)
        go: dict[str, KiwiSDRReceiver] = {}
        for name, future in zip(tunable, checks, strict=True):
            reason = _skip_reason(future, require_gps)
            if reason is None:
                go[name] = tunable[name]
            else:
                skipped[name] = reason
        # The instant is chosen only now, after the slow parts of planning, so a slow
        # /status page cannot eat the lead the capture tasks need to connect and tune.
        plan = Plan(acquisition_id, choose_start(start_lead_s, len(go)), go, skipped)
        logger.info(
            "acquisition %s: %d receivers, %d skipped, start %s; storage %s; database %s",
            acquisition_id,
            len(plan.go),
            len(plan.skipped),
            plan.start_at.isoformat(),
            store_choice.description,
            db_choice.description,
        )
        summary = AcquisitionSummary(
            acquisition_id=acquisition_id,
            frequency_hz=frequency_hz,
            duration_s=duration_s,
            start_at=plan.start_at.isoformat(),
            storage=store_choice.description,
            database=db_choice.description,
        )
        rows: dict[str, dict[str, Any]] = {
            name: _row(plan, name, chosen[name], frequency_hz, "skipped", reason)
            for name, reason in plan.skipped.items()
        }

        await progress.update(10)

        # 2. capture: one mapped task per receiver, all aimed at the same instant
        settings = CaptureSettings(frequency_hz, duration_s, start_at=plan.start_at)
        names = list(plan.go)
        captures = capture.map(names, list(plan.go.values()), unmapped(settings))
        await asyncio.to_thread(wait, captures)
        captured = {}
        for name, future in zip(names, captures, strict=True):
            if future.state.is_completed():
                captured[name] = future.result()
            else:
                rows[name] = await _failed_row(plan, name, frequency_hz, future, "capture")

        await progress.update(60)

        # 3. process: measurements + .npy/SigMF per capture
        processed_futures = process.map(
            [captured[n] for n in captured],
            [plan.go[n] for n in captured],
            unmapped(acquisition_id),
            list(captured),
        )
        await asyncio.to_thread(wait, processed_futures)
        processed: dict[str, ProcessedCapture] = {}
        for name, future in zip(captured, processed_futures, strict=True):
            if future.state.is_completed():
                processed[name] = future.result()
            else:
                rows[name] = await _failed_row(plan, name, frequency_hz, future, "process")
        del captured  # samples now live in the recordings; free them early

        await progress.update(75)

        # 4. store: objects first, rows after, so no row points at a missing object
        keys = {n: recording_key(acquisition_id, plan.start_at, n) for n in processed}
        stored_futures = store.map(
            unmapped(store_choice.block),
            [keys[n] for n in processed],
            list(processed),
            [p.recording for p in processed.values()],
        )
        await asyncio.to_thread(wait, stored_futures)
        locations: dict[str, str] = {}
        for name, future in zip(processed, stored_futures, strict=True):
            row = {**processed[name].row, "acquisition_id": acquisition_id}
            if future.state.is_completed():
                row["object_key"] = future.result().data_key
                rows[name] = row
                locations[name] = future.result().location
            else:
                # Storage is down beyond the retries: keep the recording in the local spool
                # (the reconcile flow uploads it and turns this row ok); the row points at
                # nothing until then.
                failed = await _failed_row(plan, name, frequency_hz, future, "store")
                error = failed["error"]
                try:
                    spooled = await spool_recording(
                        folder / "spool", keys[name], processed[name].recording
                    )
                    error += f"; spooled to {spooled.location}"
                except Exception as exc:  # the capture is lost: say so loudly
                    logger.error("%s: could not spool the recording either: %s", name, exc)
                    error += f"; spooling failed too: {type(exc).__name__}: {exc}"
                rows[name] = {**row, "status": "failed", "error": error}

        await progress.update(90)

        # 5. record: one batch, one transaction, idempotent upserts
        ordered = [rows[n] for n in chosen if n in rows]
        acquisition_row = {
            "id": acquisition_id,
            "frequency_hz": frequency_hz,
            "duration_s": duration_s,
            "start_at": plan.start_at,
            "receivers_requested": len(chosen),
            "receivers_ok": sum(r["status"] == "ok" for r in ordered),
            "receivers_failed": sum(r["status"] == "failed" for r in ordered),
            "receivers_skipped": sum(r["status"] == "skipped" for r in ordered),
            "status": "completed",
            "flow_run_id": str(flow_run.id) if flow_run.id else None,
        }
        recorded = record.submit(db_choice.engine, acquisition_row, ordered)
        await asyncio.to_thread(wait, [recorded])
        if recorded.state.is_completed():
            summary.rows_recorded = recorded.result()
        else:
            exc = recorded.result(raise_on_failure=False)
            summary.record_error = f"{type(exc).__name__}: {exc}"
            logger.error("rows for acquisition %s were not recorded: %s", acquisition_id, exc)
            # Recordings rebuild their own rows; the acquisition row and the failed or
            # skipped receivers' rows have no object, so keep them for reconcile.
            try:
                where = await save_manifest(
                    store_choice.block, folder / "spool", acquisition_row, ordered
                )
                logger.info("kept the acquisition's manifest for reconcile at %s", where)
            except Exception as manifest_exc:
                logger.error("could not keep the manifest either: %s", manifest_exc)

    # 6. report
    starts = [r["time"] for r in ordered if r["status"] == "ok" and r.get("gps_fix")]
    if starts:
        summary.start_spread_ms = (max(starts) - min(starts)).total_seconds() * 1e3
    for row in ordered:
        name = row["receiver"]
        summary.receivers.append(
            ReceiverOutcome(
                receiver=name,
                status=row["status"],
                error=row.get("error"),
                snr_db=row.get("snr_db"),
                frequency_offset_hz=row.get("frequency_offset_hz"),
                power_dbfs=row.get("power_dbfs"),
                sample_count=row.get("sample_count"),
                location=locations.get(name),
                attempts=row.get("attempts") or 0,
                spectrum=processed[name].spectrum if name in processed else "",
            )
        )
    await publish(summary)
    await progress.update(100)
    logger.info("%s\n%s", summary.message, format_table(summary))
    if summary.ok == 0 or summary.record_error:
        return Failed(message=summary.message, data=summary.as_dict())
    return Completed(message=summary.message, data=summary.as_dict())


async def _receivers(
    network: Network, frequency_hz: float, stack: contextlib.AsyncExitStack
) -> dict[str, KiwiSDRReceiver]:
    """Saved receiver blocks, or the simulated seed network started for this run."""
    logger = get_run_logger()
    if network not in ("auto", "simulated", "blocks"):
        raise ValueError(f"network={network!r}: use 'auto', 'simulated' or 'blocks'")
    if network in ("auto", "blocks"):
        saved = await saved_receivers()
        if saved or network == "blocks":
            if not saved:
                raise ValueError("network='blocks' but no KiwiSDR Receiver blocks are saved")
            logger.info("using %d saved KiwiSDR Receiver blocks", len(saved))
            return saved
    sim, configs = simulated_network(frequency_hz=frequency_hz)
    stack.enter_context(sim)
    bind_urls(sim, configs)
    logger.info("using the simulated seed network (%d receivers on loopback)", len(configs))
    return {c._block_document_name or "": c for c in configs}


def _skip_reason(future: PrefectFuture[StatusCheck], require_gps: bool) -> str | None:
    """Why a receiver is skipped after its /status check, or None to capture it."""
    if not future.state.is_completed():
        exc = future.result(raise_on_failure=False)
        return f"status check failed: {type(exc).__name__}: {exc}"
    check = future.result()
    if not check.ok:
        return check.reason
    if check.status is not None and not check.status.gps_fix:
        if require_gps:
            return "no GPS fix (gps_good=0): timestamps would come from a host clock"
        get_run_logger().warning(
            "%s has no GPS fix: captured, but its timing is flagged (gps_fix=false)", check.receiver
        )
    return None


def _row(
    plan: Plan,
    name: str,
    receiver: KiwiSDRReceiver,
    frequency_hz: float,
    status: str,
    error: str | None,
    attempts: int = 0,
) -> dict[str, Any]:
    return {
        "time": plan.start_at,
        "acquisition_id": plan.acquisition_id,
        "receiver": name,
        "status": status,
        "error": error,
        "attempts": attempts,
        "latitude": receiver.latitude,
        "longitude": receiver.longitude,
        "altitude_m": receiver.altitude_m,
        "frequency_hz": frequency_hz,
    }


async def _failed_row(
    plan: Plan, name: str, frequency_hz: float, future: PrefectFuture[Any], stage: str
) -> dict[str, Any]:
    """Row for a receiver whose ``stage`` failed; the error text and attempt count included."""
    exc = future.result(raise_on_failure=False)
    error = (
        f"{stage} failed: {type(exc).__name__}: {exc}"
        if isinstance(exc, BaseException)
        else (f"{stage} failed: {future.state.message}")
    )
    attempts = getattr(exc, "attempts", None) or 1
    get_run_logger().warning("%s: %s", name, error)
    return _row(plan, name, plan.go[name], frequency_hz, "failed", error, attempts)


def main(argv: list[str] | None = None) -> int:
    """Command line: run one acquisition and print one line per receiver."""
    p = cli.parser("flows.acquisition", __doc__)
    p.add_argument("--frequency-hz", type=float, default=145_500_000.0)
    p.add_argument("--duration-s", type=float, default=2.0)
    p.add_argument("--receivers", nargs="*", default=None)
    p.add_argument("--tag", default=None)
    p.add_argument("--network", choices=["auto", "simulated", "blocks"], default="auto")
    args = vars(p.parse_args(argv))
    as_json = args.pop("json")
    state = cli.run_once(acquire, json=as_json, **args)
    if as_json:
        return cli.finish(state, json=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        print(f"acquisition failed: {state.message or result}", file=sys.stderr)
        return 1
    summary = result
    print()
    print(f"acquisition {summary['acquisition_id']}: {summary['message']}")
    if summary.get("start_spread_ms") is not None:
        print(f"first samples within {summary['start_spread_ms']:.3f} ms of each other")
    print(_format_rows(summary))
    print()
    print(f"recordings: {summary['storage']}")
    print(f"database:   {summary['database']}")
    return 0 if state.is_completed() else 1


def _format_rows(summary: dict[str, Any]) -> str:
    s = AcquisitionSummary(
        **{k: v for k, v in summary.items() if k not in ("receivers", "ok", "message")}
    )
    s.receivers = [ReceiverOutcome(**r) for r in summary["receivers"]]
    return format_table(s)


if __name__ == "__main__":
    sys.exit(main())
