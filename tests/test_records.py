"""Schema migrations, the record path, queries and retention: SQLite and real TimescaleDB.

TimescaleDB tests each get a throwaway database (``test_<unique>``; template1 carries the
extension) dropped afterwards. The database-outage tests stop and restart the real
PostgreSQL through scripts/services.sh (``RF_SERVICES_STATE_DIR``), always restarting it.
"""

from __future__ import annotations

import asyncio
import doctest
import json
import logging
import math
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from prefect import flow
from prefect.client.orchestration import get_client
from service_control import services
from sqlalchemy import (
    CheckConstraint,
    Engine,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError

import tasks.bucket
import tasks.errors
import tasks.objectstore
import tasks.queries
import tasks.records.models
import tasks.records.write
from blocks.database import sqlite_engine, timescaledb_from_env
from flows.maintenance import retention
from flows.query import main as query_main
from tasks.errors import RedactedError
from tasks.migrations import (
    MigrationError,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from tasks.queries import (
    Availability,
    SeriesPoint,
    acquisition_with_measurements,
    latest_measurements,
    metric_series,
    receiver_availability,
)
from tasks.records import (
    Acquisition,
    Base,
    Location,
    Measurement,
    RecordError,
    drop_old_measurements,
    ensure_schema,
    is_transient_db_error,
    measurements_for,
    record,
    upsert_acquisition,
    upsert_measurements,
)

ROOT = Path(__file__).resolve().parent.parent
TIMESCALEDB = pytest.param("timescaledb", marks=pytest.mark.integration)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def new_pg(service_env: dict[str, str], pg_engine: Engine, unique: str) -> Iterator[Any]:
    """Factory of fresh, empty databases on the real server (dropped afterwards)."""
    admin = pg_engine.execution_options(isolation_level="AUTOCOMMIT")
    created: list[tuple[str, Engine]] = []

    def make(**engine_kwargs: Any) -> Engine:
        name = f"test_{unique}_{len(created)}"
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        block = timescaledb_from_env({**service_env, "RF_PG_DATABASE": name})
        engine = block.get_engine(**engine_kwargs)
        created.append((name, engine))
        return engine

    yield make
    for name, engine in created:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(params=["sqlite", TIMESCALEDB])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """An empty database: a SQLite file, or a fresh database on the real TimescaleDB."""
    if request.param == "sqlite":
        return sqlite_engine(tmp_path / "rf.db")
    return request.getfixturevalue("new_pg")()


@pytest.fixture
def db(empty_db: Engine) -> Engine:
    """A database migrated to head."""
    ensure_schema(empty_db)
    return empty_db


def mrow(acq: uuid.UUID, receiver: str, t: datetime, status: str = "ok", **values: Any) -> dict:
    return {
        "time": t,
        "acquisition_id": acq,
        "receiver": receiver,
        "status": status,
        "attempts": 1,
        "frequency_hz": 145.5e6,
        **values,
    }


def arow(acq: uuid.UUID, start: datetime, ok: int = 3, failed: int = 0, skipped: int = 0) -> dict:
    return {
        "id": acq,
        "frequency_hz": 145.5e6,
        "duration_s": 2.0,
        "start_at": start,
        "receivers_requested": ok + failed + skipped,
        "receivers_ok": ok,
        "receivers_failed": failed,
        "receivers_skipped": skipped,
        "status": "completed",
    }


def count(engine: Engine, acq: uuid.UUID | None = None) -> int:
    stmt = select(func.count()).select_from(Measurement)
    if acq is not None:
        stmt = stmt.where(Measurement.acquisition_id == acq)
    with engine.connect() as conn:
        return conn.execute(stmt).scalar_one()


def schema_diffs(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def check_names(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_check_constraints(table)}


def model_check_names(model: type[Base]) -> set[str]:
    return {str(c.name) for c in model.__table__.constraints if isinstance(c, CheckConstraint)}


# --- migrations -------------------------------------------------------------------------


def test_migrations_up_and_down_on_an_empty_database(empty_db: Engine) -> None:
    assert current_revision(empty_db) is None
    assert upgrade(empty_db) == head_revision() == "0003"
    assert {"acquisitions", "measurements"} <= set(inspect(empty_db).get_table_names())
    # The models and the migrations agree: autogenerate finds nothing to do ...
    assert schema_diffs(empty_db) == []
    # ... and every CHECK of the models is in the database (autogenerate ignores CHECKs).
    assert check_names(empty_db, "measurements") == model_check_names(Measurement)
    assert check_names(empty_db, "acquisitions") == model_check_names(Acquisition)
    assert check_names(empty_db, "locations") == model_check_names(Location)
    pk = inspect(empty_db).get_pk_constraint("measurements")["constrained_columns"]
    assert pk == ["acquisition_id", "receiver", "time"]

    assert downgrade(empty_db, "0001") == "0001"
    assert check_names(empty_db, "measurements") == set()
    assert downgrade(empty_db, "base") is None
    assert set(inspect(empty_db).get_table_names()) <= {"alembic_version"}
    assert upgrade(empty_db) == "0003"  # and up again from nothing
    assert schema_diffs(empty_db) == []


def test_schema_comparison_does_see_a_difference(tmp_path: Path) -> None:
    """The 'no diffs' above is meaningful: a missing index is reported."""
    engine = sqlite_engine(tmp_path / "rf.db")
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX measurements_time_idx"))
    diffs = schema_diffs(engine)
    assert [d[0] for d in diffs] == ["add_index"]


def test_a_pre_migration_database_is_adopted(empty_db: Engine) -> None:
    """Tables made by the old create_all (= revision 0001) without alembic_version."""
    upgrade(empty_db, "0001")
    acq = uuid.uuid4()
    t = datetime(2026, 3, 1, 12, tzinfo=UTC)
    # Written as the code of that time wrote them: only the columns 0001 has.
    with empty_db.begin() as conn:
        tables = {name: Base.metadata.tables[name] for name in ("acquisitions", "measurements")}
        for name, row in (
            ("acquisitions", arow(acq, t, ok=1)),
            ("measurements", mrow(acq, "torino", t, snr_db=11.0)),
        ):
            old = [c for c in inspect(conn).get_columns(name)]
            values = {c["name"]: row.get(c["name"]) for c in old if c["name"] in row}
            conn.execute(insert(tables[name]).values(**values))
        conn.execute(text("DROP TABLE alembic_version"))
    assert current_revision(empty_db) is None

    ensure_schema(empty_db)

    assert current_revision(empty_db) == head_revision()
    assert schema_diffs(empty_db) == []
    assert [r["snr_db"] for r in measurements_for(empty_db, acq)] == [11.0]


def test_an_unknown_layout_is_not_adopted(tmp_path: Path) -> None:
    engine = sqlite_engine(tmp_path / "rf.db")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE measurements (time TEXT, receiver TEXT)"))
    with pytest.raises(MigrationError, match=r"'acquisitions'.*missing.*'duration_s'"):
        ensure_schema(engine)


def test_ensure_schema_is_free_once_at_head(tmp_path: Path) -> None:
    engine = sqlite_engine(tmp_path / "rf.db")
    ensure_schema(engine)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    ensure_schema(engine)
    ensure_schema(engine)
    assert statements == []


@pytest.mark.integration
def test_concurrent_upgrades_migrate_once(new_pg: Any) -> None:
    engine = new_pg()
    results: list[Any] = []

    def go() -> None:
        try:
            results.append(upgrade(engine))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["0003"] * 3


def test_migration_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tasks.migrations", "--database", url, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert cli("current").endswith(": none")
    assert cli("upgrade").endswith(": none -> 0003")
    assert cli("current").endswith(": 0003 (head)")
    assert cli("downgrade", "0001").endswith(": 0003 -> 0001")
    assert cli("downgrade", "base").endswith(": 0001 -> none")


@pytest.mark.integration
def test_migration_command_line_on_timescaledb_never_prints_the_password(
    new_pg: Any, service_env: dict[str, str]
) -> None:
    engine = new_pg()
    env = {**os.environ, "RF_PG_DATABASE": str(engine.url.database)}
    done = subprocess.run(
        [sys.executable, "-m", "tasks.migrations", "upgrade"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(": none -> 0003")
    assert "***" in done.stdout
    assert service_env["RF_PG_PASSWORD"] not in done.stdout + done.stderr


@pytest.mark.integration
def test_measurements_is_a_hypertable_with_daily_chunks(new_pg: Any) -> None:
    engine = new_pg()
    ensure_schema(engine)
    with engine.connect() as conn:
        dims = conn.execute(
            text(
                "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_name = 'measurements'"
            )
        ).all()
    assert dims == [("time", timedelta(days=1))]
    acq = uuid.uuid4()
    t0 = datetime(2026, 3, 1, 6, tzinfo=UTC)
    rows = [
        mrow(acq, name, t0 + timedelta(days=day, hours=hour))
        for day in range(5)
        for hour in (0, 12)
        for name in ("torino", "genova")
    ]
    assert upsert_measurements(engine, rows) == 20
    with engine.connect() as conn:
        chunks = conn.execute(text("SELECT count(*) FROM show_chunks('measurements')")).scalar()
        names = conn.execute(
            text("SELECT hypertable_name FROM timescaledb_information.hypertables")
        ).scalars()
        assert sorted(names) == ["locations", "measurements"]
        location_dims = conn.execute(
            text(
                "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_name = 'locations'"
            )
        ).all()
    assert chunks == 5
    assert location_dims == [("time", timedelta(days=7))]


# --- writes -----------------------------------------------------------------------------


def test_ten_thousand_rows_then_an_idempotent_rerun(db: Engine) -> None:
    """Beyond PostgreSQL's 65535 bind parameters for one multi-row INSERT (~2,500 rows)."""
    acq = uuid.uuid4()
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        mrow(acq, f"rx-{i % 100:03d}", t0 + timedelta(seconds=i // 100), snr_db=float(i % 7))
        for i in range(10_000)
    ]
    upsert_acquisition(db, arow(acq, t0, ok=100))
    assert upsert_measurements(db, rows) == 10_000
    assert count(db, acq) == 10_000

    for row in rows:
        row["snr_db"] += 100.0
        row["attempts"] = 2
    assert upsert_measurements(db, rows) == 10_000  # the same acquisition again
    assert count(db, acq) == 10_000
    with db.connect() as conn:
        low, high, attempts = conn.execute(
            select(
                func.min(Measurement.snr_db),
                func.max(Measurement.snr_db),
                func.min(Measurement.attempts),
            ).where(Measurement.acquisition_id == acq)
        ).one()
    assert (low, high, attempts) == (100.0, 106.0, 2)


def test_only_given_columns_are_updated(db: Engine) -> None:
    acq = uuid.uuid4()
    t = datetime(2026, 3, 1, tzinfo=UTC)
    upsert_measurements(db, [mrow(acq, "torino", t, snr_db=10.0, object_key="a.npy")])
    upsert_measurements(db, [mrow(acq, "torino", t, snr_db=12.0)])  # no object_key given
    [row] = measurements_for(db, acq)
    assert (row["snr_db"], row["object_key"]) == (12.0, "a.npy")


BAD_ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "nan-not-null": (
        {"frequency_hz": math.nan},
        r"receiver 'rx-042': field 'frequency_hz' is required \(got nan\)",
    ),
    "none-not-null": ({"status": None}, r"receiver 'rx-042': field 'status' is required"),
    "status": (
        {"status": "lost"},
        r"receiver 'rx-042': field 'status' is 'lost', not one of ok, failed, skipped",
    ),
    "negative-rate": (
        {"sample_rate": -12000.0},
        r"receiver 'rx-042': field 'sample_rate' is -12000.0, must be > 0",
    ),
    "latitude": ({"latitude": 91.0}, r"receiver 'rx-042': field 'latitude' is 91.0, must be"),
    "attempts": ({"attempts": -1}, r"receiver 'rx-042': field 'attempts' is -1, must be >= 0"),
    "not-a-number": (
        {"snr_db": "loud"},
        r"receiver 'rx-042': field 'snr_db' must be float, got 'loud'",
    ),
    "unknown-field": ({"colour": "red"}, r"receiver 'rx-042': unknown measurement fields: colour"),
    "long-name": ({"receiver": "x" * 65}, r"field 'receiver' is longer than 64 characters"),
}


@pytest.mark.parametrize("case", BAD_ROWS, ids=list(BAD_ROWS))
def test_a_batch_with_one_bad_row_writes_nothing(db: Engine, case: str) -> None:
    change, message = BAD_ROWS[case]
    acq = uuid.uuid4()
    t = datetime(2026, 3, 1, tzinfo=UTC)
    good = [mrow(acq, f"rx-{i:03d}", t, snr_db=1.0, sample_rate=12000.0) for i in range(100)]
    assert upsert_measurements(db, good) == 100
    retry = [mrow(acq, f"rx-{i:03d}", t, snr_db=2.0, sample_rate=12000.0) for i in range(100)]
    retry[42].update(change)
    with pytest.raises(RecordError, match=message):
        upsert_measurements(db, retry)
    rows = measurements_for(db, acq)
    assert len(rows) == 100 and {r["snr_db"] for r in rows} == {1.0}  # not half-updated


def test_a_duplicate_key_in_one_batch_is_refused(db: Engine) -> None:
    acq = uuid.uuid4()
    t = datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(RecordError, match=r"'torino': the batch holds this .* twice"):
        upsert_measurements(db, [mrow(acq, "torino", t), mrow(acq, "torino", t)])
    assert count(db, acq) == 0


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("status", "lost", "ck_measurements_status"),
        ("attempts", -1, "ck_measurements_attempts"),
        ("sample_rate", 0.0, "ck_measurements_sample_rate"),
        ("longitude", 181.0, "ck_measurements_longitude"),
    ],
)
def test_the_database_itself_refuses_out_of_range_rows(
    db: Engine, column: str, value: Any, constraint: str
) -> None:
    """Writers that bypass upsert_measurements meet the CHECK constraints."""
    row = mrow(uuid.uuid4(), "torino", datetime(2026, 3, 1, tzinfo=UTC), **{column: value})
    with pytest.raises(IntegrityError, match=constraint), db.begin() as conn:
        conn.execute(insert(Measurement.__table__).values(row))


def test_record_writes_the_acquisition_and_its_rows_in_one_transaction(db: Engine) -> None:
    acq = uuid.uuid4()
    t = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [mrow(acq, "torino", t), mrow(acq, "genova", t, status="bogus")]
    with pytest.raises(RecordError, match="'genova'"):
        record.fn(db, arow(acq, t, ok=1, failed=1), rows)
    assert acquisition_with_measurements(db, acq) is None  # neither row was written


@pytest.mark.flow
def test_bad_data_is_not_retried(prefect_server: None, tmp_path: Path) -> None:
    engine = sqlite_engine(tmp_path / "rf.db")
    acq = uuid.uuid4()
    t = datetime(2026, 3, 1, tzinfo=UTC)
    box = run_record(
        record.with_options(retries=3, retry_delay_seconds=0),
        engine,
        arow(acq, t, ok=1),
        [mrow(acq, "torino", t, status="lost")],
    )
    assert box["state"].is_failed()
    assert isinstance(box["state"].result(raise_on_failure=False), RecordError)
    assert box["run_count"] == 1


def _wrapped(orig: Exception, base: type[Exception] = psycopg.Error) -> DBAPIError:
    """A driver error wrapped the way SQLAlchemy wraps it (class chosen by the driver's)."""
    return DBAPIError.instance("SELECT 1", None, orig, base)


def _pg(sqlstate: str) -> DBAPIError:
    return _wrapped(psycopg.errors.lookup(sqlstate)("server said no"))


def _connect_failure(message: str) -> DBAPIError:
    """What libpq raises when connecting fails: no SQLSTATE, only text."""
    return _wrapped(
        psycopg.OperationalError(f'connection to server at "h", port 1 failed: {message}')
    )


def _sqlite_locked() -> DBAPIError:
    orig = sqlite3.OperationalError("database is locked")
    orig.sqlite_errorcode = 5  # type: ignore[attr-defined]  # SQLITE_BUSY, as sqlite3 sets it
    return _wrapped(orig, sqlite3.Error)


def _sqlite_no_such_table() -> BaseException:
    engine = create_engine("sqlite://")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT * FROM nowhere"))
    except OperationalError as exc:
        return exc
    raise AssertionError("no error")


@pytest.mark.parametrize(
    ("make", "transient"),
    [
        pytest.param(lambda: _connect_failure("Connection refused"), True, id="refused"),
        pytest.param(
            lambda: _connect_failure("server closed the connection unexpectedly"), True, id="reset"
        ),
        pytest.param(lambda: _connect_failure("timeout expired"), True, id="timeout"),
        pytest.param(
            lambda: _connect_failure("FATAL:  the database system is starting up"),
            True,
            id="starting-up",
        ),
        pytest.param(
            lambda: _connect_failure("FATAL:  sorry, too many clients already"),
            True,
            id="too-many-clients-at-connect",
        ),
        pytest.param(lambda: _pg("08006"), True, id="08006-connection-failure"),
        pytest.param(lambda: _pg("08001"), True, id="08001"),
        pytest.param(lambda: _pg("57P01"), True, id="57P01-admin-shutdown"),
        pytest.param(lambda: _pg("57P02"), True, id="57P02-crash-shutdown"),
        pytest.param(lambda: _pg("57P03"), True, id="57P03-cannot-connect-now"),
        pytest.param(lambda: _pg("53300"), True, id="53300-too-many-connections"),
        pytest.param(lambda: _pg("40001"), True, id="40001-serialization"),
        pytest.param(lambda: _pg("40P01"), True, id="40P01-deadlock"),
        pytest.param(lambda: DisconnectionError("pre-ping failed"), True, id="disconnection"),
        pytest.param(_sqlite_locked, True, id="sqlite-locked"),
        pytest.param(
            lambda: _connect_failure('FATAL:  password authentication failed for user "rf"'),
            False,
            id="wrong-password-at-connect",
        ),
        pytest.param(
            lambda: _connect_failure('FATAL:  database "nope" does not exist'),
            False,
            id="unknown-database-at-connect",
        ),
        pytest.param(lambda: _pg("28P01"), False, id="28P01-invalid-password"),
        pytest.param(lambda: _pg("42501"), False, id="42501-permission-denied"),
        pytest.param(lambda: _pg("42P01"), False, id="42P01-undefined-table"),
        pytest.param(lambda: _pg("42703"), False, id="42703-undefined-column"),
        pytest.param(lambda: _pg("57014"), False, id="57014-statement-timeout"),
        pytest.param(_sqlite_no_such_table, False, id="sqlite-no-such-table"),
        pytest.param(lambda: TypeError("bad argument"), False, id="TypeError"),
        pytest.param(lambda: CommandError("Can't locate revision '0099'"), False, id="alembic"),
        pytest.param(lambda: MigrationError("unknown schema"), False, id="MigrationError"),
        pytest.param(lambda: RecordError("bad row"), False, id="RecordError"),
    ],
)
def test_only_connection_class_errors_are_transient(
    make: Callable[[], BaseException], transient: bool
) -> None:
    exc = make()
    assert is_transient_db_error(exc) is transient
    # the raw driver error (COPY runs on the psycopg connection itself) counts the same
    orig = getattr(exc, "orig", None)
    if orig is not None:
        assert is_transient_db_error(orig) is transient
    # as does the password-free replacement of an error whose chain quoted the password
    tail = exc
    while tail.__cause__ or tail.__context__:
        tail = tail.__cause__ or tail.__context__
    tail.__context__ = RuntimeError("while connecting with s3cret-Pa55")
    engine = create_engine("postgresql+psycopg://rf:s3cret-Pa55@127.0.0.1:1/rf")
    clean = tasks.records.write.password_free(engine, exc)
    assert isinstance(clean, RedactedError) and "s3cret-Pa55" not in str(clean)
    assert is_transient_db_error(clean) is transient


@pytest.mark.integration
@pytest.mark.flow
def test_a_wrong_password_is_tried_once(prefect_server: None, service_env: dict[str, str]) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    engine = timescaledb_from_env({**service_env, "RF_PG_PASSWORD": wrong}).get_engine()
    acquisition, rows = _outage_rows(uuid.uuid4())
    box = run_record(
        record.with_options(retries=3, retry_delay_seconds=0), engine, acquisition, rows
    )
    engine.dispose()
    exc = box["state"].result(raise_on_failure=False)
    assert box["state"].is_failed()
    assert isinstance(exc, OperationalError) and "password authentication failed" in str(exc)
    assert box["run_count"] == 1  # three retries could only lock the account
    assert wrong not in str(exc)


def _newer_database(path: Path) -> Engine:
    """A SQLite database migrated by a (future) version whose newest revision is 0099."""
    engine = sqlite_engine(path)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    return sqlite_engine(path)  # a new URL-keyed engine: ensure_head looks again


@pytest.mark.flow
def test_a_database_newer_than_the_code_is_refused_at_once(
    prefect_server: None, tmp_path: Path
) -> None:
    engine = _newer_database(tmp_path / "rf.db")
    acq = uuid.uuid4()
    t = datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(MigrationError, match=r"revision '0099'.*its newest is '0003'"):
        record.fn(engine, arow(acq, t, ok=1), [mrow(acq, "torino", t)])
    box = run_record(
        record.with_options(retries=3, retry_delay_seconds=0),
        engine,
        arow(acq, t, ok=1),
        [mrow(acq, "torino", t)],
    )
    assert box["state"].is_failed()
    assert isinstance(box["state"].result(raise_on_failure=False), MigrationError)
    assert box["run_count"] == 1
    assert current_revision(engine) == "0099"  # left alone


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.flow
def test_a_refused_connection_is_retried(prefect_server: None) -> None:
    engine = create_engine(
        f"postgresql+psycopg://rf:pw@127.0.0.1:{_closed_port()}/rf?connect_timeout=2"
    )
    acquisition, rows = _outage_rows(uuid.uuid4())
    box = run_record(
        record.with_options(retries=2, retry_delay_seconds=0), engine, acquisition, rows
    )
    exc = box["state"].result(raise_on_failure=False)
    assert box["state"].is_failed()
    assert isinstance(exc, OperationalError) and "refused" in str(exc).lower()
    assert box["run_count"] == 3


# --- the database unreachable -------------------------------------------------------------


def run_record(task: Any, engine: Engine, acquisition: dict, rows: list[dict]) -> dict[str, Any]:
    """Run a record task in a tiny flow; its final state and how many times it ran."""
    box: dict[str, Any] = {}

    @flow(name="record-once")
    def record_once() -> None:
        future = task.submit(engine, acquisition, rows)
        future.wait()
        box["state"] = future.state
        box["task_run_id"] = future.task_run_id

    record_once(return_state=True)
    with get_client(sync_client=True) as client:
        box["run_count"] = client.read_task_run(box["task_run_id"]).run_count
    return box


@pytest.fixture
def postgres_control(pg_engine: Engine) -> Iterator[Callable[[str], None]]:
    """pg-stop / pg-start of the real server (same data and port); restarted afterwards."""
    yield services
    services("pg-start")
    with pg_engine.connect() as conn:  # the server answers again before the next test
        conn.execute(text("SELECT 1"))


def _outage_rows(acq: uuid.UUID) -> tuple[dict, list[dict]]:
    t = datetime(2026, 3, 1, 12, tzinfo=UTC)
    names = [f"rx-{i:02d}" for i in range(20)]
    return arow(acq, t, ok=20), [mrow(acq, n, t, snr_db=15.0) for n in names]


@pytest.mark.integration
@pytest.mark.flow
def test_record_survives_a_database_restart_within_its_retries(
    prefect_server: None, new_pg: Any, postgres_control: Callable[[str], None]
) -> None:
    engine = new_pg()
    acq = uuid.uuid4()
    acquisition, rows = _outage_rows(acq)
    task = record.with_options(retries=3, retry_delay_seconds=[3, 3, 3], retry_jitter_factor=None)
    postgres_control("pg-stop")
    restart = threading.Timer(1.0, postgres_control, args=("pg-start",))
    restart.start()
    try:
        box = run_record(task, engine, acquisition, rows)
    finally:
        restart.join()
    assert box["state"].is_completed(), box["state"].message
    assert box["state"].result() == 20
    assert box["run_count"] >= 2  # the first attempt met the stopped server
    assert count(engine, acq) == 20  # written once
    assert len({r["receiver"] for r in measurements_for(engine, acq)}) == 20


@pytest.mark.integration
@pytest.mark.flow
def test_record_fails_without_the_password_when_the_database_stays_down(
    prefect_server: None,
    new_pg: Any,
    service_env: dict[str, str],
    postgres_control: Callable[[str], None],
) -> None:
    password = service_env["RF_PG_PASSWORD"]
    assert len(password) >= 8  # a check for it in texts means something
    engine = new_pg()
    assert password not in str(engine.url) and "***" in str(engine.url)
    acquisition, rows = _outage_rows(uuid.uuid4())
    task = record.with_options(retries=2, retry_delay_seconds=[0.2, 0.2], retry_jitter_factor=None)
    logged: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda r: logged.append(logging.Formatter().format(r))  # type: ignore[method-assign]
    logging.getLogger("prefect").addHandler(handler)
    postgres_control("pg-stop")
    try:
        box = run_record(task, engine, acquisition, rows)
    finally:
        logging.getLogger("prefect").removeHandler(handler)
        postgres_control("pg-start")
    state = box["state"]
    assert state.is_failed()
    assert box["run_count"] == 3
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, OperationalError)
    assert "Connection refused" in str(exc) or "connection failed" in str(exc)
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), str(state.message)]
    texts += logged
    assert any("OperationalError" in t for t in logged)  # the failure was logged ...
    for t in texts:
        assert password not in t  # ... never with the password


