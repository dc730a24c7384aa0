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

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.logging import get_run_logger

from blocks.resolve import default_data_dir, resolve_database
from flows import cli
from tasks.records import enforce_retention


@flow(name="retention", description="Drop measurement rows (chunks) older than N days.")
async def retention(
    older_than_days: int = 365,
    database: str = "auto",
    data_dir: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Remove measurement rows older than ``older_than_days``.

    Args:
        older_than_days: keep this many days of rows (at least 1).
        database: ``"auto"``, ``"sqlite"`` or ``"timescaledb-connection/<name>"``, as for
            ``acquire``.
        data_dir: folder of the SQLite default (default ``$RF_DATA_DIR`` or ``./data``).
        dry_run: list what would be dropped, drop nothing.
        now: reference instant, timezone-aware (default: now); for backfills and tests.

    Returns:
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
    return {**result.as_dict(), "database": choice.description}


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("flows.maintenance", __doc__, storage=False)
    p.add_argument("--older-than-days", type=int, default=365)
    p.add_argument("--dry-run", action="store_true")
    state = cli.run_once(retention, **vars(p.parse_args(argv)))
    print(json.dumps(state.result(raise_on_failure=False), indent=2, default=str))
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
