"""One receiver's pipeline without Prefect: nothing captured is lost when a later stage
fails, and a hung S3 endpoint costs the store step's deadline, not minutes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from blocks.storage import minio_bucket
from tasks.capture import StageFailed
from tasks.kiwisdr.client import Capture, CaptureSettings, capture_iq
from tasks.kiwisdr.network import bind_urls, simulated_network
from tasks.pipeline import group_receivers, process_with_retries, spool_capture
from tasks.process import process_capture
from tasks.recording import read_recording
from tasks.storage import recording_key, store_or_spool

FREQUENCY_HZ = 145_500_000.0


@pytest.fixture(scope="module")
def captured() -> tuple[Capture, object]:
    """One real 0.2 s capture from the simulated Torino receiver."""
    network, receivers = simulated_network(frequency_hz=FREQUENCY_HZ)
    rx = next(r for r in receivers if r._block_document_name == "torino")
    with network:
        bind_urls(network, [rx])
        capture = asyncio.run(
            capture_iq(
                rx.url,
                CaptureSettings(FREQUENCY_HZ, 0.2),
                receiver="torino",
                freq_offset_khz=rx.freq_offset_khz,
                tunable_range_hz=rx.tunable_range_hz,
            )
        )
    return capture, rx


def test_a_process_failure_keeps_the_raw_samples(
    captured: tuple[Capture, object], tmp_path: Path
) -> None:
    capture, rx = captured
    broken = dataclasses.replace(capture, samples=capture.samples.real.astype(np.float64))
    with pytest.raises(StageFailed, match=r"^process failed: ") as failed:
        asyncio.run(process_with_retries(broken, rx, "acq-1", "torino"))  # type: ignore[arg-type]
    assert failed.value.attempts == 1  # a real error is not retried (only SystemError is)
    key = recording_key("acq-1", capture.start_utc, "torino")
    path = spool_capture(tmp_path, key, capture)
    assert path == tmp_path / f"{key}.capture.npy"
    np.testing.assert_array_equal(np.load(path), capture.samples)
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["sample_rate"] == capture.sample_rate and info["receiver"] == "torino"


@pytest.fixture
def hung_s3() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a hung S3 server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_a_hung_s3_endpoint_costs_the_deadline_then_spools(
    captured: tuple[Capture, object], hung_s3: str, tmp_path: Path
) -> None:
    capture, rx = captured
    processed = process_capture(capture, rx, acquisition_id="acq-2", name="torino")  # type: ignore[arg-type]
    bucket = minio_bucket(
        endpoint_url=hung_s3, access_key="k", secret_key="s", bucket="b", folder="f"
    )
    key = recording_key("acq-2", capture.start_utc, "torino")
    t0 = time.monotonic()
    outcome = asyncio.run(
        store_or_spool(bucket, key, processed.recording, tmp_path, deadline_s=1.5)
    )
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 3.0
    assert outcome.spooled
    assert outcome.error is not None
    assert outcome.error.startswith("store failed: no answer within the 1.5 s deadline")
    assert f"spooled to {tmp_path}" in outcome.error
    data = (tmp_path / f"{key}.npy").read_bytes()
    meta = (tmp_path / f"{key}.sigmf-meta").read_bytes()
    samples, _ = read_recording(data, meta)
    np.testing.assert_array_equal(samples, capture.samples)


def test_large_networks_share_task_runs() -> None:
    _, receivers = simulated_network(count=200)
    by_name = {r._block_document_name or "": r for r in receivers}
    groups = group_receivers(by_name, max_tasks=16)
    assert len(groups) == 16  # ceil(200 / 16) = 13 per group, the last one 5
    assert [len(g.receivers) for g in groups] == [13] * 15 + [5]
    assert groups[0].label == "aquila-di-giaveno..genova-2 (13)"
    assert [g.label for g in group_receivers(dict(list(by_name.items())[:7]))][:2] == [
        "aquila-di-giaveno",
        "montanaro",
    ]


def test_one_receiver_end_to_end_without_prefect(hung_s3: str, tmp_path: Path) -> None:
    """capture -> process -> store as plain code: ok into a folder; spooled, with its
    measurements kept, when the storage hangs past the deadline."""
    import logging

    from blocks.storage import local_storage
    from tasks.capture import StartBarrier
    from tasks.pipeline import AcquisitionRun, acquire_receiver

    network, receivers = simulated_network(frequency_hz=FREQUENCY_HZ)
    rx = {r._block_document_name: r for r in receivers}
    hung = minio_bucket(endpoint_url=hung_s3, access_key="k", secret_key="s", bucket="b")
    log = logging.getLogger("test")
    settings = CaptureSettings(FREQUENCY_HZ, 0.2)

    async def both() -> list:
        barrier = StartBarrier(2, margin_s=0.3)
        ok = AcquisitionRun(
            "acq-3", settings, barrier, local_storage(tmp_path / "rec"), tmp_path / "spool", 5.0
        )
        spooling = AcquisitionRun("acq-3", settings, barrier, hung, tmp_path / "spool", 1.0)
        return await asyncio.gather(
            acquire_receiver("torino", rx["torino"], ok, log),
            acquire_receiver("genova", rx["genova"], spooling, log),
        )

    with network:
        bind_urls(network, receivers)
        stored, spooled = asyncio.run(both())
    assert stored.status == "ok" and stored.error is None and stored.attempts == 1
    assert stored.object_key is not None and stored.object_key.endswith("/torino.npy")
    assert (tmp_path / "rec" / stored.object_key).is_file()
    assert stored.row is not None and stored.row["sample_count"] >= 0.2 * 12000
    assert spooled.status == "spooled" and spooled.object_key is None
    assert spooled.error is not None and "deadline" in spooled.error
    assert spooled.row is not None and spooled.row["power_dbfs"] is not None  # measured
    assert len(list((tmp_path / "spool").rglob("genova.npy"))) == 1
    # Both started on the barrier's instant: first samples within one frame.
    gap = abs((stored.row["time"] - spooled.row["time"]).total_seconds())
    assert gap < 512 / 12000.0
