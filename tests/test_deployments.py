"""prefect.yaml stays loadable: every entrypoint imports and its parameters validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from tasks.plan import validate_request

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())


@pytest.mark.parametrize("deployment", CONFIG["deployments"], ids=lambda d: d["name"])
def test_deployment_entrypoint_and_parameters(deployment: dict, monkeypatch) -> None:  # type: ignore[type-arg]
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    params = deployment.get("parameters", {})
    validated = flow.validate_parameters(params)
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
