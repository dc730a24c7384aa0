"""Alembic environment: runs on the connection handed over by :mod:`tasks.migrations`.

Online only: the migrations look at the server (is TimescaleDB installed?), which an
offline SQL script cannot do.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from tasks.records import Base

config = context.config
target_metadata = Base.metadata


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, _compare: Any) -> bool:
    # Autogenerate compares only our tables: others in a shared database are not ours to drop.
    return not (type_ == "table" and reflected and name not in target_metadata.tables)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations through tasks.migrations (python -m tasks.migrations upgrade), "
            "which passes the connection"
        )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported: they inspect the server")
run_migrations_online()
