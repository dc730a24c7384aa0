"""The project's exception hierarchy, the one retry condition and the one secret redactor.

Every error this project raises on purpose derives from :class:`RfAcquisitionError`, which
says whether another attempt may succeed (``transient``). A retrying task asks one
question of an exception, through :func:`retry_if_transient` and the domain's classifier
(storage: :func:`tasks.storage.is_transient`; records:
:func:`tasks.records.is_transient_db_error`), which reads ``transient`` from our own errors
and decides for third-party ones (botocore, psycopg, sqlite3) by their type and code.

Secrets never reach a log or a Prefect state: :func:`redact` removes them from text and
:func:`without_secrets` replaces an exception whose text (or cause's) would show one.

Plain Python: nothing here imports Prefect (the retry condition only has Prefect's
``retry_condition_fn`` signature).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# The root lives in blocks/ (the lowest layer) so configuration errors share it.
from blocks.errors import RfAcquisitionError as RfAcquisitionError

REDACTED = "***"


class StorageError(RfAcquisitionError):
    """A storage operation failed for a reason the caller can act on."""


class MissingObjectError(StorageError):
    """The object does not exist (never written, incomplete, or deleted)."""


class BucketNameError(StorageError, ValueError):
    """A bucket name S3 servers refuse."""


class RecordError(RfAcquisitionError, ValueError):
    """A row that cannot be written; names the receiver and the field. Never retried."""


class MigrationError(RfAcquisitionError, RuntimeError):
    """The database cannot be brought to the expected schema (e.g. an unknown layout)."""


class RedactedError(RfAcquisitionError):
    """Stands in for an exception whose text held a secret (see :func:`without_secrets`);
    keeps the original's transience so retries still work."""


def causes(exc: BaseException) -> Iterable[BaseException]:
    """``exc`` and its explicit and implicit causes, each once, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def retry_if_transient(
    is_transient: Callable[[BaseException], bool],
) -> Callable[[Any, Any, Any], bool]:
    """A Prefect ``retry_condition_fn`` that retries only when ``is_transient(exc)``.

    Args:
        is_transient: the domain's classifier of the exception a failed attempt raised.

    Returns:
        ``fn(task, task_run, state) -> bool``, for ``@task(retry_condition_fn=...)``.

    Example:
        >>> retry = retry_if_transient(lambda exc: isinstance(exc, TimeoutError))
        >>> class State:  # what Prefect hands the condition: the failed state
        ...     data = TimeoutError("slow")
        >>> retry(None, None, State())
        True
    """

    def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
        exc = state.data if isinstance(state.data, BaseException) else None
        return exc is not None and is_transient(exc)

    retry_condition.__name__ = f"retry_if_{getattr(is_transient, '__name__', 'transient')}"
    return retry_condition


def redact(text: str, secrets: Iterable[str | None], *, min_length: int = 1) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``.

    Args:
        text: what may be logged or shown.
        secrets: the values to hide (None and empty strings are ignored).
        min_length: hide only secrets at least this long (a 1-character access key id
            would otherwise blank out every occurrence of that letter).

    Example:
        >>> redact("login as rf:hunter2 failed", ["hunter2", None])
        'login as rf:*** failed'
    """
    for secret in sorted({s for s in secrets if s and len(s) >= min_length}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def without_secrets(
    exc: BaseException,
    secrets: Iterable[str | None],
    *,
    context: str,
    transient: bool,
) -> RedactedError | None:
    """A replacement for ``exc`` when its text or a cause's holds a secret, else None.

    Args:
        exc: the exception about to leave the task.
        secrets: values that must not appear (e.g. the database password).
        context: what failed, for the replacement's message (e.g. the masked engine URL).
        transient: the original's transience, kept so the retry condition still works.

    Example:
        >>> without_secrets(OSError("auth hunter2"), ["hunter2"], context="db", transient=True)
        RedactedError('db: OSError: auth ***')
    """
    values = [s for s in secrets if s]
    if not values:
        return None
    if not any(s in str(e) or s in repr(e) for e in causes(exc) for s in values):
        return None
    return RedactedError(
        f"{context}: {redact(f'{type(exc).__name__}: {exc}', values)}", transient=transient
    )
