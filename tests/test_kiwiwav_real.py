"""The kiwi-wav reader against what real recordings contain, in files it did not write.

Every file here comes from tests/lf_scenario.py (its own synthesis and RIFF writer, from
the protocol document): lost frames, cut-off and padded files, files that are not IQ or
carry no timestamps, the file names kiwirecorder and people write, loose gnss_pos files.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lf_scenario as lf
import numpy as np
import pytest

from tasks.kiwiwav import (
    KiwiWavError,
    find_station_position,
    parse_file_name,
    plan_frame_gaps,
    read_kiwi_wav,
    read_station_position,
)
from tasks.timing import FrameStamp, datetime_to_ns, time_of_sample

START = datetime(2025, 3, 14, 10, 20, 0, tzinfo=UTC)
A = lf.STATIONS[0]  # PA3ABC: 12001.031 Hz, first frame 0/0


def _recording(station: lf.Station = A, seconds: float = 12.0) -> lf.Recording:
    (rec,), _ = lf.synthesise(START, seconds, stations=(station,))
    return rec


def _write(tmp_path: Path, rec: lf.Recording, **kw: object) -> Path:
    st = rec.station
    begin = START + timedelta(seconds=st.start_offset_s)
    path = tmp_path / f"{begin:%Y%m%dT%H%M%SZ}_77.50_{st.name}_iq.wav"
    lf.write_kiwi_wav(path, rec, **kw)  # type: ignore[arg-type]
    return path


def _true_time_ns(rec: lf.Recording, original_index: int) -> int:
    """UTC ns of an original sample: the scenario's GPS time minus the leap seconds."""
    gps_ns = rec.t0_gps_ns + round(original_index * 1e9 / rec.station.true_rate_hz)
    return datetime_to_ns(lf.GPS_EPOCH) + gps_ns - lf.LEAP_S * 10**9


@pytest.mark.parametrize("lost", [(150,), (150, 151, 152), (60, 61, 200)])
def test_lost_frames_are_zero_filled_and_every_sample_keeps_its_gps_time(
    tmp_path: Path, lost: tuple[int, ...]
) -> None:
    rec = _recording()
    wav = read_kiwi_wav(_write(tmp_path, rec, lost_frames=lost))
    n = lf.FRAME
    assert wav.samples.size == rec.samples.size  # the lost samples are back, as zeros
    runs = []
    for k in sorted(lost):
        if runs and runs[-1][0] + runs[-1][1] == k * n:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        else:
            runs.append((k * n, n))
    assert wav.gaps == runs
    for start, length in runs:
        assert not np.any(wav.samples[start : start + length])
    # samples after the gaps are the original ones, at their original GPS times
    k = max(lost) + 5
    got = wav.samples[k * n : k * n + 10]
    want = np.round(rec.samples[k * n : k * n + 10] * 32768) / 32768
    np.testing.assert_allclose(got, want, atol=1e-6)
    for i in (10 * n, k * n, wav.samples.size - 1):
        assert abs(time_of_sample(wav.timing, i) - _true_time_ns(rec, i)) < 200  # ns
    assert wav.timing.sample_rate_hz == pytest.approx(A.true_rate_hz, abs=1e-3)
    assert "gaps_filled" in wav.timing.flags and wav.timing.outliers <= 1
    assert any("lost before frame" in d and "zero-filled" in d for d in wav.defects)
    with pytest.raises(KiwiWavError, match="lost before frame"):
        read_kiwi_wav(_write(tmp_path, rec, lost_frames=lost), strict=True)


def test_without_the_gap_fill_the_fit_would_be_a_frame_off(tmp_path: Path) -> None:
    """What the fill prevents: concatenated across the gap, the later samples are
    placed a whole frame (42.7 ms) early by the line through the earlier stamps."""
    rec = _recording()
    wav = read_kiwi_wav(_write(tmp_path, rec, lost_frames=(150,)))
    stamps = [
        FrameStamp(k * lf.FRAME - (lf.FRAME if k > 150 else 0), sec, nsec, lgs)
        for k, (lgs, sec, nsec) in enumerate(rec.stamps)
        if k != 150
    ]
    plan = plan_frame_gaps(stamps, 12001.0, datetime_to_ns(START))
    assert plan.fills == {150: lf.FRAME}  # frame numbers of the file as written
    assert (
        abs(time_of_sample(wav.timing, 200 * lf.FRAME) - _true_time_ns(rec, 200 * lf.FRAME)) < 200
    )


