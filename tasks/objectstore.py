"""One object interface over the storage blocks: put, get, list and delete by key.

:func:`object_store` wraps a prefect-aws ``S3Bucket`` (MinIO or any S3 server) or a
``LocalFileSystem`` block in an :class:`ObjectStore` whose keys are relative to the
block's root (``bucket_folder`` or ``basepath``), so ``tasks/storage.py`` writes each
recording operation once for both.

Why not the blocks' own ``awrite_path``: ``S3Bucket`` uploads with boto3's default transfer
settings and only the checksum the environment's botocore config happens to choose (none
with ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``), and cannot list with its folder
or delete objects; ``LocalFileSystem`` writes in place, so a crash leaves half a file. The
blocks (``blocks/storage.py``) still supply what they are for: the configuration and the
authenticated client.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio.to_thread
from prefect.filesystems import LocalFileSystem

from blocks.storage import loaded_s3_bucket_class, local_base
from tasks.errors import MissingObjectError, StorageError

if TYPE_CHECKING:
    # boto3, botocore and prefect_aws are imported where S3 is used, not here: they cost
    # 0.25-0.45 s at import, which storing in a local folder never needs. Code that only
    # asks whether an object is one of their types checks sys.modules instead (an object
    # cannot be an instance of a class whose module was never imported).
    from botocore.exceptions import ClientError
    from prefect_aws import S3Bucket

T = TypeVar("T")

MiB = 1024 * 1024
# Objects of this size or more are uploaded in parts of this size (S3 allows 5 MiB-5 GiB).
MULTIPART_THRESHOLD = 8 * MiB
MULTIPART_CHUNKSIZE = 8 * MiB
# Sent with every upload (and every part) and verified by the server, which refuses the
# object with BadDigest when the bytes it received don't match.
CHECKSUM_ALGORITHM = "CRC32"

LIST_PAGE_SIZE = 1000
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
_TMP_SUFFIX = ".partial"
_CLIENT_LOCK = threading.Lock()


def s3_code(exc: ClientError) -> str:
    """S3's error code of a botocore ClientError (``NoSuchKey``, ``SlowDown``, ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def s3_status(exc: ClientError) -> int:
    """The HTTP status of a botocore ClientError (0 when unknown)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


@cache
def transfer_config() -> Any:
    """boto3's transfer settings for multipart uploads (built at first use: see the top)."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_CHUNKSIZE,
        max_concurrency=4,
    )


def botocore_errors() -> Any:
    """``botocore.exceptions`` when botocore is already imported, else None (see the top)."""
    return sys.modules.get("botocore.exceptions")


def storage_reason(exc: BaseException) -> str:
    """One line about a storage error: S3's code and message, or the type and text."""
    boto = botocore_errors()
    if boto is not None and isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code') or s3_status(exc)}: {error.get('Message') or 'no message'}"
    if isinstance(exc, StorageError | OSError) or (
        boto is not None and isinstance(exc, boto.BotoCoreError)
    ):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in anyio's worker threads.

    anyio's limiter (40 threads) rather than asyncio's default executor, which has only
    cpu+4 workers: 7 receivers stored at once must not queue behind each other.
    """
    return await anyio.to_thread.run_sync(partial(fn, *args))


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the store's root, and its size."""

    key: str
    size: int


