"""The discover flow's tasks: read the directory, check chosen receivers, keep blocks current.

The parsing and the choice are plain code in ``tasks/directory.py``; this module owns what
touches the outside: the directory's URL or file, each receiver's ``/status`` and the
KiwiSDRReceiver blocks. Saving is idempotent (an unchanged receiver is not rewritten) and
nothing is ever deleted: a receiver that vanished from the directory, or whose GPS clock
it needed is lost, is disabled, so its history and any settings made by hand survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.logging import get_run_logger
from prefect.states import State
from prefect.tasks import Task

from blocks.receiver import KiwiSDRReceiver
from blocks.resolve import saved_receivers
from tasks.capture import StatusCheck
from tasks.directory import (
    DISCOVERED_TAG,
    GPS_TAG,
    GPS_UNLOCKED,
    TIMESTAMPS_OFF,
    Directory,
    DirectoryEntry,
    EntryRejected,
    normalise_url,
)

DIRECTORY_TIMEOUT_S = 30.0
# The fields discover owns; password, gain and tags set by hand are kept.
OWNED_FIELDS = (
    "url",
    "display_name",
    "latitude",
    "longitude",
    "altitude_m",
    "antenna",
    "min_frequency_hz",
    "max_frequency_hz",
    "freq_offset_khz",
    "enabled",
    "tags",
)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


async def read_directory_text(source: str, timeout_s: float = DIRECTORY_TIMEOUT_S) -> str:
    """The directory's text from a URL (httpx, redirects followed) or a local file."""
    if not is_url(source):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"directory={source!r}: no such file (give a path or an http(s):// URL)"
            )
        return path.read_text(encoding="utf-8", errors="replace")
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as client:
        response = await client.get(source, headers={"User-Agent": "rf-acquisition discover"})
        response.raise_for_status()
        return response.text


def _retry_transient_http(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry connection problems and 5xx answers, never a 404 or a missing file."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


@task(
    name="fetch-directory",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_retry_transient_http,
    cache_policy=NO_CACHE,
)
async def fetch_directory(source: str) -> str:
    """Read the directory (URL or file); transient network faults are retried."""
    text = await read_directory_text(source)
    get_run_logger().info("directory %s: %d characters", source, len(text))
    return text


# --- receivers and their /status ---------------------------------------------------------


def receiver_for(entry: DirectoryEntry, tags: list[str]) -> KiwiSDRReceiver:
    """The KiwiSDRReceiver block a directory entry becomes (enabled)."""
    receiver = KiwiSDRReceiver(
        url=entry.url,
        display_name=entry.display_name,
        latitude=entry.latitude,
        longitude=entry.longitude,
        altitude_m=entry.altitude_m,
        antenna=entry.antenna,
        min_frequency_hz=entry.min_frequency_hz,
        max_frequency_hz=entry.max_frequency_hz,
        freq_offset_khz=entry.freq_offset_khz,
        enabled=True,
        tags=tags,
    )
    receiver._block_document_name = entry.name
    return receiver


def status_rejection(check: StatusCheck, require_gps: bool) -> str | None:
    """Why a chosen receiver's live ``/status`` rules it out (a "status_" count key)."""
    status = check.status
    if status is None:
        return "status_unreachable"
    if status.offline:
        return "status_offline"
    if status.full:
        return "status_full"
    if require_gps:
        if not status.gps_fix:
            return f"status_{GPS_UNLOCKED}"
        if status.raw.get("tdoa_ch", "").strip() == "-1":
            return f"status_{TIMESTAMPS_OFF}"
    return None


# --- saving and disabling blocks ---------------------------------------------------------


@dataclass
class SaveReport:
    """What happened to the blocks: names created, updated, left as they were, disabled."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: dict[str, str] = field(default_factory=dict)  # name -> why

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "disabled": self.disabled,
        }


def discovered_tags(existing: list[str], tag: str | None, require_gps: bool) -> list[str]:
    """Tags of a chosen receiver: those set by hand, ``discovered``, the run's tag, and
    ``gps`` exactly when this run required a GPS clock (so a later loss disables it)."""
    tags = [t for t in existing if require_gps or t != GPS_TAG]  # order kept: no rewrite
    for extra in (DISCOVERED_TAG, tag, GPS_TAG if require_gps else None):
        if extra and extra not in tags:
            tags.append(extra)
    return tags


def _owned(receiver: KiwiSDRReceiver) -> dict[str, Any]:
    return {f: getattr(receiver, f) for f in OWNED_FIELDS}


def merge(existing: KiwiSDRReceiver | None, fresh: KiwiSDRReceiver) -> KiwiSDRReceiver:
    """``fresh`` with what a person may have set on ``existing`` kept (password, gain)."""
    if existing is None:
        return fresh
    merged = existing.model_copy(update=_owned(fresh))
    merged._block_document_name = fresh._block_document_name
    return merged


def disable_reason(receiver: KiwiSDRReceiver, by_url: dict[str, DirectoryEntry]) -> str | None:
    """Why a previously discovered, enabled receiver should now be disabled, if it should."""
    try:
        url = normalise_url(receiver.url)
    except EntryRejected:
        return None  # not a URL this module wrote: leave it to its owner
    entry = by_url.get(url)
    if entry is None:
        return "vanished from the directory"
    if GPS_TAG in receiver.tags:
        if not entry.gps_locked:
            return "lost its GPS lock (gps_good=0, fixes_min=0)"
        if not entry.timestamps_on:
            return "GPS timestamps off (tdoa_ch=-1)"
    return None


@task(name="save-receivers", cache_policy=NO_CACHE)
async def save_receivers(
    chosen: list[DirectoryEntry],
    directory: Directory,
    tag: str | None,
    require_gps: bool,
) -> SaveReport:
    """Create or update the chosen receivers' blocks; disable discovered ones that vanished
    or lost GPS. Only blocks tagged ``discovered`` (and ``tag`` when given) are disabled."""
    logger = get_run_logger()
    saved = await saved_receivers()
    report = SaveReport()
    for entry in chosen:
        existing = saved.get(entry.name)
        tags = discovered_tags(list(existing.tags) if existing else [], tag, require_gps)
        block = merge(existing, receiver_for(entry, tags))
        if existing is not None and _owned(existing) == _owned(block):
            report.unchanged.append(entry.name)
            continue
        await block.asave(entry.name, overwrite=True)
        (report.updated if existing is not None else report.created).append(entry.name)
    names = {e.name for e in chosen}
    by_url = directory.by_url
    for name, receiver in sorted(saved.items()):
        if name in names or not receiver.enabled or DISCOVERED_TAG not in receiver.tags:
            continue
        if tag and tag not in receiver.tags:
            continue
        reason = disable_reason(receiver, by_url)
        if reason is None:
            continue
        await receiver.model_copy(update={"enabled": False}).asave(name, overwrite=True)
        report.disabled[name] = reason
        logger.warning("disabled receiver %s: %s", name, reason)
    logger.info(
        "receiver blocks: %d created, %d updated, %d unchanged, %d disabled",
        len(report.created),
        len(report.updated),
        len(report.unchanged),
        len(report.disabled),
    )
    return report
