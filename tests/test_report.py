"""The report's text forms: terminal table, sparkline spectrum, summary message."""

from __future__ import annotations

import numpy as np

from tasks.report import (
    AcquisitionSummary,
    ReceiverOutcome,
    format_table,
    recordings_folder,
    sparkline,
)


def test_sparkline_marks_the_carrier_bin() -> None:
    density = np.full(512, 1e-11)
    density[300] = 1e-6
    line = sparkline(density, bins=48)
    assert len(line) == 48
    assert line.count("█") == 1 and line.index("█") == 300 * 48 // 512
    assert set(line) == {"▁", "█"}  # 50 dB below the peak is clipped to the floor
    assert sparkline(np.array([])) == ""


def test_summary_message_and_table() -> None:
    s = AcquisitionSummary("a1", 145.5e6, 2.0, "2026-11-28T12:00:00+00:00", "local", "sqlite")
    s.receivers = [
        ReceiverOutcome(
            "torino",
            "ok",
            row={"snr_db": 25.44, "frequency_offset_hz": -14.5, "sample_count": 24064},
            location="/data/torino.npy",
        ),
        ReceiverOutcome("genova", "failed", error="capture failed: ReceiverBusy: all 4 channels"),
        ReceiverOutcome("coazze", "skipped", error="receiver full (4/4 users)"),
    ]
    assert s.message == "1/3 receivers ok (1 failed, 1 skipped)"
    s.record_error = "OperationalError: connection refused"
    assert s.message.endswith(
        "rows missing for acquisition a1: OperationalError: connection refused"
    )
    lines = format_table(s.as_dict()).splitlines()
    assert lines[0].split()[:3] == ["receiver", "status", "SNR"]
    assert lines[2].split() == ["torino", "ok", "25.4", "-14.50", "24064", "/data/torino.npy"]
    assert "ReceiverBusy" in lines[3] and lines[3].split()[2:5] == ["-", "-", "-"]
    assert s.as_dict()["ok"] == 1


def test_request_validation_names_field_and_range() -> None:
    import math

    import pytest

    from tasks.plan import PlanError, validate_request

    cases = {
        (1.0, 2.0): r"frequency_hz=1\.0 is out of range \[10000, 6000000000\] Hz",
        (145.5e6, 0.0): r"duration_s=0\.0 is out of range \[0\.05, 600\] s",
        (math.nan, 2.0): r"frequency_hz=nan is out of range",
        (145.5e6, True): r"duration_s=True is out of range",
    }
    for (freq, duration), match in cases.items():
        with pytest.raises(PlanError, match=match):
            validate_request(freq, duration)
    validate_request(145.5e6, 2.0)


def test_spooled_recordings_are_counted_apart_from_failures() -> None:
    """All recordings in the spool: "0/7 receivers ok (7 spooled)", never "7 failed"; a
    mixed run counts each kind once."""
    s = AcquisitionSummary("a1", 145.5e6, 2.0, "2026-11-28T12:00:00+00:00", "s3", "sqlite")
    s.receivers = [ReceiverOutcome(f"rx{i}", "spooled", error="store failed") for i in range(7)]
    assert s.message == "0/7 receivers ok (7 spooled)"
    s.receivers[:3] = [
        ReceiverOutcome("a", "ok"),
        ReceiverOutcome("b", "failed", error="capture failed"),
        ReceiverOutcome("c", "skipped", error="receiver full"),
    ]
    assert s.message == "1/7 receivers ok (1 failed, 4 spooled, 1 skipped)"


def test_the_table_names_recordings_inside_their_shared_folder() -> None:
    folder = "s3://rf/acquisitions/2026/11/29/a1/"
    receivers = [
        ReceiverOutcome("torino", "ok", location=f"{folder}torino.npy").brief(),
        ReceiverOutcome("genova", "ok", location=f"{folder}genova.npy").brief(),
        ReceiverOutcome("coazze", "failed", error="capture failed").brief(),
    ]
    assert recordings_folder(receivers) == folder
    summary = {"receivers": receivers}
    lines = format_table(summary).splitlines()
    assert lines[2].split()[-1] == "torino.npy" and lines[3].split()[-1] == "genova.npy"
    assert lines[4].rstrip().endswith("capture failed")
    assert recordings_folder(receivers[:1]) is None  # one recording: its full location
