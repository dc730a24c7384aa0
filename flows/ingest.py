"""The ingest flow: kiwirecorder ``--kiwi-wav`` IQ files into the project's recordings.

Most existing KiwiSDR IQ data (the KiwiSDR TDoA service's inputs among it) is stored as
kiwi-wav files. This flow turns each into the same ``.npy`` + SigMF recording (with its
GPS timing model) and measurements row an acquisition produces, through the configured
storage and database, so the rest of the project (locate, reports, queries) treats
imported and captured data alike. A bad file gets its own clear error; the good files
of the same call still go through.

``python -m flows.ingest --kiwi-wav FILES... [--gnss-pos DIR] [--position NAME=LAT,LON]
[--frequency-hz HZ]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow
from prefect.futures import wait
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from blocks.resolve import default_data_dir, resolve_database, resolve_storage
from flows import cli
from tasks.kiwiwav import (
    KiwiWav,
    KiwiWavError,
    StationPosition,
    find_station_position,
    parse_file_name,
    read_kiwi_wav,
)
from tasks.recording import Recording, build_recording
from tasks.storage import StorageKeyError, check_key_part, recording_key, spool_recording
from tasks.timing import gps_stamp_to_utc_ns, ns_to_datetime, ns_to_iso


@dataclass
class IngestedFile:
    """One file's outcome: its recording and row when usable, otherwise the error."""

    file: str
    station: str | None = None
    frequency_hz: float | None = None
    error: str | None = None
    defects: list[str] = field(default_factory=list)
    recording: Recording | None = None
    row: dict[str, Any] | None = None
    acquisition_id: str | None = None
    object_key: str | None = None
    location: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, Any]:
        row = self.row or {}
        return {
            "file": self.file,
            "status": "ok" if self.ok else "failed",
            "error": self.error,
            "station": self.station,
            "frequency_hz": self.frequency_hz,
            "defects": self.defects,
            "acquisition_id": self.acquisition_id,
            "object_key": self.object_key,
            "location": self.location,
            "first_sample_ns": self.timing.get("t0_ns") if self.timing else None,
            "first_sample_utc": ns_to_iso(self.timing["t0_ns"]) if self.timing else None,
            "sample_rate_fitted_hz": self.timing.get("sample_rate_hz") if self.timing else None,
            "timing_residual_ns": self.timing.get("residual_ns") if self.timing else None,
            "gps_locked": self.timing.get("locked") if self.timing else None,
            "timing_fixes": self.timing.get("fixes") if self.timing else None,
            "timing_outliers": self.timing.get("outliers") if self.timing else None,
            "sample_count": row.get("sample_count"),
            "snr_db": row.get("snr_db"),
        }

    @property
    def timing(self) -> dict[str, Any] | None:
        if self.recording is None:
            return None
        return self.recording.meta["global"].get("rfacq:timing_model")


def parse_positions(items: list[str] | None) -> dict[str, StationPosition]:
    """``NAME=LAT,LON`` options -> positions; a clear error naming the bad option."""
    out: dict[str, StationPosition] = {}
    for item in items or []:
        name, sep, coords = item.partition("=")
        parts = coords.split(",")
        try:
            if not sep or not name or len(parts) != 2:
                raise ValueError
            lat, lon = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"--position {item!r}: use NAME=LAT,LON (degrees)") from None
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ValueError(
                f"--position {item!r}: latitude must be in [-90, 90] and longitude in "
                "[-180, 180] degrees"
            )
        out[name] = StationPosition(name, lat, lon)
    return out


def station_position(
    station: str, positions: dict[str, StationPosition], gnss_pos: Path | None
) -> StationPosition:
    """``--position`` wins, then ``<gnss_pos>/<station>.txt``; otherwise a clear error."""
    if station in positions:
        return positions[station]
    if gnss_pos is not None:
        return find_station_position(gnss_pos, station)
    raise ValueError(
        f"unknown position of station {station!r}: give --gnss-pos DIR (with {station}.txt) "
        f"or --position {station}=LAT,LON"
    )


