"""The locate flow end to end: kiwirecorder files of an LF transmitter (the real-data
shape) through the CLI with --json, and the simulated network over real websockets."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blocks.database import sqlite_engine
from flows import locate as locate_flow
from tasks.geolocation import horizontal_distance_m
from tasks.kiwisdr.emitter import Emitter, path_truth, received_signal
from tasks.kiwiwav import StationPosition, file_name, write_kiwi_wav, write_station_position
from tasks.locations import locations_for
from tasks.timing import NS_PER_S, FrameStamp, datetime_to_ns, utc_ns_to_gps_stamp

N = 512
DEV = 0.27  # DCF77's pseudo-random phase modulation: +-15.6 degrees
LF_HZ = 77_500.0
# A DCF77-like LF transmitter and three receivers 300-800 km away from it.
TRANSMITTER = (50.0156, 9.0108)
STATIONS = {
    # name: (lat, lon, true rate Hz, passband Hz, start offset ns)
    "north": (53.55, 10.00, 12001.03, (-500.0, 500.0), 310_000_123),
    "south": (45.46, 9.19, 12001.20, (-5000.0, 5000.0), 120_500_777),
    "west": (48.86, 2.35, 12001.11, (-5000.0, 5000.0), 455_000_001),
}
START = datetime(2026, 11, 29, 4, 0, 0, tzinfo=UTC)


def _lf_files(folder: Path, seconds: float = 30.0, modulation: str = "pm") -> list[Path]:
    rng = np.random.default_rng(11)
    emitter = Emitter(
        *TRANSMITTER,
        0.0,
        LF_HZ,
        eirp_dbm=40.0,
        modulation=modulation,
        symbol_rate=645.0,
        phase_deviation_rad=DEV,
    )
    gnss = folder / "gnss_pos"
    gnss.mkdir()
    files = []
    for name, (lat, lon, rate, passband, offset_ns) in STATIONS.items():
        truth = path_truth(
            emitter,
            (lat, lon, 0.0),
            tuned_hz=LF_HZ,
            lo_ppm=0.0,
            full_scale_dbm=-30.0,
            noise_density_dbfs_hz=-110.0,
        )
        frames = int(seconds * rate) // N
        n = frames * N
        t0_ns = datetime_to_ns(START) + offset_ns
        t = (t0_ns % (3600 * NS_PER_S)) / NS_PER_S + np.arange(n) / rate
        x = received_signal(emitter, truth, t) / truth.amplitude * 0.2  # C/N0 about 50 dB-Hz
        x = x + 0.02 * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
        f = np.fft.fftfreq(n, 1.0 / rate)
        spec = np.fft.fft(x)
        spec[(f < passband[0]) | (f > passband[1])] *= 0.01  # the receiver's filter
        x = np.fft.ifft(spec)
        stamps = []
        for k in range(frames):
            sec, nsec = utc_ns_to_gps_stamp(
                t0_ns + round(Fraction(k * N * NS_PER_S) / Fraction(rate))
            )
            stamps.append(FrameStamp(k * N, sec, nsec, (k % 25) // 20))
        stamps[0] = FrameStamp(0, 0, 0, 0)  # zero first frame
        sec, nsec = stamps[1].gpssec - 300, stamps[1].gpsnsec  # stale second stamp
        stamps[1] = FrameStamp(N, sec, nsec, 0)
        bad = stamps[40]
        stamps[40] = FrameStamp(bad.sample_index, bad.gpssec - 7200, bad.gpsnsec, 0)  # hours off
        path = folder / file_name(START, LF_HZ, name)
        write_kiwi_wav(
            path,
            x.astype(np.complex64),
            stamps,
            sample_rate_hz=rate,
            stale_riff_size=(name == "west"),
        )
        write_station_position(gnss, StationPosition(name, lat, lon))
        files.append(path)
    return files


def test_lf_kiwi_wav_real_data_shape_located_with_every_receiver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three receivers 300-800 km away, 30 s, +-500 Hz and +-5 kHz passbands mixed,
    rates differing, stamp defects: a position within 3 km using every receiver."""
    files = _lf_files(tmp_path)
    for f in files:
        d = horizontal_distance_m(*TRANSMITTER, *STATIONS[f.name.split("_")[2]][:2])
        assert 300e3 < d < 800e3
    code = locate_flow.main(
        [
            "--kiwi-wav",
            *map(str, files),
            "--gnss-pos",
            str(tmp_path / "gnss_pos"),
            "--database",
            "sqlite",
            "--data-dir",
            str(tmp_path),
            "--json",
        ]
    )
    out = capsys.readouterr().out
    summary = json.loads(out)  # stdout is exactly one JSON object
    assert code == 0, summary
    loc = summary["location"]
    assert loc["receivers_used"] == 3 and loc["pairs_used"] == 3
    assert sorted(loc["receivers"]) == sorted(STATIONS)
    error = horizontal_distance_m(*TRANSMITTER, loc["latitude"], loc["longitude"])
    assert error < 3_000.0, (error, summary["pairs"])
    assert error < loc["ellipse_major_m"]  # seeded: the truth is inside this ellipse
    for key in (
        "ellipse_major_m",
        "ellipse_minor_m",
        "ellipse_orientation_deg",
        "gdop",
        "residual_rms_ns",
    ):
        assert loc[key] is not None and math.isfinite(loc[key])
    assert Path(summary["map"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = locations_for(sqlite_engine(tmp_path / "rf_acquisition.db"))
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["source"] == "kiwi-wav"
    assert rows[0]["latitude"] == pytest.approx(loc["latitude"])


def test_pure_carrier_kiwi_wav_cli_says_so_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _lf_files(tmp_path, seconds=6.0, modulation="carrier")
    code = locate_flow.main(
        [
            *("--kiwi-wav", *map(str, files), "--gnss-pos", str(tmp_path / "gnss_pos")),
            *("--database", "sqlite", "--data-dir", str(tmp_path), "--json"),
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 1
    assert summary["location"] is None and summary["ok"] is False
    assert "no time-difference information" in summary["error"]
    rows = locations_for(sqlite_engine(tmp_path / "rf_acquisition.db"))
    assert [r["status"] for r in rows] == ["failed"]
    assert "no time-difference information" in rows[0]["error"]


def test_pure_carrier_says_no_time_information(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(2)
    series = []
    emitter = Emitter(*TRANSMITTER, 0.0, LF_HZ, modulation="carrier")
    from tasks.tdoa import ReceiverSeries

    for name, (lat, lon, rate, _, offset_ns) in STATIONS.items():
        n = int(5 * rate)
        truth = path_truth(
            emitter,
            (lat, lon, 0.0),
            tuned_hz=LF_HZ,
            lo_ppm=0.0,
            full_scale_dbm=-30.0,
            noise_density_dbfs_hz=-110.0,
        )
        t = np.arange(n) / rate
        x = received_signal(emitter, truth, t) / truth.amplitude * 0.05
        x = x + 0.01 * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
        series.append(ReceiverSeries(name, lat, lon, 0.0, x, offset_ns, rate, LF_HZ))
    outcome = locate_flow.locate_series(series)
    assert outcome.position is None
    assert "no time-difference information" in (outcome.error or "")


@pytest.mark.flow
def test_simulated_network_psk_acquire_then_locate(prefect_server: None, tmp_path: Path) -> None:
    """Websocket capture from the simulator (RRC BPSK emitter) -> recordings -> locate."""
    from blocks.receiver import receiver_name
    from flows.acquisition import acquire
    from tasks.kiwisdr.network import bind_urls, simulated_network
    from tasks.kiwisdr.simulator import SimulatedNetwork

    frequency = 145_500_000.0
    base, receivers = simulated_network(frequency_hz=frequency)
    emitter = replace(base.emitter, modulation="rrc-bpsk", latitude=44.95, longitude=8.10)
    network = SimulatedNetwork(base.receivers.values(), emitter)
    with network:
        bind_urls(network, receivers)
        for rx in receivers:
            rx.save(receiver_name(rx), overwrite=True)
        state = asyncio.run(
            acquire(
                frequency_hz=frequency,
                duration_s=3.0,
                network="blocks",
                receivers=sorted(receiver_name(r) for r in receivers),
                storage="local",
                database="sqlite",
                data_dir=str(tmp_path),
                return_state=True,
            )
        )
    assert state.is_completed(), state.message
    acquisition_id = state.result()["acquisition_id"]
    located = asyncio.run(
        locate_flow.locate(
            acquisition_id=acquisition_id,
            storage="local",
            database="sqlite",
            data_dir=str(tmp_path),
            truth_latitude=emitter.latitude,
            truth_longitude=emitter.longitude,
            emitter_altitude_m=emitter.altitude_m,
            return_state=True,
        )
    )
    assert located.is_completed(), located.message
    summary = located.result()
    loc = summary["location"]
    assert loc is not None, summary
    assert loc["error_m"] < 1_000.0, summary["pairs"]
    assert loc["receivers_used"] >= 6
    rows = locations_for(sqlite_engine(tmp_path / "rf_acquisition.db"), acquisition_id)
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert rows[0]["error_m"] == pytest.approx(loc["error_m"])
    assert rows[0]["flow_run_id"] == str(located.state_details.flow_run_id)
    # The map is kept beside the acquisition's recordings, as well as under data_dir.
    stored = list((tmp_path / "recordings").rglob(f"{acquisition_id}/pictures/map-*.png"))
    assert len(stored) == 1 and stored[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    artifacts = asyncio.run(_artifacts(located.state_details.flow_run_id))
    table = json.loads(artifacts["locate-pairs"].data)
    assert len(table) == 21 and sum(r["dropped"] is None for r in table) >= 15
    assert "data:image/png;base64," in artifacts["locate-summary"].data
    assert Path(summary["map"]).read_bytes()[:4] == b"\x89PNG"


async def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def test_recordings_without_a_timing_model_are_refit_from_frame_times() -> None:
    """Recordings made before rfacq:timing_model kept per-frame GPS offsets from the first
    stamped frame: the flow refits t0 to the nanosecond and the true rate from them."""
    rate = Fraction("12001.137")
    t0 = datetime_to_ns(START) + 123_456_789
    frames = 60
    gps = [
        utc_ns_to_gps_stamp(t0 + round(Fraction(k * N * NS_PER_S) / rate)) for k in range(frames)
    ]
    first = gps[0][0] + gps[0][1] * 1e-9
    g = {
        "rfacq:receiver": "old",
        "core:sample_rate": 12001.0,
        "core:geolocation": {"type": "Point", "coordinates": [7.5, 45.0, 100.0]},
        "rfacq:timing": {
            "gps_week": 0,
            "first_frame_gps_seconds_of_week": round(first, 9),
            "frame_sample_start": [k * N for k in range(frames)],
            "frame_gps_offset_s": [
                round(((s - gps[0][0]) * NS_PER_S + ns - gps[0][1]) / 1e9, 9) for s, ns in gps
            ],
        },
    }
    meta = {
        "global": g,
        "captures": [{"core:datetime": START.isoformat(), "core:frequency": 1e6}],
    }
    series = locate_flow.series_from_recording(np.zeros(frames * N, np.complex64), meta)
    assert abs(series.t0_ns - t0) <= 2
    assert series.sample_rate_hz == pytest.approx(float(rate), abs=1e-4)
    assert "refit_from_rfacq_timing" in series.flags
    assert (series.latitude, series.longitude, series.altitude_m) == (45.0, 7.5, 100.0)


def test_seed_network_with_one_receiver_hearing_only_noise() -> None:
    """2 s captures of the seed network (the bench's synthesis) with one receiver's
    samples replaced by noise: its pairs are dropped with a reason and the other six
    still give a position within 300 m."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "accuracy_locate.py"
    spec = importlib.util.spec_from_file_location("accuracy_locate", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(21)
    emitter = Emitter(44.95, 8.05, 300.0, 145_500_000.0, eirp_dbm=10.0, modulation="rrc-bpsk")
    captures = bench.synthesise(emitter, 2.0, rng)
    dead = captures[2]
    dead.samples = (
        1e-3
        * (rng.standard_normal(dead.samples.size) + 1j * rng.standard_normal(dead.samples.size))
    ).astype(np.complex64)
    outcome = locate_flow.locate_series(
        captures, emitter_altitude_m=300.0, truth=(emitter.latitude, emitter.longitude)
    )
    loc = outcome.location_json()
    assert loc is not None, outcome.error
    assert dead.name not in loc["receivers"] and loc["receivers_used"] == 6
    assert loc["error_m"] < 300.0
    dropped = [p for p in outcome.tdoa.pairs if dead.name in (p.a, p.b)]
    assert dropped and all(p.reason for p in dropped)


@pytest.mark.integration
def test_location_rows_on_timescaledb(pg_engine: Any) -> None:
    """The locations hypertable takes a row and an update of it (upsert on id + time)."""
    from tasks.locations import upsert_location

    row = {
        "time": datetime(2026, 11, 29, 4, 0, 0, tzinfo=UTC),
        "acquisition_id": str(uuid.uuid4()),
        "source": "acquisition",
        "status": "ok",
        "frequency_hz": 145.5e6,
        "latitude": 44.95,
        "longitude": 8.05,
        "ellipse_major_m": 40.0,
        "ellipse_minor_m": 20.0,
        "ellipse_orientation_deg": 30.0,
        "gdop": 1.2,
        "receivers_used": 7,
        "pairs_used": 21,
        "receivers": json.dumps(["a", "b", "c"]),
        "residual_rms_ns": 80.0,
        "propagation_speed_m_s": 299_792_458.0,
        "error_m": float("nan"),
    }
    location_id = upsert_location(pg_engine, row)
    upsert_location(pg_engine, {**row, "id": location_id, "gdop": 1.5})
    (back,) = locations_for(pg_engine, row["acquisition_id"])
    assert back["id"] == location_id and back["gdop"] == 1.5
    assert back["error_m"] is None and back["receivers_used"] == 7


def test_positions_given_on_the_command_line_win_over_gnss_pos(tmp_path: Path) -> None:
    files = [str(f) for f in _lf_files(tmp_path, seconds=3.0)]
    gnss = str(tmp_path / "gnss_pos")
    _, reports = locate_flow.locate_kiwi_files(files, gnss, ["north=53.0,10.5"])
    assert all(r.status in ("used", "unused") for r in reports), [r.reason for r in reports]
    by = {r.station: r.series for r in reports}
    assert (by["north"].latitude, by["north"].longitude) == (53.0, 10.5)  # type: ignore[union-attr]
    assert (by["south"].latitude, by["south"].longitude) == pytest.approx(STATIONS["south"][:2])  # type: ignore[union-attr]
    _, reports = locate_flow.locate_kiwi_files(files, None, ["north=53.0,10.5"])
    failed = [r for r in reports if r.status == "failed"]
    assert sorted(r.station for r in failed) == ["south", "west"]  # type: ignore[type-var]
    assert all("no position for station" in (r.reason or "") for r in failed)
    assert all((r.reason or "").startswith(Path(r.file).name + ": ") for r in failed)


@pytest.mark.flow
def test_lost_frames_of_a_stored_recording_are_not_correlated(
    prefect_server: None, tmp_path: Path
) -> None:
    """kiwi-wav files with lost frames, ingested, then read back for ``locate
    --acquisition``: the gap annotations of the stored SigMF become the receiver's gaps
    again, so the zero-filled frames are left out of the correlation."""
    import lf_scenario as lf

    from flows.ingest import ingest

    a, b, c = lf.STATIONS
    stations = (replace(a, lost_frames=(80, 81)), b, replace(c, lost_frames=(150, 151, 152)))
    truth = lf.write_scenario(tmp_path / "wav", stations=stations, duration_s=10.0)
    state = asyncio.run(
        ingest(
            [str(f) for f in truth["files"]],  # type: ignore[attr-defined]
            gnss_pos=str(tmp_path / "wav" / "gnss_pos"),
            storage="local",
            database="sqlite",
            data_dir=str(tmp_path),
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    (acquisition_id,) = state.result()["acquisitions"]
    series = asyncio.run(locate_flow.load_acquisition(acquisition_id, "local", "sqlite", tmp_path))
    gaps = {s.name: s.gaps for s in series}
    assert gaps == {
        a.name: ((80 * lf.FRAME, 2 * lf.FRAME),),
        b.name: (),
        c.name: ((150 * lf.FRAME, 3 * lf.FRAME),),
    }
    outcome = locate_flow.locate_series(series)
    assert any("segments fall on lost frames" in n for n in outcome.notes), outcome.notes
    assert outcome.position is not None
    p = outcome.position
    assert horizontal_distance_m(*lf.TRANSMITTER, p.latitude, p.longitude) < 3_000.0
