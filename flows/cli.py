"""The flows' shared command line: where to read and write, running a flow once, ``--json``.

Every flow module has ``main()`` so ``python -m flows.<name> --help`` works; the options
that say where data lives, and ``--json``, are the same everywhere, so they are defined
once here.

``--json`` makes stdout carry exactly one JSON object (the flow's summary) and nothing
else, so scripts can pipe it to ``jq``. Prefect's console log handler already writes to
stderr (``stream: ext://sys.stderr`` in prefect/logging/logging.yml); what could still
reach stdout is a ``print`` in a flow, a library, or a subprocess such as the temporary
Prefect server that inherits file descriptor 1. In JSON mode the run therefore happens
with file descriptor 1 pointed at stderr, and only the summary is written to the real
stdout afterwards.

Without ``PREFECT_API_URL`` a flow run starts Prefect's temporary embedded server; every
run through here then gets :func:`flows.command.quiet_embedded_server`'s defaults (no
telemetry heartbeat racing the migrations of a new PREFECT_HOME, server logs only at
CRITICAL), the same as ``rfacq``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json as jsonlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any


def parser(prog: str, description: str | None, *, storage: bool = True) -> argparse.ArgumentParser:
    """An argument parser with ``--database``, ``--data-dir``, ``--json`` and (optionally)
    ``--storage``.

    ``--json`` lands in ``args.json``; :func:`run_once` and :func:`run_and_print` take it
    as a keyword, so ``cli.run_and_print(flow, **vars(args))`` keeps working.
    """
    name = os.environ.get("RF_COMMAND_NAME") or f"python -m {prog}"  # `rfacq <command>`
    p = argparse.ArgumentParser(prog=name, description=description)
    if storage:
        p.add_argument("--storage", default="auto", help="auto | local | <block-type>/<name>")
    p.add_argument(
        "--database", default="auto", help="auto | sqlite | timescaledb-connection/<name>"
    )
    p.add_argument("--data-dir", default=None, help="folder of the local defaults (./data)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object on stdout; logs go to stderr",
    )
    return p


def add_station_options(p: argparse.ArgumentParser) -> None:
    """Where kiwirecorder files' stations are: ``--gnss-pos DIR`` and ``--position``
    (the same options for ``ingest`` and ``locate``)."""
    p.add_argument("--gnss-pos", default=None, metavar="DIR", help="folder of <station>.txt")
    p.add_argument(
        "--position",
        action="append",
        dest="positions",
        default=None,
        metavar="NAME=LAT,LON",
        help="a station's position (repeatable; wins over --gnss-pos)",
    )


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (Python or file descriptor 1) to stderr.

    Subprocesses started inside (the temporary Prefect server) inherit the redirected
    descriptor and keep it, which is what we want: they must never write on our stdout.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def quiet_unless_api() -> None:
    """Apply the embedded server's quiet defaults when no API server is configured (a
    configured server is the user's, and its settings are theirs)."""
    from prefect.settings import get_current_settings

    from flows.command import quiet_embedded_server

    # The URL may come from the environment or from the active Prefect profile.
    if not (os.environ.get("PREFECT_API_URL") or get_current_settings().api.url):
        quiet_embedded_server()


def run_once(flow: Callable[..., Any], *, json: bool = False, **parameters: Any) -> Any:
    """Run an async flow to its final state (never raises for a Failed state).

    With ``json=True`` nothing reaches stdout during the run (see the module docstring).
    """
    quiet_unless_api()
    if not json:
        return asyncio.run(flow(**parameters, return_state=True))
    with stdout_to_stderr():
        return asyncio.run(flow(**parameters, return_state=True))


def summary_of(state: Any) -> dict[str, Any]:
    """A final state as one JSON-ready dict: the flow's result (when it is a dict) plus
    ``state`` (COMPLETED, FAILED, ...) and ``message``."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, dict):
        summary = dict(result)
    elif isinstance(result, BaseException):
        summary = {"error": f"{type(result).__name__}: {result}"}
    else:
        summary = {"result": result}
    summary.setdefault("message", state.message)
    summary["state"] = state.type.value
    return summary


def print_json(summary: dict[str, Any]) -> None:
    """Write one JSON object (and a newline) on stdout; datetimes and the like as text."""
    sys.stdout.write(jsonlib.dumps(summary, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def json_safe(value: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def finish(state: Any, *, json: bool, text: Callable[[Any], str] | None = None) -> int:
    """Report a final state: one JSON object (``json``) or ``text(state)`` (default: its
    message) on stdout. Exit status 0 only when the flow completed."""
    if json:
        print_json(json_safe(summary_of(state)))
    else:
        print(text(state) if text else state.message)
    return 0 if state.is_completed() else 1


def run_and_print(flow: Callable[..., Any], *, json: bool = False, **parameters: Any) -> int:
    """Run a flow, print its final message (or its summary as JSON); exit status 0 only
    when it completed."""
    return finish(run_once(flow, json=json, **parameters), json=json)


def result_of(state: Any, *, json: bool, what: str) -> dict[str, Any] | None:
    """A flow's dict result, printed as one JSON object when ``json``; None when the run
    produced none (the error is printed: JSON on stdout, text on stderr)."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, dict):
        if json:
            print_json(json_safe(result))
        return result
    error = {"message": f"{what} failed: {state.message or result}", "ok": False}
    if json:
        print_json(error)
    else:
        print(error["message"], file=sys.stderr)
    return None