def frame_timing(wav: KiwiWav) -> dict[str, Any]:
    """Per-frame stamps of the file as the recording keeps them (stamped frames only)."""
    t0 = wav.timing.t0_ns
    keep = [s for s in wav.stamps if (s.gpssec or s.gpsnsec) and s.last_gps_solution != 255]
    return {
        "gps_fix": wav.timing.gps,
        "frame_sample_start": [int(s.sample_index) for s in keep],
        "frame_gps_offset_s": [
            round((gps_stamp_to_utc_ns(s.gpssec, s.gpsnsec, t0) - t0) / 1e9, 9) for s in keep
        ],
        "frame_last_gps_solution": [int(s.last_gps_solution) for s in keep],
    }


def received_stretch(samples: np.ndarray, gaps: list[tuple[int, int]]) -> np.ndarray:
    """The longest run of ``samples`` holding no zero-filled lost frame (all of them
    without gaps)."""
    if not gaps:
        return samples
    best, at = (0, 0), 0
    for start, count in sorted(gaps):
        if start - at > best[1] - best[0]:
            best = (at, start)
        at = max(at, start + count)
    if samples.size - at > best[1] - best[0]:
        best = (at, samples.size)
    return samples[best[0] : best[1]]


def build_file_recording(
    wav: KiwiWav, position: StationPosition, acquisition_id: str
) -> tuple[Recording, dict[str, Any]]:
    """The recording and measurements row of one decoded file (pure computation)."""
    from tasks.dsp import estimate_passband, measure
    from tasks.process import row_from_metadata

    model = wav.timing
    rate = model.sample_rate_hz
    # The file does not say which passband was set (+-500 Hz and +-5 kHz both occur):
    # measured over the band the spectrum shows, so the stopband is never the noise.
    # Lost frames are zeros: the passband is read from the longest received stretch (a
    # jump to zeros inside a Welch segment leaks over the stopband) and the figures
    # average over the received samples only, as for a capture (tasks/process.py).
    passband = estimate_passband(received_stretch(wav.samples, wav.gaps), rate)
    m = measure(wav.samples, rate, passband_hz=passband, gaps=wav.gaps)
    recording = build_recording(
        wav.samples,
        name=wav.station,
        sample_rate=rate,
        frequency_hz=wav.frequency_hz,
        start_utc=ns_to_datetime(model.t0_ns),
        acquisition_id=acquisition_id,
        receiver=wav.station,
        latitude=position.latitude,
        longitude=position.longitude,
        altitude_m=None,
        hw="KiwiSDR (kiwirecorder --kiwi-wav file)",
        duration_s=wav.duration_s,
        measurements={**m.as_dict(), "rssi_dbm": None},
        quality={
            "gps_fix": model.gps,
            "source_file": wav.path.name,
            "nominal_sample_rate": wav.nominal_rate_hz,
            "file_defects": "; ".join(wav.defects),
            "simulated": False,  # recorded by a real KiwiSDR
            "passband_low_hz": round(passband[0], 1),
            "passband_high_hz": round(passband[1], 1),
        },
        gaps=wav.gaps,
        timing=frame_timing(wav),
        timing_model=model.as_dict(),
        description=f"{wav.station} at {wav.frequency_hz / 1e6:.6f} MHz from {wav.path.name}",
    )
    return recording, row_from_metadata(recording.meta)


def load_file(
    path: str,
    *,
    positions: dict[str, StationPosition],
    gnss_pos: Path | None,
    strict: bool,
    frequency_hz: float | None = None,
) -> IngestedFile:
    """Read, time and measure one file; every failure becomes the file's error.
    ``frequency_hz`` replaces the file name's frequency (``--frequency-hz``)."""
    out = IngestedFile(file=path)
    try:
        name = parse_file_name(path, frequency_hz=frequency_hz)
        out.station, out.frequency_hz = name.station, name.frequency_hz
        check_key_part(name.station, "station")
        position = station_position(name.station, positions, gnss_pos)
        wav = read_kiwi_wav(path, strict=strict, frequency_hz=frequency_hz)
        out.defects = list(wav.defects)
        out.recording, out.row = build_file_recording(wav, position, str(uuid.uuid4()))
    except (KiwiWavError, StorageKeyError, ValueError) as exc:
        msg = str(exc)
        prefix = f"{Path(path).name}: "
        out.error = msg if msg.startswith(prefix) else prefix + msg
    except Exception as exc:  # one odd file must not stop the others
        out.error = f"{Path(path).name}: {type(exc).__name__}: {exc}"
    return out


