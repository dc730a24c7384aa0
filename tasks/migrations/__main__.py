"""Command line: ``python -m tasks.migrations [--database SPEC] upgrade|downgrade|current``.

SPEC is what the flow's ``database`` parameter takes (``auto``, ``sqlite``,
``timescaledb-connection/<block>``), or ``env`` (the ``RF_PG_*`` variables), or a
SQLAlchemy URL. Default: ``env`` when ``RF_PG_HOST`` is set, otherwise ``auto``.

Examples::

    python -m tasks.migrations upgrade                    # to head
    python -m tasks.migrations --database sqlite current
    python -m tasks.migrations downgrade 0001
    python -m tasks.migrations --database postgresql+psycopg://u@h/db downgrade base
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from sqlalchemy import Engine, create_engine

from tasks.migrations import current_revision, downgrade, head_revision, upgrade


def engine_for(spec: str, data_dir: Path | None = None) -> tuple[Engine, str]:
    """An engine and a description without the password for a database spec."""
    if spec == "env":
        from blocks.database import timescaledb_from_env

        block = timescaledb_from_env(dict(os.environ))
        return block.get_engine(), f"RF_PG_* ({block.url()})"
    if "://" in spec:
        engine = create_engine(spec)
        return engine, str(engine.url)  # str() renders the password as ***
    from blocks.resolve import default_data_dir, resolve_database

    choice = asyncio.run(resolve_database(spec, data_dir or default_data_dir()))
    return choice.engine, choice.description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.migrations",
        description="Apply or inspect the rf-acquisition schema migrations.",
    )
    parser.add_argument(
        "--database",
        default="env" if os.environ.get("RF_PG_HOST") else "auto",
        help="auto | sqlite | timescaledb-connection/<block> | env | a SQLAlchemy URL",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the SQLite file")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="apply migrations (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="revert migrations down to REVISION ('base': all)")
    down.add_argument("revision")
    sub.add_parser("current", help="print the database's revision")
    args = parser.parse_args(argv)

    engine, description = engine_for(args.database, args.data_dir)
    try:
        before = current_revision(engine)
        if args.command == "current":
            head = head_revision()
            print(f"{description}: {before or 'none'}{' (head)' if before == head else ''}")
            return 0
        if args.command == "upgrade":
            after = upgrade(engine, args.revision)
        else:
            after = downgrade(engine, args.revision)
        print(f"{description}: {before or 'none'} -> {after or 'none'}")
        return 0
    except Exception as exc:  # a one-line error; the password never in it
        message = f"{type(exc).__name__}: {exc}"
        if engine.url.password:
            message = message.replace(engine.url.password, "***")
        print(f"{description}: {message}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