def test_an_error_holding_the_password_is_replaced() -> None:
    engine = create_engine("postgresql+psycopg://rf:s3cret-Pa55@127.0.0.1:1/rf")
    try:
        raise RuntimeError("server said: bad password s3cret-Pa55")
    except RuntimeError as exc:
        clean = tasks.records.write.password_free(engine, exc)
    assert isinstance(clean, RedactedError)
    assert "s3cret-Pa55" not in str(clean) and "***" in str(clean)
    assert tasks.records.write.password_free(engine, RuntimeError("connection refused")) is None


@pytest.mark.integration
def test_a_wrong_password_is_not_echoed(service_env: dict[str, str]) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    engine = timescaledb_from_env({**service_env, "RF_PG_PASSWORD": wrong}).get_engine()
    with pytest.raises(OperationalError) as info:
        ensure_schema(engine)
    assert "password authentication failed" in str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    engine.dispose()


# --- queries ------------------------------------------------------------------------------

D1 = datetime(2026, 3, 1, tzinfo=UTC)
A1, A2, A3, A4, A5 = (uuid.UUID(int=i) for i in range(1, 6))


def _known_rows() -> tuple[list[dict], list[dict]]:
    """Three receivers, five acquisitions over two UTC days, with exact-binary numbers."""

    def at(hours: float) -> datetime:
        return D1 + timedelta(hours=hours)

    m = mrow
    rows = [
        m(A1, "torino", at(10), snr_db=10.0, rssi_dbm=-80.0, frequency_offset_hz=1.0),
        m(A1, "genova", at(10), snr_db=20.0, rssi_dbm=-90.0, frequency_offset_hz=-2.0),
        m(A1, "milano", at(10), "skipped", error="out of range"),
        m(A2, "torino", at(10 + 1 / 3), snr_db=14.0, rssi_dbm=-82.0, frequency_offset_hz=3.0),
        m(A2, "genova", at(10 + 1 / 3), "failed", error="capture failed: timeout"),
        m(A2, "milano", at(10 + 1 / 3), snr_db=5.0, rssi_dbm=-100.0, frequency_offset_hz=0.5),
        m(A3, "torino", at(10 + 2 / 3), snr_db=12.0, rssi_dbm=math.nan, frequency_offset_hz=2.0),
        m(A3, "genova", at(10 + 2 / 3), snr_db=22.0, rssi_dbm=-94.0, frequency_offset_hz=-1.0),
        m(A3, "milano", at(10 + 2 / 3), snr_db=7.0, rssi_dbm=-101.0, frequency_offset_hz=0.25),
        # a store failure keeps its measurements; series count only ok rows
        m(A4, "torino", at(11 + 1 / 6), "failed", snr_db=99.0, error="store failed"),
        m(A4, "genova", at(11 + 1 / 6), snr_db=30.0, rssi_dbm=-70.0, frequency_offset_hz=-4.0),
        m(A4, "milano", at(11 + 1 / 6), snr_db=9.0, rssi_dbm=-99.0, frequency_offset_hz=0.75),
        # 00:30 UTC on day 2 (09:30 in Tokyo, the PostgreSQL session's zone below)
        m(A5, "torino", at(24.5), snr_db=16.0, rssi_dbm=-84.0, frequency_offset_hz=1.5),
        m(A5, "genova", at(24.5), "skipped", error="busy"),
        m(A5, "milano", at(24.5), "failed", error="capture failed: closed"),
    ]
    acquisitions = [
        arow(A1, at(10), ok=2, skipped=1),
        arow(A2, at(10 + 1 / 3), ok=2, failed=1),
        arow(A3, at(10 + 2 / 3), ok=3),
        arow(A4, at(11 + 1 / 6), ok=2, failed=1),
        arow(A5, at(24.5), ok=1, failed=1, skipped=1),
    ]
    return acquisitions, rows


