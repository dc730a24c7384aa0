"""The ``locate`` flow: GPS-stamped recordings -> a transmitter position with a 95 % ellipse.

Input is an acquisition (its recordings read back through the storage block) or
kiwirecorder ``--kiwi-wav`` files with their station positions. Output: a ``locations``
row, a pair-table artifact, a map PNG (next to the data and linked from a markdown
artifact) and a summary dict (``--json`` prints it as one JSON object on stdout).

    python -m flows.locate --acquisition ID [--json]
    python -m flows.locate --kiwi-wav A.wav B.wav C.wav [--gnss-pos DIR]
                           [--position NAME=LAT,LON ...] [--frequency-hz HZ] [--json]
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.context import get_run_context

from flows import cli
from tasks.geolocation import GeolocationError, Position, Site, Tdoa, horizontal_distance_m
from tasks.geolocation import locate as solve_position
from tasks.kiwisdr.emitter import SPEED_OF_LIGHT
from tasks.tdoa import ReceiverSeries, TdoaError, TdoaResult, estimate_tdoas
from tasks.timing import (
    NS_PER_S,
    FrameStamp,
    TimingError,
    TimingModel,
    datetime_to_ns,
    fit_timing,
    ns_to_datetime,
    ns_to_iso,
)

SECONDS_PER_WEEK = 7 * 24 * 3600

__all__ = ["LocateOutcome", "locate", "locate_series", "main", "series_from_recording"]


@dataclass
class LocateOutcome:
    """Everything one localization produced (plain data; the flow stores and reports it)."""

    tdoa: TdoaResult | None
    position: Position | None
    error: str | None
    sites: list[Site]
    frequency_hz: float
    speed_m_s: float
    truth: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.position is not None

    def location_json(self) -> dict[str, Any] | None:
        p = self.position
        if p is None:
            return None
        out: dict[str, Any] = {
            "latitude": p.latitude,
            "longitude": p.longitude,
            "ellipse_major_m": p.ellipse_major_m,
            "ellipse_minor_m": p.ellipse_minor_m,
            "ellipse_orientation_deg": p.ellipse_orientation_deg,
            "receivers_used": len(p.receivers_used),
            "pairs_used": len(p.pairs_used),
            "gdop": p.gdop,
            "residual_rms_ns": p.residual_rms_ns,
            "receivers": p.receivers_used,
        }
        if self.truth is not None:
            out["error_m"] = horizontal_distance_m(*self.truth, p.latitude, p.longitude)
        return out

    def pair_rows(self) -> list[dict[str, Any]]:
        rows = [pair.as_row() for pair in (self.tdoa.pairs if self.tdoa else [])]
        if self.position is not None:
            rejected = {f"{t.a}-{t.b}": why for t, why in self.position.pairs_rejected}
            for r in rows:
                r["residual_ns"] = self.position.residuals_ns.get(r["pair"])
                if r["pair"] in rejected:
                    r["dropped"] = rejected[r["pair"]]
        return rows


def locate_series(
    series: list[ReceiverSeries],
    *,
    speed_m_s: float = SPEED_OF_LIGHT,
    emitter_altitude_m: float = 0.0,
    truth: tuple[float, float] | None = None,
) -> LocateOutcome:
    """TDOAs and position from receivers on their own time axes (no Prefect needed)."""
    sites = [Site(s.name, s.latitude, s.longitude, s.altitude_m) for s in series]
    freq = float(np.median([s.center_hz for s in series])) if series else 0.0
    outcome = LocateOutcome(None, None, None, sites, freq, speed_m_s, truth)
    try:
        outcome.tdoa = estimate_tdoas(series, speed_m_s=speed_m_s)
    except TdoaError as exc:
        outcome.error = str(exc)
        return outcome
    outcome.notes.extend(outcome.tdoa.notes)
    good = outcome.tdoa.good_pairs
    if outcome.tdoa.carrier_only:
        outcome.error = (
            "pure carrier: the signal is an unmodulated carrier, which has no time-difference "
            "information; no position"
        )
        return outcome
    tdoas = [Tdoa(p.a, p.b, float(p.tdoa_s), float(p.stderr_s), p.segments_used - 1) for p in good]  # type: ignore[arg-type]
    try:
        outcome.position = solve_position(
            sites, tdoas, speed_m_s=speed_m_s, emitter_altitude_m=emitter_altitude_m
        )
    except GeolocationError as exc:
        reasons = sorted({p.reason for p in outcome.tdoa.pairs if p.reason})
        outcome.error = f"{exc}; pairs dropped: {'; '.join(reasons) or 'none'}"
    return outcome


def series_from_recording(samples: np.ndarray, meta: dict[str, Any]) -> ReceiverSeries:
    """A receiver's input from a stored recording: its GPS timing model when present,
    else core:datetime + core:sample_rate (flagged: host-clock timing is not TDOA-grade)."""
    g = meta["global"]
    capture = meta["captures"][0]
    coords = (g.get("core:geolocation") or {}).get("coordinates")
    if not coords:
        raise ValueError(f"recording of {g.get('rfacq:receiver')!r} has no core:geolocation")
    sigma = 0.0
    start_ns = datetime_to_ns(
        datetime.fromisoformat(capture["core:datetime"].replace("Z", "+00:00"))
    )
    rate = float(g["core:sample_rate"])
    model = g.get("rfacq:timing_model")
    tm = TimingModel.from_dict(model) if model else _fit_frame_timing(g, start_ns, rate)
    if tm is not None:
        t0, rate, flags = tm.t0_ns, tm.sample_rate_hz, tuple(tm.flags)
        if not model:
            flags = ("refit_from_rfacq_timing", *flags)
        if tm.residual_ns:
            sigma = tm.residual_ns / max(tm.fixes, 1) ** 0.5 / NS_PER_S
    else:
        t0, flags = start_ns, ("host_clock", "no_timing_model")
    return ReceiverSeries(
        name=str(g.get("rfacq:receiver")),
        latitude=float(coords[1]),
        longitude=float(coords[0]),
        altitude_m=float(coords[2]) if len(coords) > 2 else 0.0,
        samples=samples,
        t0_ns=t0,
        sample_rate_hz=rate,
        center_hz=float(capture["core:frequency"]),
        timing_sigma_s=sigma,
        flags=tuple(flags),
        gaps=recorded_gaps(meta),
    )


def recorded_gaps(meta: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    """The zero-filled lost frames of a stored recording, from its SigMF gap annotations
    (tasks.recording writes one per gap), so they are never correlated."""
    from tasks.recording import GAP_LABEL

    return tuple(
        (int(a["core:sample_start"]), int(a["core:sample_count"]))
        for a in meta.get("annotations") or []
        if a.get("core:label") == GAP_LABEL and int(a.get("core:sample_count", 0)) > 0
    )


def _fit_frame_timing(g: dict[str, Any], start_ns: int, rate: float) -> TimingModel | None:
    """Refit the timing of a recording made before ``rfacq:timing_model`` existed, from its
    per-frame GPS times (``rfacq:timing``: offsets from the first stamped frame)."""
    timing = g.get("rfacq:timing") or {}
    starts = timing.get("frame_sample_start") or []
    offsets = timing.get("frame_gps_offset_s") or []
    first = timing.get("first_frame_gps_seconds_of_week")
    if first is None or len(starts) < 3 or len(starts) != len(offsets) or offsets[0] != 0:
        return None
    first_ns = round(float(first) * NS_PER_S)
    stamps = []
    for index, offset in zip(starts, offsets, strict=True):
        gps_ns = first_ns + round(float(offset) * NS_PER_S)
        sec, nsec = divmod(gps_ns, NS_PER_S)
        stamps.append(FrameStamp(int(index), int(sec) % SECONDS_PER_WEEK, int(nsec), 0))
    try:
        return fit_timing(stamps, nominal_rate_hz=rate, host_ref_ns=start_ns, host_fallback=False)
    except (TimingError, ValueError):
        return None


@task
async def load_acquisition(
    acquisition_id: str, storage: str, database: str, data_dir: Path
) -> list[ReceiverSeries]:
    """Every complete recording of the acquisition, through the configured storage."""
    from sqlalchemy import select

    from blocks.resolve import resolve_database, resolve_storage
    from tasks.records import Acquisition, ensure_schema
    from tasks.storage import list_recordings, load_recording

    logger = get_run_logger()
    fs = (await resolve_storage(storage, data_dir)).block
    engine = (await resolve_database(database, data_dir)).engine
    ensure_schema(engine)
    with engine.connect() as conn:
        start = conn.execute(
            select(Acquisition.start_at).where(Acquisition.id == uuid.UUID(acquisition_id))
        ).scalar()
    engine.dispose()
    days: list[date] = []
    if start is not None:
        days = [start.astimezone(UTC).date()]
    else:
        today = datetime.now(UTC).date()
        days = [today - timedelta(days=k) for k in range(8)]
    for day in days:
        listed = [r for r in await list_recordings(fs, acquisition_id, day) if r.complete]
        if listed:
            break
    else:
        raise ValueError(f"acquisition_id={acquisition_id!r}: no stored recordings found")
    out = []
    for rec in listed:
        samples, meta = await load_recording(fs, rec.data_key)
        series = series_from_recording(samples, meta)
        if "host_clock" in series.flags:
            logger.warning("%s: no GPS timing (%s): left out", rec.receiver, series.flags)
            continue
        out.append(series)
        logger.info("loaded %s (%d samples, %s)", rec.receiver, samples.size, series.flags)
    return out


# A real KiwiSDR's GPS time of a sample is good to roughly +-100 ns whatever its fit
# residual says (receiver and antenna delays, firmware); kiwi-wav files come from them.
KIWI_TIMING_FLOOR_S = 100e-9
# A receiver without a GPS fix during the recording whose last fix is older than this is
# coasting on its crystal: tens of us off after a minute, useless for time differences.
UNLOCKED_LAST_FIX_S = 60
# The recordings must share this much GPS time; receivers that do not are left out.
MIN_COMMON_WINDOW_S = 1.0
# Tuned frequencies closer than this are the same (file names carry whole Hz or kHz).
SAME_FREQUENCY_HZ = 1.0


@dataclass
class FileReport:
    """What became of one input file: ``used`` (in the position), ``unused`` (correlated
    but no position used it), ``excluded`` (readable but left out, with the reason) or
    ``failed`` (unreadable or without a position)."""

    file: str
    station: str | None = None
    frequency_hz: float | None = None
    status: str = "failed"
    reason: str | None = None
    defects: list[str] = field(default_factory=list)
    timing: dict[str, Any] | None = None
    window_utc: tuple[str, str] | None = None
    series: ReceiverSeries | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "station": self.station,
            "frequency_hz": self.frequency_hz,
            "status": self.status,
            "reason": self.reason,
            "defects": self.defects,
            "timing": self.timing,
            "window_utc": list(self.window_utc) if self.window_utc else None,
        }

    def exclude(self, reason: str) -> None:
        self.status, self.reason, self.series = "excluded", reason, None


def _read_kiwi_file(
    path: str,
    positions: dict[str, Any],
    gnss_pos: str | None,
    timing_floor_s: float,
    frequency_hz: float | None = None,
) -> FileReport:
    """One file -> its receiver series, or the reason it cannot be one."""
    from tasks.kiwiwav import KiwiWavError, find_station_position, parse_file_name, read_kiwi_wav

    report = FileReport(file=path)
    try:
        name = parse_file_name(path, frequency_hz=frequency_hz)
        report.station, report.frequency_hz = name.station, name.frequency_hz
        pos = positions.get(name.station)
        if pos is None:
            if gnss_pos is None:
                raise KiwiWavError(
                    path,
                    f"no position for station {name.station!r}: give --gnss-pos DIR (with "
                    f"{name.station}.txt) or --position {name.station}=LAT,LON",
                )
            pos = find_station_position(gnss_pos, name.station)
        wav = read_kiwi_wav(path, frequency_hz=frequency_hz)
    except (KiwiWavError, ValueError, OSError) as exc:
        msg, prefix = str(exc), f"{Path(path).name}: "
        report.reason = msg if msg.startswith(prefix) else prefix + msg
        return report
    tm = wav.timing
    report.defects = list(wav.defects)
    report.timing = {
        "first_sample_utc": ns_to_iso(tm.t0_ns),
        "sample_rate_fitted_hz": tm.sample_rate_hz,
        "nominal_rate_hz": wav.nominal_rate_hz,
        "residual_ns": tm.residual_ns,
        "fixes": tm.fixes,
        "outliers": tm.outliers,
        "locked": tm.locked,
        "flags": list(tm.flags),
        "gaps": [[int(a), int(b)] for a, b in wav.gaps],
    }
    end_ns = tm.t0_ns + round(wav.samples.size * NS_PER_S / tm.sample_rate_hz)
    report.window_utc = (ns_to_iso(tm.t0_ns), ns_to_iso(end_ns))
    report.status = "excluded"
    if not tm.gps:
        report.reason = f"no GPS timing ({', '.join(tm.flags)})"
        return report
    unlocked = _unlocked(wav.stamps, tm)
    if unlocked:
        report.reason = unlocked
        return report
    sigma = (tm.residual_ns or 0.0) / max(tm.fixes, 1) ** 0.5 / NS_PER_S
    # The first frame's stamp is never trusted (0/0 on real KiwiSDRs), so frames lost right
    # after it cannot be seen: its samples would take the next stamp's time, late by the
    # gap. Its samples are not correlated either (as the reference TDoA processing does).
    untrusted = wav.stamps[0].empty or "first_frame_dropped" in tm.flags
    skip = wav.stamps[1].sample_index if untrusted and len(wav.stamps) > 1 else 0
    report.series = ReceiverSeries(
        wav.station,
        pos.latitude,
        pos.longitude,
        0.0,
        wav.samples[skip:],
        tm.t0_ns + round(skip * NS_PER_S / tm.sample_rate_hz),
        tm.sample_rate_hz,
        wav.frequency_hz,
        timing_sigma_s=max(sigma, timing_floor_s),
        flags=tm.flags,
        gaps=tuple((max(int(a) - skip, 0), int(n)) for a, n in wav.gaps),
    )
    report.status, report.reason = "used", None
    return report


def _unlocked(stamps: list[FrameStamp], tm: TimingModel) -> str | None:
    """Why a receiver's GPS clock cannot be trusted for time differences, if it cannot."""
    if tm.fixes > 0:
        return None
    ages = [s.last_gps_solution for s in stamps if not s.empty and not s.no_gps_clock]
    if ages and min(ages) > UNLOCKED_LAST_FIX_S:
        return (
            f"GPS not locked: no fix during the recording and the last one {min(ages)} s "
            f"before it (> {UNLOCKED_LAST_FIX_S} s): the receiver clock is coasting"
        )
    return None


