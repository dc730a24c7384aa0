"""The discover flow: receivers from the public KiwiSDR directory, chosen for a target area.

Reads the directory (kiwisdr.com's public list as ``kiwisdr_com.js``, or a file), keeps the
receivers that can serve now (online, a free channel, the frequency, the area, a locked
GPS clock with ``--require-gps``), chooses ``--limit`` of them for the geometry of the
target area, optionally checks each one's ``/status``, and saves them as KiwiSDRReceiver
blocks tagged ``discovered`` (plus ``--tag``) that ``acquire --tag`` then uses. Blocks of
receivers that vanished or lost GPS are disabled, never deleted.

    python -m flows.discover --frequency-hz 10e6 --near 45.07,7.69 --radius-km 800 \\
        --require-gps --limit 6 --tag hf-tdoa --dry-run
    python -m flows.discover --directory kiwisdr_com.js --bbox 44,6,46,9 --json

A deployment (``discover/discover`` in prefect.yaml) refreshes the blocks once a day.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections import Counter
from typing import Any

from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.logging import get_run_logger
from prefect.states import Completed, Failed, State

from flows import cli
from tasks.capture import check_receivers
from tasks.directory import (
    DEFAULT_DIRECTORY_URL,
    NOT_CHOSEN,
    Area,
    Choice,
    Criteria,
    DirectoryEntry,
    choose,
    parse_bbox,
    parse_near,
    read_directory,
    select,
)
from tasks.discovery import (
    fetch_directory,
    is_url,
    receiver_for,
    save_receivers,
    status_rejection,
)
from tasks.plan import MAX_FREQUENCY_HZ, MIN_FREQUENCY_HZ, check_range

MAX_STATUS_ROUNDS = 20  # each round re-chooses around the receivers /status ruled out


def criteria_for(
    frequency_hz: float | None,
    near: str | None,
    radius_km: float,
    bbox: str | None,
    require_gps: bool,
    limit: int | None,
    target_radius_km: float,
) -> Criteria:
    """Check the flow's parameters; errors name the field and the allowed range."""
    if frequency_hz is not None:
        check_range(frequency_hz, "frequency_hz", MIN_FREQUENCY_HZ, MAX_FREQUENCY_HZ, "Hz")
    if near and bbox:
        raise ValueError("near and bbox: give one of them, not both")
    area: Area | None = None
    if near:
        area = parse_near(near, radius_km)
    elif bbox:
        area = parse_bbox(bbox)
    if limit is not None and not (isinstance(limit, int) and 1 <= limit <= 1000):
        raise ValueError(f"limit={limit!r} is out of range [1, 1000] receivers")
    check_range(target_radius_km, "target_radius_km", 0.1, 5000.0, "km")
    return Criteria(frequency_hz=frequency_hz, area=area, require_gps=require_gps)


