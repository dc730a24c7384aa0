"""Schema glue: bring a database to the newest migration before the first write, and tell
TimescaleDB from plain PostgreSQL and SQLite.

The migrations themselves are in :mod:`tasks.migrations`; this module turns Alembic's
refusals into a :class:`tasks.errors.MigrationError` that names both revisions.
"""

from __future__ import annotations

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

from tasks.errors import MigrationError
from tasks.migrations import alembic_config, current_revision, ensure_head, head_revision


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
