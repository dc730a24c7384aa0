"""Recording storage through the filesystem blocks: round trips, listing, deletion,
integrity, retries, multipart uploads with checksums, buckets and health.

Unit tests use LocalFileSystem and botocore stubs; integration tests use the SeaweedFS S3
server scripts/services.sh started (each under its own ``bucket_folder``), and stop and
restart it where a test needs a dead server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)
from botocore.stub import Stubber
from prefect import flow
from prefect.states import Failed
from prefect_aws import S3Bucket
from service_control import s3_stopped, services
from sqlalchemy import create_engine

import tasks.objectstore
from blocks.database import sqlite_engine, timescaledb_from_env
from blocks.storage import local_storage, minio_bucket, minio_bucket_from_env
from tasks.bucket import ensure_bucket, validate_bucket_name
from tasks.errors import BucketNameError, MissingObjectError
from tasks.health import StorageHealth, check_database, check_storage
from tasks.recording import IntegrityError, Recording, build_recording
from tasks.storage import (
    StorageKeyError,
    delete_acquisition,
    is_transient,
    list_acquisitions,
    list_recordings,
    load_recording,
    recording_key,
    retry_transient_storage,
    save_recording,
    store,
)

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def _recording(n: int = 2048, receiver: str = "torino", seed: int = 3) -> tuple[Any, Recording]:
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64) * 0.1
    return samples, build_recording(
        samples,
        name=receiver,
        sample_rate=12001.135,
        frequency_hz=145.5e6,
        start_utc=T0,
        acquisition_id="acq-1",
        receiver=receiver,
        latitude=45.044,
        longitude=7.672,
        altitude_m=250,
        hw="KiwiSDR",
        duration_s=n / 12001.135,
        measurements={"power_dbfs": -20.0},
        quality={"gps_fix": True, "lost_frames": 0, "adc_overflow_frames": 0},
    )


async def _save_acquisition(
    fs: Any, acquisition_id: str, started: datetime, receivers: list[str]
) -> dict[str, Any]:
    saved = {}
    for i, receiver in enumerate(receivers):
        samples, rec = _recording(1024 + i, receiver, seed=i)
        stored = await save_recording(fs, recording_key(acquisition_id, started, receiver), rec)
        saved[receiver] = (samples, stored)
    return saved


# --------------------------------------------------------------------------- retries


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


TRANSIENT = [
    _client_error("SlowDown", 503),
    _client_error("InternalError", 500),
    _client_error("ServiceUnavailable", 503),
    _client_error("RequestTimeout", 400),
    _client_error("Throttling", 400),
    _client_error("TooManyRequests", 429),
    _client_error("BadDigest", 400),
    _client_error("", 502),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ConnectionClosedError(endpoint_url="http://127.0.0.1:1"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),
]
PERMANENT = [
    _client_error("NoSuchBucket", 404),
    _client_error("AccessDenied", 403),
    _client_error("InvalidAccessKeyId", 403),
    _client_error("SignatureDoesNotMatch", 403),
    _client_error("NoSuchKey", 404),
    _client_error("InvalidBucketName", 400),
    StorageKeyError("receiver='../x' cannot be used in an object key"),
    IntegrityError("x.npy: sha512 mismatch"),
    NoCredentialsError(),
    SSLError(endpoint_url="https://x", error="certificate verify failed"),
    ValueError("bad"),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__ + str(e)[:30])
def test_transient_storage_errors_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)
    assert retry_transient_storage(store, None, Failed(data=exc))  # type: ignore[arg-type]


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__ + str(e)[:30])
def test_permanent_storage_errors_are_not_retried(exc: BaseException) -> None:
    assert not is_transient(exc)
    assert not retry_transient_storage(store, None, Failed(data=exc))  # type: ignore[arg-type]


def test_a_wrapped_transport_error_is_transient() -> None:
    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        except EndpointConnectionError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


# --------------------------------------------------------------------------- keys / names


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "-x", "x" * 129, "é"])
def test_bad_acquisition_ids_are_rejected_everywhere(tmp_path: Path, bad: str) -> None:
    fs = local_storage(tmp_path)
    with pytest.raises(StorageKeyError, match=r"acquisition_id=.*cannot be used"):
        recording_key(bad, T0, "torino")
    with pytest.raises(StorageKeyError, match="acquisition_id"):
        asyncio.run(list_recordings(fs, bad, T0))
    with pytest.raises(StorageKeyError, match="acquisition_id"):
        asyncio.run(delete_acquisition(fs, bad, T0))


def test_bad_keys_are_rejected_before_any_io(tmp_path: Path) -> None:
    fs = local_storage(tmp_path)
    _, rec = _recording()
    with pytest.raises(StorageKeyError):
        asyncio.run(save_recording(fs, "acquisitions/../../outside", rec))
    with pytest.raises(StorageKeyError):
        asyncio.run(load_recording(fs, "acquisitions/x/../../etc/passwd.npy"))
    with pytest.raises(StorageKeyError, match=r"not a \.npy key"):
        asyncio.run(load_recording(fs, "acquisitions/x/torino.sigmf-meta"))
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "outside.npy").exists()


@pytest.mark.parametrize("name", ["rf-acquisition", "abc", "a.b-c.1", "x" * 63, "1bucket"])
def test_good_bucket_names(name: str) -> None:
    assert validate_bucket_name(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("ab", "2 characters long"),
        ("x" * 64, "64 characters long"),
        ("RF-Acquisition", "contains 'AFR'"),
        ("rf_acquisition", "contains '_'"),
        ("rf acquisition", "contains ' '"),
        ("-rf", "start and end with a letter or digit"),
        ("rf.", "start and end with a letter or digit"),
        ("rf..data", "contains '..'"),
        ("rf.-data", "contains '..', '.-' or '-.'"),
        ("192.168.5.4", "looks like an IP address"),
    ],
)
def test_bad_bucket_names_say_which_rule(name: str, rule: str) -> None:
    with pytest.raises(BucketNameError) as caught:
        validate_bucket_name(name)
    message = str(caught.value)
    assert rule in message
    assert f"bucket name {name!r} is invalid" in message
    assert "3-63 characters of lowercase letters" in message  # the rules, spelled out


@pytest.mark.parametrize(
    ("region", "configuration"),
    [("us-east-1", None), ("eu-central-1", {"LocationConstraint": "eu-central-1"})],
)
def test_ensure_bucket_is_region_correct(region: str, configuration: Any) -> None:
    bucket = minio_bucket(
        endpoint_url="http://127.0.0.1:9",
        access_key=f"stub-{uuid.uuid4().hex[:8]}",  # a client of its own (clients are cached)
        secret_key="stub-secret",
        bucket="new-bucket",
        region=region,
    )
    client = bucket.credentials.get_s3_client()
    with Stubber(client) as stub:
        stub.add_client_error("head_bucket", "404", "Not Found", 404, {"Bucket": "new-bucket"})
        expected: dict[str, Any] = {"Bucket": "new-bucket"}
        if configuration:
            expected["CreateBucketConfiguration"] = configuration
        stub.add_response("create_bucket", {}, expected)
        assert ensure_bucket(bucket) is True
        stub.assert_no_pending_responses()
        stub.add_response("head_bucket", {}, {"Bucket": "new-bucket"})
        assert ensure_bucket(bucket) is False


def test_ensure_bucket_refuses_a_bad_name_without_a_request() -> None:
    bucket = minio_bucket(
        endpoint_url="http://127.0.0.1:9", access_key="k", secret_key="s", bucket="Bad_Bucket"
    )
    with pytest.raises(BucketNameError, match="contains 'B_'"):
        ensure_bucket(bucket)


# --------------------------------------------------------------------------- local folder


def test_local_round_trip_listing_and_deletion(tmp_path: Path) -> None:
    fs = local_storage(tmp_path)
    day = T0 + timedelta(hours=1)
    a = asyncio.run(_save_acquisition(fs, "acq-1", day, ["torino", "genova"]))
    asyncio.run(_save_acquisition(fs, "acq-10", day, ["torino"]))  # "acq-1" is its prefix
    asyncio.run(_save_acquisition(fs, "acq-2", day + timedelta(days=1), ["coazze"]))

    samples, stored = a["torino"]
    back, meta = asyncio.run(load_recording(fs, stored.data_key))
    assert back.tobytes() == samples.tobytes()
    assert meta["global"]["core:sha512"] == stored.sha512
    assert stored.location == str(tmp_path / stored.data_key)

    listed = asyncio.run(list_recordings(fs, "acq-1", day.date()))
    assert [(r.receiver, r.complete) for r in listed] == [("genova", True), ("torino", True)]
    assert listed[1].data_bytes == stored.size_bytes

    window = asyncio.run(list_acquisitions(fs, T0, T0 + timedelta(days=1)))
    assert [(w.acquisition_id, w.day) for w in window] == [
        ("acq-1", date(2026, 11, 28)),
        ("acq-10", date(2026, 11, 28)),
        ("acq-2", date(2026, 11, 29)),
    ]
    assert window[0].receivers == ["genova", "torino"]
    assert [w.acquisition_id for w in asyncio.run(list_acquisitions(fs, T0, T0))] == [
        "acq-1",
        "acq-10",
    ]

    assert asyncio.run(delete_acquisition(fs, "acq-1", day)) == 4
    assert asyncio.run(list_recordings(fs, "acq-1", day)) == []
    assert not (tmp_path / "acquisitions/2026/11/28/acq-1").exists()
    left = asyncio.run(list_acquisitions(fs, T0, T0 + timedelta(days=1)))
    assert [w.acquisition_id for w in left] == ["acq-10", "acq-2"]
    assert asyncio.run(delete_acquisition(fs, "acq-1", day)) == 0  # idempotent


def test_local_tampered_recording_is_an_integrity_error_naming_the_file(tmp_path: Path) -> None:
    fs = local_storage(tmp_path)
    stored = asyncio.run(_save_acquisition(fs, "acq-1", T0, ["torino"]))["torino"][1]
    path = tmp_path / stored.data_key
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=rf"{path}: sha512 of the dataset"):
        asyncio.run(load_recording(fs, stored.data_key))


def test_local_incomplete_recording(tmp_path: Path) -> None:
    fs = local_storage(tmp_path)
    stored = asyncio.run(_save_acquisition(fs, "acq-1", T0, ["torino"]))["torino"][1]
    (tmp_path / stored.meta_key).unlink()  # as if the store stopped between the two writes
    [listed] = asyncio.run(list_recordings(fs, "acq-1", T0))
    assert listed.receiver == "torino" and not listed.complete and listed.data_bytes
    with pytest.raises(MissingObjectError, match=r"torino\.sigmf-meta: no such object"):
        asyncio.run(load_recording(fs, stored.data_key))


def test_local_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = local_storage(tmp_path)
    key = recording_key("acq-1", T0, "torino")
    first = asyncio.run(_save_acquisition(fs, "acq-1", T0, ["torino"]))["torino"][1]
    before = (tmp_path / first.data_key).read_bytes()

    def crash(*args: Any) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(tasks.objectstore.os, "replace", crash)
    _, other = _recording(4096, "torino", seed=9)
    with pytest.raises(OSError, match="disk vanished"):
        asyncio.run(save_recording(fs, key, other))
    # the old recording is intact and no partial file is left or listed
    assert (tmp_path / first.data_key).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / first.data_key).parent.iterdir()) == [
        "torino.npy",
        "torino.sigmf-meta",
    ]


def test_local_health(tmp_path: Path) -> None:
    health = asyncio.run(check_storage(local_storage(tmp_path / "recordings")))
    assert health.ok, health
    assert health.reachable and health.probe_write and health.probe_read and health.probe_delete
    assert health.credentials_accepted is None and health.bucket_exists is None  # n/a
    assert health.latency_ms is not None
    assert list((tmp_path / "recordings").iterdir()) == []  # the probe cleaned up

    missing = local_storage(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    health = asyncio.run(check_storage(missing))
    assert not health.ok
    assert health.failed_check == "reachable"
    assert "does not exist" in (health.error or "")


# --------------------------------------------------------------------------- S3


@pytest.mark.integration
def test_s3_round_trip_listing_and_deletion(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.objectstore, "LIST_PAGE_SIZE", 2)  # listings span several pages
    saved = asyncio.run(_save_acquisition(s3_bucket, "acq-1", T0, ["torino", "genova", "coazze"]))
    asyncio.run(_save_acquisition(s3_bucket, "acq-10", T0, ["torino"]))
    asyncio.run(_save_acquisition(s3_bucket, "acq-2", T0 + timedelta(days=2), ["genova"]))

    for samples, stored in saved.values():
        back, meta = asyncio.run(load_recording(s3_bucket, stored.data_key))
        assert back.tobytes() == samples.tobytes()  # bit-exact
        assert meta["global"]["core:sha512"] == stored.sha512
    stored = saved["torino"][1]
    assert stored.location == (
        f"s3://{s3_bucket.bucket_name}/{s3_bucket.bucket_folder}/"
        "acquisitions/2026/11/28/acq-1/torino.npy"
    )

    listed = asyncio.run(list_recordings(s3_bucket, "acq-1", T0))
    assert [r.receiver for r in listed if r.complete] == ["coazze", "genova", "torino"]
    window = asyncio.run(list_acquisitions(s3_bucket, T0 - timedelta(days=1), T0))
    assert [w.acquisition_id for w in window] == ["acq-1", "acq-10"]
    window = asyncio.run(list_acquisitions(s3_bucket, T0, T0 + timedelta(days=2)))
    assert [w.acquisition_id for w in window] == ["acq-1", "acq-10", "acq-2"]

    assert asyncio.run(delete_acquisition(s3_bucket, "acq-1", T0)) == 6
    client = s3_bucket.credentials.get_s3_client()
    left = client.list_objects_v2(Bucket=s3_bucket.bucket_name, Prefix=s3_bucket.bucket_folder)
    assert sorted(o["Key"].split("/", 1)[1] for o in left["Contents"]) == [
        "acquisitions/2026/11/28/acq-10/torino.npy",
        "acquisitions/2026/11/28/acq-10/torino.sigmf-meta",
        "acquisitions/2026/11/30/acq-2/genova.npy",
        "acquisitions/2026/11/30/acq-2/genova.sigmf-meta",
    ]
    back, _ = asyncio.run(load_recording(s3_bucket, recording_key("acq-10", T0, "torino") + ".npy"))
    assert back.size == 1024


@pytest.mark.integration
def test_s3_tampered_object_is_an_integrity_error_naming_the_key(s3_bucket: S3Bucket) -> None:
    stored = asyncio.run(_save_acquisition(s3_bucket, "acq-1", T0, ["torino"]))["torino"][1]
    client = s3_bucket.credentials.get_s3_client()
    full_key = f"{s3_bucket.bucket_folder}/{stored.data_key}"
    data = bytearray(client.get_object(Bucket=s3_bucket.bucket_name, Key=full_key)["Body"].read())
    data[200] ^= 0x10  # one bit of one sample
    client.put_object(Bucket=s3_bucket.bucket_name, Key=full_key, Body=bytes(data))
    with pytest.raises(IntegrityError) as caught:
        asyncio.run(load_recording(s3_bucket, stored.data_key))
    assert f"s3://{s3_bucket.bucket_name}/{full_key}: sha512 of the dataset" in str(caught.value)


@pytest.mark.integration
def test_s3_large_recording_is_multipart_with_verified_checksums(s3_bucket: S3Bucket) -> None:
    samples, rec = _recording(2_500_000)  # 20 MB of complex64
    assert len(rec.npy) > 2 * tasks.objectstore.MULTIPART_CHUNKSIZE
    client = s3_bucket.credentials.get_s3_client()  # the block's (cached) client
    sent: list[tuple[str, str | None]] = []

    def record(request: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        sent.append((operation, request.headers.get("x-amz-checksum-crc32")))

    handler_id = f"test-checksums-{uuid.uuid4().hex}"
    client.meta.events.register("before-send.s3", record, unique_id=handler_id)
    try:
        stored = asyncio.run(save_recording(s3_bucket, recording_key("big", T0, "torino"), rec))
    finally:
        client.meta.events.unregister("before-send.s3", unique_id=handler_id)

    parts = [checksum for operation, checksum in sent if operation == "UploadPart"]
    assert len(parts) == 3 and all(parts)  # every part carried its CRC32
    assert [c for op, c in sent if op == "PutObject"] and all(
        c for op, c in sent if op == "PutObject"
    )  # the (small) metadata went in one request, with its CRC32
    head = client.head_object(
        Bucket=s3_bucket.bucket_name,
        Key=f"{s3_bucket.bucket_folder}/{stored.data_key}",
        ChecksumMode="ENABLED",
    )
    assert head["ETag"].strip('"').endswith("-3")  # multipart: 3 parts of 8 MiB at most
    assert head["ChecksumCRC32"].endswith("-3")  # the server kept the composite checksum
    back, _ = asyncio.run(load_recording(s3_bucket, stored.data_key))
    assert back.tobytes() == samples.tobytes()


@pytest.mark.integration
def test_s3_server_refuses_a_wrong_checksum(s3_bucket: S3Bucket) -> None:
    """What makes a sent checksum worth sending: the server verifies it."""
    client = s3_bucket.credentials.get_s3_client()
    with pytest.raises(ClientError) as caught:
        client.put_object(
            Bucket=s3_bucket.bucket_name,
            Key=f"{s3_bucket.bucket_folder}/wrong-checksum",
            Body=b"the bytes that were sent",
            ChecksumCRC32="AAAAAA==",
        )
    assert caught.value.response["Error"]["Code"] == "BadDigest"


@pytest.mark.integration
def test_ensure_bucket_creates_a_missing_bucket(s3_env: dict[str, str], unique: str) -> None:
    bucket = minio_bucket_from_env(s3_env)
    bucket.bucket_name = f"rf-test-{unique}"
    client = bucket.credentials.get_s3_client()
    try:
        assert asyncio.run(check_storage(bucket)).failed_check == "bucket_exists"
        assert ensure_bucket(bucket) is True
        client.head_bucket(Bucket=bucket.bucket_name)
        assert ensure_bucket(bucket) is False
        assert asyncio.run(check_storage(bucket)).ok
    finally:
        with contextlib.suppress(ClientError):
            client.delete_bucket(Bucket=bucket.bucket_name)


@pytest.mark.integration
def test_s3_health_healthy(s3_bucket: S3Bucket) -> None:
    health = asyncio.run(check_storage(s3_bucket))
    assert health.ok, health
    assert health.failed_check is None and health.error is None
    assert health.latency_ms is not None and health.latency_ms < 1000
    assert health.target.startswith(f"s3://{s3_bucket.bucket_name}/{s3_bucket.bucket_folder}/")
    client = s3_bucket.credentials.get_s3_client()
    listed = client.list_objects_v2(Bucket=s3_bucket.bucket_name, Prefix=s3_bucket.bucket_folder)
    assert listed.get("KeyCount", 0) == 0  # the probe object is gone


def _no_secrets(health: StorageHealth, env: dict[str, str]) -> None:
    text = json.dumps(health.__dict__) + health.summary + json.dumps(health.rows())
    assert env["RF_S3_SECRET_KEY"] not in text
    assert "wrong-password-1234" not in text


@pytest.mark.integration
def test_s3_health_wrong_password(s3_env: dict[str, str]) -> None:
    env = {**s3_env, "RF_S3_SECRET_KEY": "wrong-password-1234"}
    health = asyncio.run(check_storage(minio_bucket_from_env(env)))
    assert not health.ok
    assert health.reachable is True
    assert health.failed_check == "credentials_accepted"
    assert health.bucket_exists is None and health.probe_write is None
    assert "SignatureDoesNotMatch" in (health.error or "")
    _no_secrets(health, s3_env)


@pytest.mark.integration
def test_s3_health_missing_bucket(s3_env: dict[str, str], unique: str) -> None:
    bucket = minio_bucket_from_env(s3_env)
    bucket.bucket_name = f"rf-missing-{unique}"
    health = asyncio.run(check_storage(bucket))
    assert (health.reachable, health.credentials_accepted) == (True, True)
    assert health.failed_check == "bucket_exists"
    assert "NoSuchBucket" in (health.error or "") and bucket.bucket_name in (health.error or "")
    assert health.probe_write is None  # SeaweedFS would create the bucket on a write
    _no_secrets(health, s3_env)


@pytest.mark.integration
def test_s3_health_server_stopped(s3_env: dict[str, str]) -> None:
    bucket = minio_bucket_from_env(s3_env)
    with s3_stopped():
        t0 = time.monotonic()
        health = asyncio.run(check_storage(bucket))
        elapsed = time.monotonic() - t0
    assert not health.ok
    assert health.failed_check == "reachable"
    assert "EndpointConnectionError" in (health.error or "")
    assert elapsed < 2.0  # one attempt, no botocore retries
    _no_secrets(health, s3_env)


@pytest.mark.integration
def test_store_survives_an_s3_restart(
    s3_bucket: S3Bucket, prefect_server: None, unique: str
) -> None:
    """The server is down when the store starts and comes back ~1.5 s after the store's
    first attempt failed: the task retries, and nothing is lost."""
    samples, rec = _recording(50_000)
    key = recording_key(f"restart-{unique}", T0, "torino")
    failures: list[tuple[BaseException, bool]] = []
    first_failure = threading.Event()

    def spy(task: Any, task_run: Any, state: Any) -> bool:
        retry = retry_transient_storage(task, task_run, state)
        failures.append((state.data, retry))
        first_failure.set()
        return retry

    quick = store.with_options(retries=8, retry_delay_seconds=1, retry_condition_fn=spy)

    @flow(name="store-during-restart")
    async def store_once() -> Any:
        return await quick(s3_bucket, key, "torino", rec)

    def restart_later() -> None:
        first_failure.wait(timeout=60)
        time.sleep(1.5)
        services("s3-start")

    with s3_stopped():
        restarter = threading.Thread(target=restart_later)
        restarter.start()
        try:
            stored = asyncio.run(store_once())
        finally:
            first_failure.set()
            restarter.join()
    assert failures, "the store never failed: was the server really down?"
    assert all(retry for _, retry in failures)
    assert isinstance(failures[0][0], EndpointConnectionError)
    back, _ = asyncio.run(load_recording(s3_bucket, stored.data_key))
    assert back.tobytes() == samples.tobytes()


@pytest.mark.integration
def test_store_does_not_retry_a_permanent_error(
    s3_env: dict[str, str], prefect_server: None
) -> None:
    bucket = minio_bucket_from_env({**s3_env, "RF_S3_SECRET_KEY": "wrong-password-1234"})
    _, rec = _recording()
    quick = store.with_options(retries=3, retry_delay_seconds=5)

    @flow(name="store-with-a-wrong-password")
    async def store_once() -> tuple[bool, int, str]:
        state = await quick(bucket, "acquisitions/x/torino", "torino", rec, return_state=True)
        return (
            state.is_failed(),
            await _run_count(state.state_details.task_run_id),
            str(state.message),
        )

    t0 = time.monotonic()
    failed, attempts, message = asyncio.run(store_once())
    assert failed
    assert time.monotonic() - t0 < 5  # no retry delay was waited
    assert attempts == 1
    assert "SignatureDoesNotMatch" in message
    assert "wrong-password-1234" not in message


async def _run_count(task_run_id: Any) -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (await client.read_task_run(task_run_id)).run_count


# --------------------------------------------------------------------------- health flow


async def _health_table(flow_run_id: Any) -> list[dict[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    [artifact] = [a for a in found if a.key == "health"]
    return json.loads(artifact.data)


@pytest.mark.flow
def test_health_flow_on_the_embedded_default(prefect_server: None, tmp_path: Path) -> None:
    from flows.health import health

    state = asyncio.run(
        health(
            storage="local",
            database="sqlite",
            network="simulated",
            data_dir=str(tmp_path),
            return_state=True,
        )
    )
    assert state.is_completed(), state.message
    assert state.message == "storage ok, database ok, 7/7 receivers reachable"
    report = state.result()
    assert report["storage"]["probe_delete"] is True
    assert report["database"]["dialect"] == "sqlite"
    table = asyncio.run(_health_table(state.state_details.flow_run_id))
    assert {r["component"] for r in table} == {"storage", "database", "receiver"}
    assert sum(r["component"] == "receiver" and r["result"] == "ok" for r in table) == 7


@pytest.mark.flow
@pytest.mark.integration
def test_health_flow_on_real_services(
    prefect_server: None, s3_env: dict[str, str], pg_engine: Any, tmp_path: Path, unique: str
) -> None:
    from flows.health import health

    good = minio_bucket_from_env(s3_env)
    good.save(f"health-{unique}")
    bad = minio_bucket_from_env({**s3_env, "RF_S3_SECRET_KEY": "wrong-password-1234"})
    bad.save(f"health-bad-{unique}")
    timescaledb_from_env(s3_env).save(f"health-{unique}")

    def run(storage: str) -> Any:
        return asyncio.run(
            health(
                storage=storage,
                database=f"timescaledb-connection/health-{unique}",
                network="simulated",
                data_dir=str(tmp_path),
                return_state=True,
            )
        )

    state = run(f"s3-bucket/health-{unique}")
    assert state.is_completed(), state.message
    assert state.message == "storage ok, database ok, 7/7 receivers reachable"
    database = state.result()["database"]
    assert database["dialect"] == "postgresql"
    assert database["timescaledb_version"] and database["timescaledb_license"] == "apache"

    state = run(f"s3-bucket/health-bad-{unique}")
    assert state.is_failed()
    assert state.message.startswith(
        "storage FAILED (credentials accepted failed: SignatureDoesNotMatch"
    )
    assert state.message.endswith("database ok, 7/7 receivers reachable")
    table = asyncio.run(_health_table(state.state_details.flow_run_id))
    assert "wrong-password-1234" not in json.dumps(table) + state.message


def test_the_database_probe_answers_and_never_shows_the_password(tmp_path: Path) -> None:
    good = check_database(sqlite_engine(tmp_path / "rf.db"))
    assert (good.ok, good.dialect, good.error) == (True, "sqlite", None)
    assert good.latency_ms is not None and 0 <= good.latency_ms < 1000
    engine = create_engine("postgresql+psycopg://rf:s3cret-Pa55@127.0.0.1:1/rf?connect_timeout=2")
    bad = check_database(engine)
    assert not bad.ok and bad.error is not None and bad.timescaledb_version is None
    assert "OperationalError" in bad.error and "s3cret-Pa55" not in bad.error
