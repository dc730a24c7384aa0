"""Heal what an outage left behind: recordings without rows, and recordings in the spool.

The acquisition flow stores objects before it records rows, so when the database is down
the recordings survive and only their rows are missing. Each recording's SigMF metadata
holds everything its row needs (:func:`tasks.process.row_from_metadata` is the one
mapping both paths use), so a backfilled row is the row the flow would have written, and
it is written by the same code (:func:`tasks.records.write_acquisition`, the ``record``
task's write path).

When the storage itself stays down longer than the store task's retries, the flow keeps
the recording in a local spool (:func:`tasks.storage.spool_recording`) and records its
row as ``failed``. Draining the spool uploads each spooled recording to the same key,
reads it back, marks its row ``ok`` and only then removes it from the spool.

A reconcile pass leaves alone acquisitions younger than ``min_age`` (the flow may still be
storing or recording them) and never rewrites what the flow wrote about an acquisition:
an existing acquisitions row keeps its status and start, only its receiver counts are
recomputed from the measurement rows.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem
from sqlalchemy import Engine, select

from blocks.storage import describe, local_storage
from tasks.errors import MissingObjectError
from tasks.objectstore import object_store
from tasks.process import row_from_metadata
from tasks.recording import IntegrityError, Recording, read_recording
from tasks.records import Acquisition, Measurement, ensure_schema, write_acquisition
from tasks.storage import (
    FileSystem,
    ListedRecording,
    StorageError,
    StoredAcquisition,
    acquisition_prefix,
    is_transient,
    list_acquisitions,
    list_spool,
    load_recording,
    save_recording,
    unspool,
)

# Longer than a capture takes to be stored and recorded after its first sample (the
# flow's store retries take ~30 s); a 600 s capture needs the recording's end, which
# is why ages are measured from each recording's last sample.
DEFAULT_MIN_AGE = timedelta(minutes=10)


@dataclass
class ReconcileReport:
    """What a reconcile pass looked at and what it wrote."""

    acquisitions_scanned: int = 0
    recordings_scanned: int = 0
    incomplete: list[str] = field(default_factory=list)  # data without metadata: left alone
    backfilled: dict[str, list[str]] = field(default_factory=dict)  # acquisition -> receivers
    spooled_scanned: int = 0  # complete recordings found in the spool
    uploaded: dict[str, list[str]] = field(default_factory=dict)  # from the spool, removed
    too_recent: list[str] = field(default_factory=list)  # acquisitions left for a later pass
    manifests: list[str] = field(default_factory=list)  # acquisition rows rebuilt from one
    errors: list[str] = field(default_factory=list)

    @property
    def rows_backfilled(self) -> int:
        return sum(len(v) for v in self.backfilled.values())

    @property
    def uploaded_from_spool(self) -> int:
        return sum(len(v) for v in self.uploaded.values())

    @property
    def spool_left(self) -> int:
        """Complete spooled recordings still in the spool after this pass."""
        return self.spooled_scanned - self.uploaded_from_spool

    @property
    def message(self) -> str:
        text = (
            f"{self.rows_backfilled} rows backfilled in {len(self.backfilled)} acquisitions "
            f"({self.recordings_scanned} recordings in {self.acquisitions_scanned} scanned)"
        )
        if self.spooled_scanned:
            text += f"; {self.uploaded_from_spool} recordings uploaded from the spool"
            if self.spool_left:
                text += f" ({self.spool_left} left there)"
        if self.manifests:
            text += f"; {len(self.manifests)} acquisition rows restored from manifests"
        if self.too_recent:
            text += f"; {len(self.too_recent)} acquisitions too recent, left for later"
        if self.errors:
            text += f"; {len(self.errors)} errors"
        return text


def recorded_receivers(engine: Engine, acquisition_ids: list[str]) -> dict[str, set[str]]:
    """Receivers that already have an ``ok`` row, per acquisition.

    A ``failed`` row does not count: when its recording is in storage after all (the store
    failed after writing, or the recording came from the spool), the row is rewritten.
    """
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
                Measurement.acquisition_id.in_(ids), Measurement.status == "ok"
            )
        )
        for acq, receiver in result:
            found[str(acq)].add(receiver)
    return found


async def reconcile(
    fs: FileSystem,
    engine: Engine,
    start: datetime,
    end: datetime,
    *,
    verify: bool = True,
    spool: Path | None = None,
    min_age: timedelta = DEFAULT_MIN_AGE,
) -> ReconcileReport:
    """Drain the spool into ``fs``, then backfill the rows of complete recordings stored
    between ``start`` and ``end``.

    Args:
        fs: the storage block the recordings were written through.
        engine: the database the rows belong in.
        start, end: UTC window (day resolution, as the storage layout is by day).
        verify: load each recording and check its sha512 before recording it, so a row
            never points at a damaged object (costs one read per backfilled recording).
            Spooled recordings are always verified, before and after the upload.
        spool: the spool folder (``<data_dir>/spool``); every complete recording in it,
            whatever its day, is uploaded to the same key in ``fs``, read back, its row
            upserted as ``ok`` and only then removed from the spool. None: no draining.
        min_age: acquisitions whose newest recording ended less than this long ago are
            left alone (the acquisition flow may still be storing or recording them).

    Returns:
        A :class:`ReconcileReport`; running it twice does nothing the second time. Faults
        (an unreadable recording, storage or database errors for one acquisition) are in
        ``report.errors``; the other acquisitions go on.

    Example:
        >>> report = asyncio.run(reconcile(bucket, engine, start, end,
        ...     spool=spool_folder("data")))  # doctest: +SKIP
        >>> report.message  # doctest: +SKIP
        '0 rows backfilled in 0 acquisitions (14 recordings in 2 scanned); 1 recordings ...'
    """
    report = ReconcileReport()
    cutoff = datetime.now(UTC) - min_age
    await asyncio.to_thread(ensure_schema, engine)
    if spool is not None:
        await _drain_spool(fs, engine, Path(spool), cutoff, report)
    try:
        stored = await list_acquisitions(fs, start, end)
    except Exception as exc:
        report.errors.append(f"listing {describe(fs)}: {_reason(exc)}")
        return report
    report.acquisitions_scanned = len(stored)
    have = await asyncio.to_thread(recorded_receivers, engine, [a.acquisition_id for a in stored])
    for acquisition in stored:
        try:
            if await _apply_manifest(fs, engine, acquisition, spool):
                report.manifests.append(acquisition.acquisition_id)
        except Exception as exc:
            report.errors.append(f"manifest of {acquisition.acquisition_id}: {_reason(exc)}")
        missing = []
        for rec in acquisition.recordings:
            report.recordings_scanned += 1
            if not rec.complete:
                report.incomplete.append(rec.data_key)
            elif rec.receiver not in have.get(acquisition.acquisition_id, set()):
                missing.append(rec)
        if not missing:
            continue
        try:
            await _backfill(fs, engine, acquisition, missing, cutoff, verify, report)
        except Exception as exc:  # one acquisition's fault never stops the pass
            report.errors.append(f"acquisition {acquisition.acquisition_id}: {_reason(exc)}")
    return report


# --------------------------------------------------------------------------- backfill


async def _backfill(
    fs: FileSystem,
    engine: Engine,
    acquisition: StoredAcquisition,
    missing: list[ListedRecording],
    cutoff: datetime,
    verify: bool,
    report: ReconcileReport,
) -> None:
    """Rows for one acquisition's stored recordings that have none."""
    rows: list[dict[str, Any]] = []
    for rec in missing:
        try:
            if verify:
                _, meta = await load_recording(fs, rec.data_key)
            else:
                meta = json.loads(await object_store(fs).get(rec.meta_key))
            rows.append(row_from_metadata(meta, object_key=rec.data_key))
        except Exception as exc:  # reported per recording; the others go on
            report.errors.append(f"{rec.data_key}: {_reason(exc)}")
    if not rows:
        return
    if _newest_end(rows) > cutoff:
        report.too_recent.append(acquisition.acquisition_id)
        return
    await asyncio.to_thread(write_rows, engine, acquisition.acquisition_id, rows)
    report.backfilled[acquisition.acquisition_id] = sorted(r["receiver"] for r in rows)