def _regroup(files: list[IngestedFile]) -> dict[str, list[IngestedFile]]:
    """One acquisition per tuned frequency (an acquisition row has one frequency);
    the recordings are rebuilt under their group's acquisition id."""
    groups: dict[float, list[IngestedFile]] = {}
    for f in files:
        if f.ok and f.recording is not None:
            groups.setdefault(float(f.frequency_hz or 0.0), []).append(f)
    out: dict[str, list[IngestedFile]] = {}
    for members in groups.values():
        acquisition_id = str(uuid.uuid4())
        for f in members:
            meta = f.recording.meta  # type: ignore[union-attr]
            meta["global"]["rfacq:acquisition_id"] = acquisition_id
            assert f.row is not None
            f.row["acquisition_id"] = acquisition_id
            f.acquisition_id = acquisition_id
        out[acquisition_id] = members
    return out


@flow(name="ingest", description="Import kiwirecorder --kiwi-wav IQ files as recordings.")
async def ingest(
    kiwi_wav: list[str],
    gnss_pos: str | None = None,
    positions: list[str] | None = None,
    storage: str = "auto",
    database: str = "auto",
    data_dir: str | None = None,
    strict: bool = False,
    frequency_hz: float | None = None,
) -> State[dict[str, Any]]:
    """Import kiwi-wav files: one recording and row per good file.

    Args:
        kiwi_wav: the files (``YYYYMMDDTHHMMSSZ_<frequency>_<station>_iq.wav``; the
            frequency in whole Hz as kiwirecorder writes it, or kHz with a decimal point).
        gnss_pos: folder of ``<station>.txt`` position files.
        positions: ``NAME=LAT,LON`` positions (win over ``gnss_pos``).
        storage: "auto", "local" or "<block-type>/<name>" (as for ``acquire``).
        database: "auto", "sqlite" or "timescaledb-connection/<name>".
        data_dir: folder of the local defaults.
        strict: refuse files with repairable defects too (stale RIFF size ...).
        frequency_hz: the tuned frequency of every file, instead of their names' (for
            names in whole kHz, which kiwirecorder's whole-Hz convention cannot read).

    Returns:
        Completed when every file was imported and recorded; Failed (with the same
        summary) when any file failed or rows could not be recorded.
    """
    from tasks.records import record
    from tasks.storage import store

    logger = get_run_logger()
    if not kiwi_wav:
        raise ValueError("kiwi_wav: give at least one file")
    known = parse_positions(positions)
    pos_dir = Path(gnss_pos).expanduser() if gnss_pos else None
    if pos_dir is not None and not pos_dir.is_dir():
        raise ValueError(f"gnss_pos={gnss_pos!r} is not a folder")
    folder = Path(data_dir).resolve() if data_dir else default_data_dir()
    files = [
        await asyncio.to_thread(
            load_file,
            p,
            positions=known,
            gnss_pos=pos_dir,
            strict=strict,
            frequency_hz=frequency_hz,
        )
        for p in kiwi_wav
    ]
    for f in files:
        if f.ok:
            logger.info("%s: %s", Path(f.file).name, _timing_line(f))
            for d in f.defects:
                logger.warning("%s: repaired: %s", Path(f.file).name, d)
        else:
            logger.error("%s", f.error)
    groups = _regroup(files)
    store_choice = await resolve_storage(storage, folder)
    db_choice = await resolve_database(database, folder)
    record_errors: list[str] = []
    try:
        for acquisition_id, members in groups.items():
            start = min(m.row["time"] for m in members)  # type: ignore[index]
            keys = [recording_key(acquisition_id, start, m.station or "") for m in members]
            futures = store.map(
                [store_choice.block] * len(members),
                keys,
                [m.station for m in members],
                [m.recording for m in members],
            )
            await asyncio.to_thread(wait, futures)
            for m, key, fut in zip(members, keys, futures, strict=True):
                if fut.state.is_completed():
                    stored = fut.result()
                    m.row["object_key"] = stored.data_key  # type: ignore[index]
                    m.object_key, m.location = stored.data_key, stored.location
                    continue
                exc = fut.result(raise_on_failure=False)
                error = f"{Path(m.file).name}: store failed: {type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    spooled = await spool_recording(folder / "spool", key, m.recording)  # type: ignore[arg-type]
                    error += f"; spooled to {spooled.location}"
                m.row = {**m.row, "status": "failed", "error": error}  # type: ignore[dict-item]
                m.error = error
            rows = [m.row for m in members if m.row is not None]
            acquisition = {
                "id": acquisition_id,
                "frequency_hz": members[0].frequency_hz,
                "duration_s": max(
                    r["sample_count"] / r["sample_rate"] for r in rows if r["sample_rate"]
                ),
                "start_at": start,
                "receivers_requested": len(members),
                "receivers_ok": sum(r["status"] == "ok" for r in rows),
                "receivers_failed": sum(r["status"] == "failed" for r in rows),
                "receivers_skipped": 0,
                "status": "completed",
                "flow_run_id": str(flow_run.id) if flow_run.id else None,
            }
            recorded = record.submit(db_choice.engine, acquisition, rows)
            await asyncio.to_thread(wait, [recorded])
            if not recorded.state.is_completed():
                exc = recorded.result(raise_on_failure=False)
                record_errors.append(f"acquisition {acquisition_id}: {type(exc).__name__}: {exc}")
                logger.error("rows of acquisition %s not recorded: %s", acquisition_id, exc)
    finally:
        await asyncio.to_thread(db_choice.engine.dispose)
    ok = sum(f.ok for f in files)
    message = f"{ok}/{len(files)} kiwi-wav files ingested"
    if record_errors:
        message += "; rows not recorded"
    data = {
        "message": message,
        "ok": ok,
        "failed": len(files) - ok,
        "acquisitions": list(groups),
        "storage": store_choice.description,
        "database": db_choice.description,
        "record_errors": record_errors,
        "files": [f.summary() for f in files],
    }
    logger.info("%s", message)
    if ok < len(files) or record_errors:
        return Failed(message=message, data=data)
    return Completed(message=message, data=data)


