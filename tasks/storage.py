"""Saving recordings through a Prefect filesystem block (S3Bucket or LocalFileSystem).

Layout: ``acquisitions/YYYY/MM/DD/<acquisition id>/<receiver>.npy`` and ``.sigmf-meta``
beside it. The data object is written first and the metadata last, so a metadata object
always means its data object is complete; the reconcile flow relies on that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from tasks.recording import Recording

PREFIX = "acquisitions"
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class FileSystem(Protocol):
    """The part of Prefect's WritableFileSystem blocks this module uses."""

    async def awrite_path(self, path: str, content: bytes) -> str: ...
    async def aread_path(self, path: str) -> bytes: ...


class StorageKeyError(ValueError):
    """A receiver name or acquisition id that must not become part of an object key."""


def check_key_part(value: str, field: str) -> str:
    """Refuse ``..``, slashes, control characters and over-long names before they become keys."""
    if not isinstance(value, str) or not _KEY_PART.match(value) or ".." in value:
        raise StorageKeyError(
            f"{field}={value!r} cannot be used in an object key: use 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit, without '..'"
        )
    return value


def recording_key(acquisition_id: str, started: datetime, receiver: str) -> str:
    """Object key (without extension) of one receiver's recording in an acquisition."""
    check_key_part(acquisition_id, "acquisition_id")
    check_key_part(receiver, "receiver")
    day = started.astimezone(UTC)
    return f"{PREFIX}/{day:%Y/%m/%d}/{acquisition_id}/{receiver}"


@dataclass(frozen=True)
class StoredRecording:
    """Where a recording went and what it was."""

    receiver: str
    data_key: str
    meta_key: str
    location: str
    sha512: str
    size_bytes: int


async def save_recording(fs: FileSystem, key: str, recording: Recording) -> StoredRecording:
    """Write ``<key>.npy`` then ``<key>.sigmf-meta``; returns where they went."""
    data_key, meta_key = f"{key}.npy", f"{key}.sigmf-meta"
    written = await fs.awrite_path(data_key, recording.npy)
    await fs.awrite_path(meta_key, recording.meta_bytes)
    bucket = getattr(fs, "bucket_name", None)
    return StoredRecording(
        receiver=key.rsplit("/", 1)[-1],
        data_key=data_key,
        meta_key=meta_key,
        location=f"s3://{bucket}/{written}" if bucket else str(written),
        sha512=recording.sha512,
        size_bytes=len(recording.npy),
    )


@task(
    name="store",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=1.0),
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
    task_run_name="store-{receiver}",
)
async def store(fs: FileSystem, key: str, receiver: str, recording: Recording) -> StoredRecording:
    """Save one recording through the storage block (retried on any error: writes are
    idempotent, the same bytes to the same key)."""
    stored = await save_recording(fs, key, recording)
    get_run_logger().info("%s: stored %d bytes at %s", receiver, stored.size_bytes, stored.location)
    return stored
