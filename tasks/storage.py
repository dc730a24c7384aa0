"""Recordings in storage: save, load, list and delete them through a Prefect filesystem
block (S3Bucket or LocalFileSystem), plus thin Prefect tasks over those functions.

Layout: ``acquisitions/YYYY/MM/DD/<acquisition id>/<receiver>.npy`` and ``.sigmf-meta``
beside it (the day is the acquisition's planned start, in UTC). The data object is
written first and the metadata last, so a metadata object always means its data object is
complete; the reconcile flow relies on that, and deletion removes metadata first so it
stays true while a deletion is interrupted.

Every function here is written once over :class:`blocks.storage.ObjectStore`; the block
decides where the bytes go.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import task_run as runtime_task_run
from prefect.tasks import exponential_backoff

from blocks.storage import local_storage
from tasks.errors import (
    MissingObjectError,
    RfAcquisitionError,
    StorageError,
    retry_if_transient,
)
from tasks.objectstore import botocore_errors, object_store
from tasks.recording import IntegrityError, Recording, RecordingError, read_recording

__all__ = [
    "PREFIX",
    "SPOOL_DIRNAME",
    "FileSystem",
    "IntegrityError",
    "ListedRecording",
    "MissingObjectError",
    "StorageError",
    "StorageKeyError",
    "StoreOutcome",
    "StoredAcquisition",
    "StoredRecording",
    "acquisition_prefix",
    "check_key_part",
    "delete",
    "delete_acquisition",
    "is_transient",
    "list_acquisitions",
    "list_recordings",
    "list_spool",
    "load",
    "load_recording",
    "recording_key",
    "retry_transient_storage",
    "save_recording",
    "spool_folder",
    "spool_recording",
    "store",
    "store_or_spool",
    "unspool",
]

PREFIX = "acquisitions"
DATA_SUFFIX = ".npy"
META_SUFFIX = ".sigmf-meta"
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_LIST_DAYS = 3660  # a listing window longer than ten years is a mistake
_LIST_CONCURRENCY = 8


class FileSystem(Protocol):
    """The part of Prefect's WritableFileSystem blocks every storage block offers."""

    async def awrite_path(self, path: str, content: bytes) -> str: ...
    async def aread_path(self, path: str) -> bytes: ...


class StorageKeyError(StorageError, ValueError):
    """A receiver name or acquisition id that must not become part of an object key."""


# --------------------------------------------------------------------------- keys


def check_key_part(value: str, field: str) -> str:
    """Refuse ``..``, slashes, control characters and over-long names before they become keys."""
    if not isinstance(value, str) or not _KEY_PART.match(value) or ".." in value:
        raise StorageKeyError(
            f"{field}={value!r} cannot be used in an object key: use 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit, without '..'"
        )
    return value


def _utc_day(day: date | datetime) -> date:
    if isinstance(day, datetime):
        if day.utcoffset() is None:
            raise ValueError(f"day={day!r}: a datetime must be timezone-aware")
        return day.astimezone(UTC).date()
    if isinstance(day, date):
        return day
    raise TypeError(f"day={day!r}: expected a date or an aware datetime")


def _day_prefix(day: date) -> str:
    return f"{PREFIX}/{day:%Y/%m/%d}/"


def acquisition_prefix(acquisition_id: str, day: date | datetime) -> str:
    """``acquisitions/YYYY/MM/DD/<acquisition id>/``: every object of one acquisition."""
    check_key_part(acquisition_id, "acquisition_id")
    return f"{_day_prefix(_utc_day(day))}{acquisition_id}/"


def recording_key(acquisition_id: str, started: datetime, receiver: str) -> str:
    """Object key (without extension) of one receiver's recording in an acquisition."""
    check_key_part(receiver, "receiver")
    return acquisition_prefix(acquisition_id, started) + receiver


def _check_key(key: str) -> str:
    for part in key.split("/"):
        check_key_part(part, "key part")
    return key


