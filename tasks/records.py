"""Acquisition and measurement rows: SQLAlchemy models, schema setup and idempotent upserts.

One model serves TimescaleDB (``measurements`` is a hypertable on ``time``) and SQLite (the
embedded default). The schema is made by the versioned Alembic migrations in
:mod:`tasks.migrations`; :func:`ensure_schema` applies them before the first write. The
models below are the source of truth and a test checks that the migrations agree.

Writes: all rows of an acquisition go in one transaction. On PostgreSQL (psycopg) the rows
are COPYed into a temporary staging table and merged with one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE``, so any batch size works (a multi-row
``VALUES`` would hit PostgreSQL's 65535 bind-parameter limit near 2,500 rows); elsewhere
an ``executemany`` of the same upsert. A retried record task therefore changes nothing
twice, and a bad row fails the whole batch before anything is written.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic.util import CommandError
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    Uuid,
    column,
    delete,
    func,
    select,
    table,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# (the migrations' env.py imports this module)
from tasks.migrations import (
    MigrationError,
    alembic_config,
    current_revision,
    ensure_head,
    head_revision,
)

MEASUREMENT_KEY = ("acquisition_id", "receiver", "time")
MEASUREMENT_STATUSES = ("ok", "failed", "skipped")


@dataclass(frozen=True)
class Range:
    """The physical range of a column: checked before a write and by a CHECK constraint.

    NULL is always admitted (a nullable column means "not measured").

    Example:
        >>> Range(low=0, low_exclusive=True).sql("sample_rate")
        'sample_rate > 0'
        >>> Range(-90, 90).admits(91.0)
        False
    """

    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False

    def sql(self, name: str) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{name} {'>' if self.low_exclusive else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{name} <= {self.high:g}")
        return " AND ".join(parts)

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_exclusive else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        return self.sql("value").removeprefix("value ").replace(" AND value", " and")


MEASUREMENT_RANGES: dict[str, Range] = {
    "attempts": Range(low=0),
    "latitude": Range(-90, 90),
    "longitude": Range(-180, 180),
    "frequency_hz": Range(low=0, low_exclusive=True),
    "sample_rate": Range(low=0, low_exclusive=True),
    "sample_count": Range(low=0),
    "snr_bandwidth_hz": Range(low=0, low_exclusive=True),
    "lost_frames": Range(low=0),
    "adc_overflow_frames": Range(low=0),
}
ACQUISITION_RANGES: dict[str, Range] = {
    "frequency_hz": Range(low=0, low_exclusive=True),
    "duration_s": Range(low=0, low_exclusive=True),
    "receivers_requested": Range(low=0),
    "receivers_ok": Range(low=0),
    "receivers_failed": Range(low=0),
    "receivers_skipped": Range(low=0),
}


def _range_checks(table_name: str, ranges: Mapping[str, Range]) -> list[CheckConstraint]:
    return [CheckConstraint(r.sql(c), name=f"ck_{table_name}_{c}") for c, r in ranges.items()]


class Base(DeclarativeBase):
    pass


class Acquisition(Base):
    """One acquisition: what was asked for and how it went."""

    __tablename__ = "acquisitions"
    __table_args__ = (
        *_range_checks("acquisitions", ACQUISITION_RANGES),
        CheckConstraint(
            "receivers_ok + receivers_failed + receivers_skipped <= receivers_requested",
            name="ck_acquisitions_receiver_counts",
        ),
    )

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
    simulated: Mapped[bool | None] = mapped_column(Boolean)


class Measurement(Base):
    """One receiver in one acquisition; a hypertable on ``time`` (UTC of the first sample,
    or the planned start when nothing was captured).

    The key (acquisition, receiver, time) makes writes upserts and serves lookups of one
    acquisition; ``measurements_time_idx`` serves time ranges.
    """

    __tablename__ = "measurements"
    __table_args__ = (
        PrimaryKeyConstraint(*MEASUREMENT_KEY, name="measurements_pkey"),
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s}'" for s in MEASUREMENT_STATUSES)),
            name="ck_measurements_status",
        ),
        *_range_checks("measurements", MEASUREMENT_RANGES),
    )

    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acquisition_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    receiver: Mapped[str] = mapped_column(String(64))
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
    # 0003: where the samples came from, the GPS timing model, and detection.
    simulated: Mapped[bool | None] = mapped_column(Boolean)
    sample_rate_fitted_hz: Mapped[float | None] = mapped_column(Float)
    timing_residual_ns: Mapped[float | None] = mapped_column(Float)
    gps_locked: Mapped[bool | None] = mapped_column(Boolean)
    timing_fixes: Mapped[int | None] = mapped_column(Integer)
    timing_outliers: Mapped[int | None] = mapped_column(Integer)
    first_sample_ns: Mapped[int | None] = mapped_column(BigInteger)
    detected: Mapped[bool | None] = mapped_column(Boolean)
    detection_reason: Mapped[str | None] = mapped_column(Text)
    occupied_bandwidth_hz: Mapped[float | None] = mapped_column(Float)
    noise_method: Mapped[str | None] = mapped_column(String(32))
    modulation: Mapped[str | None] = mapped_column(String(16))
    clipped_fraction: Mapped[float | None] = mapped_column(Float)
    dc_dbfs: Mapped[float | None] = mapped_column(Float)
    edge_distance_hz: Mapped[float | None] = mapped_column(Float)


Index("measurements_time_idx", Measurement.__table__.c.time.desc())

LOCATION_STATUSES = ("ok", "failed")
LOCATION_SOURCES = ("acquisition", "kiwi-wav")
LOCATION_RANGES: dict[str, Range] = {
    "latitude": Range(-90, 90),
    "longitude": Range(-180, 180),
    "frequency_hz": Range(low=0, low_exclusive=True),
    "receivers_used": Range(low=0),
    "pairs_used": Range(low=0),
}


class Location(Base):
    """One transmitter position from time differences of arrival; a hypertable on ``time``
    (the start of the common capture window) on TimescaleDB.

    ``acquisition_id`` is NULL for positions computed from imported kiwirecorder files; the
    ``truth_*`` and ``error_m`` columns are set only when the emitter's position is known
    (simulated runs).
    """

    __tablename__ = "locations"
    __table_args__ = (
        PrimaryKeyConstraint("id", "time", name="locations_pkey"),
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s}'" for s in LOCATION_STATUSES)),
            name="ck_locations_status",
        ),
        CheckConstraint(
            "source IN ({})".format(", ".join(f"'{s}'" for s in LOCATION_SOURCES)),
            name="ck_locations_source",
        ),
        *_range_checks("locations", LOCATION_RANGES),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acquisition_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    frequency_hz: Mapped[float] = mapped_column(Float, nullable=False)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    ellipse_major_m: Mapped[float | None] = mapped_column(Float)
    ellipse_minor_m: Mapped[float | None] = mapped_column(Float)
    ellipse_orientation_deg: Mapped[float | None] = mapped_column(Float)
    gdop: Mapped[float | None] = mapped_column(Float)
    receivers_used: Mapped[int] = mapped_column(Integer, nullable=False)
    pairs_used: Mapped[int] = mapped_column(Integer, nullable=False)
    receivers: Mapped[str | None] = mapped_column(Text)
    residual_rms_ns: Mapped[float | None] = mapped_column(Float)
    propagation_speed_m_s: Mapped[float] = mapped_column(Float, nullable=False)
    truth_latitude: Mapped[float | None] = mapped_column(Float)
    truth_longitude: Mapped[float | None] = mapped_column(Float)
    error_m: Mapped[float | None] = mapped_column(Float)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


Index("locations_time_idx", Location.__table__.c.time.desc())
Index("locations_acquisition_idx", Location.__table__.c.acquisition_id)

MEASUREMENT_COLUMNS = frozenset(c.name for c in Measurement.__table__.columns)


class RecordError(ValueError):
    """A row that cannot be written; names the receiver and the field. Never retried."""


# --- schema -----------------------------------------------------------------------------


def has_timescaledb(engine: Engine | Connection) -> bool:
    """Whether the TimescaleDB extension is installed in this database."""
    if engine.dialect.name != "postgresql":
        return False
    query = text("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
    if isinstance(engine, Connection):
        return bool(engine.execute(query).scalar())
    with engine.connect() as conn:
        return bool(conn.execute(query).scalar())


def ensure_schema(engine: Engine) -> None:
    """Bring the database to the newest migration (``alembic upgrade head``).

    Cheap when already there: checked once per engine URL per process. A database made by
    the earlier ``create_all`` version of this function is adopted (stamped at the
    baseline revision, then upgraded).

    Raises:
        MigrationError: the database is at a revision this code does not know (migrated by
            a newer version of it), naming both revisions; or Alembic refused otherwise.
    """
    try:
        ensure_head(engine)
    except CommandError as exc:
        raise _migration_error(engine, exc) from exc


def _migration_error(engine: Engine, exc: CommandError) -> MigrationError:
    """A CommandError from Alembic as a MigrationError, naming both revisions when the
    database's revision is not one of ours."""
    head = head_revision()
    try:
        found = current_revision(engine)
    except Exception:  # the CommandError is the news; keep it
        found = None
    if found is not None:
        from alembic.script import ScriptDirectory

        known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
        if found not in known:
            return MigrationError(
                f"database {engine.url} is at schema revision {found!r}, which this code does "
                f"not know (its newest is {head!r}): it was migrated by a newer version of "
                "rf-acquisition. Run that version, or downgrade the database with it to "
                f"{head!r}."
            )
    return MigrationError(
        f"database {engine.url}: cannot migrate to {head!r} (database at {found!r}): {exc}"
    )


