"""Database connection configuration: the ``TimescaleDB Connection`` block and SQLite.

The ``RF_PG_*`` settings are :class:`blocks.settings.PostgresSettings`; the health probe is
:func:`tasks.health.check_database`.

The block builds the SQLAlchemy engine; the password lives in a ``SecretStr`` and the
engine URL is rendered with it hidden, so neither logs nor errors can leak it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr
from sqlalchemy import URL, Engine, create_engine, event

from blocks.settings import PostgresSettings


class TimescaleDBConnection(Block):
    """Connection settings for PostgreSQL with the TimescaleDB extension.

    Example:
        >>> db = TimescaleDBConnection(host="127.0.0.1", port=5432, database="rf",
        ...                            user="rf", password="...")
        >>> engine = db.get_engine()  # doctest: +SKIP
    """

    _block_type_name = "TimescaleDB Connection"
    _description = "PostgreSQL + TimescaleDB where acquisition rows are recorded."
    # Shown in the UI's Example box (a doctest prompt would be escaped away there).
    _code_example = """
    ```python
    from blocks.database import TimescaleDBConnection

    TimescaleDBConnection(
        host="db.example", port=5432, database="rf_acquisition", user="rf", password="...",
    ).save("rf-acquisition", overwrite=True)
    engine = TimescaleDBConnection.load("rf-acquisition").get_engine()
    ```
    """

    host: str = Field(default="127.0.0.1", title="Host", description="Server host name or address.")
    port: int = Field(default=5432, ge=1, le=65535, title="Port", description="Server TCP port.")
    database: str = Field(default="rf_acquisition", title="Database", description="Database name.")
    user: str = Field(default="postgres", title="User", description="Role to connect as.")
    password: SecretStr | None = Field(
        default=None, title="Password", description="The role's password."
    )
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        default="prefer", title="SSL mode", description="libpq sslmode."
    )
    connect_timeout_s: int = Field(
        default=10, ge=1, le=300, title="Connect timeout (s)", description="Connect timeout."
    )

    def url(self) -> URL:
        """The SQLAlchemy URL (``str(url)`` masks the password as ``***``)."""
        return URL.create(
            "postgresql+psycopg",
            username=self.user,
            password=self.password.get_secret_value() if self.password else None,
            host=self.host,
            port=self.port,
            database=self.database,
            query={"sslmode": self.sslmode, "connect_timeout": str(self.connect_timeout_s)},
        )

    def get_engine(self, **kwargs: object) -> Engine:
        """A pooled engine with ``pool_pre_ping`` so a restarted server is survived."""
        return create_engine(self.url(), pool_pre_ping=True, **kwargs)  # type: ignore[arg-type]


def sqlite_engine(path: str | Path) -> Engine:
    """SQLite engine for the embedded default, with WAL so readers do not block writers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    return engine


PG_ENV = PostgresSettings.required_variables()  # RF_PG_HOST, _PORT, _DATABASE, _USER


def timescaledb_from_settings(settings: PostgresSettings) -> TimescaleDBConnection:
    """The connection block the ``RF_PG_*`` settings describe."""
    return TimescaleDBConnection(
        host=settings.host,
        port=settings.port,
        database=settings.database,
        user=settings.user,
        password=settings.password,
        sslmode=settings.sslmode,
    )


def timescaledb_from_env(env: Mapping[str, str]) -> TimescaleDBConnection:
    """Build the connection block from ``RF_PG_*`` variables in ``env`` (password and
    sslmode optional).

    Raises:
        MissingSetting: a required variable is missing or empty (a KeyError, named).
        InvalidSetting: e.g. ``RF_PG_PORT`` is not a port number 1-65535 (a ValueError).
    """
    return timescaledb_from_settings(PostgresSettings.from_mapping(env))
