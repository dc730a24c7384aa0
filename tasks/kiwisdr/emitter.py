"""A physical, deterministic model of one transmitter as heard by each receiver.

The simulator uses it to make samples, and tests use it as ground truth. The emitted
signal is a function of absolute GPS time, so two receivers sampling at different
instants see one consistent transmission: the time difference of arrival between them is
the geometric one (distance / c), the power follows free-space path loss, and each
receiver's local-oscillator error shows up as a carrier frequency offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SPEED_OF_LIGHT = 299_792_458.0
_WGS84_A = 6_378_137.0
_WGS84_E2 = 6.694_379_990_14e-3


def ecef(lat_deg: float, lon_deg: float, alt_m: float) -> np.ndarray:
    """WGS-84 geodetic position to Earth-centred Cartesian metres."""
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    n = _WGS84_A / math.sqrt(1.0 - _WGS84_E2 * math.sin(lat) ** 2)
    return np.array(
        [
            (n + alt_m) * math.cos(lat) * math.cos(lon),
            (n + alt_m) * math.cos(lat) * math.sin(lon),
            (n * (1.0 - _WGS84_E2) + alt_m) * math.sin(lat),
        ]
    )


def distance_m(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Straight-line distance between two (lat, lon, alt) points."""
    return float(np.linalg.norm(ecef(*a) - ecef(*b)))


def free_space_path_loss_db(distance: float, frequency_hz: float) -> float:
    """Friis free-space loss, 20 log10(4 pi d f / c)."""
    return 20.0 * math.log10(4.0 * math.pi * max(distance, 1.0) * frequency_hz / SPEED_OF_LIGHT)


@dataclass(frozen=True)
class Emitter:
    """A transmitter: where, at what frequency, how strong, and how it is modulated.

    ``modulation`` is ``"carrier"`` (unmodulated) or ``"bpsk"`` (pseudo-random symbols at
    ``symbol_rate``, chosen by a hash of the symbol index so any instant can be evaluated
    without state).
    """

    latitude: float
    longitude: float
    altitude_m: float
    frequency_hz: float
    eirp_dbm: float = 40.0
    modulation: str = "carrier"
    symbol_rate: float = 1200.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.modulation not in ("carrier", "bpsk"):
            raise ValueError(f"modulation must be 'carrier' or 'bpsk', got {self.modulation!r}")

    @property
    def position(self) -> tuple[float, float, float]:
        return (self.latitude, self.longitude, self.altitude_m)

    def envelope(self, t: np.ndarray) -> np.ndarray:
        """Complex baseband envelope at emission times ``t`` (seconds, float64)."""
        if self.modulation == "carrier":
            return np.ones(t.shape, dtype=np.complex128)
        index = np.floor(t * self.symbol_rate).astype(np.int64).astype(np.uint64)
        bits = _hash_bits(index, self.seed)
        return (1.0 - 2.0 * bits).astype(np.complex128)


def _hash_bits(index: np.ndarray, seed: int) -> np.ndarray:
    """One pseudo-random bit per integer (splitmix64 finaliser): stateless and repeatable."""
    with np.errstate(over="ignore"):
        z = index + np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z & np.uint64(1)).astype(np.float64)


@dataclass(frozen=True)
class PathTruth:
    """What one receiver should measure from the emitter (the tests' ground truth)."""

    distance_m: float
    delay_s: float
    path_loss_db: float
    received_dbm: float
    power_dbfs: float
    amplitude: float
    frequency_offset_hz: float
    noise_density_dbfs_hz: float
    cn0_dbhz: float


def path_truth(
    emitter: Emitter,
    position: tuple[float, float, float],
    *,
    tuned_hz: float,
    lo_ppm: float,
    full_scale_dbm: float,
    noise_density_dbfs_hz: float,
) -> PathTruth:
    """Ground truth for one receiver tuned to ``tuned_hz`` (RF) with LO error ``lo_ppm``."""
    d = distance_m(emitter.position, position)
    loss = free_space_path_loss_db(d, emitter.frequency_hz)
    received = emitter.eirp_dbm - loss
    dbfs = received - full_scale_dbm
    lo_hz = tuned_hz * (1.0 + lo_ppm * 1e-6)
    return PathTruth(
        distance_m=d,
        delay_s=d / SPEED_OF_LIGHT,
        path_loss_db=loss,
        received_dbm=received,
        power_dbfs=dbfs,
        amplitude=10.0 ** (dbfs / 20.0),
        frequency_offset_hz=emitter.frequency_hz - lo_hz,
        noise_density_dbfs_hz=noise_density_dbfs_hz,
        cn0_dbhz=dbfs - noise_density_dbfs_hz,
    )


def received_signal(emitter: Emitter, truth: PathTruth, t: np.ndarray) -> np.ndarray:
    """Noise-free complex baseband at receiver sample times ``t`` (s since the epoch).

    x(t) = A * env(t - tau) * exp(j 2 pi (cfo * t - f_e * tau)): the carrier phase and the
    modulation both carry the propagation delay, the LO error only shifts frequency.
    """
    tau = truth.delay_s
    phase = (
        2.0 * np.pi * (truth.frequency_offset_hz * t - math.fmod(emitter.frequency_hz * tau, 1.0))
    )
    return truth.amplitude * emitter.envelope(t - tau) * np.exp(1j * phase)
