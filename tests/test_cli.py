"""The flows' shared command line: the same option names everywhere, and ``--help`` of
every flow module works (``python -m flows.<x>`` and ``rfacq <x>`` alike)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# module -> the shared options it must take (discover saves blocks: no storage/database)
SHARED = {
    "flows.acquisition": ["--json", "--storage", "--database", "--data-dir", "--frequency-hz",
                          "--duration-s", "--receivers", "--tag", "--require-gps"],
    "flows.health": ["--json", "--storage", "--database", "--data-dir"],
    "flows.reconcile": ["--json", "--storage", "--database", "--data-dir"],
    "flows.maintenance": ["--json", "--database", "--data-dir"],
    "flows.ingest": ["--json", "--storage", "--database", "--data-dir"],
    "flows.discover": ["--json", "--frequency-hz", "--tag", "--require-gps"],
    "flows.query latest": ["--json", "--database", "--data-dir", "--receivers"],
}  # fmt: skip


def help_text(module: str, env: dict[str, str] | None = None) -> str:
    name, *sub = module.split()
    done = subprocess.run(
        [sys.executable, "-m", name, *sub, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("module", sorted(SHARED))
def test_every_flow_takes_the_shared_option_names(module: str) -> None:
    text = help_text(module)
    missing = [o for o in SHARED[module] if f"{o} " not in text and f"{o}\n" not in text]
    assert not missing, f"{module} lacks {missing}"


def test_help_names_the_rfacq_subcommand() -> None:
    env = {**os.environ, "RF_COMMAND_NAME": "rfacq acquire"}
    assert help_text("flows.acquisition", env).startswith("usage: rfacq acquire")


def test_run_once_quiets_the_embedded_server_only_without_an_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import cli

    for key in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_SERVER_LOGGING_LEVEL", "DEBUG")  # the user's own wins
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no API: embedded
        cli.quiet_unless_api()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["PREFECT_SERVER_LOGGING_LEVEL"] == "DEBUG"
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        cli.quiet_unless_api()  # e.g. from the active profile: the user's server
    assert "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ
