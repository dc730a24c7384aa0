"""Health probes: is the storage usable, can the database be queried?

:func:`check_storage` runs a fixed sequence of checks against a storage block (reachable,
credentials accepted, bucket present, a probe object written, read back and deleted) and
:func:`check_database` a timed ``SELECT 1`` plus TimescaleDB's version and license. Both
answer with a typed result and never raise for a fault of the service they probe; error
text never carries a credential (:func:`tasks.errors.redact`). The health flow
(``flows/health.py``) runs them with the receivers' ``/status`` checks.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError
from prefect.filesystems import LocalFileSystem
from prefect_aws import S3Bucket
from pydantic import SecretStr
from sqlalchemy import Engine, text

from blocks.storage import describe, local_base
from tasks.bucket import validate_bucket_name
from tasks.errors import MissingObjectError, redact
from tasks.objectstore import (
    ObjectStore,
    S3Objects,
    in_thread,
    object_store,
    s3_code,
    s3_status,
    storage_reason,
)

# One attempt per request, short timeouts: a stopped server answers in milliseconds.
HEALTH_TIMEOUT_S = 5
# Credential values shorter than this are not redacted (they would blank out ordinary text).
MIN_SECRET_LENGTH = 4

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
        self.secrets = list(secrets)

    def passed(self, name: str) -> None:
        self.values[name] = True

    def failed(self, name: str, reason: str) -> StorageHealth:
        self.values[name] = False
        self.values["error"] = redact(reason, self.secrets, min_length=MIN_SECRET_LENGTH)
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
            return self.failed("probe_write", storage_reason(exc))
        self.values.setdefault("latency_ms", (time.perf_counter() - t0) * 1e3)
        self.passed("probe_write")
        try:
            back = await store.get(key)
        except Exception as exc:
            return self.failed("probe_read", storage_reason(exc))
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
            return self.failed("probe_delete", storage_reason(exc))
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
        base = local_base(fs)
        if not base.is_dir():
            return probe.failed("reachable", f"folder {base} does not exist")
        probe.passed("reachable")
    return await probe.round_trip(object_store(fs))


async def _check_s3(bucket: S3Bucket) -> StorageHealth:
    probe = _Probe(describe(bucket), _secrets(bucket.credentials))
    try:
        client = await in_thread(_fail_fast_client, bucket.credentials)
    except Exception as exc:
        return probe.failed("reachable", f"cannot build an S3 client: {storage_reason(exc)}")

    t0 = time.perf_counter()
    try:
        await in_thread(client.list_buckets)
    except ClientError as exc:
        probe.values["latency_ms"] = (time.perf_counter() - t0) * 1e3
        probe.passed("reachable")
        # AccessDenied: the signature was valid, the user just may not list buckets.
        if s3_code(exc) in _CREDENTIAL_CODES or (
            s3_status(exc) in (401, 403) and s3_code(exc) != "AccessDenied"
        ):
            return probe.failed("credentials_accepted", storage_reason(exc))
        if s3_code(exc) != "AccessDenied":
            return probe.failed("credentials_accepted", f"unexpected answer: {storage_reason(exc)}")
    except Exception as exc:
        return probe.failed("reachable", storage_reason(exc))
    else:
        probe.values["latency_ms"] = (time.perf_counter() - t0) * 1e3
        probe.passed("reachable")
    probe.passed("credentials_accepted")

    try:
        validate_bucket_name(bucket.bucket_name)
        await in_thread(
            partial(
                client.list_objects_v2,
                Bucket=bucket.bucket_name,
                Prefix=bucket.bucket_folder.strip("/"),
                MaxKeys=1,
            )
        )
    except ClientError as exc:
        if s3_code(exc) == "NoSuchBucket":
            return probe.failed(
                "bucket_exists",
                f"bucket {bucket.bucket_name!r} does not exist ({storage_reason(exc)})",
            )
        return probe.failed("bucket_exists", storage_reason(exc))
    except Exception as exc:
        return probe.failed("bucket_exists", storage_reason(exc))
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


# --------------------------------------------------------------------------- database


@dataclass(frozen=True)
class DatabaseHealth:
    """What :func:`check_database` found. The TimescaleDB fields are None on SQLite, or
    when the extension is not installed in the database."""

    ok: bool
    dialect: str
    latency_ms: float | None = None
    timescaledb_version: str | None = None
    timescaledb_license: str | None = None  # "apache" or "timescale"
    error: str | None = None


def check_database(engine: Engine) -> DatabaseHealth:
    """Can we connect and query? ``SELECT 1`` (timed), and on PostgreSQL the TimescaleDB
    extension version and license. Never raises for a database fault; the error text
    never contains the password.

    Example:
        >>> from blocks.database import sqlite_engine
        >>> check_database(sqlite_engine("/tmp/rf-example.db")).ok
        True
    """
    dialect = engine.dialect.name
    try:
        with engine.connect() as conn:
            t0 = time.perf_counter()
            conn.execute(text("SELECT 1")).scalar_one()
            latency_ms = (time.perf_counter() - t0) * 1e3
            version = license_ = None
            if dialect == "postgresql":
                version = conn.execute(
                    text("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
                ).scalar()
                if version:
                    license_ = conn.execute(
                        text("SELECT current_setting('timescaledb.license', true)")
                    ).scalar()
    except Exception as exc:
        # The DBAPI error on one line: SQLAlchemy's own text adds the SQL and a link.
        cause = getattr(exc, "orig", None) or exc
        reason = f"{type(cause).__name__}: {' '.join(str(cause).split())}"
        return DatabaseHealth(False, dialect, error=redact(reason, [engine.url.password]))
    return DatabaseHealth(True, dialect, latency_ms, version, license_)
