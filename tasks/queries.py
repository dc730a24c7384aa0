"""Read the recorded rows back: plain functions over an Engine, TimescaleDB or SQLite.

The latest row per receiver, a measurement bucketed in time, availability per UTC day
and one acquisition with its rows; ``python -m flows.query`` is their command line.

On TimescaleDB the series are bucketed with ``time_bucket`` (origin the Unix epoch, so the
buckets are the same as the fallback's); on PostgreSQL without it and on SQLite, on epoch
seconds. Days are UTC days. Every instant returned is timezone-aware UTC (SQLite keeps
naive UTC text; it is converted back).

Example (SQLite in memory; the same calls work on TimescaleDB):

    >>> import uuid
    >>> from datetime import UTC, datetime, timedelta
    >>> from sqlalchemy import create_engine
    >>> from tasks.records import ensure_schema, upsert_measurements
    >>> engine = create_engine("sqlite://")
    >>> ensure_schema(engine)
    >>> acq, t0 = uuid.uuid4(), datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    >>> upsert_measurements(engine, [
    ...     {"time": t0 + timedelta(minutes=m), "acquisition_id": acq, "receiver": "torino",
    ...      "status": "ok", "frequency_hz": 145.5e6, "snr_db": snr}
    ...     for m, snr in [(0, 10.0), (20, 14.0), (70, 30.0)]])
    3
    >>> [(p.bucket.hour, p.count, p.mean) for p in metric_series(
    ...     engine, "snr_db", start=t0, end=t0 + timedelta(hours=2), bucket=timedelta(hours=1))]
    [(12, 2, 12.0), (13, 1, 30.0)]
    >>> latest_measurements(engine)[0]["snr_db"]
    30.0
    >>> receiver_availability(engine, start=t0, end=t0 + timedelta(days=1))
    [Availability(day=datetime.date(2026, 3, 1), receiver='torino', ok=3, failed=0, skipped=0)]
    >>> len(acquisition_with_measurements(engine, acq).measurements)
    3
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    DateTime,
    Engine,
    Integer,
    Interval,
    Select,
    bindparam,
    case,
    cast,
    func,
    select,
)
from sqlalchemy.engine import Connection

from tasks.records.models import Acquisition, Measurement
from tasks.records.schema import has_timescaledb

M = Measurement.__table__
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
METRICS = (
    "snr_db",
    "rssi_dbm",
    "frequency_offset_hz",
    "power_dbfs",
    "noise_floor_dbfs_hz",
    "signal_power_dbfs",
    "cn0_dbhz",
)


@dataclass(frozen=True)
class SeriesPoint:
    """One bucket of one receiver's metric: the non-NULL values of ``ok`` rows in it."""

    receiver: str
    bucket: datetime  # start of the bucket, UTC
    count: int
    mean: float
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Availability:
    """How one receiver fared on one UTC day."""

    day: date
    receiver: str
    ok: int
    failed: int
    skipped: int

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.skipped

    @property
    def ok_fraction(self) -> float:
        return self.ok / self.total if self.total else 0.0


@dataclass(frozen=True)
class AcquisitionRecord:
    """An acquisition row and all its measurement rows (by receiver name).

    ``acquisition`` is None when only measurement rows exist (they have no foreign key).
    """

    acquisition: dict[str, Any] | None
    measurements: list[dict[str, Any]]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _instant(conn: Connection, value: datetime) -> datetime:
    """A bound for a comparison with ``time``: SQLite compares naive UTC text."""
    if value.tzinfo is None:
        raise ValueError(f"{value!r}: use a timezone-aware datetime")
    value = value.astimezone(UTC)
    return value.replace(tzinfo=None) if conn.dialect.name == "sqlite" else value


def _row(mapping: Any) -> dict[str, Any]:
    return {k: _utc(v) if isinstance(v, datetime) else v for k, v in mapping.items()}


def _receivers(stmt: Select[Any], receivers: Sequence[str] | None) -> Select[Any]:
    return stmt.where(M.c.receiver.in_(list(receivers))) if receivers else stmt


