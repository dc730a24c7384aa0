"""Localization accuracy on the simulated seed network (README quotes its output).

Run: ``python bench/accuracy_locate.py [--trials 20] [--seconds 10 2]``. For each trial an
emitter (RRC-shaped BPSK, 1200 Bd) is put at a random point inside the network; every seed
receiver's capture is synthesised directly with the simulator's emitter model
(:func:`tasks.kiwisdr.emitter.received_signal`: geometric delay, path loss, LO offset),
its thermal noise, its own sample-clock error and a GPS t0 to the nanosecond. No websocket
is involved. Prints median / 95th-percentile horizontal error, the pair TDOA RMS error,
the fraction of truths inside the 95 % ellipse, and the same with one receiver removed.

Measured (20 trials, seed 7, 2 cores shared; README figures):

| capture | receivers | median m | 95th m | pair TDOA RMS us | in 95 % ellipse | failed |
|---|---|---|---|---|---|---|
| 10 s | 7 | 17 | 48 | 0.149 | 100 % | 0/20 |
| 10 s | 6 (one failing) | 18 | 53 | 0.166 | 95 % | 0/20 |
| 2 s | 7 | 40 | 81 | 0.286 | 100 % | 0/20 |
| 2 s | 6 (one failing) | 50 | 228 | 0.357 | 95 % | 0/20 |
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.geolocation import (
    GeolocationError,
    Site,
    Tdoa,
    horizontal_distance_m,
    inside_ellipse,
    locate,
)
from tasks.kiwisdr.emitter import Emitter, path_truth, received_signal
from tasks.kiwisdr.network import simulated_network
from tasks.tdoa import ReceiverSeries, estimate_tdoas

FREQUENCY_HZ = 145_500_000.0
NS = 1_000_000_000


def synthesise(
    emitter: Emitter, seconds: float, rng: np.random.Generator, *, drop: str | None = None
) -> list[ReceiverSeries]:
    """Captures of every seed receiver (each on its own clock) as the simulator makes them."""
    network, _ = simulated_network(frequency_hz=emitter.frequency_hz)
    epoch = 1_800_000_000 * NS  # any GPS-era instant; times below are relative to it
    out = []
    for name, rx in network.receivers.items():
        if name == drop:
            continue
        truth = path_truth(
            emitter,
            rx.position,
            tuned_hz=emitter.frequency_hz,
            lo_ppm=rx.lo_ppm,
            full_scale_dbm=rx.full_scale_dbm,
            noise_density_dbfs_hz=rx.noise_density,
        )
        fs = rx.sample_rate * (1.0 + rng.uniform(-20e-6, 20e-6))  # fitted true rate
        t0_rel_ns = int(rng.integers(0, 40_000_000))  # receivers start within a frame
        n = int(seconds * fs)
        t = t0_rel_ns / NS + np.arange(n) / fs
        x = received_signal(emitter, truth, t)
        sigma = math.sqrt(10.0 ** (rx.noise_density / 10.0) * fs / 2.0)
        x = x + sigma * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
        out.append(
            ReceiverSeries(
                name,
                rx.latitude,
                rx.longitude,
                rx.altitude_m,
                x.astype(np.complex64),
                epoch + t0_rel_ns,
                fs,
                emitter.frequency_hz,
            )
        )
    return out


def locate_captures(captures: list[ReceiverSeries], emitter_alt: float):
    result = estimate_tdoas(captures)
    sites = [Site(c.name, c.latitude, c.longitude, c.altitude_m) for c in captures]
    tdoas = [Tdoa(p.a, p.b, p.tdoa_s, p.stderr_s, p.segments_used - 1) for p in result.good_pairs]  # type: ignore[arg-type]
    return result, locate(sites, tdoas, emitter_altitude_m=emitter_alt)


def random_inside(
    rng: np.random.Generator, sites: list[tuple[float, float]]
) -> tuple[float, float]:
    """A random point inside the convex hull (a random convex combination of three sites)."""
    idx = rng.choice(len(sites), 3, replace=False)
    w = rng.dirichlet([1.0, 1.0, 1.0])
    lat = sum(w[k] * sites[i][0] for k, i in enumerate(idx))
    lon = sum(w[k] * sites[i][1] for k, i in enumerate(idx))
    return float(lat), float(lon)


def run(
    trials: int, seconds: float, seed: int, drop_one: bool, modulation: str = "rrc-bpsk"
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    network, _ = simulated_network(frequency_hz=FREQUENCY_HZ)
    sites = [(r.latitude, r.longitude) for r in network.receivers.values()]
    names = list(network.receivers)
    base = Emitter(0, 0, 0, FREQUENCY_HZ, eirp_dbm=10.0, modulation=modulation)
    errors, inside, tdoa_err, failures = [], [], [], 0
    for k in range(trials):
        lat, lon = random_inside(rng, sites)
        emitter = replace(base, latitude=lat, longitude=lon, altitude_m=300.0, seed=k + 1)
        drop = names[k % len(names)] if drop_one else None
        captures = synthesise(emitter, seconds, rng, drop=drop)
        try:
            result, pos = locate_captures(captures, emitter.altitude_m)
        except GeolocationError:
            failures += 1
            continue
        by = {c.name: c for c in captures}
        for p in result.good_pairs:
            da = horizontal_distance_m(lat, lon, by[p.a].latitude, by[p.a].longitude)
            pa = np.linalg.norm(_ecef(emitter) - _ecef_site(by[p.a]))
            pb = np.linalg.norm(_ecef(emitter) - _ecef_site(by[p.b]))
            del da
            tdoa_err.append(p.tdoa_s - (pa - pb) / 299_792_458.0)  # type: ignore[operator]
        errors.append(horizontal_distance_m(lat, lon, pos.latitude, pos.longitude))
        inside.append(inside_ellipse(pos, lat, lon))
    e = np.array(errors)
    return {
        "trials": trials,
        "failures": failures,
        "median_m": float(np.median(e)) if e.size else math.nan,
        "p95_m": float(np.percentile(e, 95)) if e.size else math.nan,
        "tdoa_rms_us": float(np.sqrt(np.mean(np.square(tdoa_err)))) * 1e6,
        "inside_95": float(np.mean(inside)) if inside else math.nan,
    }


def _ecef(emitter: Emitter) -> np.ndarray:
    from tasks.kiwisdr.emitter import ecef

    return ecef(*emitter.position)


def _ecef_site(c: ReceiverSeries) -> np.ndarray:
    from tasks.kiwisdr.emitter import ecef

    return ecef(c.latitude, c.longitude, c.altitude_m)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 2.0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--modulation", default="rrc-bpsk", help="an Emitter modulation")
    args = parser.parse_args(argv)
    print(
        "| capture | receivers | median m | 95th m | pair TDOA RMS us | in 95 % ellipse | failed |"
    )
    print("|---|---|---|---|---|---|---|")
    for seconds in args.seconds:
        for drop_one in (False, True):
            t = time.perf_counter()
            r = run(args.trials, seconds, args.seed, drop_one, args.modulation)
            print(
                f"| {seconds:g} s | {'6 (one failing)' if drop_one else '7'} | "
                f"{r['median_m']:.0f} | {r['p95_m']:.0f} | {r['tdoa_rms_us']:.3f} | "
                f"{r['inside_95'] * 100:.0f} % | {r['failures']}/{r['trials']} |"
                f"  <!-- {time.perf_counter() - t:.0f} s -->",
                flush=True,
            )


if __name__ == "__main__":
    main()
