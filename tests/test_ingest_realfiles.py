"""ingest's per-file step against real-file cases (files from tests/lf_scenario.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lf_scenario as lf

from flows.ingest import load_file

A, B, _ = lf.STATIONS


def test_lost_frames_are_ingested_zero_filled_with_the_repair_listed(tmp_path: Path) -> None:
    stations = (replace(A, lost_frames=(50, 51)), replace(B, defects=("audio",)))
    truth = lf.write_scenario(tmp_path, stations=stations, duration_s=8.0, hz_names=True)
    good, audio = (
        load_file(str(f), positions={}, gnss_pos=tmp_path / "gnss_pos", strict=False)
        for f in truth["files"]  # type: ignore[attr-defined]
    )
    assert good.ok, good.error
    assert good.frequency_hz == 77_500.0  # "77500" in the name: whole Hz
    assert any("lost before frame 50" in d for d in good.defects)
    assert good.row is not None and good.row["sample_count"] == (8 * 12001 // 512) * 512
    assert "gaps_filled" in good.timing["flags"]  # type: ignore[index]
    assert "lost before frame 50" in good.recording.meta["global"]["rfacq:file_defects"]  # type: ignore[union-attr]
    assert not audio.ok and "real audio" in (audio.error or "")
    assert (audio.error or "").startswith(Path(str(truth["files"][1])).name)  # type: ignore[index]
