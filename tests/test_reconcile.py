"""Reconcile: stored recordings whose rows are missing get exactly the rows the flow writes,
and recordings spooled while the storage was down are uploaded, verified and recorded."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prefect_aws import S3Bucket
from service_control import s3_stopped
from sqlalchemy import Engine, delete, select

from blocks.database import TimescaleDBConnection, sqlite_engine, timescaledb_from_env
from blocks.storage import local_storage
from flows.acquisition import acquire
from flows.reconcile import reconcile
from tasks.objectstore import object_store
from tasks.process import row_from_metadata
from tasks.reconcile import ReconcileReport
from tasks.reconcile import reconcile as reconcile_stored
from tasks.recording import Recording, build_recording
from tasks.records import (
    Acquisition,
    Measurement,
    ensure_schema,
    measurements_for,
    upsert_acquisition,
    upsert_measurements,
)
from tasks.storage import (
    StorageKeyError,
    list_spool,
    recording_key,
    save_recording,
    spool_recording,
)

pytestmark = pytest.mark.flow

NOW = timedelta(0)  # min_age for tests: nothing is too recent


def _acquire(tmp_path: Path, **kwargs: Any) -> Any:
    return asyncio.run(
        acquire(
            frequency_hz=145.5e6,
            duration_s=0.5,
            network="simulated",
            storage="local",
            data_dir=str(tmp_path),
            return_state=True,
            **kwargs,
        )
    )


def _reconcile(tmp_path: Path, **kwargs: Any) -> Any:
    params: dict[str, Any] = {
        "days": 1,
        "storage": "local",
        "database": "sqlite",
        "min_age_s": 0,
        **kwargs,
    }
    return asyncio.run(reconcile(data_dir=str(tmp_path), return_state=True, **params))


def _acquisition(engine: Engine, acquisition_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(Acquisition.__table__).where(Acquisition.id == uuid.UUID(acquisition_id))
        ).first()
    return dict(row._mapping) if row is not None else None


def _recording(acquisition_id: str, receiver: str, start: datetime, seed: int = 1) -> Recording:
    n = 4096 + seed
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64) * 0.1
    return build_recording(
        samples,
        name=receiver,
        sample_rate=12001.135,
        frequency_hz=145.5e6,
        start_utc=start,
        acquisition_id=acquisition_id,
        receiver=receiver,
        latitude=45.044,
        longitude=7.672,
        altitude_m=250.0,
        hw="KiwiSDR",
        duration_s=n / 12001.135,
        measurements={"power_dbfs": -20.0, "snr_db": 12.5, "frequency_offset_hz": 1.25},
        quality={"gps_fix": True, "lost_frames": 0, "adc_overflow_frames": 0, "attempts": 1},
    )


def _write_acquisition(engine: Engine, acquisition_id: str, start: datetime, **counts: int) -> None:
    upsert_acquisition(
        engine,
        {
            "id": acquisition_id,
            "frequency_hz": 145.5e6,
            "duration_s": 0.35,
            "start_at": start,
            "status": "completed",
            "flow_run_id": "flow-run-of-the-acquisition",
            **counts,
        },
    )


def _check_row(
    engine: Engine, acquisition_id: str, receiver: str, expected: dict[str, Any]
) -> None:
    """The stored row of ``receiver`` has every column of ``expected`` (a row_from_metadata)."""
    [row] = [r for r in measurements_for(engine, acquisition_id) if r["receiver"] == receiver]
    for column, value in expected.items():
        got = str(row[column]) if column == "acquisition_id" else row[column]
        assert got == value, (column, got, value)


# --------------------------------------------------------------------------- backfill


def test_lost_rows_are_backfilled_exactly(prefect_server: None, tmp_path: Path) -> None:
    state = _acquire(tmp_path, database="sqlite")
    acquisition_id = state.result()["acquisition_id"]
    engine = sqlite_engine(tmp_path / "rf_acquisition.db")
    original = {r["receiver"]: r for r in measurements_for(engine, acquisition_id)}
    assert len(original) == 7
    lost = ["genova", "torino", "coazze"]
    with engine.begin() as conn:
        conn.execute(delete(Measurement).where(Measurement.receiver.in_(lost)))
        conn.execute(delete(Acquisition))

    first = _reconcile(tmp_path)
    assert first.is_completed(), first.message
    assert first.result()["backfilled"] == {acquisition_id: sorted(lost)}
    assert first.message.startswith("3 rows backfilled in 1 acquisitions")
    restored = {r["receiver"]: r for r in measurements_for(engine, acquisition_id)}
    assert restored == original  # every column, as the flow wrote it
    made = _acquisition(engine, acquisition_id)  # none left: one made from the rows
    assert made is not None and made["status"] == "reconciled"
    assert (made["receivers_requested"], made["receivers_ok"], made["receivers_failed"]) == (
        7,
        7,
        0,
    )

    again = _reconcile(tmp_path)
    assert again.result()["rows_backfilled"] == 0


def test_database_down_then_reconciled(prefect_server: None, tmp_path: Path, unique: str) -> None:
    """The database is unreachable for the whole acquisition: recordings are stored, the
    flow fails saying which acquisition lacks rows, and reconcile writes all 7."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    TimescaleDBConnection(
        host="127.0.0.1", port=port, password="not-this", connect_timeout_s=2
    ).save(f"down-{unique}", overwrite=True)
    state = _acquire(tmp_path, database=f"timescaledb-connection/down-{unique}")
    assert state.is_failed()
    summary = state.result(raise_on_failure=False)
    acquisition_id = summary["acquisition_id"]
    assert f"rows missing for acquisition {acquisition_id}" in state.message
    assert "not-this" not in state.message
    assert len(list((tmp_path / "recordings").rglob("*.sigmf-meta"))) == 7

    done = _reconcile(tmp_path)
    assert done.result()["backfilled"] == {
        acquisition_id: sorted(r["receiver"] for r in summary["receivers"])
    }
    engine = sqlite_engine(tmp_path / "rf_acquisition.db")
    rows = measurements_for(engine, acquisition_id)
    assert len(rows) == 7 and all(r["status"] == "ok" and r["object_key"] for r in rows)
    # The acquisition row comes back as the flow made it (from the manifest the flow kept
    # beside the recordings), not guessed from the recordings: planned start, flow run.
    manifest = list((tmp_path / "recordings").rglob("_acquisition.json"))
    assert len(manifest) == 1
    assert done.result()["message"].count("1 acquisition rows restored from manifests") == 1
    with engine.connect() as conn:
        acq = conn.execute(
            select(Acquisition.__table__).where(Acquisition.id == uuid.UUID(acquisition_id))
        ).one()
    assert acq.status == "reconciled"
    assert acq.flow_run_id is not None
    assert acq.start_at.replace(tzinfo=UTC) == datetime.fromisoformat(summary["start_at"])
    assert (acq.receivers_requested, acq.receivers_ok) == (7, 7)


