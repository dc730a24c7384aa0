"""Which database errors another attempt can fix: the record path's transience rule.

Our own errors say it themselves (:class:`tasks.errors.RfAcquisitionError.transient`);
SQLAlchemy, psycopg and sqlite3 errors are classified here by type, SQLSTATE and, for
libpq's refusals at connect, the server's message. :data:`retry_transient_db` is the
Prefect retry condition built from it by :func:`tasks.errors.retry_if_transient`.
"""

from __future__ import annotations

import sys

from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from tasks.errors import RfAcquisitionError, retry_if_transient

# SQLSTATEs worth another attempt: the connection broke or could not be made, the server
# is shutting down / restarting / starting up, out of connection slots, or the
# transaction lost a serialization conflict or a deadlock. Class 08 is matched by prefix.
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
# libpq reports a server's refusal *while connecting* without a SQLSTATE (psycopg's
# sqlstate is None), only the text "FATAL:  ...". These refusals are transient (57P03,
# 53300, 57P01); any other FATAL at connect (bad password, no pg_hba.conf entry, unknown
# role or database, ...) is permanent. A failure without FATAL (refused, reset, timeout,
# "server closed the connection unexpectedly") never reached a server that said no.
_TRANSIENT_FATAL = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "sorry, too many clients already",
    "remaining connection slots are reserved",
    "terminating connection due to administrator command",
)
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)


def _transient_sqlstate(sqlstate: str | None, message: str) -> bool:
    if sqlstate is None:
        if "FATAL:" not in message and "PANIC:" not in message:
            return True
        return any(marker in message for marker in _TRANSIENT_FATAL)
    return sqlstate.startswith("08") or sqlstate in TRANSIENT_SQLSTATES


def _transient_dbapi(orig: BaseException) -> bool | None:
    """A driver exception classified, or None when it is not one we know."""
    psycopg = sys.modules.get("psycopg")  # no psycopg error exists unless it was imported
    if psycopg is not None and isinstance(orig, psycopg.Error):
        if not isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
            return False
        return _transient_sqlstate(orig.sqlstate, str(orig))
    import sqlite3

    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return (
            isinstance(orig, sqlite3.OperationalError)
            and code is not None
            and code & 0xFF in _SQLITE_BUSY_CODES
        )
    return None


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether another attempt may succeed: a connection-class or transient database error.

    Yes: SQLAlchemy ``OperationalError``/``InterfaceError`` whose driver error has no
    SQLSTATE (connection refused or reset, timeout; but not a server's refusal at connect,
    see ``_TRANSIENT_FATAL``) or one in class 08, 57P01-57P03, 53300, 40001 or 40P01; a
    ``DisconnectionError``, a disconnect SQLAlchemy detected, a pool timeout; SQLite
    busy/locked. No: everything else, in particular wrong password (28P01), permission
    denied (42501), undefined table or column, bad data (:class:`RecordError`), an
    unknown schema (:class:`MigrationError`) and programming errors like ``TypeError``.
    Explicit causes (``raise ... from``) are followed.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RfAcquisitionError):
            return current.transient
        if isinstance(current, DisconnectionError | PoolTimeoutError):
            return True
        if isinstance(current, DBAPIError):
            if current.connection_invalidated:
                return True
            if not isinstance(current, OperationalError | InterfaceError):
                return False
            verdict = _transient_dbapi(current.orig) if current.orig is not None else None
            return bool(verdict)
        verdict = _transient_dbapi(current)  # the raw driver (the COPY path)
        if verdict is not None:
            return verdict
        current = current.__cause__
    return False


# Prefect ``retry_condition_fn``: retry only :func:`is_transient_db_error` errors.
retry_transient_db = retry_if_transient(is_transient_db_error)