# --------------------------------------------------------------------------- save / load


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
    """Write ``<key>.npy`` then ``<key>.sigmf-meta``; returns where they went.

    Args:
        fs: an S3Bucket or LocalFileSystem block.
        key: the recording's key without extension, from :func:`recording_key`.
        recording: the ``.npy`` bytes and SigMF metadata.

    Returns:
        The keys, the data object's location (``s3://bucket/...`` or a file path), its
        sha512 and size.

    Example:
        >>> key = recording_key("acq-1", datetime.now(UTC), "torino")  # doctest: +SKIP
        >>> stored = asyncio.run(save_recording(fs, key, recording))  # doctest: +SKIP
    """
    _check_key(key)
    data_key, meta_key = key + DATA_SUFFIX, key + META_SUFFIX
    objects = object_store(fs)
    location = await objects.put(data_key, recording.npy)
    await objects.put(meta_key, recording.meta_bytes)  # last: it marks the data complete
    return StoredRecording(
        receiver=key.rsplit("/", 1)[-1],
        data_key=data_key,
        meta_key=meta_key,
        location=location,
        sha512=recording.sha512,
        size_bytes=len(recording.npy),
    )


async def load_recording(fs: FileSystem, data_key: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a recording back and verify it against the sha512 in its metadata.

    Args:
        fs: the block it was saved through.
        data_key: the ``.npy`` key (``StoredRecording.data_key``, a row's ``object_key``).

    Returns:
        The complex64 samples and the parsed SigMF metadata.

    Raises:
        IntegrityError: the data's sha512 doesn't match; the message names the object.
        MissingObjectError: the data or the metadata object is missing.

    Example:
        >>> samples, meta = asyncio.run(load_recording(fs, stored.data_key))  # doctest: +SKIP
    """
    _check_key(data_key)
    if not data_key.endswith(DATA_SUFFIX):
        raise StorageKeyError(f"data_key={data_key!r} is not a {DATA_SUFFIX} key")
    meta_key = data_key.removesuffix(DATA_SUFFIX) + META_SUFFIX
    objects = object_store(fs)
    data, meta = await asyncio.gather(objects.get(data_key), objects.get(meta_key))
    return read_recording(data, meta, name=objects.location(data_key))


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ListedRecording:
    """One receiver's objects in an acquisition."""

    receiver: str
    data_key: str
    meta_key: str
    data_bytes: int | None  # None: the data object is missing
    has_metadata: bool

    @property
    def complete(self) -> bool:
        """Both objects are there (metadata is written last, so the data is whole)."""
        return self.data_bytes is not None and self.has_metadata


@dataclass(frozen=True)
class StoredAcquisition:
    """One acquisition's folder and the recordings in it."""

    acquisition_id: str
    day: date
    prefix: str
    recordings: tuple[ListedRecording, ...]

    @property
    def receivers(self) -> list[str]:
        """Receivers whose recordings are complete."""
        return [r.receiver for r in self.recordings if r.complete]


def _recordings(prefix: str, objects: Sequence[Any]) -> tuple[ListedRecording, ...]:
    """Group the objects directly under ``prefix`` into recordings by receiver."""
    sizes: dict[str, dict[str, int]] = {}
    for obj in objects:
        name = obj.key[len(prefix) :]
        for suffix in (DATA_SUFFIX, META_SUFFIX):
            if "/" not in name and name.endswith(suffix) and len(name) > len(suffix):
                sizes.setdefault(name.removesuffix(suffix), {})[suffix] = obj.size
    return tuple(
        ListedRecording(
            receiver=receiver,
            data_key=prefix + receiver + DATA_SUFFIX,
            meta_key=prefix + receiver + META_SUFFIX,
            data_bytes=found.get(DATA_SUFFIX),
            has_metadata=META_SUFFIX in found,
        )
        for receiver, found in sorted(sizes.items())
    )


async def list_recordings(
    fs: FileSystem, acquisition_id: str, day: date | datetime
) -> list[ListedRecording]:
    """The recordings stored for one acquisition, by receiver name.

    Args:
        fs: an S3Bucket or LocalFileSystem block.
        acquisition_id: the acquisition's id.
        day: its UTC day (a date, or its aware start time).

    Returns:
        One :class:`ListedRecording` per receiver, complete or not (a store interrupted
        between data and metadata leaves ``has_metadata=False``).
    """
    prefix = acquisition_prefix(acquisition_id, day)
    return list(_recordings(prefix, await object_store(fs).list(prefix)))


async def list_acquisitions(
    fs: FileSystem, start: date | datetime, end: date | datetime
) -> list[StoredAcquisition]:
    """Acquisitions stored under the UTC days from ``start``'s to ``end``'s, inclusive.

    The layout records days, so the window has day resolution: an acquisition at 23:00
    is listed for a window ending at 09:00 the same day. Exact start times are in the
    database and in each recording's metadata. One listing request (S3: paginated) per day.

    Returns:
        Acquisitions sorted by day then id, each with its recordings.
    """
    first, last = _utc_day(start), _utc_day(end)
    if last < first:
        raise ValueError(f"list_acquisitions: end {end} is before start {start}")
    days = (last - first).days + 1
    if days > MAX_LIST_DAYS:
        raise ValueError(f"list_acquisitions: {days} days is more than {MAX_LIST_DAYS}")
    objects = object_store(fs)
    limit = asyncio.Semaphore(_LIST_CONCURRENCY)

    async def one_day(day: date) -> list[StoredAcquisition]:
        async with limit:
            found = await objects.list(_day_prefix(day))
        by_id: dict[str, list[Any]] = {}
        for obj in found:
            acquisition_id, sep, _ = obj.key[len(_day_prefix(day)) :].partition("/")
            if sep:
                by_id.setdefault(acquisition_id, []).append(obj)
        return [
            StoredAcquisition(
                acquisition_id=acq,
                day=day,
                prefix=_day_prefix(day) + acq + "/",
                recordings=_recordings(_day_prefix(day) + acq + "/", objs),
            )
            for acq, objs in sorted(by_id.items())
        ]

    per_day = await asyncio.gather(*(one_day(first + timedelta(d)) for d in range(days)))
    return [acquisition for day in per_day for acquisition in day]


async def delete_acquisition(fs: FileSystem, acquisition_id: str, day: date | datetime) -> int:
    """Delete every object of one acquisition and nothing else; returns how many.

    Metadata objects go first, so an interrupted deletion never leaves metadata that
    vouches for a missing data object. Rows in the database are not touched.
    """
    prefix = acquisition_prefix(acquisition_id, day)
    objects = object_store(fs)
    keys = [o.key for o in await objects.list(prefix)]
    keys.sort(key=lambda k: not k.endswith(META_SUFFIX))
    if keys:
        await objects.delete(keys)
    return len(keys)


# --------------------------------------------------------------------------- retries

# S3 error codes worth retrying: throttling, server trouble, and bytes damaged in transit
# (BadDigest: the server's checksum of what arrived didn't match what we sent).
TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "BadDigest",
        "XAmzContentSHA256Mismatch",
    }
)
_TRANSIENT_TRANSPORT = (
    ConnectionError,  # the builtin: reset, refused, aborted
    TimeoutError,
)


