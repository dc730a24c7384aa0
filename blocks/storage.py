"""Recording storage: the filesystem blocks, one small object interface over them, bucket
management and a health check.

Two Prefect blocks hold recordings: prefect-aws ``S3Bucket`` with ``MinIOCredentials``
(MinIO in production, any S3 server) and ``LocalFileSystem`` (the embedded default).
:func:`object_store` wraps either in an :class:`ObjectStore` (put, get, list, delete by a
key relative to the block's root: ``bucket_folder`` or ``basepath``), so
``tasks/storage.py`` writes each recording operation once for both.

Why not the blocks' own ``awrite_path``: ``S3Bucket`` uploads with boto3's default transfer
settings and only the checksum the environment's botocore config happens to choose (none
with ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``), and cannot list with its folder
or delete objects; ``LocalFileSystem`` writes in place, so a crash leaves half a file. The
blocks still supply what they are for: the configuration and the authenticated client.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from prefect.filesystems import LocalFileSystem
from prefect_aws import AwsClientParameters, MinIOCredentials, S3Bucket
from pydantic import SecretStr

T = TypeVar("T")

MiB = 1024 * 1024
# Objects of this size or more are uploaded in parts of this size (S3 allows 5 MiB-5 GiB).
MULTIPART_THRESHOLD = 8 * MiB
MULTIPART_CHUNKSIZE = 8 * MiB
# Sent with every upload (and every part) and verified by the server, which refuses the
# object with BadDigest when the bytes it received don't match.
CHECKSUM_ALGORITHM = "CRC32"
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=MULTIPART_THRESHOLD,
    multipart_chunksize=MULTIPART_CHUNKSIZE,
    max_concurrency=4,
)
LIST_PAGE_SIZE = 1000
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
# Timeouts of the client the blocks build: a stopped server fails in about a second
# (connection refused), a hung one within CONNECT/READ_TIMEOUT_S per attempt.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
HEALTH_TIMEOUT_S = 5
_TMP_SUFFIX = ".partial"
_CLIENT_LOCK = threading.Lock()


class StorageError(Exception):
    """A storage operation failed for a reason the caller can act on."""


class MissingObjectError(StorageError):
    """The object does not exist (never written, incomplete, or deleted)."""


class BucketNameError(StorageError, ValueError):
    """A bucket name S3 servers refuse."""


# --------------------------------------------------------------------------- blocks


def local_storage(folder: str | Path) -> LocalFileSystem:
    """The embedded default: a LocalFileSystem block rooted at ``folder``."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return LocalFileSystem(basepath=str(folder))


def minio_bucket(
    *,
    endpoint_url: str,
    access_key: str,
    secret_key: str,
    bucket: str,
    region: str = "us-east-1",
    folder: str = "",
) -> S3Bucket:
    """An S3Bucket with MinIOCredentials for any S3-compatible endpoint.

    botocore retries twice itself (a stopped server fails in ~1.4 s); longer outages are
    the ``store`` task's retries, which only retry transient errors.
    """
    credentials = MinIOCredentials(
        minio_root_user=access_key,
        minio_root_password=secret_key,
        region_name=region,
        aws_client_parameters=AwsClientParameters(
            endpoint_url=endpoint_url,
            config={
                "s3": {"addressing_style": "path"},
                "retries": {"max_attempts": 2},
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
            },
        ),
    )
    return S3Bucket(bucket_name=bucket, credentials=credentials, bucket_folder=folder)


S3_ENV = ("RF_S3_ENDPOINT", "RF_S3_ACCESS_KEY", "RF_S3_SECRET_KEY", "RF_S3_BUCKET")


def minio_bucket_from_env(env: dict[str, str]) -> S3Bucket:
    """Build the S3Bucket from ``RF_S3_*`` variables (``RF_S3_REGION`` optional)."""
    missing = [k for k in S3_ENV if not env.get(k)]
    if missing:
        raise KeyError(f"missing environment variables: {', '.join(missing)}")
    return minio_bucket(
        endpoint_url=env["RF_S3_ENDPOINT"],
        access_key=env["RF_S3_ACCESS_KEY"],
        secret_key=env["RF_S3_SECRET_KEY"],
        bucket=env["RF_S3_BUCKET"],
        region=env.get("RF_S3_REGION") or "us-east-1",
        folder=env.get("RF_S3_FOLDER", ""),
    )