def _one_frequency(reports: list[FileReport]) -> None:
    """Keep the files of the frequency most of them are tuned to (time differences need
    one signal); the others are excluded naming both frequencies."""
    live = [r for r in reports if r.series is not None]
    groups: dict[float, list[FileReport]] = {}
    for r in live:
        key = next(
            (f for f in groups if abs(f - float(r.frequency_hz or 0)) <= SAME_FREQUENCY_HZ),
            float(r.frequency_hz or 0),
        )
        groups.setdefault(key, []).append(r)
    if len(groups) < 2:
        return
    sizes = sorted((len(v) for v in groups.values()), reverse=True)
    listing = ", ".join(f"{f / 1e3:g} kHz: {len(v)} file(s)" for f, v in groups.items())
    if sizes[0] == sizes[1]:
        for r in live:
            r.exclude(
                f"the files are tuned to different frequencies ({listing}) and none has most "
                "files: locate needs recordings of one frequency"
            )
        return
    keep = max(groups, key=lambda f: len(groups[f]))
    for f, members in groups.items():
        if f != keep:
            for r in members:
                r.exclude(
                    f"tuned to {f / 1e3:g} kHz, the other files to {keep / 1e3:g} kHz: "
                    "time differences need the same frequency"
                )


def _common_time(reports: list[FileReport], min_window_s: float) -> None:
    """Keep the largest set of recordings sharing at least ``min_window_s`` of GPS time
    (ties: the longer window); the others are excluded with their own span and the
    window they miss."""
    from tasks.tdoa import best_overlap

    live = {r.station: r for r in reports if r.series is not None}
    if len(live) < 2:
        return
    spans = {name: (r.series.t0_ns, r.series.end_ns) for name, r in live.items()}  # type: ignore[union-attr]
    chosen, (start, end) = best_overlap(spans, round(min_window_s * NS_PER_S))
    for name, r in live.items():
        if name in chosen and len(chosen) >= 2:
            continue
        a, b = spans[name]
        if len(chosen) < 2:
            r.exclude(
                f"recorded {ns_to_iso(a)} .. {ns_to_iso(b)}: no two recordings share "
                f"{min_window_s:g} s of GPS time"
            )
        else:
            r.exclude(
                f"recorded {ns_to_iso(a)} .. {ns_to_iso(b)}: does not cover the window "
                f"{ns_to_iso(start)} .. {ns_to_iso(end)} that {len(chosen)} other "
                f"recordings share (>= {min_window_s:g} s needed)"
            )


