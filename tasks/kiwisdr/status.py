"""The KiwiSDR ``/status`` page: fetched with httpx, parsed into a typed status.

The planning step reads it before an acquisition to skip receivers that are full,
offline or without a GPS fix, instead of discovering it through failed captures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from tasks.kiwisdr.errors import GpsUnusable, ProtocolError, ReceiverUnreachable

_GPS_PAIR = re.compile(r"\(\s*([-+0-9.]+)\s*,\s*([-+0-9.]+)\s*\)")


@dataclass(frozen=True)
class ReceiverStatus:
    """The fields of ``/status`` this project uses, plus every raw field."""

    name: str
    users: int
    users_max: int
    offline: bool
    gps_good: int
    fixes: int
    fixes_min: int | None
    tdoa_ch: int | None
    latitude: float | None
    longitude: float | None
    altitude_m: float | None
    antenna: str
    version: str
    raw: dict[str, str]

    @property
    def full(self) -> bool:
        return self.users >= self.users_max

    @property
    def gps_fix(self) -> bool:
        return self.gps_good > 0

    @property
    def gps_timestamps_off(self) -> bool:
        """The operator turned GPS timestamps off: ``tdoa_ch=-1`` (every frame stamps 0/0)."""
        return self.tdoa_ch is not None and self.tdoa_ch < 0

    def tdoa_problem(self) -> str | None:
        """Why this receiver cannot serve time-difference work, or None when it can."""
        if self.gps_timestamps_off:
            return "GPS timestamps are turned off (tdoa_ch=-1)"
        if self.gps_good <= 0:
            return f"GPS not locked (gps_good={self.gps_good})"
        if self.fixes_min is not None and self.fixes_min <= 0:
            return f"no GPS fix in the last minute (fixes_min={self.fixes_min})"
        return None


def require_gps(status: ReceiverStatus, *, receiver: str | None = None) -> None:
    """Raise :class:`GpsUnusable` (permanent) when ``status`` rules out TDOA use."""
    problem = status.tdoa_problem()
    if problem is not None:
        raise GpsUnusable(problem, receiver=receiver)


def parse_status(text: str) -> ReceiverStatus:
    """Parse ``key=value`` lines; raises :class:`ProtocolError` when required keys are missing."""
    raw: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            raw[key.strip()] = value.strip()
    missing = [k for k in ("users", "users_max") if k not in raw]
    if missing:
        raise ProtocolError(f"/status lacks {', '.join(missing)}: not a KiwiSDR status page")
    lat = lon = None
    if match := _GPS_PAIR.search(raw.get("gps", "")):
        try:
            lat, lon = float(match.group(1)), float(match.group(2))
        except ValueError:
            lat = lon = None  # e.g. "(-, -)" before the first fix
    return ReceiverStatus(
        name=raw.get("name", ""),
        users=_int(raw, "users"),
        users_max=_int(raw, "users_max"),
        offline=raw.get("offline", "no") == "yes" or raw.get("status") == "offline",
        gps_good=_int(raw, "gps_good", 0),
        fixes=_int(raw, "fixes", 0),
        fixes_min=_optional_int(raw, "fixes_min"),
        tdoa_ch=_optional_int(raw, "tdoa_ch"),
        latitude=lat,
        longitude=lon,
        altitude_m=float(raw["asl"]) if raw.get("asl", "").lstrip("-").isdigit() else None,
        antenna=raw.get("antenna", ""),
        version=raw.get("sw_version", ""),
        raw=raw,
    )


def _int(raw: dict[str, str], key: str, default: int | None = None) -> int:
    try:
        return int(raw[key])
    except (KeyError, ValueError):
        if default is None:
            raise ProtocolError(f"/status field {key}={raw.get(key)!r} is not an integer") from None
        return default


def _optional_int(raw: dict[str, str], key: str) -> int | None:
    try:
        return int(raw[key])
    except (KeyError, ValueError):
        return None


async def fetch_status(
    base_url: str, *, timeout_s: float = 5.0, client: httpx.AsyncClient | None = None
) -> ReceiverStatus:
    """GET ``<base_url>/status``; network failures become :class:`ReceiverUnreachable`."""
    url = base_url.rstrip("/") + "/status"
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout_s) as own:
                response = await own.get(url)
        else:
            response = await client.get(url, timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        raise ReceiverUnreachable(f"/status answered HTTP {exc.response.status_code}") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ReceiverUnreachable(f"/status unreachable: {type(exc).__name__}") from None
    return parse_status(response.text)
