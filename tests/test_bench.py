"""``make bench``'s runner (bench/run.py): one table and one set of rows of the protocol in
bench/rows.py, from bench scripts run as their own processes.

A smoke run of the cheapest bench (bench_dsp.py, tiny sizes) through the runner, plus the
services-dependent benches with no services in reach: they must show as skipped rows, not
fail the run. The timings themselves are machine-dependent and not asserted; that each
ratio is value / baseline and finite is.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

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