def _transient_transport() -> tuple[type[BaseException], ...]:
    """The transport errors worth a retry; botocore's only when botocore is loaded (this
    module does not import it: see tasks.objectstore's top)."""
    boto = botocore_errors()
    if boto is None:
        return _TRANSIENT_TRANSPORT
    return (
        boto.EndpointConnectionError,  # connection refused, host unreachable
        boto.ConnectTimeoutError,
        boto.ReadTimeoutError,
        boto.ConnectionClosedError,  # reset mid-request
        boto.ResponseStreamingError,
        boto.IncompleteReadError,
        boto.FlexibleChecksumError,  # a download's checksum didn't match: read again
        *_TRANSIENT_TRANSPORT,
    )


def is_transient(exc: BaseException) -> bool:
    """Would the same storage call plausibly succeed if made again later?

    Yes for connection refused/reset, endpoint unreachable, timeouts, HTTP 5xx, 429 and
    throttling codes; no for everything else, in particular NoSuchBucket, AccessDenied,
    InvalidAccessKeyId, SignatureDoesNotMatch, bad keys and bad recordings. Causes are
    followed, so a wrapped transport error counts.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    boto, transport = botocore_errors(), _transient_transport()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RfAcquisitionError):
            return current.transient
        if isinstance(current, RecordingError):
            return False
        if boto is not None and isinstance(current, boto.ClientError):
            error = current.response.get("Error", {})
            status = int(current.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return error.get("Code") in TRANSIENT_S3_CODES or status >= 500 or status == 429
        if isinstance(current, transport):
            return True
        current = current.__cause__ or current.__context__
    return False


# Prefect ``retry_condition_fn``: retry only :func:`is_transient` errors.
retry_transient_storage = retry_if_transient(is_transient)


# --------------------------------------------------------------------------- tasks

# 4 retries 2, 4, 8, 16 s apart (+ up to 50 % jitter): an S3 server restarted within
# ~30 s of an outage loses nothing. Writes are idempotent (the same bytes to the same key).
STORE_RETRIES = 4
STORE_BACKOFF = exponential_backoff(backoff_factor=2.0)
_RETRYING: dict[str, Any] = {
    "retries": STORE_RETRIES,
    "retry_delay_seconds": STORE_BACKOFF,
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient_storage,
    "cache_policy": NO_CACHE,
}


@task(
    name="store",
    **_RETRYING,
    task_run_name="store-{receiver}",
)
async def store(fs: FileSystem, key: str, receiver: str, recording: Recording) -> StoredRecording:
    """Save one recording through the storage block (:func:`save_recording`), retrying
    transient storage errors with backoff.

    Args:
        fs: an S3Bucket or LocalFileSystem block.
        key: the recording's key without extension (:func:`recording_key`).
        receiver: the receiver's name (for the run name and logs).
        recording: what to store.

    Returns:
        The :class:`StoredRecording`.
    """
    try:
        stored = await save_recording(fs, key, recording)
    except Exception as exc:
        exc.attempts = runtime_task_run.run_count or 1  # type: ignore[attr-defined]
        raise
    get_run_logger().info("%s: stored %d bytes at %s", receiver, stored.size_bytes, stored.location)
    return stored


@task(
    name="load-recording",
    **_RETRYING,
)
async def load(fs: FileSystem, data_key: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Load and verify one recording (:func:`load_recording`), retrying transient errors.

    Returns:
        The samples and the SigMF metadata.
    """
    return await load_recording(fs, data_key)