# --- row validation ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str
    kind: type  # float, int, bool, str, datetime, uuid.UUID
    nullable: bool
    default: Any
    max_length: int | None
    range: Range | None
    allowed: tuple[str, ...] | None = None


def _fields(model: type[Base], ranges: Mapping[str, Range]) -> dict[str, _Field]:
    out = {}
    for col in model.__table__.columns:
        default = col.default.arg if col.default is not None and col.default.is_scalar else None
        out[col.name] = _Field(
            name=col.name,
            kind=col.type.python_type,
            nullable=bool(col.nullable) or col.server_default is not None,
            default=default,
            max_length=getattr(col.type, "length", None),
            range=ranges.get(col.name),
        )
    return out


_MEASUREMENT_FIELDS = _fields(Measurement, MEASUREMENT_RANGES)
_MEASUREMENT_FIELDS["status"] = replace(_MEASUREMENT_FIELDS["status"], allowed=MEASUREMENT_STATUSES)
_ACQUISITION_FIELDS = _fields(Acquisition, ACQUISITION_RANGES)


def _coerce(f: _Field, value: Any, who: str) -> Any:
    """One value converted to its column's Python type and checked; ``who`` names the row."""
    if value is None:
        if not f.nullable:
            raise RecordError(f"{who}: field {f.name!r} is required")
        return None
    kind = f.kind
    try:
        if kind is float:
            value = float(value)
            if not math.isfinite(value):
                # NaN/Inf mean "not measurable": NULL, never a fake number
                if not f.nullable:
                    raise RecordError(f"{who}: field {f.name!r} is required (got {value})")
                return None
        elif kind is int:
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(value)
            value = int(value)
        elif kind is bool:
            if value not in (True, False):
                raise ValueError(value)
            value = bool(value)
        elif kind is str:
            if not isinstance(value, str):
                raise ValueError(value)
        elif kind is uuid.UUID:
            value = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
        elif kind is datetime:
            if not isinstance(value, datetime):
                raise ValueError(value)
            if value.tzinfo is None:
                raise RecordError(f"{who}: field {f.name!r} must be timezone-aware")
            value = value.astimezone(UTC)
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(
            f"{who}: field {f.name!r} must be {kind.__name__}, got {value!r}"
        ) from None
    if f.range is not None and not f.range.admits(value):
        raise RecordError(f"{who}: field {f.name!r} is {value!r}, must be {f.range.describe()}")
    if f.allowed is not None and value not in f.allowed:
        raise RecordError(
            f"{who}: field {f.name!r} is {value!r}, not one of {', '.join(f.allowed)}"
        )
    if f.max_length is not None and len(value) > f.max_length:
        raise RecordError(f"{who}: field {f.name!r} is longer than {f.max_length} characters")
    return value


