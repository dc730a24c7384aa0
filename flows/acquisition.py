"""The parent acquisition flow: plan, then each receiver's capture -> process -> store,
then record and report.

Run it from Python (``asyncio.run(acquire(145.5e6, 2.0))``), from a deployment (see
prefect.yaml), or from the command line: ``python -m flows.acquisition --help``.

With nothing configured it captures from the built-in simulated seed network, stores
recordings in ``./data/recordings`` and rows in ``./data/rf_acquisition.db``.
"""

# No ``from __future__ import annotations`` here: a deployment run loads the flow from its
# entrypoint and validates the parameters against these annotations, which must then be
# real objects, not strings naming module globals.

import contextlib
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from prefect import flow
from prefect.filesystems import LocalFileSystem
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_aws import S3Bucket
from pydantic import Field

from blocks.database import TimescaleDBConnection
from blocks.resolve import (
    default_data_dir,
    resolve_database,
    resolve_network,
    resolve_storage,
    select_receivers,
)
from flows import cli
from tasks.capture import StartBarrier, check_receivers, start_margin_s
from tasks.kiwisdr.client import MAX_DURATION_S, MIN_DURATION_S, CaptureSettings
from tasks.pipeline import (
    MAX_RECEIVER_TASKS,
    AcquisitionRun,
    acquire_receivers,
    group_receivers,
    limit_malloc_arenas,
    outcomes_of,
    record_acquisition,
    record_result,
    rows_of,
)
from tasks.plan import (
    MAX_FREQUENCY_HZ,
    MIN_FREQUENCY_HZ,
    Network,
    SimulatedOptions,
    load_receivers,
    skip_reason,
    split_by_frequency,
    validate_request,
    without_gps_fix,
)
from tasks.report import (
    AcquisitionSummary,
    Progress,
    ReceiverOutcome,
    format_table,
    publish,
    recordings_folder,
    start_spread_ms,
)
from tasks.storage import STORE_DEADLINE_S, spool_folder

# Typed ranges: the UI form and the server refuse values outside them before a run exists.
FrequencyHz = Annotated[float, Field(ge=MIN_FREQUENCY_HZ, le=MAX_FREQUENCY_HZ)]
DurationS = Annotated[float, Field(ge=MIN_DURATION_S, le=MAX_DURATION_S)]
StoreDeadlineS = Annotated[float, Field(ge=1.0, le=3600.0)]
# where a simulated network runs (the modes of tasks.kiwisdr.network.serve_simulated_network,
# spelled here so the flow module does not import the simulator to define its parameters)
SimulatorChoice = Literal["auto", "inline", "process"]
SimulatedReceivers = Annotated[int, Field(ge=1, le=2000)]
AcquisitionId = Annotated[
    str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
]
StartNs = Annotated[int, Field(gt=1_500_000_000 * 10**9)]  # after 2017: a real instant
Latitude = Annotated[float, Field(ge=-90.0, le=90.0)]
Longitude = Annotated[float, Field(ge=-180.0, le=180.0)]


