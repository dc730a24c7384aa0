"""Recording storage configuration: MinIO through prefect-aws, or a local folder.

Both are Prefect filesystem blocks with the same ``awrite_path``/``aread_path`` surface,
which is all the storage code in ``tasks/storage.py`` relies on.
"""

from __future__ import annotations

from pathlib import Path

from prefect.filesystems import LocalFileSystem
from prefect_aws import AwsClientParameters, MinIOCredentials, S3Bucket


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
    """An S3Bucket with MinIOCredentials for any S3-compatible endpoint."""
    credentials = MinIOCredentials(
        minio_root_user=access_key,
        minio_root_password=secret_key,
        region_name=region,
        aws_client_parameters=AwsClientParameters(
            endpoint_url=endpoint_url,
            config={"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 2}},
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