def _clean(
    row: Mapping[str, Any], fields: Mapping[str, _Field], who: str, kind: str
) -> dict[str, Any]:
    """Every column of the row, converted and checked (missing columns get their default)."""
    unknown = set(row) - set(fields)
    if unknown:
        raise RecordError(f"{who}: unknown {kind} fields: {', '.join(sorted(unknown))}")
    return {
        name: _coerce(f, row.get(name, f.default), who)
        for name, f in fields.items()
        if name in row or not f.nullable or f.default is not None
    }


def _who(row: Mapping[str, Any]) -> str:
    return f"receiver {row.get('receiver')!r}"


def _fast_check(f: _Field) -> Callable[[Any], bool]:
    """A cheap test that a value needs no conversion and passes every check of ``f``;
    values failing it take the careful path (:func:`_coerce`), which converts or names
    the problem. Keeps validation of 10,000 rows to a few tens of milliseconds."""
    low, high = -_BIG, _BIG
    if f.range is not None:
        if f.range.low is not None:
            low = f.range.low
            if f.range.low_exclusive:
                low = math.nextafter(low, math.inf) if f.kind is float else math.floor(low) + 1
        if f.range.high is not None:
            high = f.range.high
    kind = f.kind
    if kind is float:  # NaN and +-Inf fail the comparison, so they take the careful path
        return lambda v: type(v) is float and low <= v <= high
    if kind is int:
        return lambda v: type(v) is int and low <= v <= high
    if kind is str:
        if f.allowed is not None:
            allowed = frozenset(f.allowed)
            return lambda v: type(v) is str and v in allowed
        limit = f.max_length or math.inf
        return lambda v: type(v) is str and len(v) <= limit
    if kind is datetime:
        return lambda v: type(v) is datetime and v.tzinfo is UTC
    return lambda v: type(v) is kind  # bool, uuid.UUID


