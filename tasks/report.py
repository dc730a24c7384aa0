"""The acquisition's report: per-receiver outcomes, the summary, and Prefect artifacts."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(density: np.ndarray, bins: int = 48, span_db: float = 40.0) -> str:
    """A PSD as one line of block characters (peak-hold per bin, top ``span_db`` dB).

    Renders anywhere text does: the UI's markdown, a terminal, a log line. The picture is
    for eyes; the numbers are in the measurements.
    """
    d = np.asarray(density, dtype=np.float64)
    if d.size == 0:
        return ""
    edges = np.linspace(0, d.size, min(bins, d.size) + 1).astype(int)
    peak = np.maximum.reduceat(d, edges[:-1])
    db = 10.0 * np.log10(np.maximum(peak, 1e-30))
    level = np.clip((db - (db.max() - span_db)) / span_db, 0.0, 1.0)
    return "".join(_BARS[i] for i in np.rint(level * (len(_BARS) - 1)).astype(int))


Status = Literal["ok", "failed", "skipped", "spooled"]


@dataclass
class ReceiverOutcome:
    """What happened to one receiver in one acquisition: the one record that travels
    through plan -> capture -> process -> store -> record -> report.

    ``status`` is ``ok`` (stored), ``spooled`` (measured, but storage refused it: the
    recording waits in the local spool for reconcile), ``failed`` or ``skipped``.
    ``row`` holds the measurements once the capture was processed.
    """

    receiver: str
    status: Status
    error: str | None = None
    attempts: int = 0
    row: dict[str, Any] | None = None
    object_key: str | None = None
    location: str | None = None
    spectrum: str = ""
    psd: Any = None  # tasks.pictures.Spectrum, for the overlay picture (not in brief())

    def measured(self, field_name: str) -> Any:
        return (self.row or {}).get(field_name)

    def brief(self) -> dict[str, Any]:
        """The outcome as the summary shows it (JSON-ready, no samples, no row)."""
        return {
            "receiver": self.receiver,
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
            "snr_db": self.measured("snr_db"),
            "frequency_offset_hz": self.measured("frequency_offset_hz"),
            "power_dbfs": self.measured("power_dbfs"),
            "sample_count": self.measured("sample_count"),
            "object_key": self.object_key,
            "location": self.location,
            "spectrum": self.spectrum,
        }


@dataclass
class AcquisitionSummary:
    """What ``acquire`` returns (as :meth:`as_dict`): enough to print, assert on, or feed
    the next flow."""

    acquisition_id: str
    frequency_hz: float
    duration_s: float
    start_at: str
    storage: str
    database: str
    receivers: list[ReceiverOutcome] = field(default_factory=list)
    rows_recorded: int = 0
    record_error: str | None = None
    # Latest minus earliest first-sample time of the ok receivers with GPS: how well the
    # captures share one instant.
    start_spread_ms: float | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.receivers if r.status == status)

    @property
    def ok(self) -> int:
        return self.count("ok")

    @property
    def message(self) -> str:
        text = f"{self.ok}/{len(self.receivers)} receivers ok"
        extra = [f"{n} {s}" for s in ("failed", "spooled", "skipped") if (n := self.count(s))]
        if extra:
            text += f" ({', '.join(extra)})"
        if self.record_error:
            text += f"; rows missing for acquisition {self.acquisition_id}: {self.record_error}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "acquisition_id": self.acquisition_id,
            "frequency_hz": self.frequency_hz,
            "duration_s": self.duration_s,
            "start_at": self.start_at,
            "storage": self.storage,
            "database": self.database,
            "receivers": [r.brief() for r in self.receivers],
            "rows_recorded": self.rows_recorded,
            "record_error": self.record_error,
            "start_spread_ms": self.start_spread_ms,
            "ok": self.ok,
            "message": self.message,
        }


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def recordings_folder(receivers: list[dict[str, Any]]) -> str | None:
    """The folder (or bucket prefix) every stored recording of a summary shares, ending in
    ``/``; None with fewer than two. A terminal table then names files, not seven copies
    of one long path."""
    locations = [r["location"] for r in receivers if r.get("location")]
    if len(locations) < 2:
        return None
    common: list[str] = []
    for parts in zip(*(loc.split("/")[:-1] for loc in locations), strict=False):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    folder = "/".join(common)
    return f"{folder}/" if folder.strip("/") else None


def table_rows(receivers: list[dict[str, Any]], folder: str | None = None) -> list[dict[str, str]]:
    """One text row per receiver, from the summary's receivers (:meth:`ReceiverOutcome.brief`);
    recordings relative to ``folder`` when given."""

    def recording(r: dict[str, Any]) -> str:
        location = r.get("location")
        if location and folder and location.startswith(folder):
            return location[len(folder) :]
        return location or (r.get("error") or "-")

    return [
        {
            "receiver": r["receiver"],
            "status": r["status"],
            "snr_db": _fmt(r.get("snr_db"), ".1f"),
            "frequency_offset_hz": _fmt(r.get("frequency_offset_hz"), "+.2f"),
            "samples": "-" if r.get("sample_count") is None else str(r["sample_count"]),
            "recording": recording(r),
        }
        for r in receivers
    ]


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text table for terminals, one line per receiver, from ``summary.as_dict()``
    (what the flow returns), so a CLI can print a finished run's result as it is. The
    recordings are named relative to :func:`recordings_folder`, which the caller prints."""
    rows = table_rows(summary["receivers"], recordings_folder(summary["receivers"]))
    headers = ["receiver", "status", "SNR dB", "offset Hz", "samples", "recording / error"]
    keys = ["receiver", "status", "snr_db", "frequency_offset_hz", "samples", "recording"]
    widths = [
        max(len(h), *(len(r[k]) for r in rows)) if rows else len(h)
        for h, k in zip(headers, keys, strict=True)
    ]
    widths[-1] = len(headers[-1])
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(r[k].ljust(w) for k, w in zip(keys, widths, strict=True)))
    return "\n".join(lines)