def latest_measurements(
    engine: Engine,
    *,
    receivers: Sequence[str] | None = None,
    status: str | None = None,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """The newest row of each receiver, by receiver name.

    Args:
        engine: the database.
        receivers: only these receivers (default: all).
        status: only rows with this status, e.g. ``"ok"`` for the last good capture.
        since: ignore rows before this instant (lets TimescaleDB skip old chunks).

    Returns:
        One dict of column values per receiver.

    Example:
        >>> latest_measurements(engine, status="ok")[0]["receiver"]  # doctest: +SKIP
        'torino'
    """
    with engine.connect() as conn:
        rank = func.row_number().over(partition_by=M.c.receiver, order_by=M.c.time.desc())
        inner = _receivers(select(M, rank.label("rank_")), receivers)
        if status is not None:
            inner = inner.where(M.c.status == status)
        if since is not None:
            inner = inner.where(M.c.time >= _instant(conn, since))
        ranked = inner.subquery()
        cols = [ranked.c[c.name] for c in M.columns]
        stmt = select(*cols).where(ranked.c.rank_ == 1).order_by(ranked.c.receiver)
        return [_row(r._mapping) for r in conn.execute(stmt)]


def _bucket(conn: Connection, width: timedelta) -> tuple[Any, bool]:
    """The bucket-start expression, and whether it yields epoch seconds (not a datetime)."""
    seconds = width.total_seconds()
    if conn.dialect.name == "postgresql":
        if has_timescaledb(conn):
            origin = bindparam("origin", EPOCH, type_=DateTime(timezone=True))
            return func.time_bucket(
                cast(bindparam("width", width), Interval), M.c.time, origin
            ), False
        epoch = func.extract("epoch", M.c.time)
        return func.to_timestamp(func.floor(epoch / seconds) * seconds), False
    if seconds != int(seconds):
        raise ValueError(f"bucket={width}: whole seconds only on {conn.dialect.name}")
    epoch = cast(func.strftime("%s", M.c.time), Integer)
    return (epoch // int(seconds)) * int(seconds), True


def metric_series(
    engine: Engine,
    metric: str,
    *,
    start: datetime,
    end: datetime,
    bucket: timedelta = timedelta(hours=1),
    receivers: Sequence[str] | None = None,
) -> list[SeriesPoint]:
    """A measurement per receiver per time bucket: count, mean, minimum, maximum.

    Only ``ok`` rows in ``[start, end)`` count; NULL values (not measurable) are left out
    and buckets without a value are not returned. Buckets start at multiples of ``bucket``
    since the Unix epoch (UTC).

    Args:
        engine: the database.
        metric: a measurement column, one of :data:`METRICS`.
        start: first instant (inclusive, timezone-aware).
        end: last instant (exclusive).
        bucket: bucket width (whole seconds on SQLite).
        receivers: only these receivers (default: all).

    Returns:
        Points ordered by receiver, then bucket.

    Example:
        >>> metric_series(engine, "cn0_dbhz", start=t0, end=t1,
        ...               bucket=timedelta(minutes=15))  # doctest: +SKIP
        [SeriesPoint(receiver='torino', bucket=datetime(...), count=2, mean=..., ...)]
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: use one of {', '.join(METRICS)}")
    if bucket <= timedelta(0):
        raise ValueError(f"bucket={bucket}: must be positive")
    with engine.connect() as conn:
        expr, as_epoch = _bucket(conn, bucket)
        inner = _receivers(
            select(M.c.receiver, expr.label("bucket"), M.c[metric].label("value")).where(
                M.c.status == "ok",
                M.c.time >= _instant(conn, start),
                M.c.time < _instant(conn, end),
            ),
            receivers,
        ).subquery()
        value = inner.c.value
        stmt = (
            select(
                inner.c.receiver,
                inner.c.bucket,
                func.count(value),
                func.avg(value),
                func.min(value),
                func.max(value),
            )
            .group_by(inner.c.receiver, inner.c.bucket)
            .having(func.count(value) > 0)
            .order_by(inner.c.receiver, inner.c.bucket)
        )
        return [
            SeriesPoint(
                receiver=r[0],
                bucket=datetime.fromtimestamp(r[1], UTC) if as_epoch else _utc(r[1]),
                count=int(r[2]),
                mean=float(r[3]),
                minimum=float(r[4]),
                maximum=float(r[5]),
            )
            for r in conn.execute(stmt)
        ]


def acquisition_with_measurements(
    engine: Engine, acquisition_id: str | uuid.UUID
) -> AcquisitionRecord | None:
    """One acquisition and all its rows, read in one transaction; None when neither exists.

    Example:
        >>> record = acquisition_with_measurements(engine, acq)  # doctest: +SKIP
        >>> record.acquisition["receivers_ok"], len(record.measurements)  # doctest: +SKIP
        (6, 7)
    """
    acq = uuid.UUID(str(acquisition_id))
    with engine.begin() as conn:
        head = conn.execute(select(Acquisition.__table__).where(Acquisition.id == acq)).first()
        rows = conn.execute(
            select(M).where(M.c.acquisition_id == acq).order_by(M.c.receiver, M.c.time)
        ).all()
        if head is None and not rows:
            return None
        return AcquisitionRecord(
            _row(head._mapping) if head is not None else None, [_row(r._mapping) for r in rows]
        )


def receiver_availability(
    engine: Engine,
    *,
    start: datetime,
    end: datetime,
    receivers: Sequence[str] | None = None,
) -> list[Availability]:
    """ok / failed / skipped counts per receiver per UTC day, rows in ``[start, end)``.

    Example:
        >>> [(a.day.isoformat(), a.receiver, a.ok, a.failed, a.skipped)
        ...  for a in receiver_availability(engine, start=t0, end=t1)]  # doctest: +SKIP
        [('2026-03-01', 'genova', 23, 1, 0), ('2026-03-01', 'torino', 24, 0, 0)]
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            day = func.date(func.timezone("UTC", M.c.time))
        else:
            day = func.date(M.c.time)
        inner = _receivers(
            select(day.label("day"), M.c.receiver, M.c.status).where(
                M.c.time >= _instant(conn, start), M.c.time < _instant(conn, end)
            ),
            receivers,
        ).subquery()
        counts = [
            func.sum(case((inner.c.status == s, 1), else_=0)) for s in ("ok", "failed", "skipped")
        ]
        stmt = (
            select(inner.c.day, inner.c.receiver, *counts)
            .group_by(inner.c.day, inner.c.receiver)
            .order_by(inner.c.day, inner.c.receiver)
        )
        return [
            Availability(
                day=r[0] if isinstance(r[0], date) else date.fromisoformat(r[0]),
                receiver=r[1],
                ok=int(r[2]),
                failed=int(r[3]),
                skipped=int(r[4]),
            )
            for r in conn.execute(stmt)
        ]