def _newest_end(rows: Sequence[dict[str, Any]]) -> datetime:
    """When the newest of these recordings ended (first sample + duration)."""
    return max(
        r["time"] + timedelta(seconds=(r.get("sample_count") or 0) / (r.get("sample_rate") or 1))
        for r in rows
    )


# --------------------------------------------------------------------------- spool


async def _drain_spool(
    fs: FileSystem, engine: Engine, folder: Path, cutoff: datetime, report: ReconcileReport
) -> None:
    """Upload every complete spooled recording to ``fs``; see :func:`reconcile`."""
    if isinstance(fs, LocalFileSystem) and _overlap(Path(fs.basepath or "."), folder):
        report.errors.append(
            f"spool {folder} and the storage {describe(fs)} overlap: not draining the spool"
        )
        return
    try:
        spooled = await list_spool(folder)
    except Exception as exc:
        report.errors.append(f"listing the spool {folder}: {_reason(exc)}")
        return
    spool = object_store(local_storage(folder)) if spooled else None
    pending: list[tuple[StoredAcquisition, list[ListedRecording]]] = []
    for acquisition in spooled:
        complete = [r for r in acquisition.recordings if r.complete]
        report.incomplete += [
            spool.location(r.data_key) for r in acquisition.recordings if not r.complete
        ]
        report.spooled_scanned += len(complete)
        if complete:
            pending.append((acquisition, complete))
    for i, (acquisition, complete) in enumerate(pending):
        try:
            storage_up = await _drain_acquisition(
                fs, engine, folder, acquisition, complete, cutoff, report
            )
        except Exception as exc:
            report.errors.append(f"spooled {acquisition.prefix}: {_reason(exc)}")
            storage_up = not is_transient(exc)
        if not storage_up:
            if left := sum(len(c) for _, c in pending[i + 1 :]):
                report.errors.append(
                    f"{describe(fs)} is unavailable: {left} more spooled recordings "
                    "left for the next pass"
                )
            return