@task(
    name="delete-acquisition",
    **_RETRYING,
    task_run_name="delete-{acquisition_id}",
)
async def delete(fs: FileSystem, acquisition_id: str, day: date | datetime) -> int:
    """Delete one acquisition's objects (:func:`delete_acquisition`); returns how many."""
    deleted = await delete_acquisition(fs, acquisition_id, day)
    get_run_logger().info("acquisition %s: deleted %d objects", acquisition_id, deleted)
    return deleted


# --------------------------------------------------------------------------- spool

# When the storage block stays unreachable longer than the store task's retries, the
# recording is kept on local disk, in the same key layout, until the reconcile flow
# uploads it (tasks/reconcile.py). Nothing captured is dropped because a service failed.
SPOOL_DIRNAME = "spool"


def spool_folder(data_dir: str | Path) -> Path:
    """``<data_dir>/spool``: where recordings wait when the storage block refused them."""
    return Path(data_dir).resolve() / SPOOL_DIRNAME


def _spool_key_parts(key: str) -> tuple[date, str, str] | None:
    """(day, acquisition id, receiver) of ``acquisitions/YYYY/MM/DD/<acquisition>/<receiver>``
    exactly as :func:`recording_key` writes it, or None."""
    parts = key.split("/")
    if len(parts) != 6 or parts[0] != PREFIX:
        return None
    try:
        day = date(int(parts[1]), int(parts[2]), int(parts[3]))
    except ValueError:
        return None
    if not key.startswith(_day_prefix(day)):
        return None  # not zero-padded as recording_key writes it
    return day, parts[4], parts[5]


async def spool_recording(folder: Path, key: str, recording: Recording) -> StoredRecording:
    """Keep a recording on local disk because the storage block would not take it.

    Writes ``<folder>/<key>.npy`` then ``<key>.sigmf-meta`` with :func:`save_recording`
    through a LocalFileSystem block (each file written to a temporary name, fsynced and
    renamed), so the reconcile flow can upload it later to the same key.

    Args:
        folder: the spool folder (:func:`spool_folder` of the flow's data folder);
            created when missing.
        key: the recording's key without extension, from :func:`recording_key`.
        recording: the ``.npy`` bytes and SigMF metadata.

    Returns:
        The :class:`StoredRecording`; its ``location`` is the ``.npy`` file's path.

    Raises:
        StorageKeyError: ``key`` is not a :func:`recording_key` (the spool could not
            find it again).

    Example:
        >>> key = recording_key(acquisition_id, started, "torino")  # doctest: +SKIP
        >>> spooled = asyncio.run(spool_recording(spool_folder("data"), key, rec))  # doctest: +SKIP
        >>> spooled.location  # doctest: +SKIP
        '/srv/rf/data/spool/acquisitions/2026/11/28/<acquisition>/torino.npy'
    """
    if _spool_key_parts(_check_key(key)) is None:
        raise StorageKeyError(
            f"key={key!r} is not a recording key ({PREFIX}/YYYY/MM/DD/<acquisition>/<receiver>)"
        )
    return await save_recording(local_storage(folder), key, recording)


