"""The ``rfacq`` console command: one entry point whose subcommands are the flows' CLIs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.command import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out or out.count(name) >= 1


def test_unknown_command_is_refused_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["acquier"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'acquier'" in err
    assert "acquire" in err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: rfacq" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name: str) -> None:
    """Each subcommand's module imports and its --help exits 0 (python -m flows NAME)."""
    done = subprocess.run(
        [sys.executable, "-m", "flows", name, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
