"""The report's text forms: terminal table, sparkline spectrum, summary message."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

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


def _summary_with_spectra() -> AcquisitionSummary:
    from tasks.pictures import Spectrum

    rng = np.random.default_rng(4)
    outcomes = [
        ReceiverOutcome(
            f"rx{i}", "ok", psd=Spectrum.from_density(rng.exponential(1e-9, 2048), 12_000.0)
        )
        for i in range(3)
    ] + [ReceiverOutcome("down", "failed", "capture failed")]
    return AcquisitionSummary(
        "0b0e2c4e-8d4f-4a57-9a40-3f3c1f0d9a11", 145.5e6, 2.0, "2026-11-29T06:00:00+00:00",
        "s3", "db", outcomes,
    )  # fmt: skip


@pytest.mark.integration
def test_spectrum_picture_is_stored_beside_the_recordings_with_a_presigned_link(
    s3_bucket: Any,
) -> None:
    """Real S3: the PNG lands under the acquisition's prefix, the markdown carries it
    inline and a presigned link that states its expiry and really serves the picture."""
    import asyncio
    import re
    from datetime import UTC, datetime

    import httpx

    from tasks.report import spectrum_picture

    start = datetime(2026, 11, 29, 6, tzinfo=UTC)
    lines = asyncio.run(spectrum_picture(_summary_with_spectra(), s3_bucket, start))
    text = "\n".join(lines)
    assert "![spectra](data:image/png;base64," in text
    assert "valid 7 days: until" in text
    url = re.search(r"\[Download the picture\]\((\S+)\)", text)
    assert url, text
    got = httpx.get(url.group(1), timeout=10)
    assert got.status_code == 200 and got.content[:8] == b"\x89PNG\r\n\x1a\n"
    acquisition = _summary_with_spectra().acquisition_id
    key = f"{s3_bucket.bucket_folder}/acquisitions/2026/11/29/{acquisition}/pictures/spectra.png"
    client = s3_bucket.credentials.get_s3_client()
    assert client.head_object(Bucket=s3_bucket.bucket_name, Key=key)["ContentLength"] > 1000


def test_spectrum_picture_on_a_local_folder_has_no_link(tmp_path: Any) -> None:
    import asyncio
    from datetime import UTC, datetime

    from blocks.storage import local_storage
    from tasks.report import spectrum_picture

    start = datetime(2026, 11, 29, 6, tzinfo=UTC)
    lines = asyncio.run(spectrum_picture(_summary_with_spectra(), local_storage(tmp_path), start))
    assert any("Picture stored at" in line for line in lines)
    assert not any("presigned" in line for line in lines)
    assert len(list(tmp_path.rglob("spectra.png"))) == 1
    assert asyncio.run(spectrum_picture(AcquisitionSummary("x", 1.0, 1.0, "", "", ""))) == []
