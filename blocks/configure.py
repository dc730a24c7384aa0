"""Saving the project's Prefect blocks: storage and database from settings, receivers
from a file, the block types registered. Configuration only; the command line that uses
it (``rfacq configure`` / ``python -m flows.configure``) lives in :mod:`flows.configure`.

``from-env`` settings are RF_S3_ENDPOINT, RF_S3_ACCESS_KEY, RF_S3_SECRET_KEY, RF_S3_BUCKET,
RF_S3_REGION and RF_PG_HOST, RF_PG_PORT, RF_PG_DATABASE, RF_PG_USER, RF_PG_PASSWORD,
RF_PG_SSLMODE (``make services-up`` writes them to .services/env), validated by
:mod:`blocks.settings`; an env file's values win over the environment.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blocks.database import timescaledb_from_settings
from blocks.errors import RfAcquisitionError
from blocks.settings import MissingSetting, PostgresSettings, S3Settings
from blocks.storage import minio_bucket_from_settings

DEFAULT_BLOCK_NAME = "rf-acquisition"


class EndpointProblem(RfAcquisitionError, RuntimeError):
    """The storage endpoint could not be used; one line naming the endpoint and why."""


def endpoint_problem(exc: BaseException, s3: S3Settings) -> EndpointProblem:
    """One line for an error of the bucket check: endpoint, bucket and what went wrong,
    never the secret (the secret key is redacted should a library ever echo it)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") or (
            status == 403
        ):
            why = f"credentials refused ({code or status}): check RF_S3_ACCESS_KEY/RF_S3_SECRET_KEY"
        else:
            why = f"{code or status}: {error.get('Message') or 'no message'}"
    elif isinstance(exc, EndpointConnectionError | ConnectionClosedError):
        why = "cannot connect (nothing answers there): check RF_S3_ENDPOINT"
    elif isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        why = "no answer in time: check RF_S3_ENDPOINT"
    elif isinstance(exc, NoCredentialsError):
        why = "no credentials: set RF_S3_ACCESS_KEY and RF_S3_SECRET_KEY"
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        why = f"{type(exc).__name__}: {first}"
    secret = s3.secret_key.get_secret_value()
    if secret:
        why = why.replace(secret, "***")
    return EndpointProblem(f"storage at {s3.endpoint} (bucket {s3.bucket}): {why}")


def load_settings(
    env_file: str | Path | None = None,
) -> tuple[S3Settings | None, PostgresSettings | None]:
    """The storage and database settings ``from-env`` saves: ``env_file`` (when given)
    over the process environment; None for a group that is not configured at all.

    Raises:
        InvalidSetting: a variable is malformed (e.g. RF_PG_PORT), named in the message.
    """
    loaded: list[Any] = []
    for what, group in (("storage", S3Settings), ("database", PostgresSettings)):
        try:
            loaded.append(group.load(env_file))
        except MissingSetting as exc:
            print(f"{what}: not configured ({exc})", file=sys.stderr)
            loaded.append(None)
    return loaded[0], loaded[1]


def save_from_env(
    s3: S3Settings | None,
    pg: PostgresSettings | None,
    name: str = DEFAULT_BLOCK_NAME,
    *,
    ensure_bucket: Callable[[Any], bool],
) -> list[str]:
    """Save the storage and database blocks these settings describe; returns what was
    saved. ``ensure_bucket(bucket) -> created`` checks or creates the bucket first: bucket
    administration lives in ``tasks/`` (the caller, ``flows/configure.py``, passes
    ``tasks.bucket.ensure_bucket``), so this module stays configuration only.

    Raises:
        EndpointProblem: the bucket could not be checked or created (nothing is saved).
    """
    saved: list[str] = []
    if s3 is not None:
        bucket = minio_bucket_from_settings(s3)
        try:
            created = ensure_bucket(bucket)
        except Exception as exc:  # a bad name, a dead endpoint, refused credentials
            raise endpoint_problem(exc, s3) from None
        if created:
            print(f"storage: created bucket {bucket.bucket_name}", file=sys.stderr)
        bucket.credentials.save(name, overwrite=True)
        bucket.save(name, overwrite=True)
        saved.append(f"s3-bucket/{name}")
    if pg is not None:
        timescaledb_from_settings(pg).save(name, overwrite=True)
        saved.append(f"timescaledb-connection/{name}")
    return saved


async def remove_saved(name: str = DEFAULT_BLOCK_NAME) -> list[str]:
    """Delete the storage and database blocks ``from-env`` saved under ``name``."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    removed = []
    async with get_client() as client:
        for slug in ("s3-bucket", "minio-credentials", "timescaledb-connection"):
            try:
                doc = await client.read_block_document_by_name(name, block_type_slug=slug)
                await client.delete_block_document(doc.id)
            except (ObjectNotFound, PrefectHTTPStatusError):
                continue  # not saved, or the block type was never registered
            removed.append(f"{slug}/{name}")
    return removed


def save_receivers(path: str) -> list[str]:
    """Create or update one KiwiSDRReceiver block per receiver in ``path``."""
    from blocks.receiver import load_receiver_file, receiver_name

    names = []
    for receiver in load_receiver_file(path):
        name = receiver_name(receiver)
        receiver.save(name, overwrite=True)
        names.append(name)
    return names


def register() -> None:
    """Register this project's block types with the Prefect API."""
    from blocks.database import TimescaleDBConnection
    from blocks.receiver import KiwiSDRReceiver

    for block in (KiwiSDRReceiver, TimescaleDBConnection):
        block.register_type_and_schema()