@flow(
    name="discover",
    description="Choose KiwiSDR receivers from the public directory for a target area "
    "and keep their blocks current.",
)
async def discover(
    directory: str = DEFAULT_DIRECTORY_URL,
    frequency_hz: float | None = None,
    near: str | None = None,
    radius_km: float = 500.0,
    bbox: str | None = None,
    require_gps: bool = False,
    limit: int | None = None,
    tag: str | None = None,
    target_radius_km: float = 50.0,
    check_status: bool = False,
    dry_run: bool = False,
) -> State[dict[str, Any]]:
    """Discover receivers and save them as KiwiSDRReceiver blocks.

    Args:
        directory: URL or local file of the directory (``kiwisdr_com.js`` format).
        frequency_hz: RF frequency the receivers must tune (down-converters included).
        near: target ``"LAT,LON"``; receivers within ``radius_km`` of it.
        radius_km: search radius around ``near``, km.
        bbox: instead of ``near``: ``"SOUTH,WEST,NORTH,EAST"``; the target is its centre.
        require_gps: only receivers with a locked GPS clock and GPS timestamps on
            (``gps_good``/``fixes_min`` > 0 and ``tdoa_ch`` != -1), for time differences.
        limit: how many to choose (default: all that qualify).
        tag: a tag added to the saved blocks (besides ``discovered``), for ``acquire``;
            it also bounds the refresh: only discovered blocks with this tag are disabled
            when their receiver vanished or lost GPS (all discovered blocks without it).
        target_radius_km: radius of the target area whose GDOP the choice minimises.
        check_status: ask each chosen receiver's ``/status`` first; those that fail are
            replaced by the next best.
        dry_run: choose and report only; save nothing.

    Returns:
        Completed with a message such as "5 receivers chosen from 812 entries (...)" and
        the summary dict (``selected``, ``rejected``, ``blocks``); Failed when none qualify.
    """
    logger = get_run_logger()
    criteria = criteria_for(
        frequency_hz, near, radius_km, bbox, require_gps, limit, target_radius_km
    )
    if tag is not None and not tag.strip():
        raise ValueError("tag='': give a non-empty tag or leave it out")
    if not dry_run and criteria.area is None and limit is None:
        raise ValueError(
            "near, bbox or limit: give a target area or a limit before saving blocks "
            "(or use dry_run to see every receiver that qualifies)"
        )
    text = await fetch_directory(directory)
    parsed = read_directory(text, allow_private=not is_url(directory))
    total = len(parsed.entries) + sum(parsed.skipped.values())
    logger.info(
        "directory %s: %d entries, %d usable, skipped %s",
        directory,
        total,
        len(parsed.entries),
        dict(parsed.skipped) or "none",
    )
    if not parsed.entries:
        # A broken or empty download must never disable every discovered receiver.
        message = f"directory {directory}: no usable entry among {total}"
        return Failed(message=message, data={"selected": [], "rejected": dict(parsed.skipped)})
    candidates, rejected = select(parsed.entries, criteria)
    rejected.update(parsed.skipped)
    choices, status_rejected = await _choose(
        candidates, criteria, limit, target_radius_km, check_status
    )
    not_chosen = len(candidates) - len(choices) - sum(status_rejected.values())
    if not_chosen:
        rejected[NOT_CHOSEN] += not_chosen
    rejected.update(status_rejected)
    for choice in choices:
        logger.info("chose %s (%s): %s", choice.entry.name, choice.entry.url, choice.reason)

    blocks: dict[str, Any] | None = None
    if not dry_run:
        report = await save_receivers([c.entry for c in choices], parsed, tag, require_gps)
        blocks = report.as_dict()
    message = _message(len(choices), total, blocks)
    summary = {
        "selected": [c.summary() for c in choices],
        "rejected": dict(sorted(rejected.items())),
        "directory": directory,
        "entries": total,
        "dry_run": dry_run,
        "blocks": blocks,
        "message": message,
    }
    await acreate_table_artifact(key="discover", table=_rows(choices), description=message)
    if not choices:
        logger.error("%s; rejected: %s", message, summary["rejected"])
        return Failed(message=message, data=summary)
    logger.info("%s", message)
    return Completed(message=message, data=summary)


async def _choose(
    candidates: list[DirectoryEntry],
    criteria: Criteria,
    limit: int | None,
    target_radius_km: float,
    check_status: bool,
) -> tuple[list[Choice], Counter[str]]:
    """The geometric choice; with ``check_status``, receivers whose ``/status`` rules them
    out are dropped and the choice is made again among the others."""
    logger = get_run_logger()
    pool = list(candidates)
    verdict: dict[str, str | None] = {}
    status_rejected: Counter[str] = Counter()
    for _ in range(MAX_STATUS_ROUNDS):
        choices = choose(pool, criteria.area, limit, target_radius_km=target_radius_km)
        fresh = [c.entry for c in choices if c.entry.url not in verdict]
        if not check_status or not fresh:
            return choices, status_rejected
        found = await check_receivers({e.name: receiver_for(e, []) for e in fresh})
        for entry, check in zip(fresh, found.values(), strict=True):
            reason = status_rejection(check, criteria.require_gps)
            verdict[entry.url] = reason
            if reason:
                status_rejected[reason] += 1
                logger.warning("%s ruled out by /status: %s", entry.name, reason)
        pool = [e for e in pool if verdict.get(e.url) is None]
    choices = choose(pool, criteria.area, limit, target_radius_km=target_radius_km)
    choices = [c for c in choices if c.entry.url in verdict]  # never save one unchecked
    return choices, status_rejected


def _message(chosen: int, total: int, blocks: dict[str, Any] | None) -> str:
    head = f"{chosen} receivers chosen from {total} directory entries"
    if blocks is None:
        return f"{head}; dry run, nothing saved"
    return (
        f"{head}; blocks: {len(blocks['created'])} created, {len(blocks['updated'])} updated, "
        f"{len(blocks['unchanged'])} unchanged, {len(blocks['disabled'])} disabled"
    )


