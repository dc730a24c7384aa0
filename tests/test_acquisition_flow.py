"""The parent flow end to end: embedded default, a faulty receiver, and real services.

These run the real flow on Prefect's test server, capture over loopback websockets from
the simulator, and then look at what landed: files/objects, rows, and their agreement.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from blocks.database import sqlite_engine, timescaledb_from_env
from blocks.receiver import receiver_name
from blocks.storage import minio_bucket_from_env
from flows.acquisition import acquire
from tasks.kiwisdr.network import bind_urls, simulated_network
from tasks.kiwisdr.simulator import Faults
from tasks.recording import read_recording
from tasks.records import measurements_for

FREQUENCY_HZ = 145_500_000.0
SEED_NAMES = {
    "aquila-di-giaveno",
    "montanaro",
    "torino",
    "coazze",
    "passo-del-giovi",
    "genova",
    "milano-baggio",
}

pytestmark = pytest.mark.flow


def run(**kwargs: Any) -> Any:
    return asyncio.run(acquire(frequency_hz=FREQUENCY_HZ, return_state=True, **kwargs))


def truth_by_receiver() -> dict[str, Any]:
    network, _ = simulated_network(frequency_hz=FREQUENCY_HZ)  # built, not started
    return {name: network.truth(name, FREQUENCY_HZ) for name in network.receivers}


def test_embedded_default_end_to_end(prefect_server: None, tmp_path: Path) -> None:
    duration = 2.0
    state = run(
        duration_s=duration,
        network="simulated",
        storage="local",
        database="sqlite",
        data_dir=str(tmp_path),
    )
    assert state.is_completed(), state.message
    assert state.message == "7/7 receivers ok"
    summary = state.result()
    assert summary["ok"] == 7
    # All seven start on the same instant, each trimmed to the sample on its own fitted
    # GPS time axis: first samples within one sample period of each other.
    assert 0 <= summary["start_spread_ms"] < 1e3 / 12000.874

    rows = measurements_for(
        sqlite_engine(tmp_path / "rf_acquisition.db"), summary["acquisition_id"]
    )
    assert {r["receiver"] for r in rows} == SEED_NAMES
    truth = truth_by_receiver()
    recordings = sorted((tmp_path / "recordings").rglob("*.npy"))
    assert len(recordings) == 7
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None
        data_path = tmp_path / "recordings" / row["object_key"]
        assert data_path in recordings
        samples = np.load(data_path)
        assert samples.dtype == np.complex64
        # duration x true rate, rounded up to whole 512-sample frames
        assert 0 <= samples.size - duration * row["sample_rate"] < 512
        assert row["sample_count"] == samples.size
        meta_path = data_path.with_suffix(".sigmf-meta")
        back, meta = read_recording(data_path.read_bytes(), meta_path.read_bytes())
        np.testing.assert_array_equal(back, samples)
        assert meta["global"]["core:sha512"] == row["sha512"]
        assert meta["global"]["core:sample_rate"] == pytest.approx(row["sample_rate"])
        # The simulated physics comes back out of the measurements.
        t = truth[row["receiver"]]
        assert row["frequency_offset_hz"] == pytest.approx(t.frequency_offset_hz, abs=1.0)
        assert row["power_dbfs"] == pytest.approx(t.power_dbfs, abs=0.5)
        assert row["cn0_dbhz"] == pytest.approx(t.cn0_dbhz, abs=1.5)
        assert row["gps_fix"] is True or row["gps_fix"] == 1

    # The UI's view: one table row per receiver, a markdown summary, progress at 100 %.
    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    table = json.loads(artifacts["acquisition-receivers"].data)
    assert sorted(r["receiver"] for r in table) == sorted(SEED_NAMES)
    assert all(r["status"] == "ok" for r in table)
    assert "7/7 receivers ok" in artifacts["acquisition-summary"].data
    assert "█" in artifacts["acquisition-summary"].data  # each receiver's spectrum line
    assert artifacts["acquisition-progress"].data == 100.0


async def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def test_failing_receivers_do_not_fail_the_others(prefect_server: None, tmp_path: Path) -> None:
    """One receiver refuses connections, one drops its first session (then recovers)."""
    network, receivers = simulated_network(
        frequency_hz=FREQUENCY_HZ,
        faults={
            "torino": Faults(refuse=True),
            "genova": Faults(drop_after_frames=3, drop_attempts=1),
        },
    )
    with network:
        bind_urls(network, receivers)
        for rx in receivers:
            rx.save(receiver_name(rx), overwrite=True)
        state = run(
            duration_s=1.0,
            network="blocks",
            receivers=sorted(SEED_NAMES),
            storage="local",
            database="sqlite",
            data_dir=str(tmp_path),
        )
        genova_connections = network.connections("genova")
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["ok"] == 6
    assert state.message.startswith("6/7 receivers ok")
    rows = {
        r["receiver"]: r
        for r in measurements_for(
            sqlite_engine(tmp_path / "rf_acquisition.db"), summary["acquisition_id"]
        )
    }
    assert len(rows) == 7
    bad = rows["torino"]
    assert bad["status"] in ("failed", "skipped")
    assert "torino" in bad["error"] or "unreachable" in bad["error"].lower()
    assert "unreachable" in bad["error"].lower() or "connect" in bad["error"].lower()
    assert bad["object_key"] is None and bad["power_dbfs"] is None
    assert rows["genova"]["status"] == "ok"
    assert rows["genova"]["attempts"] == 2
    assert genova_connections == 2
    assert sum(r["status"] == "ok" for r in rows.values()) == 6


def test_bad_request_fails_fast_with_field_and_range(prefect_server: None, tmp_path: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(
        ParameterTypeError, match=r"duration_s: Input should be greater than or equal to 0\.05"
    ):
        asyncio.run(acquire(duration_s=0.0, network="simulated", data_dir=str(tmp_path)))
    with pytest.raises(
        ParameterTypeError, match=r"duration_s: Input should be less than or equal to 600"
    ):
        asyncio.run(acquire(duration_s=601.0, network="simulated", data_dir=str(tmp_path)))
    with pytest.raises(
        ValueError, match=r"frequency_hz=1000000 is outside every selected receiver"
    ):
        asyncio.run(acquire(frequency_hz=1e6, network="simulated", data_dir=str(tmp_path)))
    assert not (tmp_path / "rf_acquisition.db").exists()


def test_server_refuses_out_of_range_parameters_before_a_run_exists(
    prefect_server: None, unique: str
) -> None:
    """The deployment's parameter schema carries the ranges: creating a flow run with
    duration_s=-1 is refused by the server, and no run is created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.exceptions import PrefectHTTPStatusError

    async def go() -> tuple[str, int]:
        deployment = await acquire.ato_deployment(name=f"ranges-{unique}")
        deployment_id = await deployment.apply()
        async with get_client() as client:
            with pytest.raises(PrefectHTTPStatusError) as refused:
                await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"duration_s": -1}
                )
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])
                )
            )
        return refused.value.response.text, len(runs)

    text, runs = asyncio.run(go())
    assert "duration_s" in text and "-1" in text
    assert runs == 0