def describe(fs: object) -> str:
    """Where a block stores, for logs and reports (never with credentials)."""
    if isinstance(fs, S3Bucket):
        folder = fs.bucket_folder.strip("/")
        where = f"s3://{fs.bucket_name}/{folder + '/' if folder else ''}"
        endpoint = _endpoint(fs)
        return f"{where} at {endpoint}" if endpoint else where
    if isinstance(fs, LocalFileSystem):
        return f"local folder {_local_base(fs)}"
    return type(fs).__name__


def _endpoint(bucket: S3Bucket) -> str:
    params = getattr(bucket.credentials, "aws_client_parameters", None)
    url = getattr(params, "endpoint_url", None)
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"  # no userinfo


# --------------------------------------------------------------------------- buckets

BUCKET_NAME_RULES = (
    "S3 bucket names are 3-63 characters of lowercase letters, digits, '.' and '-', "
    "start and end with a letter or digit, contain no '..', '.-' or '-.', and are not "
    "formatted like an IP address (e.g. 192.168.5.4)"
)
_BUCKET_CHARS = re.compile(r"^[a-z0-9.-]+$")
_IP_LIKE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def validate_bucket_name(name: str) -> str:
    """Return ``name`` if S3 servers accept it as a bucket name, else raise
    :class:`BucketNameError` saying which rule it breaks.

    Example:
        >>> validate_bucket_name("rf-acquisition")
        'rf-acquisition'
    """
    problem = None
    if not isinstance(name, str):
        problem = f"it is a {type(name).__name__}, not a string"
    elif not 3 <= len(name) <= 63:
        problem = f"it is {len(name)} characters long"
    elif not _BUCKET_CHARS.match(name):
        bad = "".join(sorted({c for c in name if not _BUCKET_CHARS.match(c)}))
        problem = f"it contains {bad!r}"
    elif not (name[0].isalnum() and name[-1].isalnum()):
        problem = "it does not start and end with a letter or digit"
    elif ".." in name or ".-" in name or "-." in name:
        problem = "it contains '..', '.-' or '-.'"
    elif _IP_LIKE.match(name):
        problem = "it looks like an IP address"
    if problem:
        raise BucketNameError(f"bucket name {name!r} is invalid: {problem}. {BUCKET_NAME_RULES}")
    return name


def ensure_bucket(bucket: S3Bucket) -> bool:
    """Create the block's bucket if it is missing; True when it was created.

    Outside us-east-1 S3 needs the region as ``LocationConstraint``; the region is the
    client's (the credentials' ``region_name``).

    Example:
        >>> created = ensure_bucket(minio_bucket_from_env(os.environ))  # doctest: +SKIP
    """
    name = validate_bucket_name(bucket.bucket_name)
    client = bucket.credentials.get_s3_client()
    try:
        client.head_bucket(Bucket=name)
        return False
    except ClientError as exc:
        if _status(exc) != 404:
            raise
    region = client.meta.region_name or "us-east-1"
    kwargs: dict[str, Any] = {}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(Bucket=name, **kwargs)
    except ClientError as exc:
        if _code(exc) == "BucketAlreadyOwnedByYou":
            return False  # created meanwhile by another of our processes
        raise
    return True


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


