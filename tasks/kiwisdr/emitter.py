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

from tasks.geodesy import SPEED_OF_LIGHT, ecef


def distance_m(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Straight-line distance between two (lat, lon, alt) points."""
    return float(np.linalg.norm(ecef(*a) - ecef(*b)))


def free_space_path_loss_db(distance: float, frequency_hz: float) -> float:
    """Friis free-space loss, 20 log10(4 pi d f / c)."""
    return 20.0 * math.log10(4.0 * math.pi * max(distance, 1.0) * frequency_hz / SPEED_OF_LIGHT)


MODULATIONS = ("carrier", "bpsk", "rrc-bpsk", "rrc-qpsk", "am", "pm")
_RRC_SPAN = 6  # symbols each side of the pulse centre; the truncated tails are < -40 dB
_AM_TONES = 48


@dataclass(frozen=True)
class Emitter:
    """A transmitter: where, at what frequency, how strong, and how it is modulated.

    ``modulation`` (every one a deterministic function of continuous emission time, so a
    fractional propagation delay is exact, and any instant can be evaluated without state):

    - ``"carrier"``: unmodulated; it carries no time-difference information.
    - ``"bpsk"``: rectangular pseudo-random symbols at ``symbol_rate`` (wide sinc skirts).
    - ``"rrc-bpsk"`` / ``"rrc-qpsk"``: root-raised-cosine pulse-shaped PSK, roll-off
      ``rolloff``: occupies ``symbol_rate * (1 + rolloff)`` Hz, no carrier line.
    - ``"am"``: AM broadcast-like: carrier plus ``modulation_index`` times a band-limited,
      speech-like modulating signal (pseudo-random tones up to ``audio_bandwidth_hz``
      with a syllabic envelope).
    - ``"pm"``: a carrier phase-modulated (``phase_deviation_rad``) by RRC-shaped
      pseudo-random chips at ``symbol_rate`` (the kind of signal LF time stations send).
    """

    latitude: float
    longitude: float
    altitude_m: float
    frequency_hz: float
    eirp_dbm: float = 40.0
    modulation: str = "carrier"
    symbol_rate: float = 1200.0
    seed: int = 1
    rolloff: float = 0.35
    modulation_index: float = 0.8
    audio_bandwidth_hz: float = 3000.0
    phase_deviation_rad: float = 0.6

    def __post_init__(self) -> None:
        if self.modulation not in MODULATIONS:
            allowed = ", ".join(repr(m) for m in MODULATIONS)
            raise ValueError(f"modulation must be one of {allowed}, got {self.modulation!r}")
        if not 0.0 < self.rolloff <= 1.0:
            raise ValueError(f"rolloff={self.rolloff} is out of range (0, 1]")
        if not self.symbol_rate > 0.0:
            raise ValueError(f"symbol_rate={self.symbol_rate} must be > 0 symbols/s")
        if not 0.0 < self.modulation_index <= 1.0:
            raise ValueError(f"modulation_index={self.modulation_index} is out of range (0, 1]")
        if not self.audio_bandwidth_hz > 100.0:
            raise ValueError(f"audio_bandwidth_hz={self.audio_bandwidth_hz} must be > 100 Hz")

    @property
    def position(self) -> tuple[float, float, float]:
        return (self.latitude, self.longitude, self.altitude_m)

    @property
    def locatable(self) -> bool:
        """Whether the signal has time structure a TDOA can use (a carrier has none)."""
        return self.modulation != "carrier"

    def envelope(self, t: np.ndarray) -> np.ndarray:
        """Complex baseband envelope at emission times ``t`` (seconds, float64).

        Mean power is about 1 for every modulation so EIRP means the same thing.
        """
        t = np.asarray(t, dtype=np.float64)
        if self.modulation == "carrier":
            return np.ones(t.shape, dtype=np.complex128)
        if self.modulation == "bpsk":
            index = np.floor(t * self.symbol_rate).astype(np.int64).astype(np.uint64)
            bits = _hash_bits(index, self.seed)
            return (1.0 - 2.0 * bits).astype(np.complex128)
        if self.modulation == "rrc-bpsk":
            return self._shaped(t, self.seed).astype(np.complex128)
        if self.modulation == "rrc-qpsk":
            i = self._shaped(t, self.seed)
            q = self._shaped(t, self.seed + 7919)
            return (i + 1j * q) / math.sqrt(2.0)
        if self.modulation == "pm":
            return np.exp(1j * self.phase_deviation_rad * self._shaped(t, self.seed))
        # am
        m = self.modulation_index
        audio = self._audio(t)
        return (1.0 + m * audio) / math.sqrt(1.0 + m * m / 2.0) + 0j

    def _shaped(self, t: np.ndarray, seed: int, rate: float | None = None) -> np.ndarray:
        """Sum of RRC pulses of +-1 pseudo-random symbols at continuous time ``t``."""
        rs = rate or self.symbol_rate
        u = t * rs
        k0 = np.floor(u)
        out = np.zeros(t.shape, dtype=np.float64)
        for m in range(-_RRC_SPAN, _RRC_SPAN + 1):
            k = k0 + m
            bits = _hash_bits(k.astype(np.int64).astype(np.uint64), seed)
            out += (1.0 - 2.0 * bits) * rrc_pulse(u - k, self.rolloff)
        return out

    def _audio(self, t: np.ndarray) -> np.ndarray:
        """Speech-like modulating signal: band-limited noise (flat to
        ``audio_bandwidth_hz``) with a syllabic envelope; RMS about 0.35."""
        rate = 2.0 * self.audio_bandwidth_hz / (1.0 + self.rolloff)
        noise = self._shaped(t, self.seed + 104729, rate)
        syllabic = 0.7 + 0.3 * np.sin(2.0 * np.pi * 3.7 * t + 0.3 * self.seed)
        return np.clip(0.35 * noise * syllabic, -1.0, 1.0)


def rrc_pulse(u: np.ndarray, beta: float) -> np.ndarray:
    """Root-raised-cosine pulse at ``u`` symbol periods, unit energy per symbol period."""
    u = np.asarray(u, dtype=np.float64)
    out = np.empty_like(u)
    four_bu = 4.0 * beta * u
    denom = np.pi * u * (1.0 - four_bu**2)
    zero = np.abs(u) < 1e-9
    edge = np.abs(np.abs(four_bu) - 1.0) < 1e-9
    normal = ~(zero | edge)
    un = u[normal]
    out[normal] = (
        np.sin(np.pi * un * (1.0 - beta)) + 4.0 * beta * un * np.cos(np.pi * un * (1.0 + beta))
    ) / denom[normal]
    out[zero] = 1.0 - beta + 4.0 * beta / np.pi
    out[edge] = (beta / math.sqrt(2.0)) * (
        (1.0 + 2.0 / np.pi) * math.sin(np.pi / (4.0 * beta))
        + (1.0 - 2.0 / np.pi) * math.cos(np.pi / (4.0 * beta))
    )
    return out


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