@pytest.fixture(params=["sqlite", TIMESCALEDB])
def known_db(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        engine = sqlite_engine(tmp_path / "rf.db")
    else:  # a session time zone far from UTC: days and buckets must still be UTC
        engine = request.getfixturevalue("new_pg")(
            connect_args={"options": "-c timezone=Asia/Tokyo"}
        )
    ensure_schema(engine)
    acquisitions, rows = _known_rows()
    with engine.begin() as conn:
        for a in acquisitions:
            upsert_acquisition(conn, a)
        upsert_measurements(conn, rows)
    return engine


WINDOW = {"start": D1, "end": D1 + timedelta(days=2)}


def test_snr_series_hourly(known_db: Engine) -> None:
    h = timedelta(hours=1)
    assert metric_series(known_db, "snr_db", bucket=h, **WINDOW) == [
        SeriesPoint("genova", D1 + 10 * h, 2, 21.0, 20.0, 22.0),
        SeriesPoint("genova", D1 + 11 * h, 1, 30.0, 30.0, 30.0),
        SeriesPoint("milano", D1 + 10 * h, 2, 6.0, 5.0, 7.0),
        SeriesPoint("milano", D1 + 11 * h, 1, 9.0, 9.0, 9.0),
        SeriesPoint("torino", D1 + 10 * h, 3, 12.0, 10.0, 14.0),
        SeriesPoint("torino", D1 + 24 * h, 1, 16.0, 16.0, 16.0),
    ]


def test_snr_series_half_hourly_one_receiver_any_time_zone(known_db: Engine) -> None:
    rome = timezone(timedelta(hours=1))
    points = metric_series(
        known_db,
        "snr_db",
        bucket=timedelta(minutes=30),
        start=datetime(2026, 3, 1, 11, 0, tzinfo=rome),  # 10:00 UTC
        end=datetime(2026, 3, 1, 12, 0, tzinfo=rome),  # 11:00 UTC
        receivers=["torino"],
    )
    assert [(p.bucket, p.count, p.mean) for p in points] == [
        (D1 + timedelta(hours=10), 2, 12.0),
        (D1 + timedelta(hours=10.5), 1, 12.0),
    ]
    assert all(p.bucket.tzinfo is not None and p.bucket.utcoffset() == timedelta(0) for p in points)


def test_rssi_series_leaves_out_unmeasurable_values(known_db: Engine) -> None:
    points = metric_series(
        known_db, "rssi_dbm", bucket=timedelta(hours=1), receivers=["torino"], **WINDOW
    )
    assert [(p.bucket.hour, p.count, p.mean, p.minimum, p.maximum) for p in points] == [
        (10, 2, -81.0, -82.0, -80.0),  # the NaN of A3 is NULL, not a number
        (0, 1, -84.0, -84.0, -84.0),
    ]


def test_frequency_offset_series(known_db: Engine) -> None:
    points = metric_series(known_db, "frequency_offset_hz", bucket=timedelta(days=1), **WINDOW)
    assert [(p.receiver, p.bucket.date(), p.count, p.mean) for p in points] == [
        ("genova", date(2026, 3, 1), 3, -7.0 / 3),
        ("milano", date(2026, 3, 1), 3, 0.5),
        ("torino", date(2026, 3, 1), 3, 2.0),
        ("torino", date(2026, 3, 2), 1, 1.5),
    ]


def test_latest_measurement_per_receiver(known_db: Engine) -> None:
    latest = latest_measurements(known_db)
    assert [(r["receiver"], r["acquisition_id"], r["status"]) for r in latest] == [
        ("genova", A5, "skipped"),
        ("milano", A5, "failed"),
        ("torino", A5, "ok"),
    ]
    assert latest[2]["time"] == D1 + timedelta(hours=24.5)
    good = latest_measurements(known_db, status="ok", since=D1)
    assert [(r["receiver"], r["acquisition_id"], r["snr_db"]) for r in good] == [
        ("genova", A4, 30.0),
        ("milano", A4, 9.0),
        ("torino", A5, 16.0),
    ]
    assert latest_measurements(known_db, receivers=["milano"], status="skipped")[0]["error"] == (
        "out of range"
    )


def test_an_acquisition_with_all_its_rows(known_db: Engine) -> None:
    found = acquisition_with_measurements(known_db, str(A2))
    assert found is not None and found.acquisition is not None
    assert found.acquisition["id"] == A2
    assert found.acquisition["start_at"] == D1 + timedelta(hours=10 + 1 / 3)
    assert (found.acquisition["receivers_ok"], found.acquisition["receivers_failed"]) == (2, 1)
    assert [(r["receiver"], r["status"], r["snr_db"]) for r in found.measurements] == [
        ("genova", "failed", None),
        ("milano", "ok", 5.0),
        ("torino", "ok", 14.0),
    ]
    assert acquisition_with_measurements(known_db, uuid.uuid4()) is None


def test_receiver_availability_per_utc_day(known_db: Engine) -> None:
    day1, day2 = date(2026, 3, 1), date(2026, 3, 2)
    assert receiver_availability(known_db, **WINDOW) == [
        Availability(day1, "genova", ok=3, failed=1, skipped=0),
        Availability(day1, "milano", ok=3, failed=0, skipped=1),
        Availability(day1, "torino", ok=3, failed=1, skipped=0),
        Availability(day2, "genova", ok=0, failed=0, skipped=1),
        Availability(day2, "milano", ok=0, failed=1, skipped=0),
        Availability(day2, "torino", ok=1, failed=0, skipped=0),
    ]
    one = receiver_availability(
        known_db, start=D1, end=D1 + timedelta(days=1), receivers=["torino"]
    )
    assert [(a.total, a.ok_fraction) for a in one] == [(4, 0.75)]


def test_docstring_examples_run() -> None:
    modules = (tasks.queries, tasks.records.models, tasks.errors, tasks.bucket, tasks.objectstore)
    for module in modules:
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__


# --- retention ------------------------------------------------------------------------------

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
AGES = {"10d": NOW - timedelta(days=10), "5d": NOW - timedelta(days=5)}
AGES |= {"3.25d": NOW - timedelta(days=3, hours=6), "1d": NOW - timedelta(days=1)}


def _aged_rows(engine: Engine) -> None:
    ensure_schema(engine)
    acq = uuid.uuid4()
    upsert_measurements(engine, [mrow(acq, "torino", t, error=age) for age, t in AGES.items()])


def _remaining(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(Measurement.error).order_by(Measurement.time)).scalars())


