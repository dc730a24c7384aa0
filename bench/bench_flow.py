"""The acquisition flow as a user runs it, against baselines measured in the same run.

Each case runs in its own process (so peak RSS is the case's own): a warm-up flow run,
then a no-op flow of the same width (as many task runs as the acquisition uses, doing
nothing: Prefect's own floor on this machine), then the acquisition on the simulated
network with local storage and SQLite. One table of ratios:

- ``wall s`` / ``median``: the fastest and the median of ``--repeat`` runs;
  ``wall-D``: the fastest minus the capture duration (the overhead); ``/no-op``: that
  overhead over the no-op flow's (fastest) wall time.
- ``spread ms``: latest minus earliest first sample of the ok receivers (worst run).
- ``RSS/raw``: the case's peak RSS growth during the acquisition over the raw complex64
  samples captured (``+MB`` / ``raw MB``). ``peak MB`` is the flow process's own peak;
  ``sim MB`` the simulator's, when it runs in a child process (``--simulator``; the
  flow's default above 16 receivers).

    python bench/bench_flow.py                      # 7 warm, 50 x 2 s, 200 x 2 s
    python bench/bench_flow.py --cases 7:2 50:2     # receivers:duration pairs
    python bench/bench_flow.py --cases 200:2 200:60 --repeat 2   # peak MB ratio <= 1.5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 12_000.0
BYTES_PER_SAMPLE = 8  # complex64


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class SimulatorWatch:
    """The simulator child's peak RSS (VmHWM), read from /proc while it runs: the
    flow's children also include Prefect's temporary server, so RUSAGE_CHILDREN would
    not say whose peak it is."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)

    def __enter__(self) -> SimulatorWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, interval_s: float) -> None:
        me = str(os.getpid())
        while not self._stop.wait(interval_s):
            for pid in _children_of(me):
                try:
                    if b"--serve-stdin" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        continue
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024.0)


def _children_of(pid: str) -> list[str]:
    out: list[str] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += task.read_text().split()
    return out


