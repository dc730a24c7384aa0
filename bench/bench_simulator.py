"""Capacity of the KiwiSDR simulator: N concurrent real-time receivers in one process.

Run: ``python bench/bench_simulator.py [--receivers 200] [--seconds 10]``.

The simulator runs as its own process (``python -m tasks.kiwisdr.simulator --count N``);
this process connects N real clients (the project's own ``capture_iq``) at once and
records for ``--seconds``. Reported, from /proc of the simulator process over the capture
window: CPU used in cores (target < 1.0 core for 200 receivers), and frames delivered as a
ratio of the real-time rate the receivers' sample rates call for (target >= 0.99: nothing
fell behind). Baseline in the same run: the CPU the simulator needs to make the frames
alone (``frame_iq`` in a tight loop), so the ratio shows what serving costs on top.
Always exits 0. ``--json PATH`` writes the rows ``bench/run.py`` collects (bench/rows.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rows import row, write_rows  # noqa: E402  (bench/rows.py, next to this script)

from tasks.kiwisdr.client import CaptureSettings, capture_iq  # noqa: E402
from tasks.kiwisdr.codec import SAMPLES_PER_FRAME  # noqa: E402
from tasks.kiwisdr.network import simulated_network  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def generation_cost_s(frames: int) -> float:
    """CPU seconds to make ``frames`` frames with no serving at all."""
    network, _ = simulated_network()
    name = next(iter(network.receivers))
    start = time.process_time()
    for i in range(frames):
        network.frame_iq(name, i * SAMPLES_PER_FRAME, 145.5e6, (-5000.0, 5000.0))
    return time.process_time() - start


async def capture_all(urls: dict[str, str], seconds: float) -> list[object]:
    settings = CaptureSettings(145.5e6, seconds, frame_timeout_s=10.0, open_timeout_s=30.0)
    return await asyncio.gather(
        *(capture_iq(url, settings, receiver=name) for name, url in urls.items()),
        return_exceptions=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", default=None, metavar="PATH", help="write the result rows")
    args = parser.parse_args(argv)

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tasks.kiwisdr.simulator",
            "--count",
            str(args.receivers),
            "--base-port",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        urls: dict[str, str] = {}
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "READY":
                break
            fields = line.split()  # "<name> <url>", or a hint such as a kiwirecorder line
            if len(fields) == 2 and fields[1].startswith("http"):
                urls[fields[0]] = fields[1]
        rates = {
            n: r.sample_rate
            for n, r in simulated_network(count=args.receivers)[0].receivers.items()
        }

        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        results = asyncio.run(capture_all(urls, args.seconds))
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(10)

    failures = [r for r in results if isinstance(r, BaseException)]
    frames = sum(getattr(r, "frames_received", 0) for r in results)
    expected = sum(-(-int(args.seconds * rates[n]) // SAMPLES_PER_FRAME) for n in urls)
    wall = wall1 - wall0
    cores = (cpu1 - cpu0) / wall
    baseline = generation_cost_s(2000) / 2000 * expected / wall

    print(f"receivers: {len(urls)}, capture {args.seconds:g} s, wall {wall:.1f} s")
    print(f"failed captures: {len(failures)} {failures[:1]}")
    print(
        f"frames delivered: {frames} of {expected} (ratio {frames / expected:.3f}, target >= 0.99)"
    )
    print(f"simulator CPU: {cores:.2f} cores over the window (target < 1.0 for 200 receivers)")
    print(
        f"baseline, frame generation alone: {baseline:.2f} cores; serving/generation ratio "
        f"{cores / baseline:.2f}"
    )
    ok = cores < 1.0 and frames / expected >= 0.99 and not failures
    print("PASS" if ok else "FAIL")
    if args.json:
        case = f"{len(urls)}x{args.seconds:g}s"
        write_rows(
            args.json,
            [
                row(
                    "simulator",
                    case,
                    "frames delivered (real-time factor)",
                    frames,
                    "frames",
                    "real-time frames",
                    expected,
                    target=">= 0.99",
                    ok=frames / expected >= 0.99,
                ),
                row(
                    "simulator",
                    case,
                    "captures failed",
                    len(failures),
                    "",
                    "receivers",
                    len(urls),
                    target="= 0",
                    ok=not failures,
                ),
                row(
                    "simulator",
                    case,
                    "simulator CPU",
                    cores,
                    "cores",
                    "frame generation alone",
                    baseline,
                    target="< 1 core" if args.receivers >= 200 else None,
                    ok=cores < 1.0 if args.receivers >= 200 else None,
                ),
            ],
        )


if __name__ == "__main__":
    main()
