"""Acceptance: an LF transmitter located from three kiwirecorder files, as a user runs it.

The files come from tests/lf_scenario.py (its own synthesis and its own kiwi-wav writer,
independent of the project's simulator and writer) with the defects of real KiwiSDR
recordings, mixed passbands, different true sample rates and a recording date long past.
The command line is run in a subprocess exactly as documented, with ``--json``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lf_scenario
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _great_circle_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = (
        math.sin((la2 - la1) / 2) ** 2
        + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    )
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


@pytest.fixture(scope="module")
def located(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("lf")
    truth = lf_scenario.write_scenario(folder)
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "RF_DATA_DIR": str(tmp_path_factory.mktemp("data")),
    }
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.locate",
            "--kiwi-wav",
            *map(str, truth["files"]),
            "--gnss-pos",
            str(folder / "gnss_pos"),
            "--storage",
            "local",
            "--database",
            "sqlite",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {"summary": json.loads(done.stdout), "truth": truth, "stderr": done.stderr}


def test_stdout_is_one_json_object(located: dict) -> None:
    assert isinstance(located["summary"], dict)
    assert "location" in located["summary"]


def test_the_transmitter_is_found_within_a_few_km_using_every_receiver(located: dict) -> None:
    loc = located["summary"]["location"]
    error = _great_circle_m((loc["latitude"], loc["longitude"]), lf_scenario.TRANSMITTER)
    assert error < 3_000, f"{error:.0f} m from the transmitter: {loc}"
    assert loc["receivers_used"] == 3
    assert sorted(loc["receivers"]) == sorted(s.name for s in lf_scenario.STATIONS)


def test_the_error_ellipse_is_honest(located: dict) -> None:
    """The 95 % ellipse is neither absurdly large nor so small that the truth is far out."""
    loc = located["summary"]["location"]
    error = _great_circle_m((loc["latitude"], loc["longitude"]), lf_scenario.TRANSMITTER)
    assert 0 < loc["ellipse_minor_m"] <= loc["ellipse_major_m"] < 50_000
    assert error < 3 * loc["ellipse_major_m"], (error, loc)


def test_frames_lost_right_after_the_unstamped_first_frame_do_not_mistime_it(
    tmp_path: Path,
) -> None:
    """The first frame's 0/0 stamp cannot show frames lost after it: its samples would be
    timed by the next stamp, late by the gap (85 ms here). They are left out, and every
    sample that is correlated is timed by a real stamp."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from flows.locate import locate_kiwi_files

    a, b, c = lf_scenario.STATIONS
    late = replace(c, lost_frames=(1, 2))  # the last to start: its first frame opens the window
    truth = lf_scenario.write_scenario(tmp_path, stations=(a, b, late), duration_s=8.0, seed=3)
    outcome, reports = locate_kiwi_files(
        [str(f) for f in truth["files"]],  # type: ignore[union-attr]
        str(tmp_path / "gnss_pos"),
        None,
    )
    series = {r.station: r.series for r in reports}
    start_ns = round(datetime(2025, 3, 14, 10, 20, tzinfo=UTC).timestamp()) * 10**9
    # the first sample correlated is that of the file's second frame: true frame 3
    first_ns = start_ns + round(
        (late.start_offset_s + 3 * lf_scenario.FRAME / late.true_rate_hz) * 1e9
    )
    assert series["OE3KLU"] is not None
    assert abs(series["OE3KLU"].t0_ns - first_ns) < 1_000, series["OE3KLU"].t0_ns - first_ns
    assert outcome.tdoa is not None and len(outcome.tdoa.good_pairs) == 3
    for p in outcome.tdoa.good_pairs:
        true = truth["tdoa_s"][f"{p.a}-{p.b}"]  # type: ignore[index]
        assert abs(p.tdoa_s - true) < 4 * p.stderr_s, (p, true)  # type: ignore[operator]
