"""Shared fixtures: real services from the environment, the Prefect test harness, and
simulated KiwiSDR networks on loopback.

Integration fixtures read the RF_PG_* / RF_S3_* variables that scripts/services.sh writes
(``make test`` sets them). Without them a test is skipped locally, but under CI=true or
RF_REQUIRE_SERVICES=1 a missing or unreachable service FAILS the test instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from blocks.database import PG_ENV, timescaledb_from_env
from blocks.storage import S3_ENV, minio_bucket_from_env

REQUIRE_SERVICES = os.environ.get("CI", "").lower() in ("1", "true", "yes") or (
    os.environ.get("RF_REQUIRE_SERVICES") == "1"
)


def _unavailable(message: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def service_env() -> dict[str, str]:
    missing = [k for k in (*PG_ENV, *S3_ENV) if not os.environ.get(k)]
    if missing:
        _unavailable(
            f"{', '.join(missing)} not set: run `make test`, or `make services-up` and "
            "`set -a; . .services/env; set +a`"
        )
    return dict(os.environ)


@pytest.fixture(scope="session")
def pg_engine(service_env: dict[str, str]) -> Iterator[Engine]:
    engine = timescaledb_from_env(service_env).get_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        _unavailable(
            f"TimescaleDB at {service_env['RF_PG_HOST']}:{service_env['RF_PG_PORT']}: {exc}"
        )
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def s3_env(service_env: dict[str, str]) -> dict[str, str]:
    bucket = minio_bucket_from_env(service_env)
    client = bucket.credentials.get_s3_client()
    try:
        client.head_bucket(Bucket=bucket.bucket_name)
    except Exception as exc:
        _unavailable(f"S3 at {service_env['RF_S3_ENDPOINT']}: {type(exc).__name__}")
    return service_env


@pytest.fixture
def s3_bucket(s3_env: dict[str, str], unique: str) -> Iterator[Any]:
    """The test S3Bucket under a folder of its own; emptied afterwards."""
    bucket = minio_bucket_from_env(s3_env)
    bucket.bucket_folder = f"test-{unique}"
    yield bucket
    client = bucket.credentials.get_s3_client()
    listed = client.list_objects_v2(Bucket=bucket.bucket_name, Prefix=bucket.bucket_folder + "/")
    keys = [{"Key": o["Key"]} for o in listed.get("Contents", [])]
    if keys:
        client.delete_objects(Bucket=bucket.bucket_name, Delete={"Objects": keys})


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server for every test that runs a flow (~8 s once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def unique() -> str:
    """A short unique suffix for block names, prefixes and database names."""
    return uuid.uuid4().hex[:10]