def locate_kiwi_files(
    files: list[str],
    gnss_pos: str | None,
    positions: list[str] | None,
    *,
    speed_m_s: float = SPEED_OF_LIGHT,
    emitter_altitude_m: float = 0.0,
    truth: tuple[float, float] | None = None,
    timing_floor_s: float = KIWI_TIMING_FLOOR_S,
    min_window_s: float = MIN_COMMON_WINDOW_S,
    frequency_hz: float | None = None,
) -> tuple[LocateOutcome, list[FileReport]]:
    """kiwirecorder files -> a position, and what became of every file (no Prefect).

    Each file is read, timed and placed on its own; one that cannot be used is reported
    with its reason and the others go on: unreadable or damaged beyond repair, no
    position, no GPS timing, an unlocked GPS clock, another frequency than most files,
    no GPS time in common with the others, a second file of the same station.
    ``frequency_hz`` replaces the file names' frequency (``--frequency-hz``).
    """
    from flows.ingest import parse_positions

    given = parse_positions(positions)
    reports = [_read_kiwi_file(f, given, gnss_pos, timing_floor_s, frequency_hz) for f in files]
    seen: dict[str, str] = {}
    for r in reports:
        if r.series is None:
            continue
        if r.station in seen:
            r.exclude(f"station {r.station!r} already given by {Path(seen[r.station]).name}")
        else:
            seen[r.station or ""] = r.file
    _one_frequency(reports)
    _common_time(reports, min_window_s)
    series = [r.series for r in reports if r.series is not None]
    outcome = locate_series(
        series, speed_m_s=speed_m_s, emitter_altitude_m=emitter_altitude_m, truth=truth
    )
    if not series:
        outcome.frequency_hz = next((r.frequency_hz for r in reports if r.frequency_hz), 0.0)
    used = set(outcome.position.receivers_used) if outcome.position else set()
    paired = {n for p in (outcome.tdoa.good_pairs if outcome.tdoa else []) for n in (p.a, p.b)}
    for r in reports:
        if r.series is None:
            continue
        if r.station in used:
            continue
        r.status = "unused"
        if r.station in paired:
            r.reason = f"its time differences gave no position: {outcome.error or 'rejected'}"
        else:
            dropped = sorted(
                {
                    p.reason
                    for p in (outcome.tdoa.pairs if outcome.tdoa else [])
                    if r.station in (p.a, p.b) and p.reason
                }
            )
            r.reason = "no usable time difference: " + (
                "; ".join(dropped) or outcome.error or "not correlated"
            )
    left_out = [r for r in reports if r.status in ("failed", "excluded")]
    outcome.notes.extend(f"{Path(r.file).name}: {r.status}: {r.reason}" for r in left_out)
    if len(series) < 2:
        outcome.error = (
            f"{len(series)} usable recording(s) of {len(files)}: a time difference needs two "
            "and a position three"
        )
    if outcome.error and left_out:
        outcome.error += "; left out: " + "; ".join(
            f"{Path(r.file).name} ({r.reason})" for r in left_out
        )
    return outcome, reports


