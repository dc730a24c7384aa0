"""Maintenance flows: ``retention`` keeps the measurements table to a fixed age.

On TimescaleDB's Apache edition (the one on these machines) retention is a
``drop_chunks`` call, made here daily (see prefect.yaml); with a ``timescale`` license the
flow installs an ``add_retention_policy`` job instead; on SQLite and on PostgreSQL
without TimescaleDB it deletes the old rows. Acquisition rows are kept (one per
acquisition, small); so are the recordings in storage.

Run it from its deployment, from Python
(``asyncio.run(retention(older_than_days=365, dry_run=True))``) or:
``python -m flows.maintenance --older-than-days 365 --dry-run``.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.logging import get_run_logger
from prefect.states import Completed, State

from blocks.resolve import default_data_dir, resolve_database
from flows import cli
from tasks.records import enforce_retention
from tasks.records.retention import RetentionResult


def retention_message(result: RetentionResult, older_than_days: int) -> str:
    """The run's final state message: what went (or would go), in one line."""
    verb = "would drop" if result.dry_run else "dropped"
    cutoff = result.cutoff.isoformat(timespec="seconds")
    if result.mode == "retention_policy":
        return (
            f"retention policy job {result.policy_job_id} drops measurement chunks older "
            f"than {older_than_days} days"
        )
    if result.mode == "drop_chunks":
        n = len(result.dropped_chunks)
        return f"{verb} {n} measurement chunk{'s' if n != 1 else ''} older than {cutoff}"
    n = result.deleted_rows or 0
    verb = "would delete" if result.dry_run else "deleted"
    return f"{verb} {n} measurement row{'s' if n != 1 else ''} older than {cutoff}"


@flow(name="retention", description="Drop measurement rows (chunks) older than N days.")
async def retention(
    older_than_days: int = 365,
    database: str = "auto",
    data_dir: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> State[dict[str, Any]]:
    """Remove measurement rows older than ``older_than_days``.

    Args:
        older_than_days: keep this many days of rows (at least 1).
        database: ``"auto"``, ``"sqlite"`` or ``"timescaledb-connection/<name>"``, as for
            ``acquire``.
        data_dir: folder of the SQLite default (default ``$RF_DATA_DIR`` or ``./data``).
        dry_run: list what would be dropped, drop nothing.
        now: reference instant, timezone-aware (default: now); for backfills and tests.

    Returns:
        A Completed state whose message says what was dropped (e.g. "dropped 3
        measurement chunks older than 2025-11-29T00:00:00+00:00") and whose result holds
        ``mode`` ("drop_chunks", "retention_policy" or "delete"), ``cutoff`` (ISO),
        ``dropped_chunks`` (chunk names), ``deleted_rows`` (SQLite/plain PostgreSQL),
        ``policy_job_id`` (TSL license) and ``dry_run``.
    """
    if older_than_days < 1:
        raise ValueError(f"older_than_days={older_than_days}: keep at least 1 day")
    if now is not None and now.tzinfo is None:
        raise ValueError(f"now={now.isoformat()}: must be timezone-aware")
    folder = Path(data_dir).resolve() if data_dir else default_data_dir()
    choice = await resolve_database(database, folder)
    get_run_logger().info(
        "retention: measurements older than %d days in %s%s",
        older_than_days,
        choice.description,
        " (dry run)" if dry_run else "",
    )
    try:
        future = enforce_retention.submit(
            choice.engine, timedelta(days=older_than_days), now=now, dry_run=dry_run
        )
        wait([future])
        result = future.result()
    finally:
        choice.engine.dispose()
    message = retention_message(result, older_than_days)
    data = {**result.as_dict(), "database": choice.description, "message": message}
    return Completed(message=f"{message} in {choice.description}", data=data)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("flows.maintenance", __doc__, storage=False)
    p.add_argument("--older-than-days", type=int, default=365)
    p.add_argument("--dry-run", action="store_true")
    args = vars(p.parse_args(argv))
    as_json = args.pop("json")
    return cli.finish(cli.run_once(retention, json=as_json, **args), json=as_json)


if __name__ == "__main__":
    sys.exit(main())
