"""ingest's per-file step against real-file cases (files from tests/lf_scenario.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lf_scenario as lf
import numpy as np
import pytest

from flows.ingest import load_file, main, received_stretch
from tasks.recording import GAP_LABEL

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


def test_lost_frames_do_not_lower_the_measurements_and_are_annotated(tmp_path: Path) -> None:
    """40 of 187 frames lost (21 %): zero-filled, they would lower the mean power by
    1.0 dB; measured over the received samples only, the figures stay those of the same
    recording without the loss (within 0.3 dB: the noise differs by 21 % fewer samples),
    and the SigMF carries the gap as an annotation."""
    lost = tuple(range(50, 90))
    rows = {}
    recordings = {}
    for label, frames in (("clean", ()), ("gappy", lost)):
        folder = tmp_path / label
        truth = lf.write_scenario(
            folder, stations=(replace(A, lost_frames=frames),), duration_s=8.0
        )
        (path,) = truth["files"]  # type: ignore[misc]
        f = load_file(str(path), positions={}, gnss_pos=folder / "gnss_pos", strict=False)
        assert f.ok, f.error
        rows[label], recordings[label] = f.row, f.recording
    clean, gappy = rows["clean"], rows["gappy"]
    assert gappy["sample_count"] == clean["sample_count"]  # the zeros are kept in the file
    for key in ("power_dbfs", "signal_power_dbfs", "cn0_dbhz"):
        assert gappy[key] == pytest.approx(clean[key], abs=0.3), key
    assert gappy["noise_floor_dbfs_hz"] == pytest.approx(clean["noise_floor_dbfs_hz"], abs=0.5)
    annotations = recordings["gappy"].meta["annotations"]  # type: ignore[union-attr]
    assert [
        (a["core:sample_start"], a["core:sample_count"], a["core:label"]) for a in annotations
    ] == [(50 * lf.FRAME, 40 * lf.FRAME, GAP_LABEL)]
    assert recordings["clean"].meta["annotations"] == []  # type: ignore[union-attr]
    for edge in ("rfacq:passband_low_hz", "rfacq:passband_high_hz"):
        g = {k: r.meta["global"] for k, r in recordings.items()}  # type: ignore[union-attr]
        assert g["gappy"][edge] == pytest.approx(g["clean"][edge], abs=50.0)


def test_the_received_stretch_is_the_longest_run_without_lost_frames() -> None:
    x = np.arange(100, dtype=np.complex64)
    assert received_stretch(x, []) is x
    np.testing.assert_array_equal(received_stretch(x, [(10, 5), (60, 10)]), x[15:60])
    np.testing.assert_array_equal(received_stretch(x, [(40, 10), (45, 10)]), x[55:])  # overlap
    np.testing.assert_array_equal(received_stretch(x, [(0, 30), (80, 20)]), x[30:80])


def test_a_name_in_whole_khz_is_refused_and_frequency_hz_ingests_it(tmp_path: Path) -> None:
    truth = lf.write_scenario(tmp_path, stations=(replace(A, frequency_khz=60.0),), duration_s=3.0)
    (path,) = truth["files"]  # type: ignore[misc]
    renamed = path.rename(path.with_name(path.name.replace("_60.00_", "_60_")))
    refused = load_file(str(renamed), positions={}, gnss_pos=tmp_path / "gnss_pos", strict=False)
    assert not refused.ok and (refused.error or "").startswith(renamed.name)
    assert "frequency field '60'" in (refused.error or "")
    assert "--frequency-hz" in (refused.error or "")
    f = load_file(
        str(renamed),
        positions={},
        gnss_pos=tmp_path / "gnss_pos",
        strict=False,
        frequency_hz=60e3,
    )
    assert f.ok, f.error
    assert f.frequency_hz == 60e3 and f.row is not None and f.row["frequency_hz"] == 60e3
    assert f.recording.meta["captures"][0]["core:frequency"] == 60e3  # type: ignore[union-attr]


def test_the_ingest_command_takes_frequency_hz(
    prefect_server: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = lf.write_scenario(tmp_path, stations=(replace(A, frequency_khz=60.0),), duration_s=3.0)
    (path,) = truth["files"]  # type: ignore[misc]
    renamed = path.rename(path.with_name(path.name.replace("_60.00_", "_60_")))
    args = ["--kiwi-wav", str(renamed), "--gnss-pos", str(tmp_path / "gnss_pos")]
    args += ["--storage", "local", "--database", "sqlite", "--data-dir", str(tmp_path / "data")]
    assert main([*args, "--frequency-hz", "60000", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"][0]["frequency_hz"] == 60e3 and summary["ok"] == 1