def test_gps_stamps_stepping_backwards_keep_the_longest_part(tmp_path: Path) -> None:
    rec = _recording()
    back = [(lgs, (sec - 5) % 604800, nsec) if k >= 200 else (lgs, sec, nsec)
            for k, (lgs, sec, nsec) in enumerate(rec.stamps)]  # fmt: skip
    wav = read_kiwi_wav(_write(tmp_path, replace(rec, stamps=back)))
    assert wav.samples.size == 200 * lf.FRAME  # frames 0..199 are the longer part
    assert any("only frames 0..199 are kept" in d for d in wav.defects)
    assert (
        abs(time_of_sample(wav.timing, 100 * lf.FRAME) - _true_time_ns(rec, 100 * lf.FRAME)) < 200
    )


def test_a_clock_step_that_is_not_whole_frames_is_not_zero_filled(tmp_path: Path) -> None:
    """Stamps 3 ms ahead from frame 250 on (a receiver clock correction, say): no
    frames were lost, so nothing is invented; the longer part on one line is kept."""
    rec = _recording()
    step = [
        (lgs, *divmod(sec * 10**9 + nsec + 3_000_000, 10**9)) if k >= 250 else (lgs, sec, nsec)
        for k, (lgs, sec, nsec) in enumerate(rec.stamps)
    ]
    wav = read_kiwi_wav(_write(tmp_path, replace(rec, stamps=step)))
    assert wav.gaps == [] and wav.samples.size == 250 * lf.FRAME
    assert any("no lost-frames gap explains" in d for d in wav.defects)
    assert (
        abs(time_of_sample(wav.timing, 100 * lf.FRAME) - _true_time_ns(rec, 100 * lf.FRAME)) < 200
    )


def test_hours_off_and_stale_stamps_are_outliers_not_gaps(tmp_path: Path) -> None:
    st = replace(A, defects=("zero_first", "stale_first", "hours_early"))
    rec = _recording(st)
    wav = read_kiwi_wav(_write(tmp_path, rec))
    assert wav.gaps == [] and wav.samples.size == rec.samples.size
    assert wav.timing.outliers >= 2
    assert abs(time_of_sample(wav.timing, 0) - _true_time_ns(rec, 0)) < 200


@pytest.mark.parametrize(
    ("kw", "defect"),
    [
        ({"truncate_bytes": 1500}, "truncated last data chunk"),
        ({"trailing": b"\x00"}, "truncated chunk header"),
        ({"stale_riff": True}, "stale RIFF size"),
    ],
)
def test_repairable_damage_is_read_and_listed(tmp_path: Path, kw: dict, defect: str) -> None:
    rec = _recording()
    wav = read_kiwi_wav(_write(tmp_path, rec, **kw))
    assert any(defect in d for d in wav.defects), wav.defects
    assert abs(time_of_sample(wav.timing, 0) - _true_time_ns(rec, 0)) < 200
    with pytest.raises(KiwiWavError, match=r"PA3ABC_iq\.wav: (stale RIFF|truncated)"):
        read_kiwi_wav(_write(tmp_path, rec, **kw), strict=True)


def test_unusable_files_name_the_file_and_the_defect(tmp_path: Path) -> None:
    rec = _recording(seconds=2.0)
    audio = _write(tmp_path, replace(rec, station=replace(A, name="AUDIO")), channels=1)
    with pytest.raises(KiwiWavError, match=r"AUDIO_iq\.wav: .*1 channel.*real audio"):
        read_kiwi_wav(audio)
    plain = _write(tmp_path, replace(rec, station=replace(A, name="PLAIN")), kiwi_chunks=False)
    with pytest.raises(KiwiWavError, match=r"PLAIN_iq\.wav: no kiwi chunks"):
        read_kiwi_wav(plain)
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 2, 12001, 48004, 4, 16)
    header = tmp_path / "20250314T102000Z_77.50_HEADER_iq.wav"
    header.write_bytes(struct.pack("<4sI4s", b"RIFF", 4 + len(fmt), b"WAVE") + fmt)
    with pytest.raises(KiwiWavError, match=r"HEADER_iq\.wav: no samples"):
        read_kiwi_wav(header)
    off = [(lgs, 0, 0) for lgs, _, _ in rec.stamps]
    zeros = _write(tmp_path, replace(rec, stamps=off, station=replace(A, name="ZERO")))
    with pytest.raises(KiwiWavError, match=r"ZERO_iq\.wav: all \d+ GPS stamps are zero"):
        read_kiwi_wav(zeros)
    nogps = [(255, sec, nsec) for _, sec, nsec in rec.stamps]
    p = _write(tmp_path, replace(rec, stamps=nogps, station=replace(A, name="NOGPS")))
    with pytest.raises(KiwiWavError, match=r"NOGPS_iq\.wav: no usable GPS timing: .*no GPS"):
        read_kiwi_wav(p)


