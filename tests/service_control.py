"""Stop and start the test services mid-test (outage tests), via scripts/services.sh."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SERVICES = os.environ.get("CI", "").lower() in ("1", "true", "yes") or (
    os.environ.get("RF_REQUIRE_SERVICES") == "1"
)


def services(command: str) -> None:
    """``scripts/services.sh <command> $RF_SERVICES_STATE_DIR`` (s3-stop, pg-start, ...)."""
    state_dir = os.environ.get("RF_SERVICES_STATE_DIR")
    if not state_dir:
        message = f"RF_SERVICES_STATE_DIR not set: cannot run services.sh {command}"
        if REQUIRE_SERVICES:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    subprocess.run(
        ["bash", str(ROOT / "scripts/services.sh"), command, state_dir],
        check=True,
        capture_output=True,
        timeout=60,
    )


@contextlib.contextmanager
def s3_stopped() -> Iterator[None]:
    """SeaweedFS stopped for the block; always started again afterwards."""
    services("s3-stop")
    try:
        yield
    finally:
        services("s3-start")