async def _drain_acquisition(
    fs: FileSystem,
    engine: Engine,
    folder: Path,
    acquisition: StoredAcquisition,
    recordings: list[ListedRecording],
    cutoff: datetime,
    report: ReconcileReport,
) -> bool:
    """Upload, verify, record and unspool one acquisition's spooled recordings.

    Returns False when the storage looked unavailable (a transient error), so the caller
    stops trying the rest of the spool this pass.
    """
    spool = object_store(local_storage(folder))
    acquisition_id = acquisition.acquisition_id

    # Age first, from the small metadata files: the flow may still be spooling or
    # recording this acquisition, and its 'failed' row must not land after our 'ok'.
    ends = []
    for rec in recordings:
        try:
            meta = json.loads(await spool.get(rec.meta_key))
            ends.append(_newest_end([row_from_metadata(meta)]))
        except Exception as exc:
            report.errors.append(f"{spool.location(rec.meta_key)}: {_reason(exc)}")
    if not ends:
        return True
    if max(ends) > cutoff:
        report.too_recent.append(acquisition_id)
        return True

    uploaded: list[tuple[ListedRecording, dict[str, Any]]] = []
    storage_up = True
    for rec in recordings:
        where = spool.location(rec.data_key)
        try:
            row = await _upload_spooled(fs, spool, acquisition_id, rec)
        except Exception as exc:
            report.errors.append(f"{where}: not uploaded to {describe(fs)}: {_reason(exc)}")
            if is_transient(exc):
                storage_up = False
                break
            continue
        uploaded.append((rec, row))
    if not uploaded:
        return storage_up

    # The row before the spool copy goes: if the database refuses, the recording stays
    # spooled and the next pass uploads (the same bytes) and records it again.
    await asyncio.to_thread(write_rows, engine, acquisition_id, [row for _, row in uploaded])
    done = []
    for rec, _ in uploaded:
        try:
            await unspool(folder, rec)
        except Exception as exc:  # stored and recorded; the next pass removes it
            report.errors.append(
                f"{spool.location(rec.data_key)}: uploaded but not removed from the spool: "
                f"{_reason(exc)}"
            )
            continue
        done.append(rec.receiver)
    if done:
        report.uploaded[acquisition_id] = sorted(done)
    return storage_up


