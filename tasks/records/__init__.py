"""Acquisition, measurement and location rows: the records package's public surface.

- :mod:`~tasks.records.models`: the SQLAlchemy models (the schema's source of truth).
- :mod:`~tasks.records.rows`: row validation, pydantic types generated from the columns.
- :mod:`~tasks.records.schema`: migrations before the first write, TimescaleDB detection.
- :mod:`~tasks.records.write`: the one write path (``record`` and reconcile), upserts.
- :mod:`~tasks.records.transience`: which database errors a retry can fix.
- :mod:`~tasks.records.retention`: dropping old rows.
- :mod:`~tasks.records.tasks`: the Prefect tasks ``record`` and ``drop-old-measurements``.

Everything except the Prefect tasks imports without Prefect; ``record`` and
``enforce_retention`` are loaded on first use, so ``from tasks.records import
Measurement`` stays plain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.errors import MigrationError, RecordError
from tasks.records.models import (
    ACQUISITION_RANGES,
    LOCATION_RANGES,
    LOCATION_SOURCES,
    LOCATION_STATUSES,
    MEASUREMENT_KEY,
    MEASUREMENT_RANGES,
    MEASUREMENT_STATUSES,
    Acquisition,
    Base,
    Location,
    Measurement,
    Range,
)
from tasks.records.retention import RetentionResult, drop_old_measurements
from tasks.records.schema import ensure_schema, has_timescaledb
from tasks.records.transience import (
    TRANSIENT_SQLSTATES,
    is_transient_db_error,
    retry_transient_db,
)
from tasks.records.write import (
    measurements_for,
    sync_acquisition,
    upsert_acquisition,
    upsert_measurements,
    write_acquisition,
)

if TYPE_CHECKING:
    from tasks.records.tasks import enforce_retention, record

__all__ = [
    "ACQUISITION_RANGES",
    "LOCATION_RANGES",
    "LOCATION_SOURCES",
    "LOCATION_STATUSES",
    "MEASUREMENT_KEY",
    "MEASUREMENT_RANGES",
    "MEASUREMENT_STATUSES",
    "TRANSIENT_SQLSTATES",
    "Acquisition",
    "Base",
    "Location",
    "Measurement",
    "MigrationError",
    "Range",
    "RecordError",
    "RetentionResult",
    "drop_old_measurements",
    "enforce_retention",
    "ensure_schema",
    "has_timescaledb",
    "is_transient_db_error",
    "measurements_for",
    "record",
    "retry_transient_db",
    "sync_acquisition",
    "upsert_acquisition",
    "upsert_measurements",
    "write_acquisition",
]

_PREFECT_TASKS = ("record", "enforce_retention")


def __getattr__(name: str) -> Any:
    # The Prefect tasks, imported on first use: plain readers of the models need no Prefect.
    if name in _PREFECT_TASKS:
        from tasks.records import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