@flow(name="locate", log_prints=False)
async def locate(
    acquisition_id: str | None = None,
    kiwi_wav: list[str] | None = None,
    gnss_pos: str | None = None,
    positions: list[str] | None = None,
    storage: str = "auto",
    database: str = "auto",
    data_dir: str | None = None,
    speed_m_s: float = SPEED_OF_LIGHT,
    emitter_altitude_m: float = 0.0,
    truth_latitude: float | None = None,
    truth_longitude: float | None = None,
    frequency_hz: float | None = None,
) -> dict[str, Any]:
    """Locate the transmitter heard in an acquisition or in kiwirecorder files
    (``frequency_hz``: the files' tuned frequency, instead of their names')."""
    from blocks.resolve import default_data_dir, resolve_database
    from tasks.localization_map import map_png
    from tasks.locations import upsert_location

    logger = get_run_logger()
    if (acquisition_id is None) == (not kiwi_wav):
        raise ValueError("give exactly one of acquisition_id or kiwi_wav")
    if frequency_hz is not None and acquisition_id is not None:
        raise ValueError("frequency_hz is for kiwi_wav files (a recording has its own)")
    folder = Path(data_dir) if data_dir else default_data_dir()
    truth = (
        (truth_latitude, truth_longitude)
        if truth_latitude is not None and truth_longitude is not None
        else None
    )
    reports: list[FileReport] = []
    if acquisition_id is not None:
        series = await load_acquisition(acquisition_id, storage, database, folder)
        source = "acquisition"
        outcome = locate_series(
            series, speed_m_s=speed_m_s, emitter_altitude_m=emitter_altitude_m, truth=truth
        )
    else:
        source = "kiwi-wav"
        outcome, reports = locate_kiwi_files(
            list(kiwi_wav or []),
            gnss_pos,
            positions,
            speed_m_s=speed_m_s,
            emitter_altitude_m=emitter_altitude_m,
            truth=truth,
            frequency_hz=frequency_hz,
        )
    for r in reports:
        if r.status in ("failed", "excluded"):
            logger.warning("%s: %s: %s", Path(r.file).name, r.status, r.reason)
        for d in r.defects:
            logger.warning("%s: repaired: %s", Path(r.file).name, d)
    flow_run_id = _flow_run_id()
    start_ns = outcome.tdoa.window_start_ns if outcome.tdoa else None
    when = ns_to_datetime(start_ns) if start_ns else datetime.now(UTC)
    loc = outcome.location_json()
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "time": when,
        "acquisition_id": acquisition_id,
        "source": source,
        "status": "ok" if outcome.ok else "failed",
        "error": outcome.error,
        "frequency_hz": outcome.frequency_hz or 1.0,
        "receivers_used": loc["receivers_used"] if loc else 0,
        "pairs_used": loc["pairs_used"] if loc else 0,
        "receivers": json.dumps(loc["receivers"] if loc else []),
        "propagation_speed_m_s": speed_m_s,
        "flow_run_id": flow_run_id,
    }
    if loc:
        for k in (
            "latitude",
            "longitude",
            "ellipse_major_m",
            "ellipse_minor_m",
            "ellipse_orientation_deg",
            "gdop",
            "residual_rms_ns",
            "error_m",
        ):
            if k in loc:
                row[k] = loc[k]
    if truth:
        row["truth_latitude"], row["truth_longitude"] = truth
    engine = (await resolve_database(database, folder)).engine
    try:
        location_id = upsert_location(engine, row)
    finally:
        engine.dispose()  # one write per run: no pool to keep

    png = map_png(outcome.sites, outcome.position, truth=truth, title=_title(outcome))
    map_path = folder / "locations" / f"{location_id}.png"
    map_path.parent.mkdir(parents=True, exist_ok=True)
    map_path.write_bytes(png)
    stored_lines: list[str] = []
    if acquisition_id is not None:
        stored_lines = await _store_map(png, acquisition_id, when, location_id, storage, folder)
    pair_rows = outcome.pair_rows()
    with contextlib.suppress(Exception):  # artifacts need a run context; plain runs skip
        await acreate_table_artifact(pair_rows, key="locate-pairs", description="TDOA pairs")
        await acreate_markdown_artifact(
            "\n".join([_markdown(outcome, map_path, png), "", *stored_lines]),
            key="locate-summary",
            description="Position",
        )
    message = _title(outcome)
    (logger.info if outcome.ok else logger.warning)("%s", message)
    summary: dict[str, Any] = {
        "message": message,
        "ok": outcome.ok,
        "location_id": location_id,
        "source": source,
        "acquisition_id": acquisition_id,
        "error": outcome.error,
        "location": loc,
        "pairs": pair_rows,
        "map": str(map_path),
        "window_start_utc": when.isoformat(),
        "notes": outcome.notes,
        "files": [r.as_dict() for r in reports],
    }
    return summary