def test_recent_acquisitions_wait_and_bad_ones_do_not_stop_the_pass(tmp_path: Path) -> None:
    """An acquisition younger than min_age is left alone; one whose rows the database
    refuses is an error of its own while the next acquisition is still backfilled."""
    fs = local_storage(tmp_path / "recordings")
    engine = sqlite_engine(tmp_path / "r.db")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    for acq in (good, bad):
        asyncio.run(
            save_recording(
                fs, recording_key(acq, start, "torino"), _recording(acq, "torino", start)
            )
        )
    # the bad one's metadata says a negative frequency: its row is refused by the database
    meta_path = Path(fs.basepath) / (recording_key(bad, start, "torino") + ".sigmf-meta")
    meta = json.loads(meta_path.read_text())
    meta["captures"][0]["core:frequency"] = -1.0
    meta_path.write_text(json.dumps(meta))
    window = (start - timedelta(days=1), start + timedelta(days=1))

    young = asyncio.run(reconcile_stored(fs, engine, *window, min_age=timedelta(hours=1)))
    assert sorted(young.too_recent) == sorted([good, bad]) and young.rows_backfilled == 0
    assert measurements_for(engine, good) == []

    report = asyncio.run(reconcile_stored(fs, engine, *window, min_age=NOW))
    assert report.backfilled == {good: ["torino"]}
    assert len(report.errors) == 1 and bad in report.errors[0]
    assert "frequency_hz" in report.errors[0]
    assert measurements_for(engine, bad) == []
    assert _acquisition(engine, good)["status"] == "reconciled"  # type: ignore[index]
    engine.dispose()


