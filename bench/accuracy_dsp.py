"""Measurement accuracy of tasks.dsp against known truth, as a markdown table.

Run: ``python bench/accuracy_dsp.py [--trials 300] [--seconds 10]``. The signals come from
this file's own generator (nothing from the simulator or the tests), at the true KiwiSDR
rate 12001.135 Hz in circular white Gaussian noise of known density N0:

* ``carrier``: a tone at a random offset in the passband;
* ``bpsk`` / ``qpsk``: raised-cosine (roll-off 0.35) PSK, shaped in the frequency domain so
  the band is exact, occupying a random 5-60 % of the 10 kHz passband at a random centre;
* ``am``: a carrier modulated (rms index 0.3) by band-limited noise, 5-60 % of the passband.

Truth is the realised signal power (mean |s|^2 of the generated signal) and N0; C/N0 is
their ratio. Each row prints the 95th percentile and the worst |error| (dB) of the total
power, the signal power, the noise floor and C/N0 over the detected trials, the detection
rate, how often the modulation was named right, and for signals with a carrier the CFO RMS
error against the Cramer-Rao bound of that carrier alone
var >= 6 fs^2 / ((2 pi)^2 eta N (N^2 - 1)). A noise-only row gives the false detections.
README.md quotes this table.

What is physically possible: next to each measured 95th percentile the table prints the
95th percentile an *oracle* reaches on the same captures, and measured / oracle. The
oracle is told what no receiver knows, the exact band of the signal (from the generator):
it sums the capture's full-length periodogram over exactly that band (a carrier: the DTFT
at its exact frequency, a band of 1/T) and subtracts the noise the band holds,

* signal power: with the true N0 (band power - N0 B). Its error is the noise's own
  scatter over the B T independent bins of the band plus the signal x noise cross term,
  std/P = sqrt(1/snr^2 + 2/snr) / sqrt(B T) with snr = P / (N0 B): nothing measuring that
  band for T seconds does better;
* noise floor and C/N0: with N0 estimated as the mean of the capture's Welch PSD (the one
  measure computes) over every passband bin more than 200 Hz from the band (the best any
  estimator can do with that PSD without being told N0).
"""

from __future__ import annotations

import argparse
import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.dsp import measure, psd

FS = 12001.135
PASSBAND = (-5000.0, 5000.0)
ROLL_OFF = 0.35
AM_INDEX = 0.3  # rms modulation index: sidebands hold ~8 % of the power
SIGNALS = ("carrier", "bpsk", "qpsk", "am")
LEVELS = (30, 40, 50, 60, 70, 80)
# Fraction of the passband a modulated signal occupies: uniform in this range (--occupancy).
OCCUPANCY = (0.05, 0.6)


@dataclass(frozen=True)
class Truth:
    signal_power: float  # FS^2, realised
    carrier_power: float  # FS^2, 0 without a carrier
    offset_hz: float | None  # carrier (or suppressed carrier) frequency
    band_hz: tuple[float, float] = (0.0, 0.0)  # where the signal's spectrum is (exactly)


def _raised_cosine(f: np.ndarray, rate: float) -> np.ndarray:
    """Raised-cosine amplitude response for symbol rate ``rate`` (band rate * (1 + a))."""
    a = abs(f)
    inner, outer = rate * (1 - ROLL_OFF) / 2, rate * (1 + ROLL_OFF) / 2
    taper = 0.5 * (1 + np.cos(np.pi / (ROLL_OFF * rate) * (a - inner)))
    return np.where(a <= inner, 1.0, np.where(a <= outer, taper, 0.0))


def _band_noise(rng: np.random.Generator, n: int, width_hz: float) -> np.ndarray:
    """Complex Gaussian noise, flat over +-width/2, unit power."""
    f = np.fft.fftfreq(n, 1 / FS)
    spec = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * (abs(f) <= width_hz / 2)
    s = np.fft.ifft(spec)
    return s / math.sqrt(np.mean(np.abs(s) ** 2))