# An S3 endpoint that accepts connections but never answers would otherwise hold a run
# for botocore's read timeout x its attempts x our retries (8 min measured); past this
# deadline the recording goes to the spool instead.
STORE_DEADLINE_S = 60.0


@dataclass(frozen=True)
class StoreOutcome:
    """Where a recording went: storage (``spooled`` False) or the local spool (with why)."""

    stored: StoredRecording
    spooled: bool
    attempts: int
    error: str | None = None


async def store_or_spool(
    fs: FileSystem,
    key: str,
    recording: Recording,
    spool: Path,
    *,
    deadline_s: float = STORE_DEADLINE_S,
    retries: int = STORE_RETRIES,
    backoff_s: float = 2.0,
) -> StoreOutcome:
    """Save a recording, retrying transient errors with backoff, within an overall
    deadline; when storage refuses it for good or the deadline passes, spool it.

    Args:
        fs: the storage block.
        key: the recording's key without extension (:func:`recording_key`).
        recording: what to store.
        spool: the spool folder (:func:`spool_folder`).
        deadline_s: the whole store step's time limit, retries included.
        retries: attempts after the first, for transient errors only.
        backoff_s: the first retry's delay (doubling, with up to 50 % jitter).

    Returns:
        A :class:`StoreOutcome`.

    Raises:
        StorageError: (or whatever the spool raised) when the spool failed too; its
            message carries both errors, since the recording is then lost.
    """
    attempts = 0

    async def attempt_all() -> StoredRecording:
        nonlocal attempts
        while True:
            attempts += 1
            try:
                return await save_recording(fs, key, recording)
            except Exception as exc:
                if attempts > retries or not is_transient(exc):
                    raise
                await asyncio.sleep(backoff_s * 2 ** (attempts - 1) * (1 + 0.5 * random.random()))

    try:
        stored = await asyncio.wait_for(attempt_all(), deadline_s)
        return StoreOutcome(stored, spooled=False, attempts=attempts)
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            why = f"store failed: no answer within the {deadline_s:g} s deadline"
        else:
            why = f"store failed: {type(exc).__name__}: {exc}"
        try:
            spooled = await spool_recording(spool, key, recording)
        except Exception as spool_exc:
            raise StorageError(
                f"{why}; spooling failed too: {type(spool_exc).__name__}: {spool_exc}"
            ) from spool_exc
        return StoreOutcome(
            spooled, spooled=True, attempts=attempts, error=f"{why}; spooled to {spooled.location}"
        )


async def list_spool(folder: Path) -> list[StoredAcquisition]:
    """Every acquisition waiting in the spool, whatever its day.

    Returns:
        Acquisitions sorted by day then id, each with its recordings (complete or not);
        an empty list when the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    groups: dict[tuple[date, str], list[Any]] = {}
    for obj in await object_store(local_storage(folder)).list(PREFIX + "/"):
        parts = _spool_key_parts(obj.key.removesuffix(DATA_SUFFIX).removesuffix(META_SUFFIX))
        if parts is not None:
            groups.setdefault(parts[:2], []).append(obj)
    out = []
    for (day, acquisition_id), objs in sorted(groups.items()):
        prefix = f"{_day_prefix(day)}{acquisition_id}/"
        out.append(StoredAcquisition(acquisition_id, day, prefix, _recordings(prefix, objs)))
    return out


async def unspool(folder: Path, recording: ListedRecording) -> None:
    """Remove one recording from the spool, metadata first (a spooled ``.npy`` without its
    metadata is never taken for complete); call it only once the recording is safely
    stored elsewhere."""
    await object_store(local_storage(folder)).delete([recording.meta_key, recording.data_key])