@pytest.mark.parametrize(
    ("name", "hz", "station"),
    [
        ("20250314T102000Z_77500_PA3ABC_iq.wav", 77_500.0, "PA3ABC"),  # kiwirecorder: Hz
        ("20250314T102000Z_77.50_PA3ABC_iq.wav", 77_500.0, "PA3ABC"),  # kHz, decimals
        ("20250314T102000Z_10000.00_my_kiwi-2.b_iq.wav", 10e6, "my_kiwi-2.b"),
        ("20250314T102000Z_10000000_DL0ABC_iq.wav", 10e6, "DL0ABC"),
        ("20250314T102000Z_4625000_UVB-76_IQ.WAV", 4_625e3, "UVB-76"),  # on 4625 kHz
        ("20250314T102000Z_4625.00_UVB-76_iq.wav", 4_625e3, "UVB-76"),
        ("20250314T102000Z_10000_VLF_iq.wav", 10e3, "VLF"),  # the lowest a KiwiSDR tunes
    ],
)
def test_file_names_as_written_in_the_wild(name: str, hz: float, station: str) -> None:
    parsed = parse_file_name(name)
    assert parsed.frequency_hz == pytest.approx(hz) and parsed.station == station
    assert parsed.start_utc == START


@pytest.mark.parametrize(
    "name",
    [
        "20250314T102000Z_4625_UVB-76_iq.wav",  # whole kHz (older tools): 4625 Hz
        "20250314T102000Z_60_MSF_iq.wav",
        "20250314T102000Z_9999_X_iq.wav",
        "20250314T102000Z_0.5_X_iq.wav",  # kHz: 500 Hz
        "20250314T102000Z_20000000.00_X_iq.wav",  # kHz: 20 GHz
    ],
)
def test_a_frequency_field_no_kiwisdr_tunes_is_refused_not_misread(name: str) -> None:
    field_ = name.split("_")[1]
    with pytest.raises(KiwiWavError) as info:
        parse_file_name(name)
    text = str(info.value)
    assert text.startswith(name + ": ") and f"frequency field '{field_}'" in text
    assert "[10 kHz, 10 GHz]" in text and "--frequency-hz" in text
    assert "whole number is Hz" in text and "kHz needs a decimal point" in text


def test_the_frequency_can_be_given_instead_of_the_name(tmp_path: Path) -> None:
    rec = _recording(seconds=2.0)
    path = _write(tmp_path, rec)
    renamed = path.rename(path.with_name(path.name.replace("_77.50_", "_77_")))
    with pytest.raises(KiwiWavError, match="frequency field '77'"):
        read_kiwi_wav(renamed)
    assert read_kiwi_wav(renamed, frequency_hz=77_500.0).frequency_hz == 77_500.0
    assert parse_file_name(renamed, frequency_hz=4_625e3).frequency_hz == 4_625e3
    with pytest.raises(KiwiWavError, match=r"frequency_hz=5000 \(--frequency-hz\) outside"):
        parse_file_name(renamed, frequency_hz=5e3)


def test_file_names_that_cannot_be_used_say_how_to_fix_them() -> None:
    with pytest.raises(KiwiWavError, match=r"no station in the name.*rename"):
        parse_file_name("20250314T102000Z_77500_iq.wav")  # kiwirecorder without --station
    with pytest.raises(KiwiWavError, match=r"recording\.wav: file name does not match"):
        parse_file_name("recording.wav")


def test_gnss_pos_with_loose_spacing_and_negative_coordinates(tmp_path: Path) -> None:
    st = lf.Station("LU1XYZ", -34.6037, -58.3816, 12001.0, 5000.0, 0.0, 30.0)
    path = tmp_path / "LU1XYZ.txt"
    path.write_text("\n  " + lf.position_text(st, spaces=True) + "\n")
    pos = read_station_position(path)
    assert (pos.station, pos.latitude, pos.longitude) == ("LU1XYZ", -34.6037, -58.3816)
    assert (pos.host, pos.port) == ("lu1xyz.example.net", 8073)
    assert find_station_position(tmp_path, "lu1xyz").latitude == -34.6037  # case differs
    with pytest.raises(KiwiWavError, match=r"LU1XYZ-2\.txt: no position file"):
        find_station_position(tmp_path, "LU1XYZ-2")


