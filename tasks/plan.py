"""Planning an acquisition: validate the request, sort receivers into go / skip, pick the
common start instant.

Everything that can be known before capturing is checked here, so a bad request fails in
milliseconds with a message naming the field, instead of as seven failed captures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from blocks.receiver import KiwiSDRReceiver
from tasks.kiwisdr.client import MAX_DURATION_S, MIN_DURATION_S

MIN_FREQUENCY_HZ = 10e3
MAX_FREQUENCY_HZ = 6e9


class PlanError(ValueError):
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


@dataclass
class Plan:
    """Receivers to capture, receivers skipped (with the reason), and the start instant."""

    acquisition_id: str
    start_at: datetime
    go: dict[str, KiwiSDRReceiver] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


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


def choose_start(lead_s: float = 2.0, receivers: int = 1, now: datetime | None = None) -> datetime:
    """The common start instant: the first whole UTC second after ``lead_s`` from now.

    The lead covers every capture task connecting and finishing its handshake (tens of ms
    each on a LAN, up to a second or two to a remote KiwiSDR), plus ~20 ms per receiver
    for the task runner to start them, so all first samples sit on the same instant.
    """
    now = now or datetime.now(UTC)
    t = now + timedelta(seconds=lead_s + 0.02 * receivers)
    return t.replace(microsecond=0) + timedelta(seconds=1)