_BIG = sys.float_info.max
_MEASUREMENT_CHECKS = {name: _fast_check(f) for name, f in _MEASUREMENT_FIELDS.items()}


def _clean_measurements(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[list[tuple[Any, ...]], set[str]]:
    """Checked rows as tuples in column order, and the columns the caller gave (to update).

    Column by column: one cheap test per value, the careful path only for the rest.
    """
    with _gc_paused():
        return _clean_columns(rows)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while building ~10^5 short-lived containers (none of them cyclic):
    otherwise collections that walk every live object take two thirds of the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _clean_columns(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[list[tuple[Any, ...]], set[str]]:
    provided: set[str] = set().union(*(row.keys() for row in rows))
    unknown = provided - MEASUREMENT_COLUMNS
    if unknown:
        row = next(r for r in rows if set(r) & unknown)
        raise RecordError(
            f"{_who(row)}: unknown measurement fields: {', '.join(sorted(set(row) & unknown))}"
        )
    columns = []
    for name, f in _MEASUREMENT_FIELDS.items():
        if name not in provided and f.nullable and f.default is None:
            columns.append(itertools.repeat(None, len(rows)))
            continue
        values = [row.get(name, f.default) for row in rows]
        ok = _MEASUREMENT_CHECKS[name]
        for i in [i for i, v in enumerate(values) if not ok(v)]:
            values[i] = _coerce(f, values[i], _who(rows[i]))
        columns.append(values)
    tuples = list(zip(*columns, strict=True))
    key = [list(_MEASUREMENT_FIELDS).index(k) for k in MEASUREMENT_KEY]
    seen: set[tuple[Any, ...]] = set()
    for i, t in enumerate(tuples):
        k = tuple(t[j] for j in key)
        if k in seen:
            raise RecordError(
                f"{_who(rows[i])}: the batch holds this (acquisition, receiver, time) twice"
            )
        seen.add(k)
    return tuples, provided


# --- writes -----------------------------------------------------------------------------


class _Transaction:
    """``engine.begin()`` for an Engine; for a Connection, the caller's transaction."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind
        self._ctx: Any = None

    def __enter__(self) -> Connection:
        if isinstance(self.bind, Connection):
            if not self.bind.in_transaction():
                self._ctx = self.bind.begin()
                self._ctx.__enter__()
            return self.bind
        self._ctx = self.bind.begin()
        return self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def _insert(bind: Engine | Connection, target: Any) -> Any:
    return (postgresql if bind.dialect.name == "postgresql" else sqlite).insert(target)


def upsert_acquisition(engine: Engine | Connection, acquisition: Mapping[str, Any]) -> None:
    """Insert or update the acquisition row.

    Args:
        engine: an Engine (own transaction) or a Connection (the caller's transaction).
        acquisition: column values of :class:`Acquisition`; ``id`` may be a string.

    Raises:
        RecordError: a value is missing or out of range (nothing is written).
    """
    who = f"acquisition {acquisition.get('id')}"
    values = _clean(acquisition, _ACQUISITION_FIELDS, who, kind="acquisition")
    if "created_at" in values and values["created_at"] is None:
        del values["created_at"]  # the server default
    stmt = _insert(engine, Acquisition).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"], set_={k: stmt.excluded[k] for k in values if k != "id"}
    )
    with _Transaction(engine) as conn:
        _execute_checked(conn, stmt, None, who)


def upsert_measurements(engine: Engine | Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Write all rows in one transaction; returns the row count.

    Re-running with the same rows updates them in place (key: acquisition, receiver, time);
    only the columns given are updated. NaN/Inf are stored as NULL.

    Args:
        engine: an Engine (own transaction) or a Connection (the caller's transaction).
        rows: column values of :class:`Measurement`, any number of them.

    Raises:
        RecordError: a row is invalid, naming its receiver and field; nothing is written.

    Example:
        >>> upsert_measurements(engine, [{"time": t, "acquisition_id": acq,
        ...     "receiver": "torino", "status": "ok", "frequency_hz": 145.5e6}])  # doctest: +SKIP
        1
    """
    if not rows:
        return 0
    cleaned, provided = _clean_measurements(rows)
    updated = [c for c in _MEASUREMENT_FIELDS if c in provided and c not in MEASUREMENT_KEY]
    who = f"measurements of acquisition {rows[0]['acquisition_id']}"
    with _Transaction(engine) as conn:
        if conn.dialect.driver == "psycopg":
            _copy_upsert(conn, cleaned, updated, who)
        else:
            stmt = _insert(conn, Measurement.__table__)
            stmt = stmt.on_conflict_do_update(
                index_elements=list(MEASUREMENT_KEY),
                set_={k: stmt.excluded[k] for k in updated},
            )
            names = list(_MEASUREMENT_FIELDS)
            _execute_checked(conn, stmt, [dict(zip(names, t, strict=True)) for t in cleaned], who)
    return len(cleaned)


_STAGE = "rf_measurements_stage"


def _copy_upsert(
    conn: Connection, rows: list[tuple[Any, ...]], updated: list[str], who: str
) -> None:
    """COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT DO UPDATE."""
    columns = list(_MEASUREMENT_FIELDS)
    # Dropped at commit, so a later migration never meets a stale staging table.
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} "
        "(LIKE measurements INCLUDING DEFAULTS) ON COMMIT DROP"
    )
    conn.exec_driver_sql(f"TRUNCATE {_STAGE}")  # a second batch in the same transaction
    raw = conn.connection.driver_connection
    assert raw is not None
    import psycopg  # only on this path: the psycopg driver is in use

    try:
        with (
            raw.cursor() as cursor,
            cursor.copy(f"COPY {_STAGE} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        raise RecordError(f"{who}: refused by the database: {exc}") from None
    stage = table(_STAGE, *(column(c) for c in columns))
    stmt = postgresql.insert(Measurement.__table__).from_select(
        columns, select(*(stage.c[c] for c in columns))
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=list(MEASUREMENT_KEY), set_={k: stmt.excluded[k] for k in updated}
    )
    _execute_checked(conn, stmt, None, who)


def _execute_checked(conn: Connection, stmt: Any, params: Any, who: str) -> None:
    """Run a write; a constraint the database enforces becomes a RecordError."""
    try:
        if params is None:
            conn.execute(stmt)
        else:
            conn.execute(stmt, params)
    except (IntegrityError, DataError) as exc:
        raise RecordError(f"{who}: refused by the database: {exc.orig}") from None


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


def _secret_free(engine: Engine, exc: BaseException) -> BaseException | None:
    """A replacement for ``exc`` when its text (or its cause's) holds the password."""
    password = engine.url.password
    if not password:
        return None
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if not any(password in str(e) or password in repr(e) for e in chain):
        return None
    text_ = f"{type(exc).__name__}: {exc}".replace(password, "***")
    clean = ConnectionError(f"database {engine.url}: {text_}")
    clean.rf_transient = is_transient_db_error(exc)  # type: ignore[attr-defined]
    return clean


# --- which database errors a retry can fix ---------------------------------------------

# SQLSTATEs worth another attempt: the connection broke or could not be made, the server
# is shutting down / restarting / starting up, out of connection slots, or the
# transaction lost a serialization conflict or a deadlock. Class 08 is matched by prefix.
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
# libpq reports a server's refusal *while connecting* without a SQLSTATE (psycopg's
# sqlstate is None), only the text "FATAL:  ...". These refusals are transient (57P03,
# 53300, 57P01); any other FATAL at connect (bad password, no pg_hba.conf entry, unknown
# role or database, ...) is permanent. A failure without FATAL (refused, reset, timeout,
# "server closed the connection unexpectedly") never reached a server that said no.
_TRANSIENT_FATAL = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "sorry, too many clients already",
    "remaining connection slots are reserved",
    "terminating connection due to administrator command",
)
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)


def _transient_sqlstate(sqlstate: str | None, message: str) -> bool:
    if sqlstate is None:
        if "FATAL:" not in message and "PANIC:" not in message:
            return True
        return any(marker in message for marker in _TRANSIENT_FATAL)
    return sqlstate.startswith("08") or sqlstate in TRANSIENT_SQLSTATES


def _transient_dbapi(orig: BaseException) -> bool | None:
    """A driver exception classified, or None when it is not one we know."""
    psycopg = sys.modules.get("psycopg")  # no psycopg error exists unless it was imported
    if psycopg is not None and isinstance(orig, psycopg.Error):
        if not isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
            return False
        return _transient_sqlstate(orig.sqlstate, str(orig))
    import sqlite3

    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return (
            isinstance(orig, sqlite3.OperationalError)
            and code is not None
            and code & 0xFF in _SQLITE_BUSY_CODES
        )
    return None


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether another attempt may succeed: a connection-class or transient database error.

    Yes: SQLAlchemy ``OperationalError``/``InterfaceError`` whose driver error has no
    SQLSTATE (connection refused or reset, timeout; but not a server's refusal at connect,
    see ``_TRANSIENT_FATAL``) or one in class 08, 57P01-57P03, 53300, 40001 or 40P01; a
    ``DisconnectionError``, a disconnect SQLAlchemy detected, a pool timeout; SQLite
    busy/locked. No: everything else, in particular wrong password (28P01), permission
    denied (42501), undefined table or column, bad data (:class:`RecordError`), an
    unknown schema (:class:`MigrationError`) and programming errors like ``TypeError``.
    Explicit causes (``raise ... from``) are followed.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        marked = getattr(current, "rf_transient", None)
        if isinstance(marked, bool):
            return marked
        if isinstance(current, RecordError | MigrationError):
            return False
        if isinstance(current, DisconnectionError | PoolTimeoutError):
            return True
        if isinstance(current, DBAPIError):
            if current.connection_invalidated:
                return True
            if not isinstance(current, OperationalError | InterfaceError):
                return False
            verdict = _transient_dbapi(current.orig) if current.orig is not None else None
            return bool(verdict)
        verdict = _transient_dbapi(current)  # the raw driver (the COPY path)
        if verdict is not None:
            return verdict
        current = current.__cause__
    return False


def retry_transient_db(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only :func:`is_transient_db_error` errors."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return exc is not None and is_transient_db_error(exc)


@task(
    name="record",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2.0),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient_db,
    cache_policy=NO_CACHE,
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
    rows = list(rows)
    try:
        ensure_schema(engine)
        with engine.begin() as conn:
            upsert_acquisition(conn, acquisition)
            written = upsert_measurements(conn, rows)
    except Exception as exc:
        clean = _secret_free(engine, exc)
        if clean is None:
            raise
        raise clean from None
    get_run_logger().info(
        "recorded %d rows for acquisition %s (%s)", written, acquisition["id"], engine.url
    )
    return written


# --- retention --------------------------------------------------------------------------


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