def run_case(
    receivers: int, duration_s: float, repeat: int = 1, simulator: str = "auto"
) -> dict[str, Any]:
    """Run inside the child: warm-up, no-op of the same width, then the acquisition."""
    sys.path.insert(0, str(ROOT))
    from prefect import flow, task
    from prefect.futures import wait
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.acquisition import acquire
    from tasks.pipeline import MAX_RECEIVER_TASKS, group_receivers

    names = dict.fromkeys(map(str, range(receivers)))
    width = len(group_receivers(names, MAX_RECEIVER_TASKS))  # type: ignore[arg-type]

    @task
    async def nothing(i: int) -> int:
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=MAX_RECEIVER_TASKS + 2))
    async def noop(n: int) -> None:
        futures = [nothing.submit(i) for i in range(n)]
        await asyncio.to_thread(wait, futures)
        done = nothing.submit(-1)  # the record step
        await asyncio.to_thread(wait, [done])

    with tempfile.TemporaryDirectory() as data:
        common = {
            "network": "simulated",
            "storage": "local",
            "database": "sqlite",
            "simulator": simulator,
        }
        # Warm-up, as a user's second run: the temporary server, imports, the database
        # schema, the simulator's first frames.
        asyncio.run(acquire(duration_s=0.2, data_dir=data, return_state=True, **common))
        asyncio.run(noop(1))
        noops, walls, spreads, oks = [], [], [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            asyncio.run(noop(width))
            noops.append(time.perf_counter() - t0)
        rss_before = _rss_mb()
        with SimulatorWatch() as watch:
            for _ in range(repeat):
                t0 = time.perf_counter()
                state = asyncio.run(
                    acquire(
                        duration_s=duration_s,
                        data_dir=data,
                        simulated_receivers=receivers,
                        return_state=True,
                        **common,
                    )
                )
                walls.append(time.perf_counter() - t0)
                result = state.result(raise_on_failure=False)
                spreads.append(result.get("start_spread_ms") if isinstance(result, dict) else None)
                oks.append(result["ok"] if isinstance(result, dict) else 0)
    known = [x for x in spreads if x is not None]
    return {
        "receivers": receivers,
        "duration_s": duration_s,
        "task_runs": width + 1,
        "noop_s": min(noops),
        "wall_s": min(walls),
        "wall_median_s": statistics.median(walls),
        "ok": min(oks),  # the worst run: captures lost in any run show here
        "spread_ms": max(known) if known else None,
        "rss_before_mb": rss_before,
        "rss_peak_mb": _rss_mb(),
        "simulator": simulator,
        "sim_peak_mb": watch.peak_mb or None,  # None: served in the flow's own process
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="*", default=["7:2", "50:2", "200:2"])
    p.add_argument("--repeat", type=int, default=3, help="runs per case (min and median)")
    p.add_argument(
        "--simulator",
        choices=["auto", "inline", "process"],
        default="auto",
        help="where the simulated network runs (the flow's simulator parameter)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, metavar="PATH", help="write rows (bench/rows.py)")
    args = p.parse_args(argv)
    if args.child:
        n, d = args.child.split(":")
        print(json.dumps(run_case(int(n), float(d), args.repeat, args.simulator)))
        return 0
    env = {
        **os.environ,
        "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    results = []
    where = ["--simulator", args.simulator]
    for case in args.cases:
        out = subprocess.run(
            [sys.executable, __file__, "--child", case, "--repeat", str(args.repeat), *where],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=False,
        )
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    header = (
        f"{'case':>9} {'tasks':>5} {'ok':>4} {'wall s':>7} {'median':>7} {'wall-D':>7} "
        f"{'no-op s':>7} {'/no-op':>6} {'spread ms':>9} {'peak MB':>7} {'+MB':>6} "
        f"{'raw MB':>6} {'RSS/raw':>7} {'sim MB':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        over = r["wall_s"] - r["duration_s"]
        raw_mb = r["receivers"] * r["duration_s"] * SAMPLE_RATE * BYTES_PER_SAMPLE / 2**20
        grew = r["rss_peak_mb"] - r["rss_before_mb"]
        spread = "-" if r["spread_ms"] is None else f"{r['spread_ms']:.3f}"
        sim = "-" if not r.get("sim_peak_mb") else f"{r['sim_peak_mb']:.0f}"
        print(
            f"{r['receivers']:>4}x{r['duration_s']:<4g} {r['task_runs']:>5} {r['ok']:>4} "
            f"{r['wall_s']:>7.2f} {r['wall_median_s']:>7.2f} {over:>7.2f} "
            f"{r['noop_s']:>7.2f} {over / r['noop_s']:>6.2f} "
            f"{spread:>9} {r['rss_peak_mb']:>7.0f} {grew:>6.0f} {raw_mb:>6.1f} "
            f"{grew / raw_mb:>7.1f} {sim:>6}"
        )
    if args.json:
        write_json_rows(args.json, results)
    return 0


def write_json_rows(path: str, results: list[dict[str, Any]]) -> None:
    """The cases' figures as bench/rows.py rows, each against its baseline of the same run
    (kept apart from the table above so that the two can change independently)."""
    from rows import row, write_rows  # bench/rows.py, next to this script

    sample_ms = 1e3 / SAMPLE_RATE
    out = []
    for r in results:
        n, d = r["receivers"], r["duration_s"]
        case = f"{n}x{d:g}s"
        over = r["wall_s"] - d
        raw_mb = n * d * SAMPLE_RATE * BYTES_PER_SAMPLE / 2**20
        small = n <= 7  # the targets: 7 warm wall-D <= 1.5 s; 200 x 2 s the rest
        big = n >= 200
        out.append(
            row(
                "flow",
                case,
                "wall-D",
                over,
                "s",
                "no-op flow, same width",
                r["noop_s"],
                target="<= 1.5 s" if small else None,
                ok=over <= 1.5 if small else None,
            )
        )
        if not small:
            ratio = r["wall_s"] / (d + 15.0)
            out.append(
                row(
                    "flow",
                    case,
                    "wall",
                    r["wall_s"],
                    "s",
                    "D + 15 s",
                    d + 15.0,
                    target="<= 1" if big else None,
                    ok=ratio <= 1.0 if big else None,
                )
            )
        spread = r.get("spread_ms")
        out.append(
            row(
                "flow",
                case,
                "first-sample spread",
                spread,
                "ms",
                "one sample period",
                sample_ms,
                target="<= 1",
                ok=None if spread is None else spread <= sample_ms,
            )
        )
        out.append(
            row(
                "flow",
                case,
                "receivers ok (worst run)",
                r["ok"],
                "",
                "receivers",
                n,
                target="= 1",
                ok=r["ok"] == n,
            )
        )
        out.append(
            row(
                "flow",
                case,
                "peak RSS",
                r["rss_peak_mb"],
                "MB",
                "RSS after warm-up",
                r["rss_before_mb"],
                target="<= 1024 MB" if big and d <= 2 else None,
                ok=r["rss_peak_mb"] <= 1024 if big and d <= 2 else None,
            )
        )
        out.append(
            row(
                "flow",
                case,
                "RSS growth",
                r["rss_peak_mb"] - r["rss_before_mb"],
                "MB",
                "raw complex64 samples",
                raw_mb,
            )
        )
    write_rows(path, out)


if __name__ == "__main__":
    sys.exit(main())
