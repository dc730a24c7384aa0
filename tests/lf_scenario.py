"""An LF time-signal transmitter heard by three distant KiwiSDRs, written as kiwirecorder files.

An acceptance scenario independent of the project's simulator and kiwi-wav writer: it
synthesises what real recordings of a DCF77-like station look like and writes them in the
kiwirecorder ``--kiwi-wav`` format straight from the protocol document, so the reader, the
timing model, the TDOA estimator and the solver are checked against a truth they did not
make. What it reproduces from real recordings:

- a 77.5 kHz carrier keyed down to 15 % for 100 or 200 ms at the start of every second,
  with pseudo-random +/-15.6 degree phase chips (645.8 chip/s) in the rest of the second;
- receivers 300-800 km away, ground-wave delays, each with its own true sample rate
  (12001.03-12001.20 Hz), carrier phase, frequency error and noise;
- mixed passbands (+/-500 Hz and +/-5 kHz), recordings that start at different instants;
- the timestamp defects of real KiwiSDRs: a zero-stamped first frame marked fresh, a first
  stamp minutes stale, an hours-early stamp marked fresh, a stale RIFF size;
- old recordings: the GPS week must come from the file, not from today's clock.

Variants for the robustness tests (tests/test_locate_realfiles.py): more stations, a pure
carrier or an empty channel instead of the time signal, a delayed weaker skywave echo,
3-channel (20250 Hz) receivers, other tuned frequencies, and what the recording itself can
suffer: frames lost in a network hiccup, a truncated last chunk, an odd trailing byte, GPS
stamps turned off, no GPS clock, an unlocked (coasting) GPS clock.

Run ``python tests/lf_scenario.py OUTDIR`` to write the files for a manual try.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

C = 299_792_458.0
WGS84_A = 6_378_137.0
WGS84_F = 1 / 298.257223563
GPS_EPOCH = datetime(1980, 1, 6, tzinfo=UTC)
LEAP_S = 18
FRAME = 512
CARRIER_HZ = 77_500.0
CHIP_RATE = CARRIER_HZ / 120  # 645.83 chips/s, as DCF77's phase modulation
TRANSMITTER = (50.0156, 9.0108)  # Mainflingen


@dataclass(frozen=True)
class Station:
    name: str
    latitude: float
    longitude: float
    true_rate_hz: float
    passband_hz: float  # half-width of the receiver's IQ passband
    start_offset_s: float  # when its recording starts after the scenario's start
    snr_db: float  # carrier power over the noise in the passband
    defects: tuple[str, ...] = ()
    # a skywave echo: (extra delay s, amplitude relative to the ground wave)
    echo: tuple[float, float] | None = None
    frequency_khz: float = CARRIER_HZ / 1e3  # what the receiver was tuned to (file name)
    duration_s: float | None = None  # its own recording length (default: the scenario's)
    lost_frames: tuple[int, ...] = ()  # frames lost in a network hiccup (not in the file)


STATIONS = (
    Station("PA3ABC", 52.2215, 6.8937, 12001.031, 5000.0, 0.00, 38.0, ("zero_first",)),
    Station("F5XYZ", 47.3220, 5.0415, 12001.115, 500.0, 0.37, 32.0, ("zero_first", "stale_first")),
    Station("OE3KLU", 48.2082, 16.3738, 12001.196, 3000.0, 0.81, 35.0,
            ("zero_first", "hours_early", "stale_riff")),
)  # fmt: skip


def ecef(lat: float, lon: float, alt: float = 0.0) -> np.ndarray:
    """WGS-84 geodetic to ECEF metres (independent of the project's geometry code)."""
    e2 = WGS84_F * (2 - WGS84_F)
    la, lo = math.radians(lat), math.radians(lon)
    n = WGS84_A / math.sqrt(1 - e2 * math.sin(la) ** 2)
    return np.array(
        [
            (n + alt) * math.cos(la) * math.cos(lo),
            (n + alt) * math.cos(la) * math.sin(lo),
            (n * (1 - e2) + alt) * math.sin(la),
        ]
    )


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Straight-line distance; at a few hundred km it differs from the ground path by ~0.1 %,
    which the scenario uses consistently (the solver is told the same geometry)."""
    return float(np.linalg.norm(ecef(*a) - ecef(*b)))


def chips(seconds: int, seed: int = 77) -> np.ndarray:
    """+/-1 chips for each second (fixed pseudo-random sequence, new per second)."""
    rng = np.random.default_rng(seed)
    per_second = math.ceil(CHIP_RATE)
    return rng.choice([-1.0, 1.0], size=(seconds + 2, per_second))


def transmitted(t: np.ndarray, chip_table: np.ndarray, kind: str = "dcf") -> np.ndarray:
    """Complex baseband of the transmitter at continuous times ``t`` (s since the start).

    Amplitude keying with ~1 ms transitions (a real LF antenna's bandwidth), phase chips
    shaped by a raised cosine over a quarter chip, so the signal is band-limited and a
    fractional delay is just an evaluation at a shifted time. ``kind="carrier"``: the
    bare carrier (no time information at all); ``"empty"``: nothing on the channel.
    """
    if kind == "carrier":
        return np.ones(t.shape, dtype=np.complex128)
    if kind == "empty":
        return np.zeros(t.shape, dtype=np.complex128)
    sec = np.floor(t).astype(np.int64)
    frac = t - sec
    # Keying around the nearest second mark, so the envelope is continuous across marks.
    mark = np.round(t).astype(np.int64)
    from_mark = t - mark
    bit_len = np.where(mark % 3 == 0, 0.2, 0.1)
    tau = 0.0012 / 4
    down = _sigmoid(from_mark / tau) - _sigmoid((from_mark - bit_len) / tau)
    amplitude = 1.0 - 0.85 * down
    # Phase chips from 200 to 980 ms, switched on and off smoothly.
    pos = np.clip((frac - 0.2) * CHIP_RATE, 0, None)
    k = np.floor(pos).astype(np.int64)
    within = pos - k
    kk = np.clip(k, 0, chip_table.shape[1] - 2)
    row = np.clip(sec, 0, chip_table.shape[0] - 1)
    cur = chip_table[row, kk]
    nxt = chip_table[row, kk + 1]
    edge = 0.25
    w = np.where(within > 1 - edge, 0.5 - 0.5 * np.cos(np.pi * (within - (1 - edge)) / edge), 0.0)
    chip_value = cur * (1 - w) + nxt * w
    window = _sigmoid((frac - 0.2) / tau) * _sigmoid((0.98 - frac) / tau)
    phase = np.radians(15.6) * chip_value * window
    return amplitude * np.exp(1j * phase)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def band_limit(x: np.ndarray, rate: float, half_width_hz: float) -> np.ndarray:
    spectrum = np.fft.fft(x)
    f = np.fft.fftfreq(x.size, 1 / rate)
    spectrum[np.abs(f) > half_width_hz] = 0
    return np.fft.ifft(spectrum)


@dataclass
class Recording:
    station: Station
    samples: np.ndarray  # complex, full scale 1.0
    t0_gps_ns: int  # GPS time of sample 0 (ns since the GPS epoch)
    stamps: list[tuple[int, int, int]] = field(default_factory=list)  # (lgs, gpssec, gpsnsec)


def synthesise(
    start_utc: datetime,
    duration_s: float = 30.0,
    seed: int = 7,
    stations: tuple[Station, ...] = STATIONS,
    kind: str = "dcf",
    transmitter: tuple[float, float] = TRANSMITTER,
    gps_error_sd_s: float = 0.0,
) -> tuple[list[Recording], dict[str, float]]:
    """Every station's recording; returns them and the true TDOAs (s) of each pair.

    ``gps_error_sd_s``: each receiver's GPS stamps are off by its own constant error of
    this standard deviation (a real KiwiSDR's time of a sample is good to ~100 ns: antenna
    and receiver delays, the GPS fix), drawn apart from the rest so the signals stay the
    same for a seed.
    """
    rng = np.random.default_rng(seed)
    gps_errors = np.random.default_rng([seed, 1]).normal(0.0, gps_error_sd_s, len(stations))
    longest = max([duration_s] + [st.duration_s or 0 for st in stations])
    table = chips(int(longest + max(st.start_offset_s for st in stations)) + 3)
    start_gps_ns = int((start_utc - GPS_EPOCH).total_seconds()) * 10**9 + LEAP_S * 10**9
    recordings = []
    delays = {}
    for st, gps_error in zip(stations, gps_errors, strict=True):
        delay = distance_m(transmitter, (st.latitude, st.longitude)) / C
        delays[st.name] = delay
        t0_ns = start_gps_ns + round(st.start_offset_s * 1e9)
        n_frames = int((st.duration_s or duration_s) * st.true_rate_hz) // FRAME
        n = n_frames * FRAME
        t_rel = (t0_ns - start_gps_ns) / 1e9 + np.arange(n) / st.true_rate_hz  # since start
        cfo = rng.uniform(-0.3, 0.3)
        x = transmitted(t_rel - delay, table, kind)
        if st.echo is not None:
            extra, gain = st.echo
            x = x + gain * np.exp(1j * rng.uniform(0, 2 * np.pi)) * transmitted(
                t_rel - delay - extra, table, kind
            )
        x *= np.exp(1j * (rng.uniform(0, 2 * np.pi) + 2 * np.pi * cfo * t_rel))
        noise_power = 10 ** (-st.snr_db / 10)
        noise = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * math.sqrt(noise_power / 2)
        x = band_limit(0.3 * x + 0.3 * noise * math.sqrt(6000 / st.passband_hz), st.true_rate_hz,
                       st.passband_hz)  # fmt: skip
        rec = Recording(st, x.astype(np.complex64), t0_ns)
        lgs = 3
        for k in range(n_frames):
            t_ns = t0_ns + round(k * FRAME * 1e9 / st.true_rate_hz + gps_error * 1e9)
            lgs = 0 if (k % 23) == 0 else lgs + 1  # a fresh fix about once a second
            sec, nsec = divmod(t_ns % (604800 * 10**9), 10**9)
            stamp = (min(lgs, 252), sec, nsec)
            if k == 0 and "zero_first" in st.defects:
                stamp = (0, 0, 0)
            if k == 1 and "stale_first" in st.defects:
                stamp = (0, (sec - 317) % 604800, nsec)  # minutes stale, marked fresh
            if k == 40 and "hours_early" in st.defects:
                stamp = (0, (sec - 3 * 3600) % 604800, 123)
            if "stamps_off" in st.defects:
                stamp = (stamp[0], 0, 0)  # the operator turned GPS timestamps off
            if "no_gps" in st.defects:
                stamp = (255, stamp[1], stamp[2])
            if "unlocked" in st.defects:
                stamp = (252, stamp[1], stamp[2])  # last fix long ago: coasting
            rec.stamps.append(stamp)
        recordings.append(rec)
    names = [s.name for s in stations]
    tdoa = {f"{a}-{b}": delays[a] - delays[b] for i, a in enumerate(names) for b in names[i + 1 :]}
    return recordings, tdoa


def write_kiwi_wav(
    path: Path,
    rec: Recording,
    stale_riff: bool = False,
    *,
    lost_frames: tuple[int, ...] = (),
    truncate_bytes: int = 0,
    trailing: bytes = b"",
    channels: int = 2,
    kiwi_chunks: bool = True,
) -> None:
    """The kiwirecorder ``--kiwi-wav`` layout, written from the protocol document.

    ``lost_frames`` are left out (kiwi and data chunk), as a network hiccup loses them;
    ``truncate_bytes`` cuts the file short (RIFF size then stale); ``trailing`` is junk
    after the last chunk; ``channels=1`` writes the I channel only, as a real-audio
    recording; ``kiwi_chunks=False`` a plain WAV.
    """
    body = bytearray()
    iq = np.empty(rec.samples.size * 2, dtype="<i2")
    iq[0::2] = np.clip(np.round(rec.samples.real * 32768), -32768, 32767)
    iq[1::2] = np.clip(np.round(rec.samples.imag * 32768), -32768, 32767)
    lost = set(lost_frames)
    for k, (lgs, sec, nsec) in enumerate(rec.stamps):
        if k in lost:
            continue
        if kiwi_chunks:
            body += struct.pack("<4sIBBII", b"kiwi", 10, lgs, 0, sec, nsec)
        chunk = iq[k * FRAME * 2 : (k + 1) * FRAME * 2]
        if channels == 1:
            chunk = chunk[0::2]
        raw = chunk.tobytes()
        body += struct.pack("<4sI", b"data", len(raw)) + raw
    nominal = round(rec.station.true_rate_hz)
    block = 2 * channels
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, channels, nominal, nominal * block, block, 16)
    riff_size = 4 + len(fmt) + len(body)
    if stale_riff:
        riff_size = 4 + len(fmt) + 8 + 2048  # the size a recorder wrote after one frame
    out = struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE") + fmt + bytes(body)
    if truncate_bytes:
        out = out[:-truncate_bytes]
    path.write_bytes(out + trailing)


def position_text(st: Station, spaces: bool = False) -> str:
    """A ``gnss_pos/<station>.txt`` line (``spaces``: laid out loosely, as by hand)."""
    if spaces:
        return (
            f"d.{st.name}  =  struct( 'coord' , [ {st.latitude:.6f} ,  {st.longitude:.6f} ] ,"
            f" 'host' , '{st.name.lower()}.example.net' , 'port' , 8073 ) ;\n"
        )
    return (
        f"d.{st.name} = struct('coord', [{st.latitude:.6f},{st.longitude:.6f}], "
        f"'host', '{st.name.lower()}.example.net', 'port', 8073);\n"
    )


def write_scenario(
    folder: Path,
    start_utc: datetime | None = None,
    *,
    stations: tuple[Station, ...] = STATIONS,
    duration_s: float = 30.0,
    kind: str = "dcf",
    hz_names: bool = False,
    seed: int = 7,
    transmitter: tuple[float, float] = TRANSMITTER,
    gps_error_sd_s: float = 0.0,
) -> dict[str, object]:
    """Write every station's file and ``gnss_pos/``; return the truth.

    ``hz_names``: frequencies in the file names as kiwirecorder writes them (whole Hz,
    ``77500``) instead of kHz with decimals (``77.50``). A station's ``defects`` may also
    name file damage: ``truncated`` (last chunk cut), ``odd_byte`` (a trailing byte),
    ``audio`` (1 channel), ``plain_wav`` (no kiwi chunks), ``header_only``.
    """
    start_utc = start_utc or datetime(2025, 3, 14, 10, 20, 0, tzinfo=UTC)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gnss_pos").mkdir(exist_ok=True)
    recordings, tdoa = synthesise(
        start_utc, duration_s, seed, stations, kind, transmitter, gps_error_sd_s
    )
    files = []
    for rec in recordings:
        st = rec.station
        begin = start_utc + timedelta(seconds=st.start_offset_s)
        freq = f"{round(st.frequency_khz * 1000)}" if hz_names else f"{st.frequency_khz:.2f}"
        name = f"{begin:%Y%m%dT%H%M%SZ}_{freq}_{st.name}_iq.wav"
        write_kiwi_wav(
            folder / name,
            rec,
            stale_riff="stale_riff" in st.defects,
            lost_frames=st.lost_frames,
            truncate_bytes=1500 if "truncated" in st.defects else 0,
            trailing=b"\x00" if "odd_byte" in st.defects else b"",
            channels=1 if "audio" in st.defects else 2,
            kiwi_chunks="plain_wav" not in st.defects,
        )
        if "header_only" in st.defects:
            nominal = round(st.true_rate_hz)
            fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 2, nominal, nominal * 4, 4, 16)
            (folder / name).write_bytes(struct.pack("<4sI4s", b"RIFF", 4 + len(fmt), b"WAVE") + fmt)
        (folder / "gnss_pos" / f"{st.name}.txt").write_text(
            position_text(st, spaces="loose_position" in st.defects)
        )
        files.append(folder / name)
    return {"files": files, "transmitter": transmitter, "tdoa_s": tdoa}


if __name__ == "__main__":
    truth = write_scenario(Path(sys.argv[1]))
    print(*truth["files"], sep="\n")
    print("transmitter", truth["transmitter"])
