"""The Prefect tasks over the records package: ``record`` and ``drop-old-measurements``.

Thin wrappers: the work is :func:`tasks.records.write.write_acquisition` and
:func:`tasks.records.retention.drop_old_measurements`; here are the retry policy and the
run logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import task_run as runtime_task_run
from prefect.tasks import exponential_backoff
from sqlalchemy import Engine

from tasks.records.retention import RetentionResult, drop_old_measurements
from tasks.records.transience import retry_transient_db
from tasks.records.write import write_acquisition


def record_run_name() -> str:
    """``record-<first 8 hex digits of the acquisition id>`` (not Prefect's ``record-848``)."""
    acquisition = runtime_task_run.parameters.get("acquisition") or {}
    return f"record-{str(acquisition.get('id', ''))[:8] or 'acquisition'}"


@task(
    name="record",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2.0),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient_db,
    cache_policy=NO_CACHE,
    task_run_name=record_run_name,
)
def record(
    engine: Engine, acquisition: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]
) -> int:
    """Upsert the acquisition row and its measurement rows in one transaction.

    Retried with backoff only on connection-class and transient errors
    (:func:`is_transient_db_error`: unreachable, restarting, out of connection slots,
    serialization failure or deadlock); the upserts are idempotent. Bad data
    (:class:`RecordError`), an unknown schema (``MigrationError``), a wrong password,
    missing privileges and the like fail at once. Errors never carry the password.
    Sync on purpose: SQLAlchemy's sync engine runs in the task runner's worker thread,
    which keeps the flow's event loop free.
    """
    written = write_acquisition(engine, rows, acquisition)
    get_run_logger().info(
        "recorded %d rows for acquisition %s (%s)", written, acquisition["id"], engine.url
    )
    return written


@task(name="drop-old-measurements", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def enforce_retention(
    engine: Engine, older_than: timedelta, now: datetime | None = None, dry_run: bool = False
) -> RetentionResult:
    """Task wrapper of :func:`drop_old_measurements` that logs what went."""
    result = drop_old_measurements(engine, older_than, now=now, dry_run=dry_run)
    logger = get_run_logger()
    verb = "would drop" if dry_run else "dropped"
    if result.mode == "retention_policy":
        logger.info(
            "retention policy job %s drops chunks older than %s", result.policy_job_id, older_than
        )
    elif result.mode == "drop_chunks":
        logger.info(
            "%s %d chunks older than %s: %s",
            verb,
            len(result.dropped_chunks),
            result.cutoff.isoformat(),
            ", ".join(result.dropped_chunks) or "none",
        )
    else:
        logger.info(
            "%s %d rows older than %s", verb, result.deleted_rows, result.cutoff.isoformat()
        )
    return result