@pytest.mark.integration
def test_timescaledb_rows_restored_and_acquisition_row_kept(
    prefect_server: None, pg_engine: Engine, s3_env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    """Acquire into local storage + TimescaleDB, lose rows, reconcile: the rows come back
    equal, and the acquisitions row the flow wrote is left as it was."""
    timescaledb_from_env(s3_env).save(f"reconcile-{unique}", overwrite=True)
    database = f"timescaledb-connection/reconcile-{unique}"
    state = _acquire(tmp_path, database=database)
    assert state.is_completed(), state.message
    acquisition_id = state.result()["acquisition_id"]
    original = {r["receiver"]: r for r in measurements_for(pg_engine, acquisition_id)}
    assert len(original) == 7
    acquisition = _acquisition(pg_engine, acquisition_id)
    assert acquisition is not None and acquisition["status"] == "completed"
    lost = ["genova", "montanaro", "torino"]
    assert set(lost) <= set(original)
    with pg_engine.begin() as conn:
        conn.execute(
            delete(Measurement).where(
                Measurement.acquisition_id == uuid.UUID(acquisition_id),
                Measurement.receiver.in_(lost),
            )
        )

    done = _reconcile(tmp_path, database=database)
    assert done.is_completed(), done.message
    assert done.result()["backfilled"] == {acquisition_id: lost}
    restored = {r["receiver"]: r for r in measurements_for(pg_engine, acquisition_id)}
    assert restored == original
    assert _acquisition(pg_engine, acquisition_id) == acquisition  # status, start, counts
    assert _reconcile(tmp_path, database=database).result()["rows_backfilled"] == 0


@pytest.mark.integration
def test_existing_acquisition_row_is_recounted_not_replaced(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """5 receivers: a, b, c stored (b's row lost, c's row 'failed' although its recording
    was stored), d failed, e skipped. Reconcile writes b and turns c ok; the acquisitions
    row keeps its status, start and flow run, and its counts follow the rows."""
    fs = local_storage(tmp_path / "recordings")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    acq = str(uuid.uuid4())
    ensure_schema(pg_engine)
    rows = {}
    for i, receiver in enumerate(["a-rx", "b-rx", "c-rx"]):
        rec = _recording(acq, receiver, start, seed=i)
        stored = asyncio.run(save_recording(fs, recording_key(acq, start, receiver), rec))
        rows[receiver] = row_from_metadata(rec.meta, object_key=stored.data_key)
    nothing = {"object_key": None, "sha512": None, "sample_count": None}
    upsert_measurements(
        pg_engine,
        [
            rows["a-rx"],
            {
                **rows["c-rx"],
                "status": "failed",
                "error": "store failed: timeout",
                "object_key": None,
            },
            {**rows["a-rx"], **nothing, "receiver": "d-rx", "status": "failed", "error": "refused"},
            {**rows["a-rx"], **nothing, "receiver": "e-rx", "status": "skipped", "error": "no GPS"},
        ],
    )
    _write_acquisition(
        pg_engine,
        acq,
        start,
        receivers_requested=5,
        receivers_ok=1,
        receivers_failed=2,
        receivers_skipped=1,
    )
    before = _acquisition(pg_engine, acq)

    report = asyncio.run(
        reconcile_stored(fs, pg_engine, start - timedelta(days=1), start, min_age=NOW)
    )
    assert report.errors == []
    assert report.backfilled == {acq: ["b-rx", "c-rx"]}
    _check_row(pg_engine, acq, "b-rx", rows["b-rx"])
    _check_row(pg_engine, acq, "c-rx", rows["c-rx"])  # ok, with its object key
    after = _acquisition(pg_engine, acq)
    assert before is not None and after is not None
    assert (after["receivers_ok"], after["receivers_failed"], after["receivers_skipped"]) == (
        3,
        1,
        1,
    )
    unchanged = ("status", "start_at", "flow_run_id", "receivers_requested", "created_at")
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert after["status"] == "completed"


# --------------------------------------------------------------------------- spool


def _spool_failed_store(
    engine: Engine, spool: Path, acquisition_id: str, receiver: str, start: datetime, seed: int
) -> tuple[Recording, str]:
    """What the acquisition flow does when the store gives up: spool the recording, record
    its row as failed (same time: the first sample's) and the acquisition row."""
    rec = _recording(acquisition_id, receiver, start, seed=seed)
    key = recording_key(acquisition_id, start, receiver)
    spooled = asyncio.run(spool_recording(spool, key, rec))
    assert Path(spooled.location) == spool / (key + ".npy")
    error = f"store failed: EndpointConnectionError: down; spooled to {spooled.location}"
    upsert_measurements(
        engine, [{**row_from_metadata(rec.meta), "status": "failed", "error": error, "attempts": 5}]
    )
    _write_acquisition(
        engine,
        acquisition_id,
        start,
        receivers_requested=1,
        receivers_ok=0,
        receivers_failed=1,
        receivers_skipped=0,
    )
    return rec, key


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _assert_drained(engine: Engine, bucket: S3Bucket, acq: str, rec: Recording, key: str) -> None:
    objects = object_store(bucket)
    assert asyncio.run(objects.get(key + ".npy")) == rec.npy  # bit-exact
    assert asyncio.run(objects.get(key + ".sigmf-meta")) == rec.meta_bytes
    expected = row_from_metadata(rec.meta, object_key=key + ".npy")
    assert expected["status"] == "ok" and expected["error"] is None
    _check_row(engine, acq, expected["receiver"], expected)
    acquisition = _acquisition(engine, acq)
    assert acquisition is not None
    assert (acquisition["receivers_ok"], acquisition["receivers_failed"]) == (1, 0)
    assert acquisition["status"] == "completed"


@pytest.mark.integration
def test_spooled_recording_is_uploaded_and_recorded(
    prefect_server: None,
    pg_engine: Engine,
    s3_env: dict[str, str],
    s3_bucket: S3Bucket,
    tmp_path: Path,
    unique: str,
) -> None:
    """The flow spooled a recording (S3 was down) and recorded it 'failed'; the reconcile
    flow's default spool (<data_dir>/spool) is uploaded to S3 bit-exact, the row becomes
    ok with its object key, and the spool is left empty."""
    ensure_schema(pg_engine)
    spool = tmp_path / "spool"
    start = datetime.now(UTC) - timedelta(days=3)  # spooled recordings of any day drain
    acq = str(uuid.uuid4())
    rec, key = _spool_failed_store(pg_engine, spool, acq, "torino", start, seed=7)
    s3_bucket.save(f"reconcile-{unique}", overwrite=True)
    timescaledb_from_env(s3_env).save(f"reconcile-{unique}", overwrite=True)
    params = {
        "storage": f"s3-bucket/reconcile-{unique}",
        "database": f"timescaledb-connection/reconcile-{unique}",
    }

    done = _reconcile(tmp_path, **params)
    assert done.is_completed(), done.message
    result = done.result()
    assert result["uploaded"] == {acq: ["torino"]} and result["uploaded_from_spool"] == 1
    assert result["spool_left"] == 0 and result["rows_backfilled"] == 0
    assert "1 recordings uploaded from the spool" in done.message
    assert _files(spool) == []
    _assert_drained(pg_engine, s3_bucket, acq, rec, key)

    again = _reconcile(tmp_path, **params)
    assert again.is_completed() and again.result()["uploaded_from_spool"] == 0


@pytest.mark.integration
def test_spool_is_kept_while_s3_is_down_and_drained_after(
    pg_engine: Engine, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """S3 down: nothing leaves the spool, the rows stay failed, the error says why and the
    second acquisition is not even tried. S3 back: the next pass drains both."""
    ensure_schema(pg_engine)
    spool = tmp_path / "spool"
    start = datetime.now(UTC) - timedelta(hours=1)
    spooled = {}
    for i in range(2):
        acq = str(uuid.uuid4())
        spooled[acq] = _spool_failed_store(pg_engine, spool, acq, "genova", start, seed=i)
    files = {p: p.read_bytes() for p in _files(spool)}
    assert len(files) == 4
    window = (start - timedelta(days=1), datetime.now(UTC))

    with s3_stopped():
        down = asyncio.run(
            reconcile_stored(s3_bucket, pg_engine, *window, spool=spool, min_age=NOW)
        )
    assert isinstance(down, ReconcileReport)
    assert down.uploaded == {} and down.spooled_scanned == 2 and down.spool_left == 2
    assert any("EndpointConnectionError" in e and str(spool) in e for e in down.errors), down.errors
    assert any("1 more spooled recordings left" in e for e in down.errors), down.errors
    assert {p: p.read_bytes() for p in _files(spool)} == files  # nothing deleted or changed
    for acq in spooled:
        [row] = measurements_for(pg_engine, acq)
        assert row["status"] == "failed" and row["object_key"] is None

    back = asyncio.run(reconcile_stored(s3_bucket, pg_engine, *window, spool=spool, min_age=NOW))
    assert back.errors == []
    assert back.uploaded == {acq: ["genova"] for acq in spooled}
    assert "2 recordings uploaded from the spool" in back.message
    assert _files(spool) == []
    for acq, (rec, key) in spooled.items():
        _assert_drained(pg_engine, s3_bucket, acq, rec, key)


def test_spool_keys_and_overlap_are_checked(tmp_path: Path) -> None:
    """Only recording keys are spooled (the drain finds nothing else), a missing spool
    lists empty, and a spool inside the target storage is never drained into itself."""
    start = datetime(2026, 11, 28, 12, tzinfo=UTC)
    acq = str(uuid.uuid4())
    rec = _recording(acq, "torino", start)
    with pytest.raises(StorageKeyError):
        asyncio.run(spool_recording(tmp_path / "spool", f"elsewhere/{acq}/torino", rec))
    assert asyncio.run(list_spool(tmp_path / "missing")) == []

    spool = tmp_path / "data" / "spool"
    asyncio.run(spool_recording(spool, recording_key(acq, start, "torino"), rec))
    [listed] = asyncio.run(list_spool(spool))
    assert (listed.acquisition_id, listed.day, listed.receivers) == (acq, start.date(), ["torino"])
    engine = sqlite_engine(tmp_path / "r.db")
    report = asyncio.run(
        reconcile_stored(
            local_storage(tmp_path / "data"), engine, start, start, spool=spool, min_age=NOW
        )
    )
    assert report.uploaded == {} and "overlap" in report.errors[0]
    assert len(_files(spool)) == 2
    engine.dispose()
