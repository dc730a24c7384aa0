"""Create or update the project's Prefect blocks from the command line.

    python -m blocks.configure register            # make the UI offer the block forms
    python -m blocks.configure from-env            # S3Bucket + MinIOCredentials + DB
    python -m blocks.configure from-env --env-file .services/env
    python -m blocks.configure remove              # delete what from-env saved
    python -m blocks.configure receivers FILE      # KiwiSDRReceiver blocks from YAML/JSON

``from-env`` reads RF_S3_ENDPOINT, RF_S3_ACCESS_KEY, RF_S3_SECRET_KEY, RF_S3_BUCKET,
RF_S3_REGION and RF_PG_HOST, RF_PG_PORT, RF_PG_DATABASE, RF_PG_USER, RF_PG_PASSWORD,
RF_PG_SSLMODE (``make services-up`` writes them to .services/env).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_BLOCK_NAME = "rf-acquisition"


def save_from_env(env: dict[str, str], name: str = DEFAULT_BLOCK_NAME) -> list[str]:
    """Save whichever of the storage and database blocks the environment describes.

    Raises:
        ValueError: a setting is malformed (e.g. RF_PG_PORT); nothing is saved.
    """
    from blocks.database import timescaledb_from_env
    from blocks.storage import minio_bucket_from_env
    from tasks.bucket import ensure_bucket  # bucket administration: the one import of tasks/

    # Both built before either is saved: a bad value (ValueError) saves nothing.
    bucket = db = None
    try:
        bucket = minio_bucket_from_env(env)
    except KeyError as exc:
        print(f"storage: not configured ({exc.args[0]})", file=sys.stderr)
    try:
        db = timescaledb_from_env(env)
    except KeyError as exc:
        print(f"database: not configured ({exc.args[0]})", file=sys.stderr)
    saved: list[str] = []
    if bucket is not None:
        if ensure_bucket(bucket):
            print(f"storage: created bucket {bucket.bucket_name}", file=sys.stderr)
        bucket.credentials.save(name, overwrite=True)
        bucket.save(name, overwrite=True)
        saved.append(f"s3-bucket/{name}")
    if db is not None:
        db.save(name, overwrite=True)
        saved.append(f"timescaledb-connection/{name}")
    return saved


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse ``export KEY=value`` / ``KEY=value`` lines (as scripts/services.sh writes)."""
    env: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if sep:
            env[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return env


def settings_for_from_env(
    env_file: str | Path | None, environ: Mapping[str, str]
) -> dict[str, str]:
    """The settings ``from-env`` saves: the environment, overridden by ``env_file``.

    The file wins: a shell that sourced an older ``.services/env`` would otherwise save
    blocks with that run's ports and passwords. Variables the file does not set still
    come from the environment (e.g. RF_PG_SSLMODE)."""
    settings = dict(environ)
    if env_file:
        settings.update(read_env_file(env_file))
    return settings


async def remove_saved(name: str = DEFAULT_BLOCK_NAME) -> list[str]:
    """Delete the storage and database blocks ``from-env`` saved under ``name``."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    removed = []
    async with get_client() as client:
        for slug in ("s3-bucket", "minio-credentials", "timescaledb-connection"):
            try:
                doc = await client.read_block_document_by_name(name, block_type_slug=slug)
                await client.delete_block_document(doc.id)
            except (ObjectNotFound, PrefectHTTPStatusError):
                continue  # not saved, or the block type was never registered
            removed.append(f"{slug}/{name}")
    return removed


def save_receivers(path: str) -> list[str]:
    """Create or update one KiwiSDRReceiver block per receiver in ``path``."""
    from blocks.receiver import load_receiver_file, receiver_name

    names = []
    for receiver in load_receiver_file(path):
        name = receiver_name(receiver)
        receiver.save(name, overwrite=True)
        names.append(name)
    return names


def register() -> None:
    """Register this project's block types with the Prefect API."""
    from blocks.database import TimescaleDBConnection
    from blocks.receiver import KiwiSDRReceiver

    for block in (KiwiSDRReceiver, TimescaleDBConnection):
        block.register_type_and_schema()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blocks.configure", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("register", help="register the block types")
    env = sub.add_parser("from-env", help="save storage + database blocks from RF_* variables")
    env.add_argument("--name", default=DEFAULT_BLOCK_NAME)
    env.add_argument(
        "--env-file", help="read the RF_* settings from this file; they override the environment"
    )
    rm = sub.add_parser("remove", help="delete the storage + database blocks from-env saved")
    rm.add_argument("--name", default=DEFAULT_BLOCK_NAME)
    rx = sub.add_parser("receivers", help="save KiwiSDRReceiver blocks from a YAML/JSON file")
    rx.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "register":
        register()
        print("registered: kiwisdr-receiver, timescaledb-connection")
    elif args.command == "from-env":
        settings = settings_for_from_env(args.env_file, os.environ)
        register()
        try:
            saved = save_from_env(settings, args.name)
        except ValueError as exc:  # e.g. RF_PG_PORT=abc: the message names the variable
            print(f"from-env: {exc}", file=sys.stderr)
            return 2
        print("saved: " + (", ".join(saved) or "nothing"))
        return 0 if saved else 1
    elif args.command == "remove":
        removed = asyncio.run(remove_saved(args.name))
        print("removed: " + (", ".join(removed) or "nothing"))
    else:
        register()
        names = save_receivers(args.file)
        print(f"saved {len(names)} receiver blocks: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