def _original(rec: lf.Recording, frame: int) -> np.ndarray:
    """An original frame's samples as the 16-bit file holds them."""
    x = rec.samples[frame * lf.FRAME : (frame + 1) * lf.FRAME]
    return (np.round(x.real * 32768) + 1j * np.round(x.imag * 32768)) / 32768


def test_a_frame_kept_between_two_lost_frames_keeps_its_place(tmp_path: Path) -> None:
    """Frames 100 and 102 lost: frame 101's stamp lies on the GPS line one frame after
    frame 99's, so it is placed there, with a one-frame gap on each side."""
    rec = _recording()
    wav = read_kiwi_wav(_write(tmp_path, rec, lost_frames=(100, 102)))
    n = lf.FRAME
    assert wav.samples.size == rec.samples.size
    assert wav.gaps == [(100 * n, n), (102 * n, n)]
    for k in (99, 101, 103):
        np.testing.assert_allclose(wav.samples[k * n : (k + 1) * n], _original(rec, k), atol=1e-6)
    assert not np.any(wav.samples[100 * n : 101 * n]) and not np.any(wav.samples[102 * n : 103 * n])
    for i in (50 * n, 101 * n, 200 * n):
        assert abs(time_of_sample(wav.timing, i) - _true_time_ns(rec, i)) < 200  # ns


def test_a_frame_between_lost_frames_whose_stamp_is_off_the_line_is_left_out(
    tmp_path: Path,
) -> None:
    """The same loss with frame 101's stamp 3 ms off: where its samples belong is not
    known, so they are zeroed and the three frames are one gap (never correlated)."""
    rec = _recording()
    lgs, sec, nsec = rec.stamps[101]
    stamps = list(rec.stamps)
    stamps[101] = (lgs, *divmod(sec * 10**9 + nsec + 3_000_000, 10**9))
    wav = read_kiwi_wav(_write(tmp_path, replace(rec, stamps=stamps), lost_frames=(100, 102)))
    n = lf.FRAME
    assert wav.samples.size == rec.samples.size
    assert wav.gaps == [(100 * n, 3 * n)]
    assert not np.any(wav.samples[100 * n : 103 * n])
    np.testing.assert_allclose(wav.samples[103 * n : 104 * n], _original(rec, 103), atol=1e-6)
    assert any("frame 100" in d and "position is not known" in d for d in wav.defects), wav.defects
    assert abs(time_of_sample(wav.timing, 200 * n) - _true_time_ns(rec, 200 * n)) < 200


@pytest.mark.parametrize(
    ("defects", "lost", "gap"),
    [
        ((), (1,), (1, 1)),  # frame 0 stamped: it places itself before the gap
        (("zero_first",), (2,), (2, 1)),  # frame 1 alone before the gap
        (("zero_first",), (2, 3), (2, 2)),
    ],
)
def test_a_gap_right_after_the_first_frames(
    tmp_path: Path, defects: tuple[str, ...], lost: tuple[int, ...], gap: tuple[int, int]
) -> None:
    rec = _recording(replace(A, defects=defects))
    wav = read_kiwi_wav(_write(tmp_path, rec, lost_frames=lost))
    n = lf.FRAME
    assert wav.samples.size == rec.samples.size
    assert wav.gaps == [(gap[0] * n, gap[1] * n)]
    for k in (0, gap[0] - 1, gap[0] + gap[1]):
        np.testing.assert_allclose(wav.samples[k * n : (k + 1) * n], _original(rec, k), atol=1e-6)
    for i in (0, 100 * n):
        assert abs(time_of_sample(wav.timing, i) - _true_time_ns(rec, i)) < 200  # ns


def test_the_longest_part_counts_the_last_frame_whole() -> None:
    """Two parts on different GPS lines (a 3 ms clock step before frame 10): the second
    holds as many frames and more samples (its last chunk is 700 samples long), so it
    is the one kept: its size runs to the file's end, not to its last frame's start."""
    rate, n = 12001.0, lf.FRAME
    starts = [k * n for k in range(20)]
    total = starts[-1] + 700
    t0 = datetime_to_ns(START)
    stamps = []
    for k, i in enumerate(starts):
        utc = t0 + round(i * 1e9 / rate) + (3_000_000 if k >= 10 else 0)
        gps = utc - datetime_to_ns(lf.GPS_EPOCH) + lf.LEAP_S * 10**9
        sec, nsec = divmod(gps % (604800 * 10**9), 10**9)
        stamps.append(FrameStamp(i, sec, nsec, 0))
    plan = plan_frame_gaps(stamps, rate, t0, n, sample_count=total)
    assert (plan.first_frame, plan.end_frame) == (10, 20)  # 9 * 512 + 700 > 10 * 512
    assert plan.fills == {}
