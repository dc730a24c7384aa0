"""Planning an acquisition: validate the request, load the receivers, sort them into go /
skip.

Everything that can be known before capturing is checked here, so a bad request fails in
milliseconds with a message naming the field, instead of as seven failed captures.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from blocks.receiver import KiwiSDRReceiver
from tasks.capture import StatusCheck
from tasks.errors import RfAcquisitionError
from tasks.kiwisdr.client import MAX_DURATION_S, MIN_DURATION_S

MIN_FREQUENCY_HZ = 10e3
MAX_FREQUENCY_HZ = 6e9


class PlanError(RfAcquisitionError, ValueError):
    """The acquisition cannot run as asked; the message names the field and allowed range."""


def check_range(value: object, field: str, low: float, high: float, unit: str) -> float:
    """``value`` as a float within [low, high], or a PlanError naming the field and range."""
    if not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    ):
        raise PlanError(f"{field}={value!r} is out of range [{low:.12g}, {high:.12g}] {unit}")
    return float(value)


def validate_request(frequency_hz: float, duration_s: float) -> None:
    """Refuse parameters no receiver could satisfy."""
    check_range(frequency_hz, "frequency_hz", MIN_FREQUENCY_HZ, MAX_FREQUENCY_HZ, "Hz")
    check_range(duration_s, "duration_s", MIN_DURATION_S, MAX_DURATION_S, "s")


def split_by_frequency(
    receivers: dict[str, KiwiSDRReceiver], frequency_hz: float
) -> tuple[dict[str, KiwiSDRReceiver], dict[str, str]]:
    """Receivers that can tune ``frequency_hz``, and why the others cannot.

    When none can, that is a request error (PlanError), not seven skipped receivers.
    """
    go: dict[str, KiwiSDRReceiver] = {}
    skipped: dict[str, str] = {}
    for name, rx in receivers.items():
        low, high = rx.tunable_range_hz
        if low <= frequency_hz <= high:
            go[name] = rx
        else:
            skipped[name] = (
                f"frequency_hz={frequency_hz:.0f} outside tunable range [{low:.0f}, {high:.0f}] Hz"
            )
    if receivers and not go:
        ranges = sorted(
            {f"[{r.min_frequency_hz:.0f}, {r.max_frequency_hz:.0f}]" for r in receivers.values()}
        )
        raise PlanError(
            f"frequency_hz={frequency_hz:.0f} is outside every selected receiver's tunable "
            f"range ({', '.join(ranges)} Hz)"
        )
    return go, skipped


Network = Literal["auto", "simulated", "blocks"]


@dataclass
class SimulatedOptions:
    """How to build the simulated network when it is the one used; once it is started,
    ``truth`` holds where its emitter really is (to score a position against)."""

    receivers: int | None = None  # None: the seed network's seven
    emitter_at: tuple[float, float] | None = None
    modulation: str | None = None
    truth: tuple[float, float] | None = None
    simulator: str = "auto"  # where it runs: "auto", "inline" or "process"


async def load_receivers(
    network: Network,
    frequency_hz: float,
    stack: contextlib.AsyncExitStack,
    *,
    tag: str | None = None,
    simulated: SimulatedOptions | None = None,
    log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
) -> dict[str, KiwiSDRReceiver]:
    """Saved receiver blocks (one bulk read), or the simulated network started for this
    run (stopped by ``stack``). ``auto`` means blocks when any are saved."""
    from blocks.resolve import saved_receivers

    log = log or logging.getLogger(__name__)
    if network not in ("auto", "simulated", "blocks"):
        raise PlanError(f"network={network!r}: use 'auto', 'simulated' or 'blocks'")
    if network in ("auto", "blocks"):
        saved = await saved_receivers(tag)
        if saved or network == "blocks":
            if not saved:
                raise PlanError("network='blocks' but no KiwiSDR Receiver blocks are saved")
            log.info("using %d saved KiwiSDR Receiver blocks", len(saved))
            return saved
    from tasks.kiwisdr.network import bind_urls, serve_simulated_network

    options = simulated or SimulatedOptions()
    sim, configs = serve_simulated_network(
        options.simulator,
        frequency_hz=frequency_hz,
        count=options.receivers,
        emitter_at=options.emitter_at,
        modulation=options.modulation,
    )
    stack.enter_context(sim)
    bind_urls(sim, configs)
    if simulated is not None:
        simulated.truth = (sim.emitter.latitude, sim.emitter.longitude)
    log.info("using the simulated network (%d receivers on loopback)", len(configs))
    return {c._block_document_name or "": c for c in configs}


def skip_reason(check: StatusCheck, require_gps: bool) -> str | None:
    """Why a receiver is skipped after its /status check, or None to capture it."""
    if not check.ok:
        return check.reason
    if require_gps and check.status is not None:
        problem = check.status.tdoa_problem()
        if problem is not None:
            return f"{problem}: timestamps unusable for time differences"
    return None


def without_gps_fix(checks: dict[str, StatusCheck]) -> list[str]:
    """Reachable receivers whose /status shows no GPS fix: captured, but their timestamps
    come from a host clock (flagged ``gps_fix=false``)."""
    return [n for n, c in checks.items() if c.ok and c.status is not None and not c.status.gps_fix]
