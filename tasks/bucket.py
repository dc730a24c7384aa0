"""Bucket administration: S3 bucket-name rules and creating the configured bucket.

Used when settings are saved (``rfacq configure from-env``) and by the health
probe, which checks the name before asking the server about it.
"""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError
from prefect_aws import S3Bucket

from tasks.errors import BucketNameError
from tasks.objectstore import s3_code, s3_status

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
        if s3_status(exc) != 404:
            raise
    region = client.meta.region_name or "us-east-1"
    kwargs: dict[str, Any] = {}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(Bucket=name, **kwargs)
    except ClientError as exc:
        if s3_code(exc) == "BucketAlreadyOwnedByYou":
            return False  # created meanwhile by another of our processes
        raise
    return True
