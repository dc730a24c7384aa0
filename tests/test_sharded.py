"""Scale-out: one acquisition as shards, each a flow run of the ``acquire`` deployment
picked up by one of two separate ``serve`` processes (two "workers" on this machine)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blocks.database import sqlite_engine
from flows.sharded import acquire_sharded, split_into_shards
from tasks.records import measurements_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.flow


def test_shards_spread_over_the_network() -> None:
    names = [f"rx-{i}" for i in range(7)]
    assert split_into_shards(names, 3) == [
        ["rx-0", "rx-3", "rx-6"],
        ["rx-1", "rx-4"],
        ["rx-2", "rx-5"],
    ]
    assert split_into_shards(names[:2], 4) == [["rx-0"], ["rx-1"]]


async def _wait_for_deployment(name: str, timeout_s: float = 90.0) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            try:
                await client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)


def test_shards_run_as_flow_runs_of_two_serve_processes(
    prefect_server: None, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    code = "from flows.acquisition import acquire; acquire.serve(name='shards')"
    logs = [open(tmp_path / f"serve-{i}.log", "w") for i in range(2)]  # noqa: SIM115
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=log)
        for log in logs
    ]
    try:
        asyncio.run(_wait_for_deployment("acquire/shards"))
        state = asyncio.run(
            acquire_sharded(
                duration_s=0.5,
                shards=2,
                deployment="acquire/shards",
                network="simulated",
                storage="local",
                database="sqlite",
                data_dir=str(tmp_path),
                lead_s=15.0,
                simulated_receivers=10,
                return_state=True,
            )
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc, log in zip(procs, logs, strict=True):
            proc.wait(30)
            log.close()
    assert state.is_completed(), state.message
    assert state.message == "10/10 receivers ok in 2 shards"
    summary = state.result()
    assert len(summary["shards"]) == 2
    assert all(s["state"] == "Completed" for s in summary["shards"])
    rows = measurements_for(
        sqlite_engine(tmp_path / "rf_acquisition.db"), summary["acquisition_id"]
    )
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    # Both shards started on the common instant: first samples within one 512-sample
    # frame of each other (each capture starts at the first frame after the instant).
    starts = [r["time"] for r in rows]
    assert (max(starts) - min(starts)).total_seconds() < 512 / 12000.0
    assert len(list((tmp_path / "recordings").rglob("*.npy"))) == 10
