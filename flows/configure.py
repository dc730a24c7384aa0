"""``rfacq configure``: create or update the project's Prefect blocks from the command line.

    rfacq configure register            # make the UI offer the block forms
    rfacq configure from-env            # S3Bucket + MinIOCredentials + DB (bucket created)
    rfacq configure from-env --env-file .services/env
    rfacq configure remove              # delete what from-env saved
    rfacq configure receivers FILE      # KiwiSDRReceiver blocks from YAML/JSON

(also ``python -m flows.configure ...``). The saving itself is :mod:`blocks.configure`;
this command adds what configuration may not do on its own: creating the bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from blocks import configure as blocks_configure
from blocks.settings import InvalidSetting


def main(argv: list[str] | None = None) -> int:
    prog = os.environ.get("RF_COMMAND_NAME", "python -m flows.configure")
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("register", help="register the block types")
    env = sub.add_parser("from-env", help="save storage + database blocks from RF_* variables")
    env.add_argument("--name", default=blocks_configure.DEFAULT_BLOCK_NAME)
    env.add_argument(
        "--env-file", help="read the RF_* settings from this file; they override the environment"
    )
    rm = sub.add_parser("remove", help="delete the storage + database blocks from-env saved")
    rm.add_argument("--name", default=blocks_configure.DEFAULT_BLOCK_NAME)
    rx = sub.add_parser("receivers", help="save KiwiSDRReceiver blocks from a YAML/JSON file")
    rx.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "register":
        blocks_configure.register()
        print("registered: kiwisdr-receiver, timescaledb-connection")
    elif args.command == "from-env":
        try:  # both groups read before either is saved: a bad value saves nothing
            s3, pg = blocks_configure.load_settings(args.env_file)
        except InvalidSetting as exc:  # e.g. RF_PG_PORT=abc: the message names the variable
            print(f"from-env: {exc}", file=sys.stderr)
            return 2
        from tasks.bucket import ensure_bucket

        blocks_configure.register()
        try:
            saved = blocks_configure.save_from_env(s3, pg, args.name, ensure_bucket=ensure_bucket)
        except blocks_configure.EndpointProblem as exc:
            print(f"from-env: {exc}; nothing saved", file=sys.stderr)
            return 1
        print("saved: " + (", ".join(saved) or "nothing"))
        return 0 if saved else 1
    elif args.command == "remove":
        removed = asyncio.run(blocks_configure.remove_saved(args.name))
        print("removed: " + (", ".join(removed) or "nothing"))
    else:
        blocks_configure.register()
        names = blocks_configure.save_receivers(args.file)
        print(f"saved {len(names)} receiver blocks: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