@pytest.mark.integration
@pytest.mark.flow
def test_retention_flow_drops_old_chunks_and_keeps_new_ones(
    prefect_server: None, new_pg: Any, service_env: dict[str, str], unique: str
) -> None:
    engine = new_pg()
    _aged_rows(engine)
    block = timescaledb_from_env({**service_env, "RF_PG_DATABASE": str(engine.url.database)})
    block.save(f"retention-{unique}", overwrite=True)
    spec = f"timescaledb-connection/retention-{unique}"

    def chunks() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM show_chunks('measurements')")).scalar()

    assert chunks() == 4
    dry = asyncio.run(retention(older_than_days=3, database=spec, now=NOW, dry_run=True))
    assert dry["mode"] == "drop_chunks" and dry["dry_run"] is True
    assert len(dry["dropped_chunks"]) == 2 and chunks() == 4

    result = asyncio.run(retention(older_than_days=3, database=spec, now=NOW))
    assert result["mode"] == "drop_chunks"
    assert result["cutoff"] == (NOW - timedelta(days=3)).isoformat()
    assert result["dropped_chunks"] == dry["dropped_chunks"]
    assert chunks() == 2
    # Whole chunks only: the day straddling the cutoff (06:00, cutoff 12:00) stays.
    assert _remaining(engine) == ["3.25d", "1d"]

    again = asyncio.run(retention(older_than_days=3, database=spec, now=NOW))
    assert again["dropped_chunks"] == []


