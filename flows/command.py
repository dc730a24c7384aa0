"""``rfacq``: one console command for every flow and tool of rf-acquisition.

Each subcommand is the ``main()`` of a module that also runs as ``python -m <module>``, so
both spellings take the same options (``--json``, ``--storage``, ``--database``,
``--data-dir``...). Modules are imported only for the subcommand that runs: ``rfacq --help``
stays fast and a broken optional module cannot break the others.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

#: subcommand -> (module whose main(argv) runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "acquire": ("flows.acquisition", "capture IQ from every receiver at one instant"),
    "locate": ("flows.locate", "position a transmitter from an acquisition or kiwi-wav files"),
    "ingest": ("flows.ingest", "import kiwirecorder --kiwi-wav files as recordings and rows"),
    "discover": ("flows.discover", "choose receivers from the public KiwiSDR directory"),
    "health": ("flows.health", "check storage, database and receivers"),
    "reconcile": ("flows.reconcile", "record rows for stored or spooled recordings"),
    "retention": ("flows.maintenance", "drop measurements older than N days"),
    "query": ("flows.query", "read measurements back: latest, series, availability"),
    "simulate": ("tasks.kiwisdr.simulator", "serve simulated KiwiSDR receivers on loopback"),
    "configure": ("flows.configure", "save storage, database and receiver blocks"),
    "migrate": ("tasks.migrations.__main__", "upgrade or inspect the database schema"),
}


def quiet_embedded_server() -> None:
    """Keep Prefect's embedded server from phoning home or logging its shutdown races.

    Only defaults: a user's own PREFECT_* settings win. The telemetry heartbeat of a
    brand-new embedded server races its own migrations ("database is locked") and prints a
    traceback at ERROR on a first run; it also tries to reach the internet.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rfacq COMMAND [options]   (rfacq COMMAND --help for its options)", ""]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``rfacq COMMAND ARGS...`` to that command's ``main(ARGS)``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"rfacq: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    quiet_embedded_server()
    module = importlib.import_module(COMMANDS[name][0])
    os.environ["RF_COMMAND_NAME"] = f"rfacq {name}"  # for the subcommand's --help
    status = module.main(rest)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