# --------------------------------------------------------------------------- objects


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


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    # anyio's limiter (40 threads) rather than asyncio's default executor, which has
    # only cpu+4 workers: 7 receivers stored at once must not queue behind each other.
    return await anyio.to_thread.run_sync(partial(fn, *args))


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
        await _in_thread(self._put, self._full(key), data)
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
                Config=TRANSFER_CONFIG,
            )

    async def get(self, key: str) -> bytes:
        return await _in_thread(self._get, key)

    def _get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(
                Bucket=self.bucket.bucket_name, Key=self._full(key), ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise MissingObjectError(f"{self.location(key)}: no such object") from None
            raise
        with response["Body"] as body:
            return body.read()

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await _in_thread(self._list, prefix)

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
        await _in_thread(self._delete, list(keys))

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


def _local_base(fs: LocalFileSystem) -> Path:
    # as LocalFileSystem resolves it: at use, relative to the current directory
    return Path(fs.basepath or ".").expanduser().resolve()


class LocalObjects:
    """:class:`ObjectStore` over a ``LocalFileSystem`` block's ``basepath``.

    Writes go to a hidden temporary file beside the target, are fsynced and renamed over
    it, and the folder is fsynced: after a crash a key holds its old bytes, its new bytes
    or nothing, never part of them.
    """

    def __init__(self, fs: LocalFileSystem) -> None:
        self.base = _local_base(fs)

    def _path(self, key: str) -> Path:
        path = (self.base / key).resolve()
        if not key or self.base not in path.parents:
            raise StorageError(f"key {key!r} is not a file inside {self.base}")
        return path

    def location(self, key: str) -> str:
        return str(self._path(key))

    async def put(self, key: str, data: bytes) -> str:
        return await _in_thread(self._put, key, data)

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
        return await _in_thread(self._get, key)

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise MissingObjectError(f"{self.location(key)}: no such object") from None

    async def list(self, prefix: str) -> list[ObjectInfo]:
        return await _in_thread(self._list, prefix)

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
        await _in_thread(self._delete, list(keys))

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
        >>> store = object_store(local_storage("/tmp/rf-example"))
        >>> type(store).__name__
        'LocalObjects'
    """
    if isinstance(fs, S3Bucket):
        return S3Objects(fs)
    if isinstance(fs, LocalFileSystem):
        return LocalObjects(fs)
    if hasattr(fs, "awrite_path") and hasattr(fs, "aread_path"):
        return BlockObjects(fs)
    raise TypeError(f"{type(fs).__name__} is not a writable filesystem block")


# --------------------------------------------------------------------------- health

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
PROBE_PREFIX = "_health/"
CHECK_NAMES = (
    "reachable",
    "credentials_accepted",
    "bucket_exists",
    "probe_write",
    "probe_read",
    "probe_delete",
)


@dataclass(frozen=True)
class StorageHealth:
    """What :func:`check_storage` found. Each check is True (passed), False (failed) or
    None (not run: not applicable to this storage, or an earlier check failed).

    ``latency_ms`` is the round trip of the first request the storage answered (S3:
    ListBuckets; a local folder: the probe write). ``error`` says why the first failed
    check failed, with any credential values removed.
    """

    target: str
    reachable: bool | None = None
    credentials_accepted: bool | None = None
    bucket_exists: bool | None = None
    probe_write: bool | None = None
    probe_read: bool | None = None
    probe_delete: bool | None = None
    latency_ms: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        checks = [getattr(self, name) for name in CHECK_NAMES]
        return self.error is None and False not in checks and self.probe_delete is True

    @property
    def failed_check(self) -> str | None:
        """The first check that failed (``None`` when healthy)."""
        return next((n for n in CHECK_NAMES if getattr(self, n) is False), None)

    @property
    def summary(self) -> str:
        if self.ok:
            return f"ok ({self.latency_ms:.0f} ms)" if self.latency_ms is not None else "ok"
        failed = self.failed_check or "check"
        return f"{failed.replace('_', ' ')} failed: {self.error}"

    def rows(self) -> list[dict[str, str]]:
        """One row per check, for tables: check, result (ok/FAILED/n/a) and detail."""
        out = []
        for name in CHECK_NAMES:
            value = getattr(self, name)
            result = {True: "ok", False: "FAILED", None: "-"}[value]
            detail = (self.error or "") if name == self.failed_check else ""
            out.append({"check": name.replace("_", " "), "result": result, "detail": detail})
        return out


class _Probe:
    """Collects check results; the first failure stops the run and keeps its reason."""

    def __init__(self, target: str, secrets: Sequence[str]) -> None:
        self.values: dict[str, Any] = {"target": target}
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def passed(self, name: str) -> None:
        self.values[name] = True

    def failed(self, name: str, reason: str) -> StorageHealth:
        self.values[name] = False
        self.values["error"] = _redact(reason, self.secrets)
        return self.result()

    def result(self) -> StorageHealth:
        return StorageHealth(**self.values)

    async def round_trip(self, store: ObjectStore) -> StorageHealth:
        """Write, read back and delete a small probe object."""
        key = f"{PROBE_PREFIX}probe-{uuid.uuid4().hex}"
        payload = os.urandom(1024)
        t0 = time.perf_counter()
        try:
            await store.put(key, payload)
        except Exception as exc:
            return self.failed("probe_write", _reason(exc))
        self.values.setdefault("latency_ms", (time.perf_counter() - t0) * 1e3)
        self.passed("probe_write")
        try:
            back = await store.get(key)
        except Exception as exc:
            return self.failed("probe_read", _reason(exc))
        if back != payload:
            return self.failed("probe_read", f"{store.location(key)} read back different bytes")
        self.passed("probe_read")
        try:
            await store.delete([key])
            await store.get(key)
        except MissingObjectError:
            self.passed("probe_delete")
            return self.result()
        except Exception as exc:
            return self.failed("probe_delete", _reason(exc))
        return self.failed("probe_delete", f"{store.location(key)} is still there after delete")


async def check_storage(fs: Any) -> StorageHealth:
    """Is the storage usable? Reachable, credentials accepted, bucket present, and a probe
    object written, read back and deleted (under ``_health/`` in the block's root).

    Never raises for a storage fault: the answer is in the result. S3 requests here are
    made once, without botocore's retries and with short timeouts, so a stopped server
    answers in milliseconds and a hung one within a few seconds.

    Example:
        >>> health = asyncio.run(check_storage(local_storage("data/recordings")))  # doctest: +SKIP
        >>> health.ok, health.summary  # doctest: +SKIP
        (True, 'ok (1 ms)')
    """
    if isinstance(fs, S3Bucket):
        return await _check_s3(fs)
    probe = _Probe(describe(fs), [])
    if isinstance(fs, LocalFileSystem):
        base = _local_base(fs)
        if not base.is_dir():
            return probe.failed("reachable", f"folder {base} does not exist")
        probe.passed("reachable")
    return await probe.round_trip(object_store(fs))


async def _check_s3(bucket: S3Bucket) -> StorageHealth:
    probe = _Probe(describe(bucket), _secrets(bucket.credentials))
    try:
        client = await _in_thread(_fail_fast_client, bucket.credentials)
    except Exception as exc:
        return probe.failed("reachable", f"cannot build an S3 client: {_reason(exc)}")

    t0 = time.perf_counter()
    try:
        await _in_thread(client.list_buckets)
    except ClientError as exc:
        probe.values["latency_ms"] = (time.perf_counter() - t0) * 1e3
        probe.passed("reachable")
        # AccessDenied: the signature was valid, the user just may not list buckets.
        if _code(exc) in _CREDENTIAL_CODES or (
            _status(exc) in (401, 403) and _code(exc) != "AccessDenied"
        ):
            return probe.failed("credentials_accepted", _reason(exc))
        if _code(exc) != "AccessDenied":
            return probe.failed("credentials_accepted", f"unexpected answer: {_reason(exc)}")
    except Exception as exc:
        return probe.failed("reachable", _reason(exc))
    else:
        probe.values["latency_ms"] = (time.perf_counter() - t0) * 1e3
        probe.passed("reachable")
    probe.passed("credentials_accepted")

    try:
        validate_bucket_name(bucket.bucket_name)
        await _in_thread(
            partial(
                client.list_objects_v2,
                Bucket=bucket.bucket_name,
                Prefix=bucket.bucket_folder.strip("/"),
                MaxKeys=1,
            )
        )
    except ClientError as exc:
        if _code(exc) == "NoSuchBucket":
            return probe.failed(
                "bucket_exists", f"bucket {bucket.bucket_name!r} does not exist ({_reason(exc)})"
            )
        return probe.failed("bucket_exists", _reason(exc))
    except Exception as exc:
        return probe.failed("bucket_exists", _reason(exc))
    probe.passed("bucket_exists")
    return await probe.round_trip(S3Objects(bucket, client))


def _fail_fast_client(credentials: Any) -> Any:
    """A client like the block's, but one attempt per request and short timeouts."""
    params = credentials.aws_client_parameters.get_params_override()
    config = params.pop("config", None) or Config()
    config = config.merge(
        Config(
            connect_timeout=HEALTH_TIMEOUT_S,
            read_timeout=HEALTH_TIMEOUT_S,
            retries={"total_max_attempts": 1},
        )
    )
    if credentials.region_name:
        params["region_name"] = credentials.region_name
    return credentials.get_boto3_session().client("s3", config=config, **params)


def _secrets(credentials: Any) -> list[str]:
    """Credential values to keep out of error text: every secret and the key id."""
    values = []
    for field in type(credentials).model_fields:
        value = getattr(credentials, field, None)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        elif field in ("minio_root_user", "aws_access_key_id", "aws_session_token") and value:
            values.append(str(value))
    return values


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _reason(exc: BaseException) -> str:
    """One line about an error: S3's code and message, or the exception's type and text."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code') or _status(exc)}: {error.get('Message') or 'no message'}"
    if isinstance(exc, BotoCoreError | StorageError | OSError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