def test_retention_deletes_old_rows_on_sqlite(tmp_path: Path) -> None:
    engine = sqlite_engine(tmp_path / "rf.db")
    _aged_rows(engine)
    dry = drop_old_measurements(engine, timedelta(days=3), now=NOW, dry_run=True)
    assert (dry.mode, dry.deleted_rows) == ("delete", 3)
    assert len(_remaining(engine)) == 4
    done = drop_old_measurements(engine, timedelta(days=3), now=NOW)
    assert (done.mode, done.deleted_rows, done.dry_run) == ("delete", 3, False)
    assert _remaining(engine) == ["1d"]


@pytest.mark.flow
def test_retention_flow_on_the_embedded_default(prefect_server: None, tmp_path: Path) -> None:
    _aged_rows(sqlite_engine(tmp_path / "rf_acquisition.db"))
    result = asyncio.run(
        retention(older_than_days=4, database="sqlite", data_dir=str(tmp_path), now=NOW)
    )
    assert (result["mode"], result["deleted_rows"]) == ("delete", 2)
    assert _remaining(sqlite_engine(tmp_path / "rf_acquisition.db")) == ["3.25d", "1d"]
    # The run ends with a state message saying what went (the UI's run list shows it).
    state = asyncio.run(
        retention(
            older_than_days=1, database="sqlite", data_dir=str(tmp_path), now=NOW,
            return_state=True,
        )
    )  # fmt: skip
    cutoff = (NOW - timedelta(days=1)).isoformat(timespec="seconds")
    assert state.message.startswith(f"deleted 1 measurement row older than {cutoff} in SQLite")


