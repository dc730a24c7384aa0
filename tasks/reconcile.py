"""Find stored recordings whose rows were never written, and write them.

The acquisition flow stores objects before it records rows, so when the database is down
the recordings survive and only their rows are missing. Each recording's SigMF metadata
holds everything its row needs (:func:`tasks.process.row_from_metadata` is the one
mapping both paths use), so a backfilled row is the row the flow would have written.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from blocks.storage import object_store
from tasks.process import row_from_metadata
from tasks.records import Measurement, ensure_schema, upsert_acquisition, upsert_measurements
from tasks.storage import FileSystem, list_acquisitions, load_recording


@dataclass
class ReconcileReport:
    """What a reconcile pass looked at and what it wrote."""

    acquisitions_scanned: int = 0
    recordings_scanned: int = 0
    incomplete: list[str] = field(default_factory=list)  # data without metadata: left alone
    backfilled: dict[str, list[str]] = field(default_factory=dict)  # acquisition -> receivers
    errors: list[str] = field(default_factory=list)

    @property
    def rows_backfilled(self) -> int:
        return sum(len(v) for v in self.backfilled.values())

    @property
    def message(self) -> str:
        text = (
            f"{self.rows_backfilled} rows backfilled in {len(self.backfilled)} acquisitions "
            f"({self.recordings_scanned} recordings in {self.acquisitions_scanned} scanned)"
        )
        if self.errors:
            text += f"; {len(self.errors)} errors"
        return text


def recorded_receivers(engine: Engine, acquisition_ids: list[str]) -> dict[str, set[str]]:
    """Receivers that already have a row, per acquisition."""
    ids = []
    for a in acquisition_ids:
        try:
            ids.append(uuid.UUID(a))
        except ValueError:
            continue  # not one of ours: never written by the flow
    found: dict[str, set[str]] = defaultdict(set)
    if not ids:
        return found
    with engine.connect() as conn:
        result = conn.execute(
            select(Measurement.acquisition_id, Measurement.receiver).where(
                Measurement.acquisition_id.in_(ids)
            )
        )
        for acq, receiver in result:
            found[str(acq)].add(receiver)
    return found


async def reconcile(
    fs: FileSystem, engine: Engine, start: datetime, end: datetime, *, verify: bool = True
) -> ReconcileReport:
    """Backfill the rows of complete recordings stored between ``start`` and ``end``.

    Args:
        fs: the storage block the recordings were written through.
        engine: the database the rows belong in.
        start, end: UTC window (day resolution, as the storage layout is by day).
        verify: load each recording and check its sha512 before recording it, so a row
            never points at a damaged object (costs one read per backfilled recording).

    Returns:
        A :class:`ReconcileReport`; running it twice backfills nothing the second time.
    """
    report = ReconcileReport()
    stored = await list_acquisitions(fs, start, end)
    report.acquisitions_scanned = len(stored)
    ensure_schema(engine)
    have = recorded_receivers(engine, [a.acquisition_id for a in stored])
    for acquisition in stored:
        rows: list[dict[str, Any]] = []
        for rec in acquisition.recordings:
            report.recordings_scanned += 1
            if not rec.complete:
                report.incomplete.append(rec.data_key)
                continue
            if rec.receiver in have.get(acquisition.acquisition_id, set()):
                continue
            try:
                if verify:
                    _, meta = await load_recording(fs, rec.data_key)
                else:
                    meta = json.loads(await object_store(fs).get(rec.meta_key))
                rows.append(row_from_metadata(meta, object_key=rec.data_key))
            except Exception as exc:  # reported per recording; the others go on
                report.errors.append(f"{rec.data_key}: {type(exc).__name__}: {exc}")
        if not rows:
            continue
        upsert_acquisition(engine, _acquisition_row(acquisition.acquisition_id, rows, have))
        upsert_measurements(engine, rows)
        report.backfilled[acquisition.acquisition_id] = sorted(r["receiver"] for r in rows)
    return report


def _acquisition_row(
    acquisition_id: str, rows: list[dict[str, Any]], have: dict[str, set[str]]
) -> dict[str, Any]:
    """An acquisitions row rebuilt from what was stored (failed/skipped receivers left no
    objects, so only the ok ones can be counted)."""
    ok = len(rows) + len(have.get(acquisition_id, set()))
    first = rows[0]
    return {
        "id": acquisition_id,
        "frequency_hz": first["frequency_hz"],
        "duration_s": max(r["sample_count"] / r["sample_rate"] for r in rows),
        "start_at": min(r["time"] for r in rows),
        "receivers_requested": ok,
        "receivers_ok": ok,
        "receivers_failed": 0,
        "receivers_skipped": 0,
        "status": "reconciled",
        "flow_run_id": None,
    }
