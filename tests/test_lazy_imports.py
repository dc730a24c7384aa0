"""Heavy modules stay out of the commands that never use them (cold start, issue 14).

prefect-aws (with its ECS worker, aiobotocore and boto3: 0.25-0.45 s) is imported only
where an S3 block is built or the acquisition flow's parameter is typed with it;
matplotlib only when a picture is drawn. Each check runs in a fresh interpreter, since
this test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AWS = ["prefect_aws", "boto3", "botocore", "aiobotocore"]


def loaded_after(code: str, watched: list[str]) -> list[str]:
    """Which of ``watched`` are in sys.modules after running ``code`` in a new process."""
    script = f"{code}\nimport sys\nprint(' '.join(m for m in {watched!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize(
    "module",
    [
        "flows.query",
        "flows.maintenance",
        "flows.discover",
        "flows.ingest",
        "flows.reconcile",
        "flows.configure",
        "tasks.storage",
    ],
)
def test_storage_commands_import_no_aws_until_s3_is_used(module: str) -> None:
    assert loaded_after(f"import {module}", [*AWS, "matplotlib"]) == []


def test_acquisition_and_locate_import_no_matplotlib() -> None:
    assert loaded_after("import flows.acquisition, flows.locate", ["matplotlib"]) == []


def test_local_storage_works_without_aws_and_s3_errors_still_classify() -> None:
    """The type checks that replace the imports: a local folder is stored to without
    prefect-aws; botocore's errors, once botocore is loaded, are still recognised."""
    code = """
import tempfile
from blocks.storage import describe, local_storage
from tasks.objectstore import object_store, storage_reason
from tasks.storage import is_transient
fs = local_storage(tempfile.mkdtemp())
assert type(object_store(fs)).__name__ == "LocalObjects"
assert describe(fs).startswith("local folder ")
assert is_transient(ConnectionResetError()) and not is_transient(ValueError())
import sys
assert "botocore" not in sys.modules, "botocore imported by the local path"
from botocore.exceptions import ClientError, EndpointConnectionError
assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
slow = ClientError({"Error": {"Code": "SlowDown", "Message": "m"}}, "PutObject")
assert is_transient(slow) and storage_reason(slow) == "SlowDown: m"
from blocks.storage import minio_bucket
bucket = minio_bucket(endpoint_url="http://h:9000", access_key="a", secret_key="s", bucket="b")
assert type(object_store(bucket)).__name__ == "S3Objects"
assert describe(bucket) == "s3://b/ at http://h:9000", describe(bucket)
"""
    assert loaded_after(code, ["prefect_aws"]) == ["prefect_aws"]