def _rows(choices: list[Choice]) -> list[dict[str, str]]:
    """The table artifact and the printed table: one row per chosen receiver."""
    rows = []
    for c in choices:
        e = c.entry
        rows.append(
            {
                "name": e.name,
                "km": "-" if c.distance_km is None else f"{c.distance_km:.0f}",
                "bearing": "-" if c.bearing_deg is None else f"{c.bearing_deg:.0f}",
                "free": f"{e.free_channels}/{e.users_max}",
                "gps": "locked" if e.gps_locked else "no",
                "snr_db": "-" if e.snr_db is None else f"{e.snr_db:.0f}",
                "mhz": f"{e.min_frequency_hz / 1e6:.3f}-{e.max_frequency_hz / 1e6:.3f}",
                "gdop": "-"
                if c.mean_gdop is None or not math.isfinite(c.mean_gdop)
                else f"{c.mean_gdop:.2f}",
                "reason": c.reason,
                "station": e.display_name[:40],
            }
        )
    return rows


def format_table(summary: dict[str, Any]) -> str:
    """The chosen receivers and the rejected counts as plain text."""
    rows = summary.get("selected", [])
    lines = []
    header = ("name", "km", "brg", "free", "gps", "snr", "gdop", "station / reason")
    widths = [max([len(header[0])] + [len(r["name"]) for r in rows]), 5, 4, 5, 6, 4, 6]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + header[-1])
    for r in rows:
        cells = (
            r["name"],
            _num(r.get("distance_km")),
            _num(r.get("bearing_deg")),
            f"{r['users_max'] - r['users']}/{r['users_max']}",
            "locked" if r["gps_locked"] else "no",
            _num(r.get("snr_db")),
            "-" if r.get("mean_gdop") is None else f"{r['mean_gdop']:.2f}",
        )
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
            + f"{r['display_name'][:40]} | {r['reason']}"
        )
    rejected = summary.get("rejected", {})
    lines.append(
        "rejected: " + (", ".join(f"{k} {v}" for k, v in rejected.items()) if rejected else "none")
    )
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    """Command line: run discover once; print the table, or only JSON with ``--json``."""
    p = argparse.ArgumentParser(
        prog=os.environ.get("RF_COMMAND_NAME") or "python -m flows.discover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--directory",
        default=DEFAULT_DIRECTORY_URL,
        help="URL or file of the directory (kiwisdr_com.js; default: %(default)s)",
    )
    p.add_argument("--frequency-hz", type=float, default=None, help="RF frequency to cover")
    p.add_argument("--near", default=None, metavar="LAT,LON", help="the target")
    p.add_argument("--radius-km", type=float, default=500.0, help="around --near (%(default)s)")
    p.add_argument(
        "--bbox", default=None, metavar="SOUTH,WEST,NORTH,EAST", help="instead of --near"
    )
    p.add_argument(
        "--require-gps",
        action="store_true",
        help="GPS clock locked and GPS timestamps on (for time differences)",
    )
    p.add_argument("--limit", type=int, default=None, help="how many to choose (default: all)")
    p.add_argument("--tag", default=None, help="tag for the saved blocks (acquire --tag)")
    p.add_argument(
        "--target-radius-km",
        type=float,
        default=50.0,
        help="target area whose GDOP is minimised (%(default)s)",
    )
    p.add_argument(
        "--check-status", action="store_true", help="check each chosen receiver's /status"
    )
    p.add_argument("--dry-run", action="store_true", help="print the choice, save nothing")
    p.add_argument(
        "--json", action="store_true", help="print only the JSON summary on stdout (logs: stderr)"
    )
    args = vars(p.parse_args(argv))
    as_json = args.pop("json")
    if as_json:
        # Prefect's console handler writes to stderr; anything else printing to stdout
        # during the run (a library's print) is sent there too, so stdout is only JSON.
        with contextlib.redirect_stdout(sys.stderr):
            state = cli.run_once(discover, **args)
    else:
        state = cli.run_once(discover, **args)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        print(f"discover failed: {state.message or result}", file=sys.stderr)
        return 2
    if as_json:
        out = {"selected": result["selected"], "rejected": result["rejected"]}
        print(json.dumps(out))
    else:
        print(format_table(result))
        print(result["message"])
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
