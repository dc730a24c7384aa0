"""The reconcile flow: rows for stored recordings whose rows could not be written, and
recordings the storage refused (kept in ``<data_dir>/spool``) uploaded where they belong.

Run it after an acquisition ended with "rows missing for acquisition ..." or with
receivers whose store failed, or on a schedule (prefect.yaml) so an outage heals itself:
``python -m flows.reconcile --days 2``.
"""

from __future__ import annotations

import asyncio
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
from tasks.reconcile import DEFAULT_MIN_AGE
from tasks.reconcile import reconcile as reconcile_stored
from tasks.storage import spool_folder


@flow(
    name="reconcile",
    description="Record rows for stored recordings that have none; upload spooled recordings.",
)
async def reconcile(
    days: int = 2,
    storage: str = "auto",
    database: str = "auto",
    data_dir: str | None = None,
    verify: bool = True,
    spool_dir: str | None = None,
    min_age_s: float = DEFAULT_MIN_AGE.total_seconds(),
) -> State[dict[str, Any]]:
    """Upload spooled recordings, then scan the last ``days`` UTC days of storage and
    backfill missing rows.

    Args:
        days: how many UTC days back to scan (1-3660), today included.
        storage: as for ``acquire``: "auto", "local" or "<block-type>/<name>".
        database: as for ``acquire``: "auto", "sqlite" or "timescaledb-connection/<name>".
        data_dir: folder of the local defaults.
        verify: check each recording's sha512 before recording it.
        spool_dir: where the acquisition flow keeps recordings the storage refused
            (default ``<data_dir>/spool``); every complete one, whatever its day, is
            uploaded to ``storage``, read back, its row marked ok, then removed. Skipped
            when the folder does not exist.
        min_age_s: leave alone acquisitions whose newest recording ended less than this
            many seconds ago (an acquisition flow may still be writing them).

    Returns:
        Completed with a message like "3 rows backfilled in 1 acquisitions (...)", or
        Failed when some recordings could not be read, uploaded or recorded.
    """
    logger = get_run_logger()
    if not 1 <= days <= 3660:
        raise ValueError(f"days={days} is out of range [1, 3660]")
    if not 0 <= min_age_s <= 7 * 86400:
        raise ValueError(f"min_age_s={min_age_s} is out of range [0, 604800]")
    folder = Path(data_dir).resolve() if data_dir else default_data_dir()
    spool = Path(spool_dir).expanduser().resolve() if spool_dir else spool_folder(folder)
    store = await resolve_storage(storage, folder)
    db = await resolve_database(database, folder)
    end = datetime.now(UTC)
    start = end - timedelta(days=days - 1)
    try:
        if spool.is_dir():
            logger.info("uploading recordings spooled in %s to %s", spool, store.description)
        else:
            logger.info("no spool at %s: nothing to upload", spool)
        logger.info(
            "scanning %s from %s for recordings without rows", store.description, start.date()
        )
        report = await reconcile_stored(
            store.block,
            db.engine,
            start,
            end,
            verify=verify,
            spool=spool if spool.is_dir() else None,
            min_age=timedelta(seconds=min_age_s),
        )
    finally:
        await asyncio.to_thread(db.engine.dispose)
    for acquisition, receivers in report.uploaded.items():
        logger.info("acquisition %s: uploaded from the spool %s", acquisition, ", ".join(receivers))
    for acquisition, receivers in report.backfilled.items():
        logger.info("acquisition %s: backfilled %s", acquisition, ", ".join(receivers))
    if report.too_recent:
        logger.info(
            "left for a later pass (younger than %g s): %s",
            min_age_s,
            ", ".join(report.too_recent),
        )
    for error in report.errors:
        logger.error("reconcile: %s", error)
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
            + [
                f"- `{a}`: uploaded from the spool {', '.join(r)}"
                for a, r in report.uploaded.items()
            ]
            + [f"- error: {e}" for e in report.errors]
        ),
        description=report.message,
    )
    data = {
        "message": report.message,
        "rows_backfilled": report.rows_backfilled,
        "backfilled": report.backfilled,
        "uploaded_from_spool": report.uploaded_from_spool,
        "uploaded": report.uploaded,
        "spool_left": report.spool_left,
        "too_recent": report.too_recent,
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
    p.add_argument("--spool-dir", default=None, help="spooled recordings (<data-dir>/spool)")
    p.add_argument("--min-age-s", type=float, default=DEFAULT_MIN_AGE.total_seconds())
    return cli.run_and_print(reconcile, **vars(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
