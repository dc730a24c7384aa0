"""prefect.yaml stays loadable: every entrypoint imports and its parameters validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect_server import PREFECT, prefect_server

from tasks.plan import validate_request

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())


@pytest.mark.parametrize("deployment", CONFIG["deployments"], ids=lambda d: d["name"])
def test_deployment_entrypoint_and_parameters(deployment: dict, monkeypatch) -> None:  # type: ignore[type-arg]
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    params = deployment.get("parameters", {})
    validated = flow.validate_parameters(params)
    if flow.name == "acquire":
        validate_request(validated["frequency_hz"], validated["duration_s"])
    for schedule in deployment.get("schedules", []):
        fields = schedule["cron"].split()
        assert len(fields) == 5, schedule
        assert schedule["timezone"] == "UTC"
    assert deployment["work_pool"]["name"] == "rf-acquisition"


def test_bad_parameter_is_rejected_by_the_flow_signature() -> None:
    flow = load_flow_from_entrypoint(f"{ROOT}/flows/acquisition.py:acquire")
    with pytest.raises(Exception, match="network"):
        flow.validate_parameters({"network": "carrier-pigeon"})


@pytest.mark.flow
def test_deploy_all_and_run_on_a_process_worker(tmp_path: Path) -> None:
    """The UI path for real: a Prefect server, `deploy --all`, a run, a process worker."""
    import subprocess

    import httpx
    from sqlalchemy import text

    from blocks.database import sqlite_engine
    from tasks.records import measurements_for

    with prefect_server(tmp_path / "prefect-home") as env:

        def cli(*args: str, timeout: float = 180) -> str:
            done = subprocess.run(
                [PREFECT, *args],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
            return done.stdout

        cli("work-pool", "create", "rf-acquisition", "--type", "process")
        # Same deployments with every schedule paused, so the run-once worker can only
        # pick up the run this test starts.
        quiet = yaml.safe_load((ROOT / "prefect.yaml").read_text())
        for d in quiet["deployments"]:
            for schedule in d.get("schedules", []):
                schedule["active"] = False
        prefect_file = tmp_path / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(quiet))
        out = cli("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
        for deployment in CONFIG["deployments"]:
            assert deployment["name"] in out
        data_dir = tmp_path / "data"
        cli(
            "deployment", "run", "acquire/on-demand",
            "--param", "duration_s=0.5",
            "--param", "network=simulated",
            "--param", "storage=local",
            "--param", "database=sqlite",
            "--param", f"data_dir={data_dir}",
        )  # fmt: skip
        cli("worker", "start", "--pool", "rf-acquisition", "--run-once", timeout=240)
        runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={}, timeout=10)
        states = [r["state"]["type"] for r in runs.json()]
        assert states == ["COMPLETED"], states
    engine = sqlite_engine(data_dir / "rf_acquisition.db")
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT id FROM acquisitions")).scalars().all()
    assert len(ids) == 1
    rows = measurements_for(engine, ids[0])
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows)
    assert len(list((data_dir / "recordings").rglob("*.npy"))) == 7
