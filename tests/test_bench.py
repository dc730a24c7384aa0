"""``make bench``'s runner (bench/run.py): one table and one set of rows of the protocol in
bench/rows.py, from bench scripts run as their own processes.

A smoke run of the cheapest bench (bench_dsp.py, tiny sizes) through the runner, plus the
services-dependent benches with no services in reach: they must show as skipped rows, not
fail the run. The timings themselves are machine-dependent and not asserted; that each
ratio is value / baseline and finite is.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {
    "bench",
    "case",
    "metric",
    "value",
    "unit",
    "baseline_name",
    "baseline_value",
    "ratio",
    "target",
    "ok",
    "note",
}
HEADER = ["bench", "case", "metric", "value", "unit", "baseline", "base", "value", "ratio"]


def test_quick_run_prints_one_table_of_finite_ratios(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RF_PG_", "RF_S3_"))}
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out)]
    cmd += ["--only", "dsp", "records", "storage", "--logs", str(tmp_path / "logs")]
    cmd += ["--env-file", str(tmp_path / "no-services-env")]
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr

    rows = json.loads(out.read_text())
    assert all(set(r) == FIELDS for r in rows), rows[0]
    measured = [r for r in rows if r["bench"] == "dsp"]
    # three signals' measure time against an FFT, the process step against np.save and memcpy
    assert len(measured) == 5
    assert {r["baseline_name"] for r in measured} == {"scipy.fft.fft(N)", "np.save", "memcpy"}
    for r in measured:
        assert r["value"] > 0 and r["baseline_value"] > 0, r
        assert math.isfinite(r["ratio"])
        assert math.isclose(r["ratio"], r["value"] / r["baseline_value"], rel_tol=1e-9)
    skipped = {r["bench"]: r for r in rows if r["bench"] in ("records", "storage")}
    assert set(skipped) == {"records", "storage"}
    for r in skipped.values():
        assert r["note"].startswith("skipped: no services") and r["ratio"] is None

    lines = done.stdout.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("bench "))
    assert lines[top].split()[: len(HEADER)] == HEADER
    assert lines[top].split()[-2:] == ["target", "ok"]
    table = lines[top + 2 :]
    assert len(table) == len(rows)  # one line per row, nothing else
    assert [line.split()[0] for line in table] == [r["bench"] for r in rows]
    assert sum("skipped: no services" in line for line in table) == 2
    assert (tmp_path / "logs" / "dsp.log").read_text().startswith("$ ")


def _bench_module(name: str) -> ModuleType:
    """A bench script loaded as a module (they are files, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_flow_rows_set_each_case_against_its_baselines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench_flow.py's figures (as its child processes report them) become rows with the
    issue's targets; run.py adds 200 x 60 s's peak RSS over 200 x 2 s's."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # where the scripts find rows.py
    flow, run = _bench_module("bench_flow"), _bench_module("run")
    case = {"task_runs": 17, "wall_median_s": 0.0, "rss_before_mb": 300.0}
    results = [
        {**case, "receivers": 7, "duration_s": 2.0, "noop_s": 0.5, "wall_s": 3.2, "ok": 7,
         "spread_ms": 0.05, "rss_peak_mb": 390.0},
        {**case, "receivers": 200, "duration_s": 2.0, "noop_s": 1.0, "wall_s": 20.0, "ok": 199,
         "spread_ms": None, "rss_peak_mb": 500.0},
        {**case, "receivers": 200, "duration_s": 60.0, "noop_s": 1.0, "wall_s": 70.0, "ok": 200,
         "spread_ms": 0.2, "rss_peak_mb": 800.0},
    ]  # fmt: skip
    flow.write_json_rows(str(tmp_path / "flow.json"), results)
    rows = json.loads((tmp_path / "flow.json").read_text())
    rows += run.cross_rows(rows)
    got = {(r["case"], r["metric"], r["baseline_name"]): r for r in rows}
    assert all(set(r) == FIELDS for r in rows)

    small = got[("7x2s", "wall-D", "no-op flow, same width")]
    assert math.isclose(small["value"], 1.2) and math.isclose(small["ratio"], 2.4)
    assert small["ok"] is True and small["target"] == "<= 1.5 s"
    wall = got[("200x2s", "wall", "D + 15 s")]
    assert math.isclose(wall["ratio"], 20.0 / 17.0) and wall["ok"] is False
    assert got[("200x2s", "receivers ok (worst run)", "receivers")]["ok"] is False
    unknown = got[("200x2s", "first-sample spread", "one sample period")]
    assert unknown["value"] is None and unknown["ok"] is None
    aligned = got[("7x2s", "first-sample spread", "one sample period")]
    assert math.isclose(aligned["ratio"], 0.05 / (1e3 / 12_000)) and aligned["ok"] is True
    growth = got[("200x60s", "RSS growth", "raw complex64 samples")]
    assert math.isclose(growth["baseline_value"], 200 * 60 * 12_000 * 8 / 2**20)
    long = got[("200x60s / 200x2s", "peak RSS", "200x2s peak RSS")]
    assert math.isclose(long["ratio"], 1.6) and long["ok"] is False