async def _store_map(
    png: bytes, acquisition_id: str, when: datetime, location_id: str, storage: str, folder: Path
) -> list[str]:
    """The map beside the acquisition's recordings (``pictures/map-<location>.png``), with
    a presigned link on S3; markdown lines saying where. Never fails the flow."""
    from blocks.resolve import resolve_storage
    from tasks.report import store_picture
    from tasks.storage import acquisition_prefix

    key = acquisition_prefix(acquisition_id, when) + f"pictures/map-{location_id}.png"
    try:
        fs = (await resolve_storage(storage, folder)).block
    except Exception as exc:
        get_run_logger().warning("the map could not be stored: %s", type(exc).__name__)
        return [f"(the map could not be stored: {type(exc).__name__})"]
    return await store_picture(fs, key, png, "map")


def _flow_run_id() -> str | None:
    with contextlib.suppress(Exception):
        return str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    return None


def _title(o: LocateOutcome) -> str:
    if o.position is None:
        return f"no position: {o.error}"
    p = o.position
    text = (
        f"{p.latitude:.5f}, {p.longitude:.5f} +- {p.ellipse_major_m:.0f} x "
        f"{p.ellipse_minor_m:.0f} m (95 %), {len(p.receivers_used)} receivers, "
        f"{len(p.pairs_used)} pairs"
    )
    if o.truth is not None:
        text += f"; truth {horizontal_distance_m(*o.truth, p.latitude, p.longitude):.0f} m away"
    return text


