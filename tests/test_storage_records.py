"""Object keys, storage round trips and idempotent row writes (SQLite and TimescaleDB)."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, select, text

from blocks.database import sqlite_engine
from blocks.storage import local_storage, minio_bucket_from_env
from tasks.recording import build_recording, read_recording
from tasks.records import (
    Measurement,
    RecordError,
    ensure_schema,
    measurements_for,
    upsert_acquisition,
    upsert_measurements,
)
from tasks.storage import StorageKeyError, check_key_part, recording_key, save_recording

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "bad", ["", "..", "a/../b", "/etc", "a/b", "x\x00y", "tab\tname", "-lead", "a" * 129, "é"]
)
def test_bad_key_parts_are_rejected(bad: str) -> None:
    with pytest.raises(StorageKeyError, match=r"receiver=.*cannot be used in an object key"):
        check_key_part(bad, "receiver")


def test_recording_key_layout() -> None:
    key = recording_key("3f1c2a", T0 + timedelta(hours=13), "torino")
    assert key == "acquisitions/2026/11/29/3f1c2a/torino"


def _recording(n: int = 2048) -> Any:
    rng = np.random.default_rng(3)
    samples = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64) * 0.1
    return samples, build_recording(
        samples,
        name="torino",
        sample_rate=12001.135,
        frequency_hz=145.5e6,
        start_utc=T0,
        acquisition_id="acq-1",
        receiver="torino",
        latitude=45.044,
        longitude=7.672,
        altitude_m=250,
        hw="KiwiSDR",
        duration_s=n / 12001.135,
        measurements={"power_dbfs": -20.0},
        quality={"gps_fix": True, "lost_frames": 0, "adc_overflow_frames": 0},
    )


def test_local_storage_round_trip_is_bit_exact(tmp_path: Path) -> None:
    samples, rec = _recording()
    fs = local_storage(tmp_path)
    stored = asyncio.run(save_recording(fs, "acquisitions/2026/11/28/acq-1/torino", rec))
    assert stored.location == str(tmp_path / "acquisitions/2026/11/28/acq-1/torino.npy")
    data = asyncio.run(fs.aread_path(stored.data_key))
    meta = asyncio.run(fs.aread_path(stored.meta_key))
    back, parsed = read_recording(data, meta)
    assert back.tobytes() == samples.tobytes()
    assert parsed["global"]["core:sha512"] == stored.sha512


@pytest.mark.integration
def test_s3_storage_round_trip_is_bit_exact(s3_env: dict[str, str], unique: str) -> None:
    samples, rec = _recording(4096)
    bucket = minio_bucket_from_env(s3_env)
    bucket.bucket_folder = f"unit-{unique}"
    stored = asyncio.run(save_recording(bucket, "acquisitions/x/torino", rec))
    assert stored.location == f"s3://{bucket.bucket_name}/unit-{unique}/acquisitions/x/torino.npy"
    back, _ = read_recording(bucket.read_path(stored.data_key), bucket.read_path(stored.meta_key))
    assert back.tobytes() == samples.tobytes()
    keys = sorted(o["Key"] for o in bucket.list_objects(""))
    assert keys == [
        f"unit-{unique}/acquisitions/x/torino.npy",
        f"unit-{unique}/acquisitions/x/torino.sigmf-meta",
    ]


# --- rows -----------------------------------------------------------------------------


def _rows(acq: uuid.UUID, snr: float = 20.0) -> list[dict[str, Any]]:
    return [
        {
            "time": T0 + timedelta(milliseconds=i),
            "acquisition_id": acq,
            "receiver": name,
            "status": "ok",
            "attempts": 1,
            "frequency_hz": 145.5e6,
            "snr_db": snr + i,
            "rssi_dbm": math.nan,
            "object_key": f"acquisitions/2026/11/28/{acq}/{name}.npy",
        }
        for i, name in enumerate(["torino", "genova", "coazze"])
    ]


def _acquisition(acq: uuid.UUID) -> dict[str, Any]:
    return {
        "id": acq,
        "frequency_hz": 145.5e6,
        "duration_s": 2.0,
        "start_at": T0,
        "receivers_requested": 3,
        "receivers_ok": 3,
        "receivers_failed": 0,
        "receivers_skipped": 0,
        "status": "completed",
    }


def _idempotent_upsert(engine: Engine) -> None:
    ensure_schema(engine)
    acq = uuid.uuid4()
    upsert_acquisition(engine, _acquisition(acq))
    assert upsert_measurements(engine, _rows(acq)) == 3
    # The same acquisition recorded again (a retried task): updated, not duplicated.
    upsert_acquisition(engine, _acquisition(acq))
    assert upsert_measurements(engine, _rows(acq, snr=30.0)) == 3
    rows = measurements_for(engine, acq)
    assert len(rows) == 3
    assert sorted(r["snr_db"] for r in rows) == [30.0, 31.0, 32.0]
    assert all(r["rssi_dbm"] is None for r in rows)  # NaN is stored as NULL, never a number
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(Measurement).where(Measurement.acquisition_id == acq)
        ).scalar()
    assert count == 3


def test_upsert_is_idempotent_on_sqlite(tmp_path: Path) -> None:
    _idempotent_upsert(sqlite_engine(tmp_path / "rows.db"))


@pytest.mark.integration
def test_upsert_is_idempotent_on_timescaledb(pg_engine: Engine) -> None:
    _idempotent_upsert(pg_engine)
    with pg_engine.connect() as conn:
        names = conn.execute(
            text("SELECT hypertable_name FROM timescaledb_information.hypertables")
        ).scalars()
        assert "measurements" in list(names)


def test_a_bad_row_writes_nothing(tmp_path: Path) -> None:
    engine = sqlite_engine(tmp_path / "rows.db")
    ensure_schema(engine)
    acq = uuid.uuid4()
    rows = _rows(acq)
    rows[1]["time"] = datetime(2026, 11, 28, 12, 0, 0)  # naive: ambiguous instant
    with pytest.raises(RecordError, match="'genova': field 'time' must be timezone-aware"):
        upsert_measurements(engine, rows)
    rows[1].pop("time")
    with pytest.raises(RecordError, match="'genova': field 'time' is required"):
        upsert_measurements(engine, rows)
    assert measurements_for(engine, acq) == []
