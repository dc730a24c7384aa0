"""The reconcile flow: rows for stored recordings whose rows could not be written.

Run it after an acquisition ended with "rows missing for acquisition ...", or on a
schedule (prefect.yaml) so an outage heals itself:
``python -m flows.reconcile --days 2``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact
from prefect.logging import get_run_logger
from prefect.states import Completed, Failed, State

from blocks.resolve import default_data_dir, resolve_database, resolve_storage
from flows import cli
from tasks.reconcile import reconcile as reconcile_stored


@flow(name="reconcile", description="Record rows for stored recordings that have none.")
async def reconcile(
    days: int = 2,
    storage: str = "auto",
    database: str = "auto",
    data_dir: str | None = None,
    verify: bool = True,
) -> State[dict[str, Any]]:
    """Scan the last ``days`` UTC days of storage and backfill missing rows.

    Args:
        days: how many UTC days back to scan (1-3660), today included.
        storage: as for ``acquire``: "auto", "local" or "<block-type>/<name>".
        database: as for ``acquire``: "auto", "sqlite" or "timescaledb-connection/<name>".
        data_dir: folder of the local defaults.
        verify: check each recording's sha512 before recording it.

    Returns:
        Completed with a message like "3 rows backfilled in 1 acquisitions (...)", or
        Failed when some recordings could not be read.
    """
    logger = get_run_logger()
    if not 1 <= days <= 3660:
        raise ValueError(f"days={days} is out of range [1, 3660]")
    folder = Path(data_dir).resolve() if data_dir else default_data_dir()
    store = await resolve_storage(storage, folder)
    db = await resolve_database(database, folder)
    end = datetime.now(UTC)
    start = end - timedelta(days=days - 1)
    logger.info("scanning %s from %s for recordings without rows", store.description, start.date())
    try:
        report = await reconcile_stored(store.block, db.engine, start, end, verify=verify)
    finally:
        db.engine.dispose()
    for acquisition, receivers in report.backfilled.items():
        logger.info("acquisition %s: backfilled %s", acquisition, ", ".join(receivers))
    for error in report.errors:
        logger.error("could not backfill %s", error)
    if report.incomplete:
        logger.warning(
            "%d recordings have data but no metadata (store interrupted); left alone: %s",
            len(report.incomplete),
            ", ".join(report.incomplete[:10]),
        )
    await acreate_markdown_artifact(
        key="reconcile-report",
        markdown="\n".join(
            [f"# Reconcile: {report.message}", ""]
            + [f"- `{a}`: {', '.join(r)}" for a, r in report.backfilled.items()]
            + [f"- error: {e}" for e in report.errors]
        ),
        description=report.message,
    )
    data = {
        "message": report.message,
        "rows_backfilled": report.rows_backfilled,
        "backfilled": report.backfilled,
        "incomplete": report.incomplete,
        "errors": report.errors,
    }
    if report.errors:
        return Failed(message=report.message, data=data)
    return Completed(message=report.message, data=data)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser("flows.reconcile", __doc__)
    p.add_argument("--days", type=int, default=2)
    p.add_argument("--no-verify", dest="verify", action="store_false")
    return cli.run_and_print(reconcile, **vars(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
