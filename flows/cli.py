"""The flows' shared command line: where to read and write, and running a flow once.

Every flow module has ``main()`` so ``python -m flows.<name> --help`` works; the options
that say where data lives are the same everywhere, so they are defined once here.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any


def parser(prog: str, description: str | None, *, storage: bool = True) -> argparse.ArgumentParser:
    """An argument parser with ``--database``, ``--data-dir`` and (optionally) ``--storage``."""
    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    if storage:
        p.add_argument("--storage", default="auto", help="auto | local | <block-type>/<name>")
    p.add_argument(
        "--database", default="auto", help="auto | sqlite | timescaledb-connection/<name>"
    )
    p.add_argument("--data-dir", default=None, help="folder of the local defaults (./data)")
    return p


def run_once(flow: Callable[..., Any], **parameters: Any) -> Any:
    """Run an async flow to its final state (never raises for a Failed state)."""
    return asyncio.run(flow(**parameters, return_state=True))


def run_and_print(flow: Callable[..., Any], **parameters: Any) -> int:
    """Run a flow, print its final message; exit status 0 only when it completed."""
    state = run_once(flow, **parameters)
    print(state.message)
    return 0 if state.is_completed() else 1