async def _upload_spooled(
    fs: FileSystem, spool: Any, acquisition_id: str, rec: ListedRecording
) -> dict[str, Any]:
    """Verify one spooled recording, save it to ``fs`` at its key, read it back from
    ``fs`` and check it; returns its ``ok`` row."""
    npy, meta_bytes = await asyncio.gather(spool.get(rec.data_key), spool.get(rec.meta_key))
    # the sha512 check, off the event loop (hundreds of MB/s, recordings of up to ~60 MB)
    _, meta = await asyncio.to_thread(
        read_recording, npy, meta_bytes, name=spool.location(rec.data_key)
    )
    row = row_from_metadata(meta, object_key=rec.data_key)
    if (str(row["acquisition_id"]), row["receiver"]) != (acquisition_id, rec.receiver):
        raise StorageError(
            f"its metadata describes acquisition {row['acquisition_id']} receiver "
            f"{row['receiver']!r}, not the one its key names"
        )
    key = rec.data_key.removesuffix(".npy")
    stored = await save_recording(fs, key, Recording(npy=npy, meta=meta))
    _, back = await load_recording(fs, stored.data_key)  # the uploaded data vs its metadata
    expected, got = meta["global"]["core:sha512"], str(back["global"].get("core:sha512"))
    if got != expected:
        raise IntegrityError(
            f"{stored.location}: read back with sha512 {got[:16]}…, expected {expected[:16]}…"
        )
    return row


# --------------------------------------------------------------------------- rows


def write_rows(engine: Engine, acquisition_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert measurement rows of one acquisition and recount its acquisitions row, in one
    transaction, through the record path (sync: call it through ``asyncio.to_thread``)."""
    write_acquisition(engine, rows, recount=acquisition_id)


def _aware(t: datetime) -> datetime:
    # manifests written from naive timestamps are UTC
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _overlap(a: Path, b: Path) -> bool:
    a, b = a.expanduser().resolve(), b.expanduser().resolve()
    return a == b or a in b.parents or b in a.parents


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- manifest

MANIFEST_NAME = "_acquisition.json"


def manifest_key(acquisition_id: str, started: datetime) -> str:
    """Where an acquisition's manifest lives: beside its recordings."""
    return acquisition_prefix(acquisition_id, started) + MANIFEST_NAME


def manifest_bytes(acquisition: dict[str, Any], rows: Sequence[dict[str, Any]]) -> bytes:
    """The acquisition row and the rows no recording can rebuild (failed, skipped)."""
    body = {
        "acquisition": acquisition,
        "rows": [r for r in rows if r.get("status") != "ok"],
    }
    return json.dumps(body, default=str, indent=1, sort_keys=True).encode()


async def save_manifest(
    fs: FileSystem, spool: Path, acquisition: dict[str, Any], rows: Sequence[dict[str, Any]]
) -> str:
    """Keep what the database refused, for reconcile: in storage, else in the spool.

    Called by the acquisition flow when its ``record`` step failed. Returns where it went.
    """
    key = manifest_key(str(acquisition["id"]), acquisition["start_at"])
    data = manifest_bytes(acquisition, rows)
    try:
        return await object_store(fs).put(key, data)
    except Exception:
        return await object_store(local_storage(spool)).put(key, data)


def _manifest_rows(body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    acquisition = dict(body["acquisition"])
    acquisition["start_at"] = _aware(datetime.fromisoformat(acquisition["start_at"]))
    acquisition["status"] = "reconciled"
    rows = []
    for row in body["rows"]:
        row = dict(row)
        row["time"] = _aware(datetime.fromisoformat(row["time"]))
        rows.append(row)
    return acquisition, rows


async def _apply_manifest(
    fs: FileSystem, engine: Engine, acquisition: StoredAcquisition, spool: Path | None
) -> bool:
    """Write the acquisition row and failed/skipped rows from a manifest, if there is one
    and the database has no acquisition row yet. True when something was written."""
    known = await asyncio.to_thread(_acquisition_exists, engine, acquisition.acquisition_id)
    if known:
        return False
    key = acquisition.prefix + MANIFEST_NAME
    sources = [object_store(fs)] + ([object_store(local_storage(spool))] if spool else [])
    for source in sources:
        try:
            body = json.loads(await source.get(key))
        except MissingObjectError:
            continue
        acq_row, rows = _manifest_rows(body)
        await asyncio.to_thread(_write_manifest, engine, acq_row, rows)
        return True
    return False


def _acquisition_exists(engine: Engine, acquisition_id: str) -> bool:
    try:
        acq = uuid.UUID(acquisition_id)
    except ValueError:
        return True  # not ours: nothing to do
    with engine.connect() as conn:
        return conn.execute(select(Acquisition.id).where(Acquisition.id == acq)).first() is not None


def _write_manifest(
    engine: Engine, acquisition: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    write_acquisition(engine, rows, acquisition, recount=str(acquisition["id"]))
