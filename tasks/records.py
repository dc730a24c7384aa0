"""Acquisition and measurement rows: SQLAlchemy models, schema setup and idempotent upserts.

One model serves TimescaleDB (``measurements`` becomes a hypertable on ``time``) and SQLite
(the embedded default). Writes are single multi-row ``INSERT ... ON CONFLICT DO UPDATE``
statements in one transaction, so a retried record task changes nothing twice.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff
from sqlalchemy import (
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Text,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MEASUREMENT_KEY = ("acquisition_id", "receiver", "time")


class Base(DeclarativeBase):
    pass


class Acquisition(Base):
    """One acquisition: what was asked for and how it went."""

    __tablename__ = "acquisitions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    frequency_hz: Mapped[float] = mapped_column(Float, nullable=False)
    duration_s: Mapped[float] = mapped_column(Float, nullable=False)
    start_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    receivers_requested: Mapped[int] = mapped_column(Integer, nullable=False)
    receivers_ok: Mapped[int] = mapped_column(Integer, nullable=False)
    receivers_failed: Mapped[int] = mapped_column(Integer, nullable=False)
    receivers_skipped: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class Measurement(Base):
    """One receiver in one acquisition; a hypertable on ``time`` (UTC of the first sample,
    or the planned start when nothing was captured)."""

    __tablename__ = "measurements"

    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    acquisition_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    receiver: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    altitude_m: Mapped[float | None] = mapped_column(Float)
    frequency_hz: Mapped[float] = mapped_column(Float, nullable=False)
    sample_rate: Mapped[float | None] = mapped_column(Float)
    sample_count: Mapped[int | None] = mapped_column(Integer)
    power_dbfs: Mapped[float | None] = mapped_column(Float)
    noise_floor_dbfs_hz: Mapped[float | None] = mapped_column(Float)
    signal_power_dbfs: Mapped[float | None] = mapped_column(Float)
    cn0_dbhz: Mapped[float | None] = mapped_column(Float)
    snr_db: Mapped[float | None] = mapped_column(Float)
    snr_bandwidth_hz: Mapped[float | None] = mapped_column(Float)
    frequency_offset_hz: Mapped[float | None] = mapped_column(Float)
    rssi_dbm: Mapped[float | None] = mapped_column(Float)
    gps_fix: Mapped[bool | None] = mapped_column(Boolean)
    lost_frames: Mapped[int | None] = mapped_column(Integer)
    adc_overflow_frames: Mapped[int | None] = mapped_column(Integer)
    object_key: Mapped[str | None] = mapped_column(Text)
    sha512: Mapped[str | None] = mapped_column(String(128))


MEASUREMENT_COLUMNS = frozenset(c.name for c in Measurement.__table__.columns)


class RecordError(ValueError):
    """A row that cannot be written; names the receiver and the field."""


def has_timescaledb(engine: Engine) -> bool:
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
            ).scalar()
        )


def ensure_schema(engine: Engine) -> None:
    """Create the tables if missing, and make ``measurements`` a hypertable on TimescaleDB.

    Issue #6 replaces this with versioned Alembic migrations; the resulting schema is the
    same, so databases made by this function stay usable.
    """
    Base.metadata.create_all(engine)
    if has_timescaledb(engine):
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
            conn.execute(
                text(
                    "SELECT create_hypertable('measurements', 'time', "
                    "chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE, "
                    "migrate_data => TRUE)"
                )
            )


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(row) - MEASUREMENT_COLUMNS
    if unknown:
        raise RecordError(f"unknown measurement fields: {', '.join(sorted(unknown))}")
    out = dict(row)
    for key, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None  # NaN/Inf mean "not measurable": store NULL, never a fake number
    for key in MEASUREMENT_KEY:
        if out.get(key) is None:
            raise RecordError(f"receiver {row.get('receiver')!r}: field {key!r} is required")
    t = out["time"]
    if t.tzinfo is None:
        raise RecordError(f"receiver {row['receiver']!r}: field 'time' must be timezone-aware")
    out["time"] = t.astimezone(UTC)
    if isinstance(out["acquisition_id"], str):
        out["acquisition_id"] = uuid.UUID(out["acquisition_id"])
    return out


def _insert(engine: Engine, table: Any) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def upsert_acquisition(engine: Engine, acquisition: Mapping[str, Any]) -> None:
    """Insert or update the acquisition row."""
    values = dict(acquisition)
    if isinstance(values.get("id"), str):
        values["id"] = uuid.UUID(values["id"])
    stmt = _insert(engine, Acquisition).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"],
        set_={k: stmt.excluded[k] for k in values if k != "id"},
    )
    with engine.begin() as conn:
        conn.execute(stmt)


def upsert_measurements(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> int:
    """Write all rows in one statement and one transaction; returns the row count.

    Re-running with the same rows updates them in place (key: acquisition, receiver, time).
    """
    if not rows:
        return 0
    cleaned = [_clean(r) for r in rows]
    columns = set().union(*cleaned)
    for row in cleaned:
        for column in columns:
            row.setdefault(column, None)
    stmt = _insert(engine, Measurement).values(cleaned)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(MEASUREMENT_KEY),
        set_={k: stmt.excluded[k] for k in columns if k not in MEASUREMENT_KEY},
    )
    with engine.begin() as conn:
        conn.execute(stmt)
    return len(cleaned)


def measurements_for(engine: Engine, acquisition_id: str | uuid.UUID) -> list[dict[str, Any]]:
    """All rows of one acquisition, by receiver name."""
    acq = uuid.UUID(str(acquisition_id))
    with engine.connect() as conn:
        result = conn.execute(
            select(Measurement.__table__)
            .where(Measurement.acquisition_id == acq)
            .order_by(Measurement.receiver)
        )
        return [dict(r._mapping) for r in result]


@task(
    name="record",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2.0),
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
)
def record(
    engine: Engine, acquisition: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]
) -> int:
    """Upsert the acquisition row and its measurement rows (retried: upserts are idempotent).

    Sync on purpose: SQLAlchemy's sync engine runs in the task runner's worker thread,
    which keeps the flow's event loop free.
    """
    rows = list(rows)
    ensure_schema(engine)
    upsert_acquisition(engine, acquisition)
    written = upsert_measurements(engine, rows)
    get_run_logger().info(
        "recorded %d rows for acquisition %s (%s)", written, acquisition["id"], engine.url
    )
    return written
