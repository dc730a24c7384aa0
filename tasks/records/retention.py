"""Retention: remove measurement rows older than a given age.

TimescaleDB drops whole chunks (or installs a retention policy job with a ``timescale``
license); PostgreSQL without it and SQLite delete the old rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, text

from tasks.records.models import Measurement
from tasks.records.schema import ensure_schema, has_timescaledb


@dataclass
class RetentionResult:
    """What a retention run did (or would do, with ``dry_run``)."""

    mode: str  # "drop_chunks", "retention_policy" or "delete"
    cutoff: datetime
    dry_run: bool = False
    dropped_chunks: list[str] = field(default_factory=list)
    deleted_rows: int | None = None
    policy_job_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cutoff": self.cutoff.isoformat()}


def drop_old_measurements(
    engine: Engine,
    older_than: timedelta,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionResult:
    """Remove measurement rows older than ``older_than``.

    TimescaleDB, Apache edition: ``drop_chunks`` (whole 1-day chunks that end before the
    cutoff; a chunk straddling it stays). With a ``timescale`` license: an
    ``add_retention_policy`` job instead. PostgreSQL without TimescaleDB and SQLite:
    ``DELETE`` of the rows before the cutoff.

    Args:
        engine: the database.
        older_than: age of the oldest rows to keep.
        now: the reference instant (default: the current time).
        dry_run: report what would go, change nothing.

    Example:
        >>> from blocks.database import sqlite_engine
        >>> drop_old_measurements(sqlite_engine(tmp / "r.db"), timedelta(days=90)).mode
        ...  # doctest: +SKIP
        'delete'
    """
    if older_than <= timedelta(0):
        raise ValueError(f"older_than={older_than}: must be positive")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    cutoff = now - older_than
    ensure_schema(engine)
    with engine.begin() as conn:
        if has_timescaledb(conn):
            license_ = conn.execute(text("SELECT current_setting('timescaledb.license')")).scalar()
            if license_ == "timescale" and not dry_run:
                job = _ensure_retention_policy(conn, older_than)
                return RetentionResult("retention_policy", cutoff, policy_job_id=job)
            fn = "show_chunks" if dry_run else "drop_chunks"
            names = conn.execute(
                text(f"SELECT {fn}('measurements', older_than => :cutoff)::text"),
                {"cutoff": cutoff},
            ).scalars()
            return RetentionResult("drop_chunks", cutoff, dry_run, dropped_chunks=sorted(names))
        old = Measurement.__table__.c.time < _db_time(conn, cutoff)
        if dry_run:
            count = conn.execute(select(func.count()).select_from(Measurement).where(old))
            return RetentionResult("delete", cutoff, True, deleted_rows=count.scalar_one())
        deleted = conn.execute(delete(Measurement).where(old)).rowcount
        return RetentionResult("delete", cutoff, deleted_rows=deleted)


def _db_time(conn: Connection, t: datetime) -> datetime:
    # SQLite keeps timestamps as naive UTC text: compare like with like.
    return t.replace(tzinfo=None) if conn.dialect.name == "sqlite" else t


def _ensure_retention_policy(conn: Connection, older_than: timedelta) -> int:
    """One TSL retention job on ``measurements`` with this interval (replacing another)."""
    current = conn.execute(
        text(
            "SELECT job_id, config->>'drop_after' FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_retention' AND hypertable_name = 'measurements'"
        )
    ).first()
    if current is not None:
        same = conn.execute(
            text("SELECT CAST(:a AS interval) = :b"), {"a": current[1], "b": older_than}
        ).scalar()
        if same:
            return int(current[0])
        conn.execute(text("SELECT remove_retention_policy('measurements')"))
    job = conn.execute(
        text("SELECT add_retention_policy('measurements', drop_after => :d)"), {"d": older_than}
    ).scalar_one()
    return int(job)
