"""Beyond one machine: a large network acquired as shards, each shard a run of the
``acquire`` deployment on whichever worker (or ``serve`` process) of the pool takes it.

The shards share one acquisition id and one common instant, chosen here as ``now +
lead_s`` (integer ns): the lead covers a worker picking the run up and starting it, which
this process cannot see, so it is set generously (default 20 s). Each shard captures,
processes, stores and records its own receivers; this flow then writes the acquisition
row with the totals and reports from the recorded rows, which every machine shares.

Run it with a deployment of ``acquire`` served somewhere, e.g. ``python -m
flows.sharded --deployment acquire/acquire --shards 4 --simulated-receivers 200``.
"""

# No ``from __future__ import annotations`` here: a deployment run loads the flow from its
# entrypoint and validates the parameters against these annotations, which must then be
# real objects, not strings naming module globals.

import asyncio
import contextlib
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from prefect.deployments import run_deployment
from prefect.logging import get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from blocks.resolve import default_data_dir, resolve_database, select_receivers
from flows import cli
from tasks.capture import ns_to_datetime
from tasks.plan import Network, SimulatedOptions, load_receivers, validate_request
from tasks.records import ensure_schema, measurements_for, upsert_acquisition

Shards = Annotated[int, Field(ge=1, le=256)]
LeadS = Annotated[float, Field(ge=1.0, le=600.0)]


def split_into_shards(names: list[str], shards: int) -> list[list[str]]:
    """``shards`` near-equal, non-empty parts, each spread over the whole list (so one
    shard is not one region of the network)."""
    parts = [names[i::shards] for i in range(min(shards, len(names)))]
    return [p for p in parts if p]


@flow(name="acquire-sharded", description="One acquisition of a large network, as shards.")
async def acquire_sharded(
    frequency_hz: float = 145_500_000.0,
    duration_s: float = 2.0,
    shards: Shards = 2,
    deployment: str = "acquire/acquire",
    receivers: list[str] | None = None,
    tag: str | None = None,
    network: Network = "auto",
    storage: str = "auto",
    database: str = "auto",
    data_dir: str | None = None,
    lead_s: LeadS = 20.0,
    simulated_receivers: Annotated[int, Field(ge=1, le=2000)] | None = None,
) -> State[dict[str, Any]]:
    """Acquire ``receivers`` (default: all enabled) as ``shards`` runs of ``deployment``.

    Returns:
        Completed "N/M receivers ok in K shards" with the totals, or Failed when no
        receiver succeeded or a shard did not complete.
    """
    logger = get_run_logger()
    validate_request(frequency_hz, duration_s)
    folder = Path(data_dir).resolve() if data_dir else default_data_dir()
    async with contextlib.AsyncExitStack() as stack:
        # Only the names are needed here (a simulated network is stopped again at once).
        simulated = SimulatedOptions(simulated_receivers)
        available = await load_receivers(network, frequency_hz, stack, tag=tag, simulated=simulated)
        names = list(select_receivers(available, receivers, tag))
    acquisition_id = str(uuid.uuid4())
    start_ns = -(-(time.time_ns() + int(lead_s * 1e9)) // 1000) * 1000
    parts = split_into_shards(names, shards)
    common = {
        "frequency_hz": frequency_hz, "duration_s": duration_s, "network": network,
        "storage": storage, "database": database, "data_dir": data_dir,
        "simulated_receivers": simulated_receivers,
        "acquisition_id": acquisition_id, "start_ns": start_ns,
    }  # fmt: skip
    logger.info(
        "acquisition %s: %d receivers in %d shards of %s, start in %.1f s",
        acquisition_id, len(names), len(parts), deployment, lead_s,
    )  # fmt: skip
    db = await resolve_database(database, folder)
    # The schema once, here: shards starting on a fresh database would race to create it.
    await asyncio.to_thread(ensure_schema, db.engine)
    runs = await asyncio.gather(
        *(
            run_deployment(deployment, parameters={**common, "receivers": part}, poll_interval=1)
            for part in parts
        )
    )
    failed = [r.name for r in runs if r.state is None or not r.state.is_completed()]
    try:
        rows = await asyncio.to_thread(measurements_for, db.engine, acquisition_id)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "skipped")}
        await asyncio.to_thread(
            upsert_acquisition,
            db.engine,
            {
                "id": acquisition_id, "frequency_hz": frequency_hz, "duration_s": duration_s,
                "start_at": ns_to_datetime(start_ns), "receivers_requested": len(names),
                "receivers_ok": counts["ok"], "receivers_failed": counts["failed"],
                "receivers_skipped": counts["skipped"], "status": "completed",
            },
        )  # fmt: skip
    finally:
        db.engine.dispose()
    message = f"{counts['ok']}/{len(names)} receivers ok in {len(parts)} shards"
    if missing := len(names) - len(rows):
        message += f" ({missing} without a row)"
    if failed:
        message += f"; shards not completed: {', '.join(failed)}"
    summary = {
        "acquisition_id": acquisition_id,
        "start_ns": start_ns,
        "shards": [{"flow_run": r.name, "state": r.state.name if r.state else None} for r in runs],
        "ok": counts["ok"],
        "receivers": len(names),
        "message": message,
    }
    logger.info(message)
    if counts["ok"] == 0 or failed:
        return Failed(message=message, data=summary)
    return Completed(message=message, data=summary)


def main(argv: list[str] | None = None) -> int:
    """Command line: one sharded acquisition; prints its message (or ``--json``)."""
    p = cli.parser("flows.sharded", __doc__)
    p.add_argument("--frequency-hz", type=float, default=145_500_000.0)
    p.add_argument("--duration-s", type=float, default=2.0)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--deployment", default="acquire/acquire")
    p.add_argument("--network", choices=["auto", "simulated", "blocks"], default="auto")
    p.add_argument("--simulated-receivers", type=int, default=None)
    p.add_argument("--lead-s", type=float, default=20.0)
    return cli.run_and_print(acquire_sharded, **vars(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
