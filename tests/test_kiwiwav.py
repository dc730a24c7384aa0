"""kiwi-wav files: round trip through the writer and reader, and every damaged-file case."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tasks.kiwiwav import (
    KiwiWavError,
    StationPosition,
    file_name,
    find_station_position,
    parse_file_name,
    read_kiwi_wav,
    read_station_position,
    write_kiwi_wav,
    write_station_position,
)
from tasks.timing import NS_PER_S, FrameStamp, datetime_to_ns, utc_ns_to_gps_stamp

N = 512
START = datetime(2026, 11, 29, 4, 0, 0, tzinfo=UTC)
T0 = datetime_to_ns(START) + 400_000_123  # first sample 0.4 s after the file-name second
RATE = Fraction("12001.07")


def make(frames: int = 60) -> tuple[np.ndarray, list[FrameStamp]]:
    rng = np.random.default_rng(3)
    iq = rng.integers(-20000, 20000, size=(frames * N, 2)).astype(np.float32) / 32768.0
    samples = (iq[:, 0] + 1j * iq[:, 1]).astype(np.complex64)
    st = []
    for k in range(frames):
        sec, nsec = utc_ns_to_gps_stamp(T0 + round(Fraction(k * N * NS_PER_S) / RATE))
        st.append(FrameStamp(k * N, sec, nsec, (k % 25) // 20))
    st[0] = FrameStamp(0, 0, 0, 0)  # as real KiwiSDRs send
    return samples, st


def path_in(tmp_path: Path, station: str = "hb9ryz") -> Path:
    return tmp_path / file_name(START, 77_500.0, station)


def test_file_name_round_trip() -> None:
    name = file_name(START, 77_500.0, "dcf")
    assert name == "20261129T040000Z_77500_dcf_iq.wav"  # whole Hz, as kiwirecorder writes
    parsed = parse_file_name(name)
    assert (parsed.start_utc, parsed.frequency_hz, parsed.station) == (START, 77_500.0, "dcf")
    with pytest.raises(KiwiWavError, match=r"bad\.wav: file name does not match"):
        parse_file_name("bad.wav")
    # a frequency computed in floating point lands on the nearest Hz, not below it
    assert file_name(START, 77_499.9999, "x").split("_")[1] == "77500"
    assert file_name(START, 4_625e3 - 1e-6, "x").split("_")[1] == "4625000"


def test_round_trip_exact(tmp_path: Path) -> None:
    samples, st = make()
    p = write_kiwi_wav(path_in(tmp_path), samples, st, sample_rate_hz=12001.07)
    w = read_kiwi_wav(p)
    assert w.defects == []
    np.testing.assert_array_equal(w.samples, samples)
    assert w.samples.dtype == np.complex64
    assert w.stamps == st
    assert w.nominal_rate_hz == 12001 and w.station == "hb9ryz" and w.frequency_hz == 77_500.0
    assert abs(w.timing.t0_ns - T0) <= 100
    assert w.timing.sample_rate_hz == pytest.approx(12001.07, abs=0.01)
    assert w.timing.residual_ns < 1000 and w.timing.locked


@pytest.mark.parametrize(
    ("options", "defect"),
    [
        ({"stale_riff_size": True}, "stale RIFF size"),
        ({"truncate_bytes": 301}, "truncated last data chunk"),
        ({"odd_chunk": True}, None),
        ({"drop_kiwi": (5, 9)}, "2 data chunks without a kiwi chunk"),
    ],
)
def test_repairable_defects(tmp_path: Path, options: dict, defect: str | None) -> None:
    samples, st = make()
    p = write_kiwi_wav(path_in(tmp_path), samples, st, sample_rate_hz=12001.07, **options)
    w = read_kiwi_wav(p)
    if defect is None:
        assert w.defects == []
    else:
        assert any(defect in d for d in w.defects), w.defects
        with pytest.raises(KiwiWavError, match=p.name):
            read_kiwi_wav(p, strict=True)
    assert abs(w.timing.t0_ns - T0) <= 100
    np.testing.assert_array_equal(w.samples, samples[: w.samples.size])
    assert w.samples.size >= samples.size - N


def test_truncated_header_stale_size(tmp_path: Path) -> None:
    samples, st = make()
    p = write_kiwi_wav(
        path_in(tmp_path), samples, st, sample_rate_hz=12001.07, truncate_bytes=N * 4 + 5
    )
    w = read_kiwi_wav(p)
    assert any("truncated" in d for d in w.defects)
    assert any("stale RIFF size" in d for d in w.defects)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"drop_kiwi": "all"}, "no kiwi chunks"),
        ({"zero_stamps": True}, "all 60 GPS stamps are zero"),
    ],
)
def test_unusable_files(tmp_path: Path, options: dict, message: str) -> None:
    samples, st = make()
    p = write_kiwi_wav(path_in(tmp_path), samples, st, sample_rate_hz=12001.07, **options)
    with pytest.raises(KiwiWavError, match=message) as info:
        read_kiwi_wav(p)
    assert p.name in str(info.value)


def test_not_a_wave_file(tmp_path: Path) -> None:
    p = path_in(tmp_path)
    p.write_bytes(b"hello world, not a wave file")
    with pytest.raises(KiwiWavError, match="not a RIFF/WAVE file"):
        read_kiwi_wav(p)


def test_station_position_files(tmp_path: Path) -> None:
    (tmp_path / "dcf.txt").write_text(
        "d.dcf = struct('coord', [50.0155,9.0108], 'host', 'kiwi.example.org', 'port', 8073);\n"
    )
    pos = read_station_position(tmp_path / "dcf.txt")
    assert pos == StationPosition("dcf", 50.0155, 9.0108, "kiwi.example.org", 8073)
    written = write_station_position(tmp_path, StationPosition("xy", -33.5, 151.25, "h", 8074))
    assert read_station_position(written) == StationPosition("xy", -33.5, 151.25, "h", 8074)
    assert find_station_position(tmp_path, "xy").latitude == -33.5
    with pytest.raises(KiwiWavError, match="no position file for station 'nope'"):
        find_station_position(tmp_path, "nope")
    (tmp_path / "bad.txt").write_text("d.bad = struct('coord', [95.0,9.0]);")
    with pytest.raises(KiwiWavError, match="outside"):
        read_station_position(tmp_path / "bad.txt")


def test_a_garbled_stamp_is_no_stamp_not_a_lost_file(tmp_path: Path) -> None:
    samples, st = make()
    st[17] = FrameStamp(st[17].sample_index, st[17].gpssec, 2_000_000_000, 0)
    p = write_kiwi_wav(path_in(tmp_path), samples, st, sample_rate_hz=12001.07)
    w = read_kiwi_wav(p)
    assert any("gpsnsec=2000000000" in d for d in w.defects), w.defects
    assert w.stamps[17].gpssec == 0 and w.stamps[17].gpsnsec == 0
    assert abs(w.timing.t0_ns - T0) <= 100 and w.timing.locked
    with pytest.raises(KiwiWavError, match="gpsnsec"):
        read_kiwi_wav(p, strict=True)