def _markdown(o: LocateOutcome, map_path: Path, png: bytes) -> str:
    import base64

    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    lines = [f"# Position\n\n{_title(o)}\n", f"![map]({uri})\n", f"Map file: `{map_path}`\n"]
    lines.append("| pair | TDOA us | +- us | quality | dropped |\n|---|---|---|---|---|")
    for r in o.pair_rows():
        lines.append(
            f"| {r['pair']} | {r['tdoa_us']} | {r['stderr_us']} | {r['quality']} | "
            f"{r['dropped'] or ''} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line; exit 0 when a position was found."""
    from flows.ingest import add_frequency_option

    p = cli.parser("flows.locate", __doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--acquisition", dest="acquisition_id", metavar="ID")
    src.add_argument("--kiwi-wav", nargs="+", metavar="FILE")
    cli.add_station_options(p)
    add_frequency_option(p)
    p.add_argument(
        "--speed",
        dest="speed_m_s",
        type=float,
        default=SPEED_OF_LIGHT,
        help="propagation speed m/s (LF ground wave: a little below c)",
    )
    p.add_argument("--emitter-altitude", dest="emitter_altitude_m", type=float, default=0.0)
    args = vars(p.parse_args(argv))
    as_json = args.pop("json")
    # With --json, stdout carries the JSON object and nothing else (cli.run_once).
    state = cli.run_once(locate, json=as_json, **args)
    result = cli.result_of(state, json=as_json, what="locate")
    if result is None:
        return 1
    if not as_json:
        for f in result.get("files") or []:
            if f["status"] != "used":
                name = Path(f["file"]).name
                reason = str(f["reason"]).removeprefix(f"{name}: ")
                print(f"{f['status']:8s} {name}: {reason}")
        for r in result["pairs"]:
            print(
                f"{r['pair']:40s} {r['tdoa_us']!s:>12} us +- {r['stderr_us']!s:>8} "
                f"{r['dropped'] or ''}"
            )
        print(result["message"])
        print(f"map: {result['map']}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
