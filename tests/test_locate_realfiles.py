"""locate against what real kiwirecorder recordings contain, file by file.

Files come from tests/lf_scenario.py (its own synthesis and RIFF writer, independent of
the project's): damaged and unusable files among good ones, GPS clocks off or coasting,
recorders started seconds apart, 3-channel receivers, other frequencies, a bare carrier,
an empty channel, two receivers only, a skywave echo. Each case checks that the good
files still locate, that every file has a status and a reason, and that no confident
wrong position is printed.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import lf_scenario as lf
import pytest

from flows import locate as locate_flow
from tasks.geolocation import horizontal_distance_m, inside_ellipse

A, B, C = lf.STATIONS  # PA3ABC +-5 kHz, F5XYZ +-500 Hz, OE3KLU +-3 kHz
DK = lf.Station("DK0ZZ", 53.55, 10.00, 12001.07, 5000.0, 0.20, 34.0, ("zero_first",))
OK = lf.Station("OK1ZZ", 50.08, 14.43, 12001.09, 5000.0, 0.10, 34.0, ("zero_first",))
HB = lf.Station("HB9ZZ", 46.95, 7.45, 12001.12, 3000.0, 0.30, 34.0, ("zero_first",))


def _run(tmp_path: Path, stations: tuple[lf.Station, ...], **kw: object):
    truth = lf.write_scenario(tmp_path, stations=stations, **{"duration_s": 15.0, **kw})  # type: ignore[arg-type]
    files = [str(f) for f in truth["files"]]  # type: ignore[union-attr]
    outcome, reports = locate_flow.locate_kiwi_files(files, str(tmp_path / "gnss_pos"), None)
    return outcome, {r.station or Path(r.file).name: r for r in reports}, truth


def _error_m(outcome: locate_flow.LocateOutcome) -> float:
    p = outcome.position
    assert p is not None, outcome.error
    return horizontal_distance_m(*lf.TRANSMITTER, p.latitude, p.longitude)


def test_mixed_bag_cli_json_locates_with_the_good_files_and_says_why_for_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seven files: three good (one with lost frames, one truncated with an odd trailing
    byte), timestamps off, an unlocked GPS, a real-audio file and a station without a
    position file. ``--json`` carries every file's status and reason."""
    stations = (
        replace(A, lost_frames=(100, 101, 102)),
        B,
        replace(C, defects=(*C.defects, "truncated", "odd_byte")),
        replace(DK, defects=("stamps_off",)),
        replace(OK, defects=("unlocked",)),
        replace(HB, defects=("audio",)),
        lf.Station("NOPOS", 49.0, 12.0, 12001.0, 5000.0, 0.0, 34.0),
    )
    truth = lf.write_scenario(tmp_path, stations=stations, duration_s=15.0)
    (tmp_path / "gnss_pos" / "NOPOS.txt").unlink()
    code = locate_flow.main(
        [
            *("--kiwi-wav", *map(str, truth["files"])),  # type: ignore[arg-type]
            *("--gnss-pos", str(tmp_path / "gnss_pos"), "--database", "sqlite"),
            *("--data-dir", str(tmp_path), "--json"),
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary["error"]
    loc = summary["location"]
    assert sorted(loc["receivers"]) == ["F5XYZ", "OE3KLU", "PA3ABC"]
    error = horizontal_distance_m(*lf.TRANSMITTER, loc["latitude"], loc["longitude"])
    assert error < 3_000.0
    files = {f["station"]: f for f in summary["files"]}
    assert [files[s]["status"] for s in ("PA3ABC", "F5XYZ", "OE3KLU")] == ["used"] * 3
    assert any("lost before frame 100" in d for d in files["PA3ABC"]["defects"])
    assert files["PA3ABC"]["timing"]["gaps"] == [[100 * lf.FRAME, 3 * lf.FRAME]]
    assert any("truncated" in d for d in files["OE3KLU"]["defects"])
    assert files["DK0ZZ"]["status"] == "failed"
    assert "GPS stamps are zero (timestamps off)" in files["DK0ZZ"]["reason"]
    assert files["OK1ZZ"]["status"] == "excluded"
    assert "GPS not locked" in files["OK1ZZ"]["reason"]
    assert files["HB9ZZ"]["status"] == "failed" and "real audio" in files["HB9ZZ"]["reason"]
    assert files["NOPOS"]["status"] == "failed"
    assert (
        "NOPOS.txt" in files["NOPOS"]["reason"] and "no position file" in files["NOPOS"]["reason"]
    )
    for name in ("DK0ZZ", "OK1ZZ", "HB9ZZ", "NOPOS"):
        assert files[name]["file"].endswith(f"_{name}_iq.wav")


def test_lost_frames_in_two_receivers_do_not_move_the_position(tmp_path: Path) -> None:
    clean, _, _ = _run(tmp_path / "clean", (A, B, C))
    gappy, reports, _ = _run(
        tmp_path / "gappy",
        (replace(A, lost_frames=(80, 81)), B, replace(C, lost_frames=(150, 151, 152, 153))),
    )
    assert gappy.position is not None and clean.position is not None
    moved = horizontal_distance_m(
        clean.position.latitude,
        clean.position.longitude,
        gappy.position.latitude,
        gappy.position.longitude,
    )
    assert moved < 0.5 * clean.position.ellipse_major_m
    assert _error_m(gappy) < 3_000.0
    tdoa = gappy.tdoa
    assert tdoa is not None
    # the segments over each gap are left out of the pairs of that receiver: the window
    # (C's start, 0.81 s, to A's end, 14.97 s) is cut into segments of ~0.25 s; A's gap
    # lies 2.60-2.69 s into it, C's 6.40-6.57 s: each on one segment, or two when it
    # straddles a boundary (with the margin), never the same ones
    dropped = {}
    for station in ("PA3ABC", "OE3KLU"):
        found = re.search(
            rf"{station}: (\d+) of (\d+) segments fall on lost frames and are not correlated",
            "\n".join(tdoa.notes),
        )
        assert found, tdoa.notes
        dropped[station], nseg = int(found.group(1)), int(found.group(2))
        assert dropped[station] in (1, 2)
    assert 54 <= nseg <= 58  # 14.16 s in quarter seconds
    segments = {p.a + "-" + p.b: p.segments for p in tdoa.pairs}
    assert segments == {
        "PA3ABC-F5XYZ": nseg - dropped["PA3ABC"],
        "PA3ABC-OE3KLU": nseg - dropped["PA3ABC"] - dropped["OE3KLU"],
        "F5XYZ-OE3KLU": nseg - dropped["OE3KLU"],
    }
    assert "gaps_filled" in reports["OE3KLU"].timing["flags"]  # type: ignore[index]


def test_recorders_started_seconds_apart_and_one_that_missed_the_others(
    tmp_path: Path,
) -> None:
    stations = (
        replace(A, start_offset_s=0.0, duration_s=20.0),
        replace(B, start_offset_s=3.2),
        replace(C, start_offset_s=5.7, duration_s=10.0),
        replace(DK, start_offset_s=40.0),
    )
    outcome, reports, _ = _run(tmp_path, stations)
    assert sorted(outcome.position.receivers_used) == ["F5XYZ", "OE3KLU", "PA3ABC"]  # type: ignore[union-attr]
    assert _error_m(outcome) < 3_000.0
    window_s = (outcome.tdoa.window_end_ns - outcome.tdoa.window_start_ns) / 1e9  # type: ignore[union-attr]
    assert 9.0 < window_s <= 10.0  # C's 10 s, all inside A's and B's
    assert reports["DK0ZZ"].status == "excluded"
    assert "does not cover the window" in (reports["DK0ZZ"].reason or "")


def test_recordings_without_common_time_say_so(tmp_path: Path) -> None:
    stations = (replace(A, duration_s=4.0), replace(B, start_offset_s=10.0, duration_s=4.0))
    outcome, reports, _ = _run(tmp_path, stations)
    assert outcome.position is None and outcome.tdoa is None
    assert all(r.status == "excluded" for r in reports.values())
    assert all("no two recordings share" in (r.reason or "") for r in reports.values())
    assert "0 usable recording(s) of 2" in (outcome.error or "")


def test_a_wide_mode_20250_hz_receiver_with_12001_hz_ones(tmp_path: Path) -> None:
    # with lost frames too: the gap is carried through the resampling to 12001 Hz
    wide = replace(B, true_rate_hz=20250.13, passband_hz=5000.0, lost_frames=(300, 301))
    outcome, reports, truth = _run(tmp_path, (A, wide, C))
    assert reports["F5XYZ"].timing["gaps"] == [[300 * lf.FRAME, 2 * lf.FRAME]]  # type: ignore[index]
    # the 2 lost frames (51 ms) fall on one or two of the quarter-second segments
    assert any(n.startswith(("F5XYZ: 1 of", "F5XYZ: 2 of")) for n in outcome.tdoa.notes)  # type: ignore[union-attr]
    assert reports["F5XYZ"].timing["nominal_rate_hz"] == 20250  # type: ignore[index]
    assert outcome.position is not None and len(outcome.position.receivers_used) == 3
    for p in outcome.tdoa.good_pairs:  # type: ignore[union-attr]
        true = truth["tdoa_s"][f"{p.a}-{p.b}"]  # type: ignore[index]
        assert abs(p.tdoa_s - true) < 2e-6 + 4 * p.stderr_s, (p, true)
    assert _error_m(outcome) < 3_000.0


def test_a_file_on_another_frequency_is_left_out_and_kiwirecorder_hz_names(
    tmp_path: Path,
) -> None:
    other = replace(DK, frequency_khz=60.0)
    outcome, reports, _ = _run(tmp_path, (A, B, C, other), hz_names=True)
    assert outcome.frequency_hz == 77_500.0  # "77500" in the names is Hz, as kiwirecorder writes
    assert reports["DK0ZZ"].status == "excluded"
    assert "tuned to 60 kHz, the other files to 77.5 kHz" in (reports["DK0ZZ"].reason or "")
    assert outcome.position is not None and len(outcome.position.receivers_used) == 3


def test_two_frequencies_with_as_many_files_each_is_an_error(tmp_path: Path) -> None:
    outcome, reports, _ = _run(tmp_path, (A, replace(B, frequency_khz=60.0)))
    assert outcome.position is None
    assert all("different frequencies" in (r.reason or "") for r in reports.values())


@pytest.mark.parametrize("passband_hz", [500.0, 5000.0])
def test_a_bare_carrier_never_gives_a_position(tmp_path: Path, passband_hz: float) -> None:
    stations = tuple(replace(s, passband_hz=passband_hz) for s in (A, B, C))
    outcome, reports, _ = _run(tmp_path, stations, kind="carrier", duration_s=8.0)
    assert outcome.position is None
    assert "no time-difference information" in (outcome.error or "")
    assert all(p.tdoa_s is None for p in outcome.tdoa.pairs)  # type: ignore[union-attr]
    assert all(r.status == "unused" for r in reports.values())


def test_an_empty_channel_never_gives_a_position(tmp_path: Path) -> None:
    outcome, reports, _ = _run(tmp_path, (A, B, C), kind="empty", duration_s=8.0)
    assert outcome.position is None
    assert all(p.reason and "no coherent signal" in p.reason for p in outcome.tdoa.pairs)  # type: ignore[union-attr]
    assert all("no usable time difference" in (r.reason or "") for r in reports.values())


def test_two_receivers_give_their_time_difference_and_no_position(tmp_path: Path) -> None:
    outcome, reports, truth = _run(tmp_path, (A, B))
    assert outcome.position is None
    assert "at least 3 receivers" in (outcome.error or "")
    (pair,) = outcome.tdoa.good_pairs  # type: ignore[union-attr]
    assert abs(pair.tdoa_s - truth["tdoa_s"]["PA3ABC-F5XYZ"]) < 2e-6 + 4 * pair.stderr_s  # type: ignore[index, operator]
    assert all(r.status == "unused" for r in reports.values())


def test_three_receivers_give_a_position_with_its_ellipse(tmp_path: Path) -> None:
    outcome, reports, _ = _run(tmp_path, (A, B, C))
    p = outcome.position
    assert p is not None and sorted(p.receivers_used) == ["F5XYZ", "OE3KLU", "PA3ABC"]
    assert 0 < p.ellipse_minor_m <= p.ellipse_major_m < 20_000
    assert _error_m(outcome) < 3 * p.ellipse_major_m
    assert all(r.status == "used" for r in reports.values())
    assert not any(q.multipath for q in outcome.tdoa.pairs)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("echo", "passband_hz", "resolved"),
    [
        ((4.0e-3, 0.5), 500.0, False),  # B itself hears +-500 Hz: ~3 ms resolution
        ((1.5e-3, 0.6), 5000.0, False),
        ((8.0e-3, 0.5), 5000.0, True),
    ],
)
def test_a_weaker_skywave_echo_neither_captures_the_peak_nor_escapes_the_ellipse(
    tmp_path: Path, echo: tuple[float, float], passband_hz: float, resolved: bool
) -> None:
    stations = (
        replace(A, passband_hz=passband_hz),
        replace(B, echo=echo, passband_hz=passband_hz if resolved else B.passband_hz),
        C,
    )
    outcome, _, truth = _run(tmp_path, stations)
    pairs = {f"{p.a}-{p.b}": p for p in outcome.tdoa.good_pairs}  # type: ignore[union-attr]
    for name in ("PA3ABC-F5XYZ", "F5XYZ-OE3KLU"):
        p = pairs[name]
        true = truth["tdoa_s"][name]  # type: ignore[index]
        assert abs(p.tdoa_s - true) < 0.2 * echo[0], (name, p.tdoa_s, true)  # not the echo
    # an echo the band cannot resolve leans the peak: its pairs say so and their error
    # covers it, so the ellipse holds the transmitter (a confident wrong position is the
    # failure here); a resolved echo changes nothing
    assert pairs["F5XYZ-OE3KLU"].multipath is not resolved
    assert not pairs["PA3ABC-OE3KLU"].multipath  # no echo in either receiver
    assert outcome.position is not None
    assert inside_ellipse(outcome.position, *lf.TRANSMITTER)
    if resolved:
        assert _error_m(outcome) < 1_000.0 and outcome.position.ellipse_major_m < 2_000.0


def test_five_60_s_files_at_20250_hz_stay_within_a_few_copies_of_their_samples(
    tmp_path: Path,
) -> None:
    """Peak memory of locate over 5 x 60 s wide-mode files, measured in its own process:
    the samples as complex64 are 49 MB; 5 x 60 s used 1.1 GB before the correlations were
    done a few segments at a time over the bins in use (now ~0.3 GB over the imports)."""
    import subprocess
    import sys

    stations = tuple(
        replace(s, true_rate_hz=20250.0 + 0.05 * i, passband_hz=5000.0)
        for i, s in enumerate((A, B, C, DK, OK))
    )
    truth = lf.write_scenario(tmp_path, stations=stations, duration_s=60.0)
    code = (
        "import json, resource, sys\n"
        "from flows.locate import locate_kiwi_files\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "o, _ = locate_kiwi_files(sys.argv[2:], sys.argv[1], None)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "p = o.position\n"
        "out = [(peak - base) * 1024, p.latitude, p.longitude, len(p.receivers_used)]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "gnss_pos"), *map(str, truth["files"])],  # type: ignore[call-overload]
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
    )
    grown, lat, lon, used = json.loads(done.stdout.strip().splitlines()[-1])
    complex64_bytes = 5 * 60 * 20250 * 8
    assert grown < 8 * complex64_bytes, f"{grown / 1e6:.0f} MB over the imports"
    assert used == 5
    assert horizontal_distance_m(*lf.TRANSMITTER, lat, lon) < 1_000.0


def test_names_in_whole_khz_are_refused_and_frequency_hz_locates_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files named ``..._60_...`` (whole kHz, as older tools wrote): read as Hz that is
    below what a KiwiSDR tunes, so each is refused with the way out; ``--frequency-hz``
    gives the frequency and the files locate."""
    stations = tuple(replace(s, frequency_khz=60.0) for s in (A, B, C))
    truth = lf.write_scenario(tmp_path, stations=stations, duration_s=8.0)
    files = [str(f.rename(f.with_name(f.name.replace("_60.00_", "_60_")))) for f in truth["files"]]  # type: ignore[attr-defined]
    outcome, reports = locate_flow.locate_kiwi_files(files, str(tmp_path / "gnss_pos"), None)
    assert outcome.position is None
    for r in reports:
        assert r.status == "failed"
        assert "frequency field '60'" in (r.reason or "") and "--frequency-hz" in (r.reason or "")
    code = locate_flow.main(
        [
            *("--kiwi-wav", *files, "--gnss-pos", str(tmp_path / "gnss_pos")),
            *("--frequency-hz", "60000", "--database", "sqlite"),
            *("--data-dir", str(tmp_path), "--json"),
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary["error"]
    assert {f["frequency_hz"] for f in summary["files"]} == {60_000.0}
    assert [f["status"] for f in summary["files"]] == ["used"] * 3
    loc = summary["location"]
    assert horizontal_distance_m(*lf.TRANSMITTER, loc["latitude"], loc["longitude"]) < 3_000.0