def test_retention_refuses_a_non_positive_age(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        drop_old_measurements(sqlite_engine(tmp_path / "rf.db"), timedelta(0))


# --- the query command ----------------------------------------------------------------------


def _query(engine: Engine, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    url = engine.url.render_as_string(hide_password=False)
    end = (D1 + timedelta(days=2)).isoformat()
    assert query_main([*argv, "--database", url, "--end", end, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_query_latest_per_receiver(known_db: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    latest = _query(known_db, capsys, "latest", "--status", "ok")
    assert [(r["receiver"], r["acquisition_id"], r["snr_db"]) for r in latest] == [
        ("genova", str(A4), 30.0),
        ("milano", str(A4), 9.0),
        ("torino", str(A5), 16.0),
    ]
    assert datetime.fromisoformat(latest[2]["time"]) == D1 + timedelta(hours=24.5)


def test_query_series_bucketed(known_db: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    found = _query(
        known_db, capsys, "series", "--metric", "rssi_dbm", "--hours", "48", "--receiver", "torino"
    )
    assert found["metric"] == "rssi_dbm"
    points = [(datetime.fromisoformat(p["bucket"]), p["count"], p["mean"]) for p in found["points"]]
    assert points == [
        (D1 + timedelta(hours=10), 2, -81.0),  # the NaN of A3 is NULL, not a number
        (D1 + timedelta(hours=24), 1, -84.0),
    ]
    offsets = _query(
        known_db, capsys, "series", "--metric", "frequency_offset_hz", "--hours", "48",
        "--bucket-minutes", "1440",
    )["points"]  # fmt: skip
    assert [(p["receiver"], p["count"], p["mean"]) for p in offsets][:2] == [
        ("genova", 3, pytest.approx(-7.0 / 3, abs=1e-12)),
        ("milano", 3, 0.5),
    ]


def test_query_availability_per_utc_day(
    known_db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    days = _query(known_db, capsys, "availability", "--days", "3", "--receiver", "torino")
    assert [(d["day"], d["ok"], d["failed"], d["skipped"], d["ok_fraction"]) for d in days] == [
        ("2026-03-01", 3, 1, 0, 0.75),
        ("2026-03-02", 1, 0, 0, 1.0),
    ]


def test_query_prints_a_table_and_refuses_unknown_acquisitions(
    known_db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    url = known_db.url.render_as_string(hide_password=False)
    assert query_main(["acquisition", str(A2), "--database", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["receiver", "time", "status", "snr_db", "rssi_dbm",
                              "frequency_offset_hz"]  # fmt: skip
    assert out[1].split()[:4] == ["genova", "2026-03-01T10:20:00+00:00", "failed", "-"]
    assert query_main(["acquisition", str(uuid.uuid4()), "--database", url]) == 1
    assert "no rows" in capsys.readouterr().err


def test_query_on_a_database_never_written_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert query_main(["latest", "--database", url]) == 1
    assert "no such table: measurements" in capsys.readouterr().err
