"""Benchmark tasks.dsp.measure on a 10 s capture, against a plain FFT of the same samples.

Run: ``python bench/bench_dsp.py``. One core: BLAS/OpenMP threads are pinned to 1 before
numpy loads, and scipy.fft runs single-threaded by default. The cost is printed as
"FFT passes": t_measure / t_fft, how many plain FFTs of the whole capture one measurement
costs (the old target was <= 5, i.e. a ratio t_fft / t_measure >= 0.2); the script always
exits 0.

Three signals, because the work depends on what is found: a carrier (Welch PSD, detection,
one full-length FFT + ML refinement for its offset), a BPSK (plus the FFTs of x^2 and, for
QPSK, x^4) and noise only (Welch and detection only). Each is timed against an FFT over
exactly its own number of samples: 10 s at the nominal 12 kS/s is 120000 samples (a fast
FFT length, 2^6 3 5^4); at a true rate of 12001.135 Hz it is 120011 samples, a prime, whose
FFT (Bluestein) is several times slower, so that ratio is info only. measure and the FFT
are timed alternately, so both see the same machine load.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402

from tasks.dsp import measure  # noqa: E402

TARGET_RATIO = 0.2
SECONDS = 10.0
REPEATS = 15
NOMINAL_RATE = 12000.0  # 120000 samples in 10 s
TRUE_RATE = 12001.135  # 120011 samples in 10 s (prime)


def synthetic(sample_rate: float, seconds: float, kind: str = "carrier") -> np.ndarray:
    rng = np.random.default_rng(0)
    n = round(sample_rate * seconds)
    t = np.arange(n)
    noise = 0.003 * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
    if kind == "noise":
        return noise.astype(np.complex64)
    if kind == "bpsk":  # 2 kS/s rectangular-pulse BPSK: a suppressed carrier at 1234.5 Hz
        symbols = rng.choice([-1.0, 1.0], n // 6 + 1).repeat(6)[:n]
        return (0.1 * symbols * np.exp(2j * math.pi * 1234.5 / sample_rate * t) + noise).astype(
            np.complex64
        )
    tone = 0.1 * np.exp(2j * math.pi * 1234.5 / sample_rate * t)
    return (tone + noise).astype(np.complex64)


def median_seconds(fns: Sequence[Callable[[], object]], repeats: int = REPEATS) -> list[float]:
    """Median wall time of each function, timed alternately (round-robin)."""
    for fn in fns:
        fn()  # warm caches (FFT plans, windows)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def measure_rows(seconds: float = SECONDS, repeats: int = REPEATS) -> list[dict[str, object]]:
    """One row per (signal, rate): median times of measure and of one FFT of the same
    samples, and their ratio ("FFT passes"); ``decides`` marks the nominal-rate rows the
    target applies to."""
    rows: list[dict[str, object]] = []
    for kind in ("carrier", "bpsk", "noise"):
        for rate in (NOMINAL_RATE, TRUE_RATE):
            x = synthetic(rate, seconds, kind)
            t_measure, t_fft = median_seconds(
                [lambda x=x, rate=rate: measure(x, rate), lambda x=x: scipy.fft.fft(x)],
                repeats,
            )
            rows.append(
                {
                    "signal": kind,
                    "sample_rate_hz": rate,
                    "samples": int(x.size),
                    "measure_ms": t_measure * 1e3,
                    "fft_ms": t_fft * 1e3,
                    "fft_passes": t_measure / t_fft,
                    "decides": rate == NOMINAL_RATE,
                }
            )
    return rows


def main() -> int:
    print(f"tasks.dsp.measure, {SECONDS:g} s capture, median of {REPEATS} runs, 1 core")
    passes: dict[str, float] = {}
    for row in measure_rows():
        kind, rate, n = row["signal"], row["sample_rate_hz"], row["samples"]
        t_measure, t_fft = row["measure_ms"] / 1e3, row["fft_ms"] / 1e3
        role = "decides" if row["decides"] else "info only, prime-length FFT"
        if row["decides"]:
            passes[kind] = row["fft_passes"]
        print(
            f"  {kind:<7} fs={rate:<9.3f} Hz, N={n}: measure {t_measure * 1e3:7.2f} ms "
            f"({n / t_measure / 1e6:6.2f} MS/s) | scipy.fft.fft(N) "
            f"{t_fft * 1e3:6.2f} ms | {row['fft_passes']:5.1f} FFT passes ({role})"
        )
    worst = max(passes.values())
    verdict = "PASS" if worst <= 1.0 / TARGET_RATIO else "FAIL"
    print(
        f"  target: <= {1.0 / TARGET_RATIO:g} FFT passes at N={round(NOMINAL_RATE * SECONDS)}: "
        + ", ".join(f"{k} {v:.1f}" for k, v in passes.items())
        + f" {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
