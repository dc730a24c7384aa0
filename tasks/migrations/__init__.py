"""Versioned schema migrations (Alembic), configured in code: no ``alembic.ini`` needed.

Apply them from the command line (``python -m tasks.migrations upgrade``, see
``__main__.py``) or from Python::

    >>> from tasks.migrations import upgrade, current_revision
    >>> upgrade(engine)                       # doctest: +SKIP
    '0003'

The record path calls :func:`ensure_head` before its first write. Upgrades run in one
transaction under a PostgreSQL advisory lock, so concurrent flow runs migrate once.

A database made before migrations existed (tables from ``create_all``, no
``alembic_version``) is adopted: when its tables have exactly the baseline columns it is
stamped at revision ``0001`` and upgraded from there; anything else is refused.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, inspect, text

from tasks.errors import MigrationError

MIGRATIONS_DIR = Path(__file__).resolve().parent
BASELINE = "0001"
# Any constant works; it only has to be the same for every process migrating this schema.
ADVISORY_LOCK_KEY = 0x72665F6D6967  # "rf_mig"

# The tables the pre-Alembic ``create_all`` made (frozen: revision 0001 creates exactly these).
BASELINE_COLUMNS = {
    "acquisitions": {
        "id",
        "frequency_hz",
        "duration_s",
        "start_at",
        "receivers_requested",
        "receivers_ok",
        "receivers_failed",
        "receivers_skipped",
        "status",
        "flow_run_id",
        "created_at",
    },
    "measurements": {
        "time",
        "acquisition_id",
        "receiver",
        "status",
        "error",
        "attempts",
        "latitude",
        "longitude",
        "altitude_m",
        "frequency_hz",
        "sample_rate",
        "sample_count",
        "power_dbfs",
        "noise_floor_dbfs_hz",
        "signal_power_dbfs",
        "cn0_dbhz",
        "snr_db",
        "snr_bandwidth_hz",
        "frequency_offset_hz",
        "rssi_dbm",
        "gps_fix",
        "lost_frames",
        "adc_overflow_frames",
        "object_key",
        "sha512",
    },
}


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config for this package; ``connection`` is the one env.py will use."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest revision id in ``versions/`` (read once per process)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(bind: Engine | Connection) -> str | None:
    """The database's revision, or None when it has never been migrated."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    return MigrationContext.configure(bind).get_current_revision()


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})


def _adopt(conn: Connection) -> bool:
    """Stamp a pre-Alembic database at the baseline; True when it was adopted."""
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    if "alembic_version" in tables and current_revision(conn) is not None:
        return False
    present = tables & set(BASELINE_COLUMNS)
    if not present:
        return False  # an empty database: the migrations create everything
    for name, expected in BASELINE_COLUMNS.items():
        found = {c["name"] for c in insp.get_columns(name)} if name in present else set()
        if found != expected:
            raise MigrationError(
                f"table {name!r} exists without an alembic_version and does not match the "
                f"baseline schema (missing: {sorted(expected - found) or 'none'}, "
                f"extra: {sorted(found - expected) or 'none'}); migrate it by hand or "
                "start from an empty database"
            )
    command.stamp(alembic_config(conn), BASELINE)
    return True


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Apply migrations up to ``revision`` in one transaction; returns the new revision."""
    with engine.begin() as conn:
        _lock(conn)
        _adopt(conn)
        command.upgrade(alembic_config(conn), revision)
        new = current_revision(conn)
    _forget(engine.url)
    return new


def downgrade(engine: Engine, revision: str) -> str | None:
    """Revert migrations down to ``revision`` (``"base"`` drops everything)."""
    with engine.begin() as conn:
        _lock(conn)
        command.downgrade(alembic_config(conn), revision)
        new = current_revision(conn)
    _forget(engine.url)
    return new


_at_head: set[URL] = set()
_at_head_lock = threading.RLock()  # ensure_head -> upgrade -> _forget


def _forget(url: URL) -> None:
    with _at_head_lock:
        _at_head.discard(url)


def ensure_head(engine: Engine) -> None:
    """Upgrade to head unless this process already saw this database there (by URL).

    One ``SELECT`` from ``alembic_version`` when the database is current, nothing at all
    on later calls. A downgrade made through :func:`downgrade` clears the memory; one made
    by another process is not seen until the process restarts.
    """
    if engine.url in _at_head:
        return
    with _at_head_lock:
        if engine.url in _at_head:
            return
        if current_revision(engine) != head_revision():
            upgrade(engine)
        if engine.url.database not in (None, "", ":memory:"):
            _at_head.add(engine.url)  # in-memory SQLite: one URL, many databases