class ObjectStore(Protocol):
    """The storage operations recordings need, by key relative to the block's root."""

    def location(self, key: str) -> str:
        """Where ``key`` lives, for people: ``s3://bucket/folder/key`` or a file path."""
        ...

    async def put(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key`` whole or not at all; returns its location."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes at ``key``; :class:`MissingObjectError` if there are none."""
        ...

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` in the order given (missing ones are not an error)."""
        ...


class S3Objects:
    """:class:`ObjectStore` over an ``S3Bucket`` block, through its credentials' boto3
    client (thread-safe; synchronous calls run in worker threads)."""

    def __init__(self, bucket: S3Bucket, client: Any = None) -> None:
        self.bucket = bucket
        self.root = bucket.bucket_folder.strip("/")
        self._client = client

    @property
    def client(self) -> Any:
        # The block caches its client per credentials (connections are pooled), but
        # concurrent first calls would each build one (~0.2 s apiece, serialised inside
        # prefect-aws): the lock makes the first build once and the others hit the cache.
        if self._client is None:
            with _CLIENT_LOCK:
                self._client = self.bucket.credentials.get_s3_client()
        return self._client

    def _full(self, key: str) -> str:
        return f"{self.root}/{key}" if self.root else key

    def _relative(self, full: str) -> str:
        return full[len(self.root) + 1 :] if self.root else full

    def location(self, key: str) -> str:
        return f"s3://{self.bucket.bucket_name}/{self._full(key)}"

    async def put(self, key: str, data: bytes) -> str:
        await in_thread(self._put, self._full(key), data)
        return self.location(key)

    def _put(self, full: str, data: bytes) -> None:
        if len(data) < MULTIPART_THRESHOLD:
            # one request: cheaper than the transfer manager's thread pool for small objects
            self.client.put_object(
                Bucket=self.bucket.bucket_name,
                Key=full,
                Body=data,
                ChecksumAlgorithm=CHECKSUM_ALGORITHM,
            )
        else:
            self.client.upload_fileobj(
                io.BytesIO(data),
                self.bucket.bucket_name,
                full,
                ExtraArgs={"ChecksumAlgorithm": CHECKSUM_ALGORITHM},
                Config=transfer_config(),
            )

    async def get(self, key: str) -> bytes:
        return await in_thread(self._get, key)

    def _get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError  # S3 in use: botocore is loaded

        try:
            response = self.client.get_object(
                Bucket=self.bucket.bucket_name, Key=self._full(key), ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if s3_code(exc) in ("NoSuchKey", "404"):
                raise MissingObjectError(f"{self.location(key)}: no such object") from None
            raise
        with response["Body"] as body:
            return body.read()

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await in_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket.bucket_name,
            Prefix=self._full(prefix),
            PaginationConfig={"PageSize": LIST_PAGE_SIZE},
        )
        found = [
            ObjectInfo(self._relative(obj["Key"]), int(obj["Size"]))
            for page in pages
            for obj in page.get("Contents", [])
        ]
        return sorted(found, key=lambda o: o.key)

    async def delete(self, keys: Sequence[str]) -> None:
        await in_thread(self._delete, list(keys))

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            response = self.client.delete_objects(
                Bucket=self.bucket.bucket_name,
                Delete={"Objects": [{"Key": self._full(k)} for k in batch], "Quiet": True},
            )
            if errors := response.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"{len(errors)} of {len(batch)} objects were not deleted, e.g. "
                    f"s3://{self.bucket.bucket_name}/{first.get('Key')}: "
                    f"{first.get('Code')}: {first.get('Message')}"
                )


class LocalObjects:
    """:class:`ObjectStore` over a ``LocalFileSystem`` block's ``basepath``.

    Writes go to a hidden temporary file beside the target, are fsynced and renamed over
    it, and the folder is fsynced: after a crash a key holds its old bytes, its new bytes
    or nothing, never part of them.
    """

    def __init__(self, fs: LocalFileSystem) -> None:
        self.base = local_base(fs)

    def _path(self, key: str) -> Path:
        path = (self.base / key).resolve()
        if not key or self.base not in path.parents:
            raise StorageError(f"key {key!r} is not a file inside {self.base}")
        return path

    def location(self, key: str) -> str:
        return str(self._path(key))

    async def put(self, key: str, data: bytes) -> str:
        return await in_thread(self._put, key, data)

    def _put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}")
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)  # the rename is durable before the next write (metadata last)
        return str(path)

    async def get(self, key: str) -> bytes:
        return await in_thread(self._get, key)

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise MissingObjectError(f"{self.location(key)}: no such object") from None

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await in_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        folder = prefix.rpartition("/")[0]
        top = self._path(folder) if folder else self.base
        found = []
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    continue  # a write in progress (or abandoned by a crash)
                path = Path(dirpath, name)
                key = path.relative_to(self.base).as_posix()
                if not key.startswith(prefix):
                    continue
                with suppress(FileNotFoundError):  # deleted while we walked
                    found.append(ObjectInfo(key, path.stat().st_size))
        return sorted(found, key=lambda o: o.key)

    async def delete(self, keys: Sequence[str]) -> None:
        await in_thread(self._delete, list(keys))

    def _delete(self, keys: list[str]) -> None:
        folders = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            with suppress(OSError):  # not empty: something else lives there
                folder.rmdir()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlockObjects:
    """:class:`ObjectStore` over any other writable filesystem block: put and get through
    its ``awrite_path``/``aread_path``; it cannot list or delete."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def location(self, key: str) -> str:
        return key

    async def put(self, key: str, data: bytes) -> str:
        return str(await self.fs.awrite_path(key, data))

    async def get(self, key: str) -> bytes:
        return await self.fs.aread_path(key)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        raise StorageError(self._unsupported("list"))

    async def delete(self, keys: Sequence[str]) -> None:
        raise StorageError(self._unsupported("delete"))

    def _unsupported(self, what: str) -> str:
        return (
            f"cannot {what} objects in a {type(self.fs).__name__} block: "
            "use an S3Bucket or a LocalFileSystem block"
        )


def object_store(fs: Any) -> ObjectStore:
    """The :class:`ObjectStore` for a filesystem block (S3Bucket, LocalFileSystem, or
    any block with ``awrite_path``/``aread_path`` for put and get only).

    Example:
        >>> from blocks.storage import local_storage
        >>> store = object_store(local_storage("/tmp/rf-example"))
        >>> type(store).__name__
        'LocalObjects'
    """
    s3_bucket = loaded_s3_bucket_class()
    if s3_bucket is not None and isinstance(fs, s3_bucket):
        return S3Objects(fs)
    if isinstance(fs, LocalFileSystem):
        return LocalObjects(fs)
    if hasattr(fs, "awrite_path") and hasattr(fs, "aread_path"):
        return BlockObjects(fs)
    raise TypeError(f"{type(fs).__name__} is not a writable filesystem block")


def presigned_url(fs: Any, key: str, expires_s: int) -> str | None:
    """A time-limited GET link to ``key`` for a browser that has no credentials (an S3
    bucket only; a local folder has no URL a browser could be handed)."""
    s3_bucket = loaded_s3_bucket_class()
    if s3_bucket is None or not isinstance(fs, s3_bucket):
        return None
    objects = S3Objects(fs)
    return str(
        objects.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": fs.bucket_name, "Key": objects._full(key)},
            ExpiresIn=int(expires_s),
        )
    )
