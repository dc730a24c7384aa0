"""Storage configuration: the filesystem blocks recordings are kept through.

Two Prefect blocks hold recordings: prefect-aws ``S3Bucket`` with ``MinIOCredentials``
(MinIO in production, any S3 server) and ``LocalFileSystem`` (the embedded default).
This module builds them, from arguments or from the ``RF_S3_*`` settings
(:class:`blocks.settings.S3Settings`), and describes them for logs; it holds no storage
logic. Operations on the objects are in :mod:`tasks.objectstore`, bucket administration
in :mod:`tasks.bucket` and the health probe in :mod:`tasks.health`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prefect.filesystems import LocalFileSystem

from blocks.settings import S3Settings

if TYPE_CHECKING:
    # prefect_aws is imported where an S3 block is built, not here: importing it costs
    # 0.25-0.45 s (its ECS worker, aiobotocore, boto3), which a run on local storage, the
    # query and maintenance commands never need.
    from prefect_aws import S3Bucket

# Timeouts of the client the blocks build: a stopped server fails in about a second
# (connection refused), a hung one within CONNECT/READ_TIMEOUT_S per attempt.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30


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
    from prefect_aws import AwsClientParameters, MinIOCredentials, S3Bucket  # see top

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


S3_ENV = S3Settings.required_variables()  # RF_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY, _BUCKET


def minio_bucket_from_settings(settings: S3Settings) -> S3Bucket:
    """The S3Bucket the ``RF_S3_*`` settings describe."""
    return minio_bucket(
        endpoint_url=settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value(),
        bucket=settings.bucket,
        region=settings.region or "us-east-1",
        folder=settings.folder,
    )


def minio_bucket_from_env(env: Mapping[str, str]) -> S3Bucket:
    """Build the S3Bucket from ``RF_S3_*`` variables in ``env`` (``RF_S3_REGION`` and
    ``RF_S3_FOLDER`` optional).

    Raises:
        MissingSetting: a required variable is missing or empty (a KeyError, named).
    """
    return minio_bucket_from_settings(S3Settings.from_mapping(env))


def loaded_s3_bucket_class() -> type[S3Bucket] | None:
    """prefect-aws's S3Bucket class when prefect-aws is already imported, else None.

    For type checks that must not import prefect-aws themselves (see the top): an object
    can only be an S3Bucket once the module defining it has been imported.
    """
    return getattr(sys.modules.get("prefect_aws.s3"), "S3Bucket", None)


def describe(fs: object) -> str:
    """Where a block stores, for logs and reports (never with credentials)."""
    s3_bucket = loaded_s3_bucket_class()
    if s3_bucket is not None and isinstance(fs, s3_bucket):
        folder = fs.bucket_folder.strip("/")
        where = f"s3://{fs.bucket_name}/{folder + '/' if folder else ''}"
        endpoint = _endpoint(fs)
        return f"{where} at {endpoint}" if endpoint else where
    if isinstance(fs, LocalFileSystem):
        return f"local folder {local_base(fs)}"
    return type(fs).__name__


def _endpoint(bucket: S3Bucket) -> str:
    params = getattr(bucket.credentials, "aws_client_parameters", None)
    url = getattr(params, "endpoint_url", None)
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"  # no userinfo


def local_base(fs: LocalFileSystem) -> Path:
    """The folder a LocalFileSystem block writes to, resolved as the block resolves it: at
    use, relative to the current directory."""
    return Path(fs.basepath or ".").expanduser().resolve()
