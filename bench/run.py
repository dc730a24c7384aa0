"""``make bench``: every speed and memory bench in one run, printed as one table of ratios.

Each bench script runs as its own process (so each peak RSS is that process's own) with
``--json PATH`` and writes rows of bench/rows.py: a figure, the baseline it is set against
(measured in the same run: a no-op flow of the same width, a memcpy / ``np.save`` of the
same sample bytes, raw psycopg ``COPY``, raw boto3 ``put_object``, the simulator's bare
frame generation), their ratio, the target and whether it is met. This runner collects the
rows and prints them as one table; the scripts' own output goes to a log folder.

    python bench/run.py                 # the full set, a few minutes on 2 cores
    python bench/run.py --quick         # a smoke check: tiny cases, about a minute
    python bench/run.py --only dsp flow --flow-args "--cases 7:2 --repeat 1"

The records and storage benches need TimescaleDB and S3 (``make services-up`` writes
``.services/env``, read here when the RF_PG_* / RF_S3_* variables are not set); without
them their rows say "skipped: no services". The accuracy benches (accuracy_dsp.py,
accuracy_locate.py) take much longer and run on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

from rows import format_table, read_rows, row, skipped  # noqa: E402


@dataclass(frozen=True)
class Bench:
    """One run of one bench script: its arguments in the full and the quick set."""

    name: str
    script: str
    full: list[str]
    quick: list[str] | None  # None: not run in --quick
    services: tuple[str, ...] = ()  # "pg" and/or "s3"
    tag: str = ""  # tells apart two runs of one script (the flow's long case)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}{':' + self.tag if self.tag else ''}"


FLOW_ENV = {"PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL", "PREFECT_LOGGING_LEVEL": "WARNING"}

BENCHES: list[Bench] = [
    Bench("dsp", "bench_dsp.py", [], ["--seconds", "2", "--repeats", "3"]),
    Bench(
        "flow",
        "bench_flow.py",
        ["--cases", "7:2", "200:2", "--repeat", "3"],
        ["--cases", "7:2", "--repeat", "1"],
        extra_env=FLOW_ENV,
    ),
    # 200 x 60 s's peak RSS against 200 x 2 s's, both from single runs (a peak over three
    # repeats is higher than one run's, which would flatter the ratio)
    Bench(
        "flow", "bench_flow.py", ["--cases", "200:2", "200:60", "--repeat", "1"], None, tag="long"
    ),
    Bench("simulator", "bench_simulator.py", [], ["--receivers", "7", "--seconds", "2"]),
    Bench("records", "bench_records.py", [], ["--rows", "1000", "--rounds", "2"], ("pg",)),
    Bench("storage", "bench_storage.py", [], ["--rounds", "3"], ("s3",)),
]


def service_env(env_file: Path) -> dict[str, str]:
    """The process environment, completed from ``.services/env`` when that exists (the
    variables already set win, as ``set -a; . .services/env`` would not)."""
    env = dict(os.environ)
    if env_file.is_file():
        from dotenv import dotenv_values  # pydantic-settings' dependency

        for key, value in dotenv_values(env_file).items():
            if value is not None:
                env.setdefault(key, value)
    return env


def services_missing(bench: Bench, env: dict[str, str]) -> list[str]:
    from blocks.settings import PostgresSettings, S3Settings

    wanted = {"pg": PostgresSettings, "s3": S3Settings}
    return [
        var
        for service in bench.services
        for var in wanted[service].required_variables()
        if not env.get(var)
    ]


def run_bench(
    bench: Bench, args: list[str], env: dict[str, str], logs: Path
) -> tuple[list[dict[str, Any]], str]:
    """Run one bench script in its own process; its rows and a one-line account."""
    out = logs / f"{bench.label.replace(':', '-')}.json"
    log = logs / f"{bench.label.replace(':', '-')}.log"
    out.unlink(missing_ok=True)  # a reused --logs dir must not lend this run old rows
    cmd = [sys.executable, str(HERE / bench.script), *args, "--json", str(out)]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env={**env, **bench.extra_env}
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    account = f"{bench.label}: {wall:.1f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB, log {log}"
    rows = read_rows(out) if out.is_file() else []
    if proc.returncode != 0:  # rows written before a crash do not make it a pass
        rows.append(skipped(bench.name, f"failed (exit {proc.returncode}), see {log}"))
    return rows, account


def cross_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that set one case against another of the same run: 200 x 60 s's peak RSS over
    200 x 2 s's (the issue's target: at most 1.5 x)."""
    peak = {
        r["case"]: r["value"] for r in rows if r["bench"] == "flow" and r["metric"] == "peak RSS"
    }
    if peak.get("200x60s") is None or peak.get("200x2s") is None:
        return []
    ratio = peak["200x60s"] / peak["200x2s"]
    return [
        row(
            "flow", "200x60s / 200x2s", "peak RSS", peak["200x60s"], "MB", "200x2s peak RSS",
            peak["200x2s"], target="<= 1.5", ok=ratio <= 1.5,
        )
    ]  # fmt: skip


def selected(only: list[str] | None, quick: bool, flow_args: list[str] | None) -> list[Bench]:
    """The benches of this run; ``flow_args`` replaces both flow runs by one."""
    chosen = []
    for bench in BENCHES:
        if only and bench.name not in only:
            continue
        if flow_args is not None and bench.name == "flow":
            if bench.tag:
                continue
            bench = Bench(bench.name, bench.script, flow_args, flow_args, extra_env=FLOW_ENV)
        if quick and bench.quick is None:
            continue
        chosen.append(bench)
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny cases: a smoke check")
    p.add_argument(
        "--only", nargs="+", default=None, choices=sorted({b.name for b in BENCHES}),
        help="run only these benches",
    )  # fmt: skip
    p.add_argument(
        "--flow-args", default=None, help='bench_flow.py\'s arguments, e.g. "--cases 7:2"'
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write every row here")
    p.add_argument("--logs", default=None, metavar="DIR", help="the scripts' output (a temp dir)")
    p.add_argument("--env-file", default=str(ROOT / ".services" / "env"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    flow_args = shlex.split(args.flow_args) if args.flow_args else None
    benches = selected(args.only, args.quick, flow_args)
    logs = Path(args.logs or tempfile.mkdtemp(prefix="rf-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    env = service_env(Path(args.env_file))
    env["PYTHONUNBUFFERED"] = "1"
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for bench in benches:
        missing = services_missing(bench, env)
        if missing:
            rows.append(skipped(bench.name, "skipped: no services (make services-up)"))
            print(f"{bench.label}: skipped, {', '.join(missing)} not set", file=sys.stderr)
            continue
        print(f"{bench.label}: running ...", file=sys.stderr, flush=True)
        got, account = run_bench(bench, bench.quick if args.quick else bench.full, env, logs)
        if bench.tag:  # its cases told apart from the main run's, and their own ratio row
            cross = cross_rows(got)
            got = [{**r, "case": f"{r['case']} (one run)"} for r in got] + cross
        rows += got
        print(account, file=sys.stderr, flush=True)
    mode = "quick" if args.quick else "full"
    took = time.perf_counter() - t0
    print(f"\nrf-acquisition benches ({mode}, {took:.0f} s); ratio = value / baseline")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    failed = [r for r in rows if r["note"] and r["note"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