def generate(
    rng: np.random.Generator, kind: str, cn0_dbhz: float, n: int, n0: float
) -> tuple[np.ndarray, Truth]:
    """One capture of ``kind`` at ``cn0_dbhz`` in noise of density ``n0`` (FS^2/Hz)."""
    t = np.arange(n)
    power = n0 * 10 ** (cn0_dbhz / 10)
    span = PASSBAND[1] - PASSBAND[0]
    width = rng.uniform(*OCCUPANCY) * span
    centre = rng.uniform(PASSBAND[0] + width / 2 + 50, PASSBAND[1] - width / 2 - 50)
    if kind == "carrier":
        centre = rng.uniform(PASSBAND[0] + 100, PASSBAND[1] - 100)
        base = np.exp(1j * rng.uniform(0, 2 * math.pi)) * np.ones(n)
        carrier_fraction = 1.0
    elif kind in ("bpsk", "qpsk"):
        rate = width / (1 + ROLL_OFF)
        sps = FS / rate
        count = int(n / sps) + 1
        if kind == "bpsk":
            symbols = rng.choice([-1.0, 1.0], count)
        else:
            symbols = np.exp(1j * (math.pi / 4 + math.pi / 2 * rng.integers(0, 4, count)))
        impulses = np.zeros(n, complex)
        at = np.floor(np.arange(count) * sps + rng.uniform(0, sps)).astype(int)
        keep = at < n
        impulses[at[keep]] = symbols[keep]
        f = np.fft.fftfreq(n, 1 / FS)
        base = np.fft.ifft(np.fft.fft(impulses) * _raised_cosine(f, rate))
        carrier_fraction = 0.0
    elif kind == "am":
        message = _band_noise(rng, n, width).real * math.sqrt(2.0)
        base = (1.0 + AM_INDEX * message) * np.exp(1j * rng.uniform(0, 2 * math.pi))
        carrier_fraction = 1.0 / float(np.mean(np.abs(base) ** 2))
    else:
        raise ValueError(kind)
    base = base / math.sqrt(float(np.mean(np.abs(base) ** 2)))
    s = math.sqrt(power) * base * np.exp(2j * math.pi * centre / FS * t)
    sigma = math.sqrt(n0 * FS / 2)
    x = s + sigma * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
    realised = float(np.mean(np.abs(s) ** 2))
    band = (centre, centre) if kind == "carrier" else (centre - width / 2, centre + width / 2)
    return x.astype(np.complex64), Truth(realised, realised * carrier_fraction, centre, band)


# Bins of the full-length FFT added on each side of a modulated signal's band (the
# rectangular window's leakage of the band's edges stays in), and the span either side of
# the band left out of the oracle's N0 (the Welch Hann window's leakage of a strong signal).
_ORACLE_GUARD_BINS = 8
_ORACLE_QUIET_GUARD_HZ = 200.0


def oracle(x: np.ndarray, truth: Truth, n0: float) -> tuple[float, float, float]:
    """(signal power with N0 known, signal power with N0 from the quiet bins, that N0):
    the figures an estimator told the exact signal band reaches on this capture.

    A carrier (also AM's) is measured as the DTFT at its exact frequency and subtracted
    before the band is summed, so its leakage between bins is neither lost nor noise.
    """
    n = x.size
    t = np.arange(n)
    xd = x.astype(np.complex128)
    lo, hi = truth.band_hz
    carrier_power = 0.0
    if truth.carrier_power > 0:
        e = np.exp(2j * math.pi * truth.offset_hz / FS * t)
        a = np.vdot(e, xd) / n
        carrier_power = abs(a) ** 2
        xd = xd - a * e
    f = np.fft.fftfreq(n, 1 / FS)
    # N0 from the capture's Welch PSD (the one measure uses: a full-length periodogram
    # leaks a strong signal into every bin) over every passband bin away from the band.
    fw, dw = psd(x, FS)
    passband = (fw >= PASSBAND[0]) & (fw <= PASSBAND[1])
    if truth.signal_power <= 0:  # noise only
        return 0.0, 0.0, float(dw[passband].mean())
    bin_hz = FS / n
    band = (f >= lo - _ORACLE_GUARD_BINS * bin_hz) & (f <= hi + _ORACLE_GUARD_BINS * bin_hz)
    bins = int(np.count_nonzero(band)) if hi > lo else 0
    spec = np.fft.fft(xd)
    band_power = float((spec.real[band] ** 2 + spec.imag[band] ** 2).sum()) / (n * n)
    if hi == lo:
        band_power = 0.0
    measured = carrier_power + band_power
    bins += 1 if truth.carrier_power > 0 else 0  # the carrier's own bin of noise
    quiet = passband & ((fw < lo - _ORACLE_QUIET_GUARD_HZ) | (fw > hi + _ORACLE_QUIET_GUARD_HZ))
    n0_quiet = float(dw[quiet].mean())
    return measured - n0 * bin_hz * bins, measured - n0_quiet * bin_hz * bins, n0_quiet


def crb_std_hz(carrier_power: float, n0: float, n: int) -> float:
    eta = carrier_power / (n0 * FS)
    return math.sqrt(6.0 * FS**2 / ((2.0 * math.pi) ** 2 * eta * n * (n * n - 1.0)))


def db(x: float) -> float:
    return 10 * math.log10(x)


def _p95_max(errors: list[float]) -> str:
    if not errors:
        return "- / -"
    a = np.abs(errors)
    return f"{np.percentile(a, 95):.2f} / {a.max():.2f}"


# Below this the oracle's 95th percentile is too small for a ratio to mean anything.
_RATIO_FROM_DB = 0.05


def _p95(errors: list[float]) -> float:
    return float(np.percentile(np.abs(errors), 95)) if errors else math.nan


def _vs_oracle(measured: list[float], floor: list[float]) -> str:
    """'measured p95 / worst | oracle p95 | measured / oracle' cells."""
    m, o = _p95(measured), _p95(floor)
    ratio = f"{m / o:.1f}" if o >= _RATIO_FROM_DB and math.isfinite(m) else "-"
    return f"{_p95_max(measured)} | {o:.2f} | {ratio}"


def _db_or_nan(power: float) -> float:
    return db(power) if power > 0 else -math.inf