def _timing_line(f: IngestedFile) -> str:
    t = f.timing or {}
    residual = t.get("residual_ns")
    return (
        f"station {f.station}, first sample {ns_to_iso(t['t0_ns'])}, fitted rate "
        f"{t['sample_rate_hz']:.4f} Hz, residual "
        f"{'-' if residual is None else f'{residual:.0f} ns'}, {t['fixes']} fixes, "
        f"{t['outliers']} outliers, locked={t['locked']}"
    )


def add_frequency_option(p: argparse.ArgumentParser) -> None:
    """``--frequency-hz``: the files' tuned frequency when their names cannot say it
    (the same option for ``ingest`` and ``locate``)."""
    p.add_argument(
        "--frequency-hz",
        dest="frequency_hz",
        type=float,
        default=None,
        metavar="HZ",
        help="tuned frequency of every file in Hz, instead of the file names' (for names "
        "in whole kHz such as ..._4625_..., which read as Hz are below 10 kHz)",
    )


def main(argv: list[str] | None = None) -> int:
    """Command line; exit 0 when every file was ingested, 1 otherwise."""
    p = cli.parser("flows.ingest", __doc__)
    p.add_argument("--kiwi-wav", nargs="+", required=True, metavar="FILE")
    cli.add_station_options(p)
    p.add_argument("--strict", action="store_true", help="refuse repairable defects too")
    add_frequency_option(p)
    args = vars(p.parse_args(argv))
    as_json = args.pop("json")
    try:
        parse_positions(args["positions"])
    except ValueError as exc:
        p.error(str(exc))
    # With --json, stdout carries the JSON object and nothing else (cli.run_once).
    state = cli.run_once(ingest, json=as_json, **args)
    result = cli.result_of(state, json=as_json, what="ingest")
    if result is None:
        return 1
    if not as_json:
        for f in result["files"]:
            if f["status"] == "ok":
                print(
                    f"ok      {Path(f['file']).name}: {f['station']} first sample "
                    f"{f['first_sample_utc']}, {f['sample_rate_fitted_hz']:.4f} Hz, "
                    f"locked={f['gps_locked']} -> {f['location']}"
                )
            else:
                print(f"FAILED  {f['error']}")
        print(result["message"])
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
