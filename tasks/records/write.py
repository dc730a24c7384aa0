"""The write path: every row this project records goes through :func:`write_acquisition`.

The acquisition flow's ``record`` task and the reconcile flow (rows backfilled from
stored recordings, manifests) both call it: validate (:mod:`tasks.records.rows`), upsert
the acquisition row and the measurement rows in one transaction, optionally recount the
acquisition's receivers from the rows now in the database, and hand back an error that
never carries the database password.

Upserts: on PostgreSQL (psycopg) the rows are COPYed into a temporary staging table and
merged with one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``, so any batch size works
(a multi-row ``VALUES`` would hit PostgreSQL's 65535 bind-parameter limit near 2,500
rows); elsewhere an ``executemany`` of the same upsert. Re-running changes nothing twice,
and a bad row fails the whole batch before anything is written.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, column, select, table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError

from tasks.errors import RecordError, RedactedError, without_secrets
from tasks.records.models import MEASUREMENT_KEY, Acquisition, Measurement
from tasks.records.rows import MEASUREMENT_FIELDS, acquisition_values, measurement_tuples
from tasks.records.schema import ensure_schema
from tasks.records.transience import is_transient_db_error

_STATUS_RANK = {"ok": 0, "failed": 1, "skipped": 2}  # a receiver counts by its best row


def write_acquisition(
    engine: Engine,
    rows: Iterable[Mapping[str, Any]],
    acquisition: Mapping[str, Any] | None = None,
    *,
    recount: str | uuid.UUID | None = None,
) -> int:
    """Bring the schema up to date, then write one acquisition's rows in one transaction.

    Args:
        engine: the database.
        rows: measurement rows (column values of :class:`Measurement`).
        acquisition: the acquisitions row to upsert with them (the flow knows it; reconcile
            does when it restores one from a manifest).
        recount: an acquisition id whose receiver counts are recomputed from its rows in
            the database afterwards (:func:`sync_acquisition`); reconcile's rule.

    Returns:
        How many measurement rows were written.

    Raises:
        RecordError: a row is invalid; nothing is written.
        RedactedError: the database error's text held the password (it is replaced; the
            transience is kept for the retry condition).

    Example:
        >>> write_acquisition(engine, rows, acquisition)  # doctest: +SKIP
        7
    """
    rows = list(rows)
    try:
        ensure_schema(engine)
        with engine.begin() as conn:
            if acquisition is not None:
                upsert_acquisition(conn, acquisition)
            written = upsert_measurements(conn, rows)
            if recount is not None:
                sync_acquisition(conn, recount)
    except Exception as exc:
        clean = password_free(engine, exc)
        if clean is None:
            raise
        raise clean from None
    return written


def password_free(engine: Engine, exc: BaseException) -> RedactedError | None:
    """A replacement for ``exc`` when its text (or a cause's) holds the engine's password,
    with the same transience (:func:`is_transient_db_error`); None when it holds none."""
    return without_secrets(
        exc,
        [engine.url.password],
        context=f"database {engine.url}",
        transient=is_transient_db_error(exc),
    )


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
    values = acquisition_values(acquisition)
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
    cleaned, provided = measurement_tuples(rows)
    updated = [c for c in MEASUREMENT_FIELDS if c in provided and c not in MEASUREMENT_KEY]
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
            names = list(MEASUREMENT_FIELDS)
            _execute_checked(conn, stmt, [dict(zip(names, t, strict=True)) for t in cleaned], who)
    return len(cleaned)


_STAGE = "rf_measurements_stage"


def _copy_upsert(
    conn: Connection, rows: list[tuple[Any, ...]], updated: list[str], who: str
) -> None:
    """COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT DO UPDATE."""
    columns = list(MEASUREMENT_FIELDS)
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


def sync_acquisition(conn: Connection, acquisition_id: str | uuid.UUID) -> None:
    """Recount an acquisition's receivers from its measurement rows.

    An existing acquisitions row keeps everything the flow wrote (status, start, request,
    flow run) except ``receivers_ok/failed/skipped``, recomputed from the rows now in the
    database (``receivers_requested`` only grows if more receivers have rows than were
    requested). Without one, a row with status ``reconciled`` is made from the
    measurement rows.
    """
    acq = uuid.UUID(str(acquisition_id))
    found = conn.execute(
        select(
            Measurement.receiver,
            Measurement.status,
            Measurement.time,
            Measurement.frequency_hz,
            Measurement.sample_rate,
            Measurement.sample_count,
        ).where(Measurement.acquisition_id == acq)
    ).all()
    if not found:
        return
    best: dict[str, str] = {}
    for r in found:
        if r.receiver not in best or _STATUS_RANK[r.status] < _STATUS_RANK[best[r.receiver]]:
            best[r.receiver] = r.status
    counts = Counter(best.values())
    recount = {
        "receivers_ok": counts["ok"],
        "receivers_failed": counts["failed"],
        "receivers_skipped": counts["skipped"],
    }
    existing = conn.execute(
        select(Acquisition.receivers_requested).where(Acquisition.id == acq)
    ).scalar_one_or_none()
    if existing is not None:
        requested = max(existing, len(best))
        conn.execute(
            update(Acquisition)
            .where(Acquisition.id == acq)
            .values(**recount, receivers_requested=requested)
        )
        return
    durations = [r.sample_count / r.sample_rate for r in found if r.sample_count and r.sample_rate]
    upsert_acquisition(
        conn,
        {
            "id": acq,
            "frequency_hz": found[0].frequency_hz,
            "duration_s": max(durations) if durations else None,
            "start_at": min(_aware(r.time) for r in found),
            "receivers_requested": len(best),
            **recount,
            "status": "reconciled",
            "flow_run_id": None,
        },
    )


def _aware(t: datetime) -> datetime:
    # SQLite hands timestamps back naive (they are stored as UTC)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


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