@flow(
    name="acquire",
    description="Capture IQ from every receiver at one instant and record it.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_RECEIVER_TASKS + 2),
)
async def acquire(
    frequency_hz: FrequencyHz = 145_500_000.0,
    duration_s: DurationS = 2.0,
    receivers: list[str] | None = None,
    tag: str | None = None,
    network: Network = "auto",
    storage: S3Bucket | LocalFileSystem | str = "auto",
    database: TimescaleDBConnection | str = "auto",
    data_dir: str | None = None,
    require_gps: bool = False,
    store_deadline_s: StoreDeadlineS = STORE_DEADLINE_S,
    simulated_receivers: SimulatedReceivers | None = None,
    emitter: tuple[Latitude, Longitude] | None = None,
    modulation: str | None = None,
    simulator: SimulatorChoice = "auto",
    acquisition_id: AcquisitionId | None = None,
    start_ns: StartNs | None = None,
    locate: bool = False,
) -> State[dict[str, Any]]:
    """One synchronised acquisition.

    Args:
        frequency_hz: RF frequency to tune (down-converter offsets are applied per receiver).
        duration_s: capture length, 0.05-600 s.
        receivers: receiver names to use (default: all enabled ones).
        tag: only receivers carrying this tag.
        network: ``"blocks"`` (saved KiwiSDR Receiver blocks), ``"simulated"`` (the built-in
            network on loopback) or ``"auto"`` (blocks when any are saved).
        storage: an S3Bucket or LocalFileSystem block (the UI offers the saved ones), or
            ``"auto"``, ``"local"`` or ``"<block-type>/<name>"``, e.g.
            ``"s3-bucket/rf-acquisition"``. With the simulated network ``"auto"`` means
            ``"local"``: simulated data reaches a bucket only when one is named.
        database: a TimescaleDB Connection block, or ``"auto"``, ``"sqlite"`` or
            ``"timescaledb-connection/<name>"`` (``"auto"`` with the simulated network:
            ``"sqlite"``). Rows of simulated runs have ``simulated`` set.
        data_dir: folder of the local defaults (default ``$RF_DATA_DIR`` or ``./data``).
        require_gps: skip receivers whose /status shows no GPS fix.
        store_deadline_s: how long one recording may take to store before it is spooled.
        simulated_receivers: size of the simulated network (default: the seed's seven).
        emitter: ``[latitude, longitude]`` of the simulated emitter.
        modulation: the simulated emitter's modulation (e.g. ``carrier``, ``bpsk``).
        simulator: where the simulated network runs: ``"process"`` (a child process,
            ended with the run), ``"inline"`` (a thread of this process) or ``"auto"``
            (a child process above 16 receivers; see
            :func:`tasks.kiwisdr.network.serve_simulated_network`).
        acquisition_id: join this acquisition instead of starting a new one (a shard of
            ``acquire-sharded``: every shard records its rows under the same id).
        start_ns: the common instant, integer ns since 1970, chosen by whoever started
            the shards (default: set when this run's captures are ready).
        locate: after recording, position the transmitter from this acquisition (the
            ``locate`` flow, as a subflow); a simulated run is scored against its emitter.

    Returns:
        A Completed state saying "N/M receivers ok" whose result is the summary dict, or a
        Failed state when no receiver succeeded or rows could not be recorded.
    """
    logger = get_run_logger()
    validate_request(frequency_hz, duration_s)  # also when called as acquire.fn(...)
    limit_malloc_arenas()  # before the receiver threads: freed recordings go back for reuse
    folder = Path(data_dir).resolve() if data_dir else default_data_dir()
    acquisition_id = acquisition_id or str(uuid.uuid4())
    simulated = SimulatedOptions(simulated_receivers, emitter, modulation, simulator=simulator)
    network = await resolve_network(network, tag)  # type: ignore[assignment]
    is_simulated = network == "simulated"
    if is_simulated:  # simulated data never goes to a production target by default
        storage = "local" if storage == "auto" else storage
        database = "sqlite" if database == "auto" else database

    async with contextlib.AsyncExitStack() as stack:
        # 1. plan: receivers, their /status, storage and database
        available = await load_receivers(
            network, frequency_hz, stack, tag=tag, simulated=simulated, log=logger
        )
        chosen = select_receivers(available, receivers, tag)
        tunable, skipped = split_by_frequency(chosen, frequency_hz)
        checks = await check_receivers(tunable)
        store_choice = await resolve_storage(storage, folder)
        db_choice = await resolve_database(database, folder)
        stack.callback(db_choice.engine.dispose)
        skipped |= {n: r for n, c in checks.items() if (r := skip_reason(c, require_gps))}
        go = {n: rx for n, rx in tunable.items() if n not in skipped}
        if unlocked := [n for n in without_gps_fix(checks) if n in go]:
            logger.warning("no GPS fix, timing flagged: %s", ", ".join(unlocked))
        margin = start_margin_s([c.rtt_s for c in checks.values()], len(go))
        logger.info(
            "acquisition %s: %d receivers, %d skipped, start %.2f s after all are ready; "
            "storage %s; database %s",
            acquisition_id, len(go), len(skipped), margin,
            store_choice.description, db_choice.description,
        )  # fmt: skip
        # Only now, with the request valid and its targets resolved, does the acquisition
        # exist: an early failure leaves no progress bar naming an acquisition nowhere.
        progress = Progress()
        await progress.start(f"acquisition {acquisition_id} at {frequency_hz / 1e6:.6f} MHz")
        await progress.update(10)

        # 2. per receiver, on its own: capture at the common instant -> process -> store
        settings = CaptureSettings(frequency_hz, duration_s)
        run = AcquisitionRun(
            acquisition_id, settings,
            StartBarrier.at(start_ns) if start_ns else StartBarrier(len(go), margin),
            store_choice.block, spool_folder(folder), store_deadline_s, is_simulated,
        )  # fmt: skip
        groups = group_receivers(go)
        futures = [acquire_receivers.submit(group, run) for group in groups]
        outcomes = [ReceiverOutcome(n, "skipped", why) for n, why in skipped.items()]
        outcomes += await outcomes_of(futures, groups)
        order = {name: i for i, name in enumerate(chosen)}
        outcomes.sort(key=lambda o: order[o.receiver])
        await progress.update(90)

        # 3. record: one batch of idempotent upserts (the manifest is kept if refused)
        acq, rows = rows_of(
            outcomes, chosen, acquisition_id=acquisition_id, start_at=run.start_at,
            frequency_hz=frequency_hz, duration_s=duration_s,
            flow_run_id=str(flow_run.id) if flow_run.id else None, simulated=is_simulated,
        )  # fmt: skip
        recorded = record_acquisition.submit(
            db_choice.engine, acq, rows, store_choice.block, run.spool
        )
        rows_recorded, record_error = await record_result(recorded)

    # 4. report
    summary = AcquisitionSummary(
        acquisition_id, frequency_hz, duration_s, run.start_at.isoformat(),
        store_choice.description, db_choice.description, outcomes,
        rows_recorded, record_error, start_spread_ms(outcomes),
    )  # fmt: skip
    await publish(summary, store_choice.block, run.start_at)
    await progress.update(100)
    data = summary.as_dict()
    if locate and summary.ok and not summary.record_error:
        # 5. locate: from what was just stored, through the same storage and database
        from flows.locate import locate as locate_flow  # TDOA and solver only when asked

        try:
            data["located"] = await locate_flow(
                acquisition_id=acquisition_id,
                storage=_spec(storage),
                database=_spec(database),
                data_dir=str(folder),
                truth_latitude=simulated.truth[0] if simulated.truth else None,
                truth_longitude=simulated.truth[1] if simulated.truth else None,
            )
        except Exception as exc:  # the acquisition is recorded: a failed position is not
            logger.warning("locate failed: %s: %s", type(exc).__name__, exc)
            message = f"locate failed: {type(exc).__name__}: {exc}"
            data["located"] = {"ok": False, "message": message, "location": None}
    # The table is in the run's artifacts and the command line prints it; the final
    # state's message ("N/M receivers ok") is logged by Prefect itself.
    if summary.ok == 0 or summary.record_error:
        return Failed(message=summary.message, data=data)
    return Completed(message=summary.message, data=data)