def start_spread_ms(outcomes: list[ReceiverOutcome]) -> float | None:
    """Latest minus earliest first sample of the ok receivers with a GPS fix (ms), from
    each recording's fitted UTC of sample 0 in integer ns where it has one."""
    rows = [o.row for o in outcomes if o.status == "ok" and o.row and o.row.get("gps_fix")]
    if not rows:
        return None
    if all(r.get("first_sample_ns") is not None for r in rows):
        ns = [int(r["first_sample_ns"]) for r in rows]
        return (max(ns) - min(ns)) / 1e6
    starts = [r["time"] for r in rows]
    return (max(starts) - min(starts)).total_seconds() * 1e3


PICTURE_LINK_EXPIRY_S = 7 * 24 * 3600  # the longest a SigV4 presigned link may live


async def spectrum_picture(
    summary: AcquisitionSummary, storage: Any = None, start: datetime | None = None
) -> list[str]:
    """Markdown lines showing every receiver's PSD on one axis.

    The PNG travels inside the markdown (a data URI: the UI shows it with no storage the
    browser would have to reach) and is stored beside the recordings
    (``<acquisition>/pictures/spectra.png``); for S3 the markdown also gives a presigned
    link, with its expiry. A picture that cannot be made or stored costs only the picture.
    """
    from tasks.pictures import data_uri, spectrum_overlay_png

    spectra = {o.receiver: o.psd for o in summary.receivers if o.psd is not None}
    if not spectra:
        return []
    title = (
        f"acquisition {summary.acquisition_id}: {summary.frequency_hz / 1e6:.6f} MHz, "
        f"{summary.duration_s:g} s"
    )
    png = await asyncio.to_thread(spectrum_overlay_png, spectra, title)
    lines = ["", "## Spectra", "", f"![spectra]({data_uri(png)})", ""]
    if storage is None or start is None:
        return lines
    from tasks.storage import acquisition_prefix

    key = acquisition_prefix(summary.acquisition_id, start) + "pictures/spectra.png"
    lines += await store_picture(storage, key, png, "picture")
    return lines


async def store_picture(storage: Any, key: str, png: bytes, what: str) -> list[str]:
    """Put ``png`` at ``key`` through the storage block; markdown lines saying where, with
    a presigned link (and its expiry) on S3. Never raises: a report or a position must not
    fail over a picture."""
    from tasks.objectstore import object_store, presigned_url

    try:
        store = object_store(storage)
        await store.put(key, png)
        lines = [f"{what.capitalize()} stored at `{store.location(key)}`."]
        url = await asyncio.to_thread(presigned_url, storage, key, PICTURE_LINK_EXPIRY_S)
        if url:
            until = datetime.now(UTC) + timedelta(seconds=PICTURE_LINK_EXPIRY_S)
            lines.append(
                f"[Download the {what}]({url}) (presigned link, valid 7 days: until "
                f"{until:%Y-%m-%d %H:%M} UTC)."
            )
        return lines
    except Exception as exc:
        return [f"(the {what} could not be stored: {type(exc).__name__})"]


async def publish(
    summary: AcquisitionSummary, storage: Any = None, start: datetime | None = None
) -> None:
    """Table and markdown artifacts for the Prefect UI, with the spectrum picture."""
    receivers = [r.brief() for r in summary.receivers]
    await acreate_table_artifact(
        key="acquisition-receivers",
        table=table_rows(receivers),
        description=f"Acquisition {summary.acquisition_id}: {summary.message}",
    )
    md = [
        f"# Acquisition `{summary.acquisition_id}`",
        "",
        f"**{summary.message}** at {summary.frequency_hz / 1e6:.6f} MHz for "
        f"{summary.duration_s:g} s, starting {summary.start_at}.",
        "",
        f"- first-sample spread across receivers: {_fmt(summary.start_spread_ms, '.3f')} ms",
        f"- storage: {summary.storage}",
        f"- database: {summary.database} ({summary.rows_recorded} rows)",
        "",
        "| receiver | status | SNR dB | offset Hz | samples | spectrum ±fs/2 | recording / error |",
        "|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['receiver']} | {r['status']} | {r['snr_db']} | {r['frequency_offset_hz']} | "
        f"{r['samples']} | `{o.spectrum or '-'}` | {r['recording'].replace('|', '/')} |"
        for r, o in zip(table_rows(receivers), summary.receivers, strict=True)
    ]
    md += await spectrum_picture(summary, storage, start)
    await acreate_markdown_artifact(
        key="acquisition-summary", markdown="\n".join(md), description=summary.message
    )


class Progress:
    """A progress artifact for the flow run, moved forward stage by stage."""

    def __init__(self) -> None:
        self._id: Any = None

    async def start(self, description: str) -> None:
        self._id = await acreate_progress_artifact(
            progress=0.0, key="acquisition-progress", description=description
        )

    async def update(self, percent: float) -> None:
        if self._id is not None:
            await aupdate_progress_artifact(self._id, progress=min(max(percent, 0.0), 100.0))