def row(kind: str, cn0_dbhz: float, trials: int, seconds: float) -> str:
    # a stable seed (hash() of a str changes from one process to the next)
    rng = np.random.default_rng(zlib.crc32(f"{kind} {cn0_dbhz:g}".encode()))
    n = round(seconds * FS)
    n0 = 1e-7
    e_total, e_sig, e_floor, e_cn0, e_cfo, crbs = [], [], [], [], [], []
    o_sig, o_floor, o_cn0 = [], [], []
    detected = named = 0
    for _ in range(trials):
        x, truth = generate(rng, kind, cn0_dbhz, n, n0)
        m = measure(x, FS, passband_hz=PASSBAND)
        p_known, p_est, n0_est = oracle(x, truth, n0)
        o_sig.append(_db_or_nan(p_known) - db(truth.signal_power))
        o_floor.append(db(n0_est) - db(n0))
        o_cn0.append(_db_or_nan(p_est / n0_est) - db(truth.signal_power / n0))
        e_total.append(m.power_dbfs - db(truth.signal_power + n0 * FS))
        if not m.detected:
            continue
        detected += 1
        named += m.modulation == kind
        e_sig.append(m.signal_power_dbfs - db(truth.signal_power))
        e_floor.append(m.noise_floor_dbfs_hz - db(n0))
        e_cn0.append(m.cn0_dbhz - db(truth.signal_power / n0))
        if truth.carrier_power > 0 and m.frequency_offset_hz is not None:
            e_cfo.append(m.frequency_offset_hz - truth.offset_hz)
            crbs.append(crb_std_hz(truth.carrier_power, n0, n))
    if e_cfo:
        rms = math.sqrt(float(np.mean(np.square(e_cfo))))
        crb = math.sqrt(float(np.mean(np.square(crbs))))
        cfo = f"{rms:.3g} | {crb:.3g} | {rms / crb:.2f}"
    else:
        cfo = "- | - | -"
    return (
        f"| {kind} | {cn0_dbhz:.0f} | {_p95_max(e_total)} | {_vs_oracle(e_sig, o_sig)} | "
        f"{_vs_oracle(e_floor, o_floor)} | {_vs_oracle(e_cn0, o_cn0)} | {detected / trials:.1%} | "
        f"{named / max(detected, 1):.0%} | {cfo} |"
    )


def noise_only(trials: int, seconds: float) -> str:
    rng = np.random.default_rng(12345)
    n = round(seconds * FS)
    sigma = math.sqrt(1e-7 * FS / 2)
    false, e_floor, o_floor = 0, [], []
    for _ in range(trials):
        x = (sigma * (rng.standard_normal(n) + 1j * rng.standard_normal(n))).astype(np.complex64)
        m = measure(x, FS, passband_hz=PASSBAND)
        false += m.detected
        e_floor.append(m.noise_floor_dbfs_hz - db(1e-7))
        o_floor.append(db(oracle(x, Truth(0.0, 0.0, None), 1e-7)[2]) - db(1e-7))
    return (
        f"noise only: {false} false detections in {trials} captures ({false / trials:.2%}); "
        f"noise floor |error| 95th percentile / worst {_p95_max(e_floor)} dB "
        f"(oracle, mean of all passband bins: {_p95(o_floor):.2f} dB)"
    )


def main() -> None:
    global OCCUPANCY
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--signals", default=",".join(SIGNALS))
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument(
        "--occupancy",
        default=",".join(map(str, OCCUPANCY)),
        help="LOW,HIGH fraction of the passband a modulated signal occupies (0.6,0.6: all "
        "at 60 %%)",
    )
    parser.add_argument(
        "--noise-trials",
        type=int,
        default=None,
        help="noise-only captures for the false-detection line (default max(trials, 1000); 0: "
        "none)",
    )
    args = parser.parse_args()
    low, high = (float(v) for v in args.occupancy.split(","))
    if not 0.0 < low <= high <= 0.9:
        parser.error(f"--occupancy: need 0 < LOW <= HIGH <= 0.9, got {args.occupancy}")
    OCCUPANCY = (low, high)
    print(
        f"{args.seconds:g} s captures at {FS} Hz, passband {PASSBAND[0]:g}..{PASSBAND[1]:g} Hz, "
        f"modulated signals {low:.0%}-{high:.0%} of it, "
        f"{args.trials} trials per row; errors in dB as 95th percentile / worst |error|"
    )
    print()
    print(
        "| signal | C/N0 dB-Hz | power | signal power | oracle | x | noise floor | oracle | x | "
        "C/N0 | oracle | x | detected | modulation named | CFO RMS Hz | CRB Hz | RMS/CRB |"
    )
    print("|---" * 17 + "|")
    for kind in args.signals.split(","):
        for level in (float(v) for v in args.levels.split(",")):
            print(row(kind, level, args.trials, args.seconds), flush=True)
    noise_trials = max(args.trials, 1000) if args.noise_trials is None else args.noise_trials
    if noise_trials > 0:
        print()
        print(noise_only(noise_trials, args.seconds), flush=True)


if __name__ == "__main__":
    main()