def _spec(target: Any) -> str:
    """A storage or database choice as the text the locate flow takes: a saved block by
    ``<block-type>/<name>``, anything else as given."""
    if isinstance(target, str):
        return target
    name = getattr(target, "_block_document_name", None)
    if not name:
        raise ValueError("locate=True needs storage and database given by name or saved")
    return f"{type(target).get_block_type_slug()}/{name}"


def _lat_lon(text: str) -> tuple[float, float]:
    lat, _, lon = text.partition(",")
    return float(lat), float(lon)


def main(argv: list[str] | None = None) -> int:
    """Command line: run one acquisition and print one line per receiver (or ``--json``)."""
    p = cli.parser("flows.acquisition", __doc__)
    p.add_argument("--frequency-hz", type=float, default=145_500_000.0)
    p.add_argument("--duration-s", type=float, default=2.0)
    p.add_argument(
        "--receivers",
        "--receiver",
        nargs="+",
        action="extend",
        default=None,
        help="receiver names (repeatable; default: all enabled)",
    )
    p.add_argument("--tag", default=None, help="only receivers carrying this tag")
    p.add_argument("--require-gps", action="store_true", help="skip receivers without GPS fix")
    p.add_argument(
        "--store-deadline-s",
        type=float,
        default=STORE_DEADLINE_S,
        help="time one recording may take to store before it is spooled (%(default)s)",
    )
    p.add_argument("--network", choices=["auto", "simulated", "blocks"], default="auto")
    p.add_argument("--simulated-receivers", type=int, default=None, help="simulated network size")
    p.add_argument(
        "--emitter", type=_lat_lon, default=None, help="LAT,LON of the simulated emitter"
    )
    p.add_argument("--modulation", default=None, help="the simulated emitter's modulation")
    p.add_argument(
        "--simulator",
        choices=get_args(SimulatorChoice),
        default="auto",
        help="run the simulated network in a child process or in this one (%(default)s)",
    )
    p.add_argument("--locate", action="store_true", help="locate the transmitter afterwards")
    args = vars(p.parse_args(argv))
    as_json = args.pop("json")
    state = cli.run_once(acquire, json=as_json, **args)
    if as_json:
        return cli.finish(state, json=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        print(f"acquisition failed: {state.message or result}", file=sys.stderr)
        return 1
    print()
    print(f"acquisition {result['acquisition_id']}: {result['message']}")
    if result.get("start_spread_ms") is not None:
        print(f"first samples within {result['start_spread_ms']:.3f} ms of each other")
    print(format_table(result))
    print()
    print(f"recordings: {result['storage']}")
    if folder := recordings_folder(result["receivers"]):
        print(f"            in {folder}")
    print(f"database:   {result['database']}")
    if located := result.get("located"):
        print()
        print(f"transmitter: {located['message']}")
        if located.get("map"):
            print(f"map:         {located['map']}")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
