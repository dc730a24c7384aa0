"""The ingest flow: kiwi-wav files written from real simulator captures, into SQLite and a
local folder (and into the real TimescaleDB + S3 services), with bad files alongside."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blocks.database import sqlite_engine, timescaledb_from_env
from blocks.storage import local_storage, minio_bucket_from_env
from flows.ingest import ingest, main, parse_positions
from tasks.kiwisdr.client import Capture, CaptureSettings, capture_iq
from tasks.kiwisdr.emitter import Emitter
from tasks.kiwisdr.simulator import SimulatedNetwork, SimulatedReceiver
from tasks.kiwiwav import StationPosition, file_name, write_kiwi_wav, write_station_position
from tasks.recording import read_recording
from tasks.records import measurements_for
from tasks.storage import load_recording
from tasks.timing import ns_to_datetime

F_HZ = 10.1e6
STATIONS = {"near": (45.05, 7.52, 12001.03), "far": (43.0, 8.6, 12001.2)}


@pytest.fixture(scope="module")
def captures() -> Iterator[tuple[SimulatedNetwork, dict[str, Capture]]]:
    emitter = Emitter(45.0, 7.5, 200, F_HZ, eirp_dbm=20.0, modulation="bpsk", symbol_rate=2400)
    receivers = [
        SimulatedReceiver(name=n, latitude=lat, longitude=lon, sample_rate=fs)
        for n, (lat, lon, fs) in STATIONS.items()
    ]
    with SimulatedNetwork(receivers, emitter, seed=21) as net:
        s = CaptureSettings(F_HZ, 1.0)

        async def both() -> list[Capture]:
            return await asyncio.gather(*(capture_iq(net.url(n), s, receiver=n) for n in STATIONS))

        caps = asyncio.run(both())
        yield net, dict(zip(STATIONS, caps, strict=True))


def write_file(folder: Path, cap: Capture, station: str | None = None, **defects: Any) -> Path:
    assert cap.first_sample_ns is not None
    name = file_name(ns_to_datetime(cap.first_sample_ns), F_HZ, station or cap.receiver)
    return write_kiwi_wav(
        folder / name, cap.samples, cap.stamps, sample_rate_hz=cap.sample_rate, **defects
    )


def gnss_dir(folder: Path) -> Path:
    pos = folder / "gnss_pos"
    pos.mkdir(exist_ok=True)
    for n, (lat, lon, _) in STATIONS.items():
        write_station_position(pos, StationPosition(n, lat, lon, f"{n}.example", 8073))
    return pos


def test_parse_positions() -> None:
    assert parse_positions(["a=1.5,-2"]) == {"a": StationPosition("a", 1.5, -2.0)}
    with pytest.raises(ValueError, match="NAME=LAT,LON"):
        parse_positions(["a=1.5"])
    with pytest.raises(ValueError, match=r"latitude must be in \[-90, 90\]"):
        parse_positions(["a=91,0"])


def test_ingest_into_sqlite_and_local_folder(
    prefect_server: None, tmp_path: Path, captures: tuple[SimulatedNetwork, dict[str, Capture]]
) -> None:
    net, caps = captures
    wav_dir = tmp_path / "wav"
    wav_dir.mkdir()
    good = [
        write_file(wav_dir, caps["near"]),
        write_file(wav_dir, caps["far"], stale_riff_size=True),  # repaired, still good
    ]
    bad = [
        write_file(wav_dir, caps["near"], station="nokiwi", drop_kiwi="all"),
        write_file(wav_dir, caps["near"], station="zeros", zero_stamps=True),
        write_file(wav_dir, caps["far"], station="nowhere"),  # no position for it
    ]
    (wav_dir / "junk_iq.wav").write_bytes(b"not a wav")
    files = [str(p) for p in good + bad] + [str(wav_dir / "junk_iq.wav")]
    state = asyncio.run(
        ingest(
            files,
            gnss_pos=str(gnss_dir(tmp_path)),
            positions=["nokiwi=45,7", "zeros=45,7"],
            storage="local",
            database="sqlite",
            data_dir=str(tmp_path / "data"),
            return_state=True,
        )
    )
    assert state.is_failed()  # not every file went through...
    summary = state.result(raise_on_failure=False)
    assert summary["ok"] == 2 and summary["failed"] == 4  # ...but the good ones did
    by_file = {Path(f["file"]).name: f for f in summary["files"]}
    errors = {n: f["error"] for n, f in by_file.items() if f["status"] == "failed"}
    assert "no kiwi chunks" in errors[bad[0].name] and bad[0].name in errors[bad[0].name]
    assert "GPS stamps are zero" in errors[bad[1].name]
    assert "unknown position of station 'nowhere'" in errors[bad[2].name] or (
        "no position file for station 'nowhere'" in errors[bad[2].name]
    )
    assert "file name does not match" in errors["junk_iq.wav"]
    assert any("stale RIFF size" in d for d in by_file[good[1].name]["defects"])

    (acquisition_id,) = summary["acquisitions"]
    engine = sqlite_engine(tmp_path / "data" / "rf_acquisition.db")
    try:
        rows = {r["receiver"]: r for r in measurements_for(engine, acquisition_id)}
    finally:
        engine.dispose()
    assert set(rows) == {"near", "far"}
    fs = local_storage(tmp_path / "data" / "recordings")
    for name, cap in caps.items():
        row, info = rows[name], by_file[good[list(caps).index(name)].name]
        assert row["status"] == "ok" and row["gps_fix"]
        assert (row["latitude"], row["longitude"]) == STATIONS[name][:2]
        # The file's model is the capture's model: same stamps, same fit.
        assert info["first_sample_ns"] == cap.first_sample_ns
        truth = net.sample_utc_ns(name, round(net.sample_index_at(name, cap.first_sample_ns)))
        assert abs(info["first_sample_ns"] - truth) <= 100
        assert info["sample_rate_fitted_hz"] == pytest.approx(STATIONS[name][2], abs=0.01)
        assert info["timing_residual_ns"] < 1000
        samples, meta = asyncio.run(load_recording(fs, row["object_key"]))
        np.testing.assert_array_equal(samples, cap.samples)
        model = meta["global"]["rfacq:timing_model"]
        assert model["t0_ns"] == cap.first_sample_ns and isinstance(model["t0_ns"], int)
        assert meta["global"]["rfacq:source_file"] == info["file"].split("/")[-1]
        assert row["sha512"] == meta["global"]["core:sha512"]


def test_cli_json_is_one_object_on_stdout(
    prefect_server: None,
    tmp_path: Path,
    captures: tuple[SimulatedNetwork, dict[str, Capture]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, caps = captures
    p = write_file(tmp_path, caps["near"])
    lat, lon, _ = STATIONS["near"]
    code = main(
        [
            "--kiwi-wav",
            str(p),
            "--position",
            f"near={lat},{lon}",
            "--storage",
            "local",
            "--database",
            "sqlite",
            "--data-dir",
            str(tmp_path / "data"),
            "--json",
        ]
    )
    out = capsys.readouterr().out
    summary = json.loads(out)  # the whole of stdout is one JSON object
    assert code == 0
    assert summary["ok"] == 1 and summary["files"][0]["gps_locked"] in (True, False)
    assert summary["files"][0]["first_sample_ns"] == caps["near"].first_sample_ns


def test_ingest_into_timescaledb_and_s3(
    prefect_server: None,
    s3_env: dict[str, str],
    pg_engine: Any,
    unique: str,
    tmp_path: Path,
    captures: tuple[SimulatedNetwork, dict[str, Capture]],
) -> None:
    _, caps = captures
    bucket = minio_bucket_from_env(s3_env)
    bucket.bucket_folder = f"test-{unique}"
    bucket.save(f"test-{unique}", overwrite=True)
    timescaledb_from_env(s3_env).save(f"test-{unique}", overwrite=True)
    files = [str(write_file(tmp_path, c)) for c in caps.values()]
    state = asyncio.run(
        ingest(
            files,
            gnss_pos=str(gnss_dir(tmp_path)),
            storage=f"s3-bucket/test-{unique}",
            database=f"timescaledb-connection/test-{unique}",
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    summary = state.result()
    (acquisition_id,) = summary["acquisitions"]
    rows = measurements_for(pg_engine, acquisition_id)
    assert {r["receiver"] for r in rows} == set(STATIONS)
    for row in rows:
        data = bucket.read_path(row["object_key"])
        meta = bucket.read_path(row["object_key"].removesuffix(".npy") + ".sigmf-meta")
        samples, parsed = read_recording(data, meta)
        np.testing.assert_array_equal(samples, caps[row["receiver"]].samples)
        assert parsed["global"]["rfacq:timing_model"]["t0_ns"] == (
            caps[row["receiver"]].first_sample_ns
        )