@pytest.mark.integration
def test_against_real_timescaledb_and_s3(
    prefect_server: None, s3_env: dict[str, str], pg_engine: Any, unique: str
) -> None:
    bucket = minio_bucket_from_env(s3_env)
    bucket.bucket_folder = f"test-{unique}"
    bucket.save(f"test-{unique}", overwrite=True)
    timescaledb_from_env(s3_env).save(f"test-{unique}", overwrite=True)

    state = run(
        duration_s=1.0,
        network="simulated",
        storage=f"s3-bucket/test-{unique}",
        database=f"timescaledb-connection/test-{unique}",
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["ok"] == 7
    assert summary["storage"] == f"s3-bucket/test-{unique}"

    objects = bucket.list_objects("acquisitions")
    keys = {o["Key"] for o in objects}
    npy = sorted(k for k in keys if k.endswith(".npy"))
    assert len(npy) == 7
    assert len([k for k in keys if k.endswith(".sigmf-meta")]) == 7

    rows = measurements_for(pg_engine, summary["acquisition_id"])
    assert len(rows) == 7
    assert sorted(f"test-{unique}/{r['object_key']}" for r in rows) == npy
    for row in rows[:2]:
        data = bucket.read_path(row["object_key"])
        meta = bucket.read_path(row["object_key"].removesuffix(".npy") + ".sigmf-meta")
        samples, parsed = read_recording(data, meta)
        assert samples.size == row["sample_count"]
        assert parsed["global"]["core:sha512"] == row["sha512"]
        assert json.loads(meta)["captures"][0]["core:frequency"] == FREQUENCY_HZ
    with pg_engine.connect() as conn:
        hypertables = (
            conn.execute(text("SELECT hypertable_name FROM timescaledb_information.hypertables"))
            .scalars()
            .all()
        )
    assert "measurements" in hypertables
    # No secret reached the summary the flow returned.
    assert s3_env["RF_S3_SECRET_KEY"] not in json.dumps(summary, default=str)
    assert s3_env["RF_PG_PASSWORD"] not in json.dumps(summary, default=str)


@pytest.mark.integration
def test_storage_refusing_writes_spools_and_reconcile_uploads(
    prefect_server: None, s3_env: dict[str, str], tmp_path: Path, unique: str
) -> None:
    """Storage refuses every write (wrong secret: permanent, so no retries): each capture is
    spooled locally and its row says so; reconcile later uploads all 7 and turns them ok."""
    from flows.reconcile import reconcile

    good = minio_bucket_from_env(s3_env)
    good.bucket_folder = f"spool-{unique}"
    good.save(f"good-{unique}", overwrite=True)
    bad = minio_bucket_from_env({**s3_env, "RF_S3_SECRET_KEY": "wrong-secret"})
    bad.bucket_folder = f"spool-{unique}"
    bad.save(f"bad-{unique}", overwrite=True)

    state = run(
        duration_s=0.5,
        network="simulated",
        storage=f"s3-bucket/bad-{unique}",
        database="sqlite",
        data_dir=str(tmp_path),
    )
    assert state.is_failed() and state.message.startswith("0/7 receivers ok")
    summary = state.result(raise_on_failure=False)
    engine = sqlite_engine(tmp_path / "rf_acquisition.db")
    rows = measurements_for(engine, summary["acquisition_id"])
    assert len(rows) == 7
    for row in rows:
        assert row["status"] == "failed" and row["object_key"] is None
        assert "store failed" in row["error"] and "spooled to" in row["error"]
        assert "wrong-secret" not in row["error"]
        assert row["power_dbfs"] is not None  # measured all the same
    assert len(list((tmp_path / "spool").rglob("*.npy"))) == 7

    done = asyncio.run(
        reconcile(
            days=1,
            storage=f"s3-bucket/good-{unique}",
            database="sqlite",
            data_dir=str(tmp_path),
            min_age_s=0,
            return_state=True,
        )
    )
    assert done.is_completed(), done.message
    rows = measurements_for(engine, summary["acquisition_id"])
    assert all(r["status"] == "ok" and r["object_key"] for r in rows)
    keys = {o["Key"] for o in good.list_objects("acquisitions")}
    assert {f"spool-{unique}/{r['object_key']}" for r in rows} <= keys
    assert not list((tmp_path / "spool").rglob("*.npy"))


def test_json_option_prints_one_object_and_nothing_else(
    prefect_server: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``--json``: stdout is exactly one JSON object (the summary), nothing else."""
    from flows.acquisition import main

    status = main(
        [
            "--network=simulated",
            "--storage=local",
            "--database=sqlite",
            f"--data-dir={tmp_path}",
            "--duration-s=0.3",
            "--json",
        ]
    )
    out, _ = capfd.readouterr()
    assert status == 0
    summary = json.loads(out)  # raises if anything but one JSON document is on stdout
    assert out.count("\n") == 1
    assert summary["state"] == "COMPLETED"
    assert summary["message"] == "7/7 receivers ok"
    assert len(summary["receivers"]) == 7


def test_a_saved_block_that_fails_validation_is_an_error(
    prefect_server: None, tmp_path: Path, unique: str
) -> None:
    """Never a silent fall back: a broken saved receiver or storage block stops the run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentUpdate

    from blocks.configure import DEFAULT_BLOCK_NAME
    from blocks.resolve import resolve_storage, saved_receivers
    from blocks.storage import minio_bucket

    _, receivers = simulated_network(frequency_hz=FREQUENCY_HZ)
    name = f"broken-{unique}"
    receivers[0].save(name, overwrite=True)
    bucket = minio_bucket(
        endpoint_url="http://127.0.0.1:9", access_key="k", secret_key="s", bucket="b"
    )
    bucket.save(DEFAULT_BLOCK_NAME, overwrite=True)

    async def break_and_load() -> tuple[str, str]:
        async with get_client() as client:
            rx = await client.read_block_document_by_name(name, "kiwisdr-receiver")
            s3 = await client.read_block_document_by_name(DEFAULT_BLOCK_NAME, "s3-bucket")
            try:
                await client.update_block_document(
                    rx.id, BlockDocumentUpdate(data={**rx.data, "latitude": 123.0})
                )
                with pytest.raises(ValueError) as bad_receiver:
                    await saved_receivers()
                data = {k: v for k, v in s3.data.items() if k != "bucket_name"}
                await client.update_block_document(
                    s3.id, BlockDocumentUpdate(data=data, merge_existing_data=False)
                )
                with pytest.raises(ValueError) as bad_storage:
                    await resolve_storage("auto", tmp_path)
            finally:
                await client.delete_block_document(rx.id)
                await client.delete_block_document(s3.id)
            assert name not in await saved_receivers()
            local = await resolve_storage("auto", tmp_path)  # nothing saved: the local default
            assert local.description == f"local folder {tmp_path / 'recordings'}"
        return str(bad_receiver.value), str(bad_storage.value)

    receiver_error, storage_error = asyncio.run(break_and_load())
    assert f"receiver block {name!r} is invalid" in receiver_error
    assert "latitude" in receiver_error
    assert f"block 's3-bucket/{DEFAULT_BLOCK_NAME}' could not be loaded" in storage_error
    assert "bucket_name" in storage_error


def test_blocks_are_flow_parameters(prefect_server: None, tmp_path: Path) -> None:
    """The UI offers block pickers for storage and database; Python passes blocks."""
    from prefect.utilities.callables import parameter_schema

    from blocks.storage import local_storage

    schema = parameter_schema(acquire).model_dump()
    refs = {a.get("$ref") for a in schema["properties"]["storage"]["anyOf"]}
    assert {"#/definitions/S3Bucket", "#/definitions/LocalFileSystem"} <= refs
    assert schema["definitions"]["S3Bucket"]["block_type_slug"] == "s3-bucket"
    db_refs = {a.get("$ref") for a in schema["properties"]["database"]["anyOf"]}
    assert "#/definitions/TimescaleDBConnection" in db_refs
    assert schema["properties"]["duration_s"]["minimum"] == 0.05
    assert schema["properties"]["duration_s"]["maximum"] == 600.0

    elsewhere = tmp_path / "elsewhere"
    state = run(
        duration_s=0.3,
        network="simulated",
        storage=local_storage(elsewhere),
        database="sqlite",
        data_dir=str(tmp_path),
    )
    assert state.is_completed(), state.message
    assert state.result()["storage"] == f"local folder {elsewhere}"
    assert len(list(elsewhere.rglob("*.npy"))) == 7
    assert not (tmp_path / "recordings").exists()


def test_first_run_prints_no_traceback_and_one_table(tmp_path: Path) -> None:
    """``make run`` on a fresh clone: a brand-new PREFECT_HOME (the embedded server's
    telemetry heartbeat used to race its migrations and log a traceback), no API URL. The
    output has no Traceback or ERROR, the result table once, where the data went, and the
    position found next to the truth (a locatable emitter, --locate)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "RF_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows",
            "acquire",
            "--network",
            "simulated",
            "--duration-s",
            "1",
            "--modulation",
            "rrc-bpsk",
            "--locate",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "ERROR" not in output, output[-3000:]
    assert output.count("recording / error") == 1  # the table's header: one table
    assert done.stdout.count("7/7 receivers ok") == 1
    assert f"recordings: local folder {tmp_path / 'recordings'}" in done.stdout
    assert f"database:   SQLite {tmp_path / 'rf_acquisition.db'}" in done.stdout
    # ... and, as make run does, the transmitter found next to the simulated truth.
    import re

    found = re.search(
        r"^transmitter: .*7 receivers, 21 pairs; truth (\d+) m away$", done.stdout, re.M
    )
    assert found, done.stdout[-2000:]
    assert int(found.group(1)) < 1000


def test_simulated_runs_stay_local_and_are_marked(
    prefect_server: None, tmp_path: Path, unique: str
) -> None:
    """With production blocks saved, a simulated run with storage/database "auto" still
    writes to the local folder and SQLite, and its rows say ``simulated``; the record task
    run is named after the acquisition."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from blocks.configure import DEFAULT_BLOCK_NAME, remove_saved
    from blocks.database import TimescaleDBConnection
    from blocks.storage import minio_bucket

    # "Production": a bucket and a database nobody answers for; using them would fail.
    minio_bucket(
        endpoint_url="http://127.0.0.1:9", access_key="k", secret_key="s", bucket="prod"
    ).save(DEFAULT_BLOCK_NAME, overwrite=True)
    TimescaleDBConnection(host="127.0.0.1", port=9, database="prod", user="u").save(
        DEFAULT_BLOCK_NAME, overwrite=True
    )
    try:
        state = run(duration_s=0.3, network="simulated", data_dir=str(tmp_path))
    finally:
        asyncio.run(remove_saved(DEFAULT_BLOCK_NAME))
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["storage"] == f"local folder {tmp_path / 'recordings'}"
    assert summary["database"] == f"SQLite {tmp_path / 'rf_acquisition.db'}"
    engine = sqlite_engine(tmp_path / "rf_acquisition.db")
    rows = measurements_for(engine, summary["acquisition_id"])
    assert len(rows) == 7 and all(r["simulated"] in (True, 1) for r in rows)
    with engine.connect() as conn:
        flag = conn.execute(text("SELECT simulated FROM acquisitions")).scalar_one()
    assert flag in (True, 1)

    async def task_names() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
        return [r.name for r in runs]

    assert f"record-{summary['acquisition_id'][:8]}" in asyncio.run(task_names())


def test_real_receivers_rows_are_not_simulated() -> None:
    """Rows of saved receiver blocks say ``simulated=False`` (not NULL)."""
    from datetime import UTC, datetime

    from tasks.pipeline import rows_of
    from tasks.report import ReceiverOutcome

    _, receivers = simulated_network(frequency_hz=FREQUENCY_HZ)
    by_name = {receiver_name(r): r for r in receivers}
    outcomes = [ReceiverOutcome(n, "skipped", "down") for n in by_name]
    for simulated in (False, True):
        acq, rows = rows_of(
            outcomes, by_name, acquisition_id="0" * 32, start_at=datetime.now(UTC),
            frequency_hz=FREQUENCY_HZ, duration_s=1.0, flow_run_id=None, simulated=simulated,
        )  # fmt: skip
        assert acq["simulated"] is simulated
        assert [r["simulated"] for r in rows] == [simulated] * 7


def test_an_early_failure_leaves_no_progress_and_names_the_known_tags(
    prefect_server: None, tmp_path: Path
) -> None:
    """An unknown tag fails before the acquisition exists: the error lists the tags the
    receivers carry, and the run has no progress artifact."""
    state = run(duration_s=0.3, network="simulated", tag="no-such-tag", data_dir=str(tmp_path))
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert "tag='no-such-tag'" in str(error)
    assert "known tags: 2m, seed" in str(error)
    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    assert "acquisition-progress" not in artifacts


def test_a_tag_no_saved_receiver_carries_lists_the_known_tags(
    prefect_server: None, unique: str
) -> None:
    """With receiver blocks saved, an unknown tag is an error naming the tags they carry,
    never a silent switch to the simulated network."""
    from prefect.client.orchestration import get_client

    from blocks.resolve import resolve_network

    _, receivers = simulated_network(frequency_hz=FREQUENCY_HZ)
    name = f"tagged-{unique}"
    receivers[0].save(name, overwrite=True)

    async def go() -> tuple[str, str, str]:
        try:
            with pytest.raises(ValueError) as refused:
                await resolve_network("auto", tag="70cm")
            return (
                str(refused.value),
                await resolve_network("auto", "seed"),
                (await resolve_network("simulated", "70cm")),
            )
        finally:
            async with get_client() as client:
                doc = await client.read_block_document_by_name(name, "kiwisdr-receiver")
                await client.delete_block_document(doc.id)

    error, with_seed_tag, simulated = asyncio.run(go())
    assert error == "tag='70cm': no saved receiver has this tag; known tags: 2m, seed"
    assert (with_seed_tag, simulated) == ("blocks", "simulated")


def test_a_failed_position_never_fails_a_recorded_acquisition(
    prefect_server: None, tmp_path: Path
) -> None:
    """locate=True with an unsaved storage block (the locate flow cannot be told where the
    recordings are): the acquisition stays Completed with its rows, the position says why."""
    from prefect.filesystems import LocalFileSystem

    state = run(
        duration_s=0.3,
        network="simulated",
        storage=LocalFileSystem(basepath=str(tmp_path / "recordings")),
        database="sqlite",
        data_dir=str(tmp_path),
        locate=True,
    )
    assert state.is_completed(), state.message
    located = state.result()["located"]
    assert located["ok"] is False and located["location"] is None
    assert "locate failed: ValueError: locate=True needs storage" in located["message"]
