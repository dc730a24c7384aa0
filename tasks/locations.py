"""``locations`` rows: one transmitter position (or the reason there is none) per run.

Kept apart from tasks/records.py so the location flow owns its row shape; the table and
its migration are in tasks/records.py (``Location``, revision 0003).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from tasks.records import Location, ensure_schema

LOCATION_FIELDS = frozenset(c.name for c in Location.__table__.columns)


def upsert_location(engine: Engine, row: Mapping[str, Any]) -> str:
    """Insert or update one location row; returns its id.

    ``id`` (uuid, made when absent), ``time`` (aware datetime), ``source``, ``status``,
    ``frequency_hz``, ``receivers_used``, ``pairs_used`` and ``propagation_speed_m_s`` are
    required; unknown keys are an error naming them; NaN/inf become NULL.
    """
    unknown = set(row) - LOCATION_FIELDS
    if unknown:
        raise ValueError(f"location row: unknown field(s) {sorted(unknown)}")
    values = {k: _finite_or_none(v) for k, v in row.items()}
    values["id"] = uuid.UUID(str(values.get("id") or uuid.uuid4()))
    if values.get("acquisition_id") is not None:
        values["acquisition_id"] = uuid.UUID(str(values["acquisition_id"]))
    for key in ("time", "source", "status", "frequency_hz", "propagation_speed_m_s"):
        if values.get(key) is None:
            raise ValueError(f"location row: {key} is required")
    if not isinstance(values["time"], datetime) or values["time"].tzinfo is None:
        raise ValueError(f"location row: time must be an aware datetime, got {values['time']!r}")
    values.setdefault("receivers_used", 0)
    values.setdefault("pairs_used", 0)
    values.pop("created_at", None)
    ensure_schema(engine)
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(Location).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["id", "time"],
        set_={k: stmt.excluded[k] for k in values if k not in ("id", "time")},
    )
    with engine.begin() as conn:
        conn.execute(stmt)
    return str(values["id"])


def locations_for(engine: Engine, acquisition_id: str | None = None) -> list[dict[str, Any]]:
    """Location rows (newest first), optionally of one acquisition."""
    ensure_schema(engine)
    query = select(Location).order_by(Location.time.desc())
    if acquisition_id is not None:
        query = query.where(Location.acquisition_id == uuid.UUID(str(acquisition_id)))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    out = []
    for r in rows:
        d = dict(r)
        for k in ("id", "acquisition_id"):
            if d.get(k) is not None:
                d[k] = str(d[k])
        out.append(d)
    return out


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
