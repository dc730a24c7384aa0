"""Measurement accuracy of tasks.dsp against known truth, as a markdown table.

Run: ``python bench/accuracy_dsp.py [--trials 30]``. Synthetic captures (tone of known
amplitude and offset + circular white Gaussian noise of known density, seeded) at the true
KiwiSDR rate 12001.135 Hz, 2 s long. For each C/N0 it prints the worst power, noise-floor
and C/N0 errors, and the carrier-offset RMS error beside the Cramer-Rao bound
var >= 6 fs^2 / ((2 pi)^2 eta N (N^2 - 1)). README.md quotes this table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.dsp import measure

FS = 12001.135
AMPLITUDE = 0.1
SECONDS = 2.0


def crb_std_hz(cn0_dbhz: float, n: int) -> float:
    eta = 10 ** (cn0_dbhz / 10) / FS
    return math.sqrt(6.0 * FS**2 / ((2.0 * math.pi) ** 2 * eta * n * (n * n - 1.0)))


def row(cn0_dbhz: float, trials: int) -> str:
    rng = np.random.default_rng(int(cn0_dbhz * 10))
    n = round(SECONDS * FS)
    n0 = AMPLITUDE**2 / 10 ** (cn0_dbhz / 10)
    sigma = math.sqrt(n0 * FS / 2.0)
    true_power = 10 * math.log10(AMPLITUDE**2 + n0 * FS)
    errs_p, errs_n, errs_c, errs_f = [], [], [], []
    k = np.arange(n)
    for _ in range(trials):
        offset = rng.uniform(-3000.0, 3000.0)
        phase = rng.uniform(0, 2 * math.pi)
        x = AMPLITUDE * np.exp(1j * (2 * math.pi * offset / FS * k + phase))
        x = x + sigma * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
        m = measure(x.astype(np.complex64), FS)
        errs_p.append(abs(m.power_dbfs - true_power))
        errs_n.append(abs(m.noise_floor_dbfs_hz - 10 * math.log10(n0)))
        errs_c.append(abs(m.cn0_dbhz - cn0_dbhz))
        errs_f.append(m.frequency_offset_hz - offset)
    rms = math.sqrt(float(np.mean(np.square(errs_f))))
    crb = crb_std_hz(cn0_dbhz, n)
    return (
        f"| {cn0_dbhz:.0f} | {max(errs_p):.3f} | {max(errs_n):.3f} | {max(errs_c):.2f} | "
        f"{rms:.3g} | {crb:.3g} | {rms / crb:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    print(f"2 s captures at {FS} Hz, {args.trials} trials per row, worst |error| and CFO RMS")
    print()
    print("| C/N0 dB-Hz | power dB | noise floor dB | C/N0 dB | CFO RMS Hz | CRB Hz | RMS/CRB |")
    print("|---|---|---|---|---|---|---|")
    for cn0 in (20, 30, 40, 50, 60, 70, 80):
        print(row(cn0, args.trials), flush=True)


if __name__ == "__main__":
    main()
