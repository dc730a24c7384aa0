"""The public KiwiSDR directory: parse it, normalise its entries, select and choose receivers.

The directory (``kiwisdr_com.js``, see docs/kiwisdr-directory.md) is a JavaScript file
written by hand-made generators, so it is read tolerantly: comments, trailing commas,
every value a string, free text full of emoji. One bad entry is skipped and counted by
reason, never fatal, because one broken receiver must not hide hundreds of good ones.

Selection keeps what can serve an acquisition now (online, a free channel, the frequency,
the area, a locked GPS clock for time differences); the choice then picks ``limit`` of
those for the geometry of the target area — spread in azimuth and low TDOA GDOP — since
the nearest receivers usually sit in one cluster and locate badly. Plain code, no Prefect.
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tasks.errors import RfAcquisitionError

# kiwisdr.com's public list as ``kiwisdr_com.js``: the file the KiwiSDR map (dyatlov)
# regenerates from http://kiwisdr.com/public/ and that TDoA tools read.
DEFAULT_DIRECTORY_URL = "http://rx.linkfanel.net/kiwisdr_com.js"
# kiwisdr.com's own HTML listing (one ``<!-- key=value -->`` comment per field); also read.
KIWISDR_COM_PUBLIC_URL = "http://kiwisdr.com/public/"

EARTH_RADIUS_KM = 6371.0088
KIWISDR_DIAL_MAX_HZ = 32e6  # a KiwiSDR tunes 0-32 MHz; bands above that are RF already
GDOP_CAP = 100.0  # per-point GDOP cap when averaging over the target area
SAME_SITE_KM = 1.0  # receivers closer than this share a site (antenna, noise, multipath)
LOWEST_RF_HZ = 10e3  # KiwiSDRReceiver.min_frequency_hz must be > 0; KiwiSDRs start ~10 kHz
DISCOVERED_TAG = "discovered"
GPS_TAG = "gps"  # blocks chosen under require_gps: disabled when their GPS clock is lost

# Reasons an entry is skipped while parsing (keys of the "rejected" counts).
UNPARSEABLE = "unparseable"
NOT_AN_OBJECT = "not_an_object"
NO_URL = "no_url"
BAD_URL = "bad_url"
PRIVATE_ADDRESS = "private_address"
DUPLICATE_URL = "duplicate_url"
NO_POSITION = "no_position"
BAD_POSITION = "bad_position"
BAD_BANDS = "bad_bands"
BAD_FREQ_OFFSET = "bad_freq_offset"
BAD_USERS = "bad_users"
# Reasons a parsed entry is not selected.
OFFLINE = "offline"
FULL = "full"
FREQUENCY_NOT_COVERED = "frequency_not_covered"
OUTSIDE_AREA = "outside_area"
GPS_UNLOCKED = "gps_unlocked"
TIMESTAMPS_OFF = "timestamps_off"
NOT_CHOSEN = "not_chosen"


class DirectoryFormatError(RfAcquisitionError, ValueError):
    """The text is not a KiwiSDR directory at all (no entry list could be found)."""


# --- reading the file --------------------------------------------------------------------


def parse_directory(text: str) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Raw entries of a ``kiwisdr_com.js`` file (or kiwisdr.com's HTML listing).

    Returns the entries that parsed as objects, and the count of those that did not,
    by reason. Raises :class:`DirectoryFormatError` when there is no entry list at all.
    """
    if "cl-info" in text and "<!--" in text:
        return _parse_public_html(text), Counter()
    code = _strip_comments(text)
    start = _array_start(code)
    entries: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for span in _array_elements(code, start):
        for value in _parse_element(span):
            if isinstance(value, dict):
                entries.append(value)
            else:
                skipped[UNPARSEABLE if value is _BROKEN else NOT_AN_OBJECT] += 1
    return entries, skipped


_BROKEN = object()
_ENTRY_LINE = re.compile(r"\n(?=[ \t]*\{)")


def _parse_element(span: str, *, split: bool = True) -> list[Any]:
    """The value of one element. When it does not parse and spans several entry lines (a
    stray quote or brace merged them), each line that starts an object begins a new
    attempt, so one broken entry costs itself only."""
    try:
        return [_Literal(span).parse()]
    except _LiteralError:
        pieces = _ENTRY_LINE.split(span) if split else [span]
    if len(pieces) == 1:
        return [_BROKEN]
    out: list[Any] = []
    for piece in pieces:
        for element in _array_elements(piece + "\n]", 0):
            out.extend(_parse_element(element, split=False))
    return out


def _strip_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments outside strings (a URL's ``//`` is in one).

    A string never spans a line in JavaScript, so a newline ends an unterminated one: a
    broken entry cannot swallow the rest of the file.
    """
    out: list[str] = []
    i, n = 0, len(text)
    quote: str | None = None
    while i < n:
        c = text[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < n and text[i + 1] != "\n":
                out.append(text[i + 1])
                i += 2
                continue
            if c == quote or c == "\n":
                quote = None
            i += 1
        elif c in "\"'":
            quote = c
            out.append(c)
            i += 1
        elif text.startswith("//", i) and (i == 0 or text[i - 1] in " \t\r\n,;{}[]"):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _array_start(code: str) -> int:
    """Index just after the ``[`` that opens the entry list (after ``var x =`` if any)."""
    match = re.match(r"\s*\[", code) or re.search(r"=\s*\[", code)
    if not match:
        raise DirectoryFormatError(
            "not a KiwiSDR directory: expected `var kiwisdr_com = [ {...}, ... ];` "
            "or a JSON list of receiver objects"
        )
    return match.end()


def _array_elements(code: str, start: int) -> Iterator[str]:
    """Source text of each top-level element of the list opened before ``start``."""
    depth = 0
    quote: str | None = None
    begin = start
    i = start
    while i < len(code):
        c = code[i]
        if quote:
            if c == "\\" and code[i + 1 : i + 2] != "\n":
                i += 2
                continue
            if c == quote or c == "\n":
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            if depth == 0:
                if c == "]" and _ends_list(code, i + 1):
                    break
                # A stray closer: the current element will not parse, the next ones will.
            else:
                depth -= 1
        elif c == "," and depth == 0:
            if code[begin:i].strip():
                yield code[begin:i]
            begin = i + 1
        i += 1
    if code[begin:i].strip():
        yield code[begin:i]


def _ends_list(code: str, after: int) -> bool:
    """A "]" at the top level ends the list unless more entries follow it."""
    rest = code[after:].lstrip()
    return not rest.startswith((",", "{", "}", "]", '"', "'"))


class _LiteralError(ValueError):
    pass


class _Literal:
    """A JavaScript object/array literal: quoted or bare keys, '' or "" strings, numbers,
    true/false/null, trailing commas. Just enough of JS for directory entries."""

    _NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
    _IDENT = re.compile(r"[A-Za-z_$][\w$]*")

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def parse(self) -> Any:
        value = self._value()
        self._space()
        if self.i != len(self.text):
            raise _LiteralError(f"unexpected {self.text[self.i : self.i + 10]!r}")
        return value

    def _space(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def _peek(self) -> str:
        self._space()
        return self.text[self.i] if self.i < len(self.text) else ""

    def _value(self) -> Any:
        c = self._peek()
        if c == "{":
            return self._object()
        if c == "[":
            return self._array()
        if c and c in "\"'":
            return self._string()
        if match := self._NUMBER.match(self.text, self.i):
            self.i = match.end()
            return (
                float(match.group())
                if any(ch in match.group() for ch in ".eE")
                else int(match.group())
            )
        if match := self._IDENT.match(self.text, self.i):
            word = {"true": True, "false": False, "null": None, "undefined": None}
            if match.group() in word:
                self.i = match.end()
                return word[match.group()]
        raise _LiteralError(f"unexpected {self.text[self.i : self.i + 10]!r}")

    def _object(self) -> dict[str, Any]:
        self.i += 1
        out: dict[str, Any] = {}
        while True:
            c = self._peek()
            if c == "}":
                self.i += 1
                return out
            if c and c in "\"'":
                key = self._string()
            elif match := self._IDENT.match(self.text, self.i):
                key, self.i = match.group(), match.end()
            else:
                raise _LiteralError("expected a key")
            if self._peek() != ":":
                raise _LiteralError(f"expected ':' after {key!r}")
            self.i += 1
            out[key] = self._value()
            c = self._peek()
            if c == ",":
                self.i += 1
            elif c != "}":
                raise _LiteralError(f"expected ',' or '}}' after {key!r}")

    def _array(self) -> list[Any]:
        self.i += 1
        out: list[Any] = []
        while True:
            if self._peek() == "]":
                self.i += 1
                return out
            out.append(self._value())
            c = self._peek()
            if c == ",":
                self.i += 1
            elif c != "]":
                raise _LiteralError("expected ',' or ']'")

    def _string(self) -> str:
        quote = self.text[self.i]
        j = self.i + 1
        while j < len(self.text):
            c = self.text[j]
            if c == "\\":
                j += 2
                continue
            if c == "\n":
                raise _LiteralError("string not closed on its line")
            if c == quote:
                break
            j += 1
        else:
            raise _LiteralError("string not closed")
        body = self.text[self.i + 1 : j]
        self.i = j + 1
        if quote == "'":
            body = body.replace("\\'", "'").replace('"', '\\"')
        try:
            return str(json.loads(f'"{body}"'))
        except json.JSONDecodeError:
            # Stray backslashes ("C:\dir") or raw control characters: keep the text.
            return re.sub(r"\\(.)", r"\1", body)


_HTML_FIELD = re.compile(r"<!--\s*(\w+)=(.*?)\s*-->")
_HTML_LINK = re.compile(r"href=['\"]([^'\"]+)['\"]|>\s*(https?://[^<\s]+)\s*</a>", re.I)


def _parse_public_html(text: str) -> list[dict[str, Any]]:
    """kiwisdr.com/public/: each receiver is a ``cl-info`` block of ``<!-- key=value -->``
    comments followed by a link to the receiver."""
    entries = []
    for block in text.split("cl-info")[1:]:
        entry: dict[str, Any] = {k: html.unescape(v) for k, v in _HTML_FIELD.findall(block)}
        if "url" not in entry and (link := _HTML_LINK.search(block)):
            entry["url"] = html.unescape(link.group(1) or link.group(2))
        if entry:
            entries.append(entry)
    return entries


# --- normalising entries -----------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryEntry:
    """One receiver of the directory, in this project's units (RF Hz, degrees, km)."""

    url: str  # scheme://host:port[/path], no trailing slash
    name: str  # the KiwiSDRReceiver block name, derived from the URL only
    display_name: str
    latitude: float
    longitude: float
    altitude_m: float
    antenna: str
    location: str
    min_frequency_hz: float  # RF, down-converter offset applied
    max_frequency_hz: float
    freq_offset_khz: float  # RF = KiwiSDR dial + offset
    users: int
    users_max: int
    online: bool
    gps_good: int
    fixes_min: int
    tdoa_ch: int
    snr_db: float | None  # all-band noise-based SNR, as the directory publishes it
    snr_hf_db: float | None
    updated: int = 0

    @property
    def free_channels(self) -> int:
        return max(self.users_max - self.users, 0)

    @property
    def gps_locked(self) -> bool:
        return self.gps_good > 0 or self.fixes_min > 0

    @property
    def timestamps_on(self) -> bool:
        """GPS-stamped IQ offered (``tdoa_ch`` -1 means timestamps off)."""
        return self.tdoa_ch != -1

    def covers(self, frequency_hz: float) -> bool:
        return self.min_frequency_hz <= frequency_hz <= self.max_frequency_hz

    def summary(self) -> dict[str, Any]:
        """The JSON-able description of this receiver."""
        return {
            "name": self.name,
            "url": self.url,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "altitude_m": self.altitude_m,
            "display_name": self.display_name,
            "min_frequency_hz": self.min_frequency_hz,
            "max_frequency_hz": self.max_frequency_hz,
            "freq_offset_khz": self.freq_offset_khz,
            "users": self.users,
            "users_max": self.users_max,
            "gps_locked": self.gps_locked,
            "gps_good": self.gps_good,
            "tdoa_ch": self.tdoa_ch,
            "snr_db": self.snr_db,
        }


class EntryRejected(RfAcquisitionError, ValueError):
    """An entry that cannot become a receiver; ``reason`` is its count key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_GPS = re.compile(r"^\(?\s*([-+]?\d+(?:\.\d*)?)\s*,\s*([-+]?\d+(?:\.\d*)?)\s*\)?$")
_BAND = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*$")


def normalise_url(value: str) -> str:
    """``scheme://host:port[/path]``: the identity of a receiver across directory runs."""
    text = value.strip()
    if not text:
        raise EntryRejected(NO_URL)
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise EntryRejected(BAD_URL, str(exc)) from None
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() not in ("http", "https") or not host or re.search(r"\s", host):
        raise EntryRejected(BAD_URL, value[:80])
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    path = parts.path.rstrip("/")
    host_text = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host_text}:{port}{path}"


def is_private_host(url: str) -> bool:
    """The URL's host is an IP literal that is not globally routable (or ``localhost``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return False  # a name: resolved only when used


def receiver_name_for_url(url: str) -> str:
    """A stable block name from the URL: ``http://Kiwi.Example.org:8073`` ->
    ``kiwi-kiwi-example-org-8073``; over 64 characters, shortened with a hash suffix."""
    parts = urlsplit(url)
    text = f"kiwi-{parts.hostname or ''}-{parts.port or ''}{parts.path}"
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > 64:
        slug = slug[:55].rstrip("-") + "-" + hashlib.sha1(url.encode()).hexdigest()[:8]
    return slug


def _text(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    return "" if value is None else str(value).strip()


def _int(raw: Mapping[str, Any], key: str, default: int | None) -> int:
    text = _text(raw, key)
    try:
        return int(float(text))
    except ValueError:
        if default is None:
            raise EntryRejected(BAD_USERS, f"{key}={text!r}") from None
        return default


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _position(raw: Mapping[str, Any]) -> tuple[float, float]:
    text = _text(raw, "gps")
    if not text or text.replace(" ", "") in ("()", "(,)", "(-,-)"):
        raise EntryRejected(NO_POSITION)
    match = _GPS.match(text)
    if not match:
        raise EntryRejected(BAD_POSITION, text[:40])
    lat, lon = float(match.group(1)), float(match.group(2))
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise EntryRejected(BAD_POSITION, text[:40])
    if lat == 0 and lon == 0:  # "(0, 0)": a receiver whose owner never set a position
        raise EntryRejected(NO_POSITION, "(0, 0)")
    return lat, lon


def _coverage(raw: Mapping[str, Any]) -> tuple[float, float, float]:
    """(min RF Hz, max RF Hz, offset kHz). ``bands`` is RF in current directories; when it
    still reads like the KiwiSDR's own 0-32 MHz dial behind a down-converter (older
    software, the simulator's /status) the offset is added."""
    offset_text = _text(raw, "freq_offset") or "0"
    offset_khz = _float(offset_text)
    if offset_khz is None:
        raise EntryRejected(BAD_FREQ_OFFSET, offset_text[:20])
    bands = _text(raw, "bands") or "0-30000000"
    ranges = []
    for part in bands.split(","):
        match = _BAND.match(part)
        if not match:
            raise EntryRejected(BAD_BANDS, bands[:40])
        ranges.append((float(match.group(1)), float(match.group(2))))
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    offset_hz = offset_khz * 1e3
    if offset_hz > 0 and high <= KIWISDR_DIAL_MAX_HZ < offset_hz + high:
        low, high = low + offset_hz, high + offset_hz
    low = max(low, LOWEST_RF_HZ)
    if high <= low:
        raise EntryRejected(BAD_BANDS, bands[:40])
    return low, high, offset_khz


def _snr(raw: Mapping[str, Any]) -> tuple[float | None, float | None]:
    parts = [_float(p) for p in _text(raw, "snr").split(",")]
    return (parts[0] if parts else None), (parts[1] if len(parts) > 1 else None)


def _display_name(raw: Mapping[str, Any], url: str) -> str:
    name = _text(raw, "name") or _text(raw, "loc") or url
    name = re.sub(r"[\x00-\x1f\x7f]+", " ", name).strip()
    return name[:200]


def normalise_entry(raw: Mapping[str, Any]) -> DirectoryEntry:
    """One raw entry as a :class:`DirectoryEntry`; :class:`EntryRejected` says why not."""
    url = normalise_url(_text(raw, "url"))
    latitude, longitude = _position(raw)
    low, high, offset_khz = _coverage(raw)
    users = _int(raw, "users", None)
    users_max = _int(raw, "users_max", None)
    if users < 0 or users_max < 0:
        raise EntryRejected(BAD_USERS, f"users={users} users_max={users_max}")
    status = _text(raw, "status").lower()
    offline = _text(raw, "offline").lower()
    snr, snr_hf = _snr(raw)
    altitude = _float(_text(raw, "asl")) or 0.0
    return DirectoryEntry(
        url=url,
        name=receiver_name_for_url(url),
        display_name=_display_name(raw, url),
        latitude=latitude,
        longitude=longitude,
        altitude_m=min(max(altitude, -500.0), 9000.0),
        antenna=_text(raw, "antenna")[:200],
        location=_text(raw, "loc")[:200],
        min_frequency_hz=low,
        max_frequency_hz=high,
        freq_offset_khz=offset_khz,
        users=users,
        users_max=users_max,
        online=status in ("", "active") and offline != "yes",
        gps_good=_int(raw, "gps_good", 0),
        fixes_min=_int(raw, "fixes_min", 0),
        tdoa_ch=_int(raw, "tdoa_ch", -1),
        snr_db=snr,
        snr_hf_db=snr_hf,
        updated=_int(raw, "updated", 0),
    )


@dataclass
class Directory:
    """Every usable receiver of a directory, and the count of entries skipped, by reason."""

    entries: list[DirectoryEntry]
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def by_url(self) -> dict[str, DirectoryEntry]:
        return {e.url: e for e in self.entries}


def read_directory(text: str, *, allow_private: bool = True) -> Directory:
    """Parse and normalise a whole directory; duplicate URLs keep the freshest entry.

    ``allow_private=False`` (a directory from the internet) skips entries whose host is a
    loopback, private or link-local address: a public list must not point the worker at
    its own network. A local file may (the simulator, a lab).
    """
    raw_entries, skipped = parse_directory(text)
    by_url: dict[str, DirectoryEntry] = {}
    for raw in raw_entries:
        try:
            entry = normalise_entry(raw)
        except EntryRejected as exc:
            skipped[exc.reason] += 1
            continue
        if not allow_private and is_private_host(entry.url):
            skipped[PRIVATE_ADDRESS] += 1
            continue
        kept = by_url.get(entry.url)
        if kept is not None:
            skipped[DUPLICATE_URL] += 1
            if entry.updated <= kept.updated:
                continue
        by_url[entry.url] = entry
    return Directory(_unique_names(list(by_url.values())), skipped)


def _unique_names(entries: list[DirectoryEntry]) -> list[DirectoryEntry]:
    """Two URLs whose slugs collide (``a.b`` / ``a-b``): the later URL gets a hash suffix."""
    seen: set[str] = set()
    out = []
    for entry in sorted(entries, key=lambda e: e.url):
        name = entry.name
        if name in seen:
            digest = hashlib.sha1(entry.url.encode()).hexdigest()[:8]
            name = f"{name[:55].rstrip('-')}-{digest}"
            entry = replace(entry, name=name)
        seen.add(name)
        out.append(entry)
    return out


# --- geometry ----------------------------------------------------------------------------


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, spherical Earth)."""
    return float(
        distances_km(np.asarray(lat1), np.asarray(lon1), np.asarray(lat2), np.asarray(lon2))
    )


def distances_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """:func:`distance_km` element-wise over broadcast arrays."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a)))


def bearings_deg(
    lat: np.ndarray, lon: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Initial great-circle bearing from (lat, lon) to (lat2, lon2), degrees from north."""
    p1, p2 = np.radians(lat), np.radians(lat2)
    dl = np.radians(lon2 - lon)
    y = np.sin(dl) * np.cos(p2)
    x = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
    return np.degrees(np.arctan2(y, x)) % 360.0


@dataclass(frozen=True)
class Area:
    """Where receivers may be (a circle or a box) and the target at its centre."""

    latitude: float
    longitude: float
    radius_km: float | None = None
    bbox: tuple[float, float, float, float] | None = None  # south, west, north, east

    def contains(self, latitude: float, longitude: float) -> bool:
        if self.bbox is not None:
            south, west, north, east = self.bbox
            in_lon = (
                west <= longitude <= east
                if west <= east
                else (longitude >= west or longitude <= east)  # across the antimeridian
            )
            return south <= latitude <= north and in_lon
        if self.radius_km is not None:
            return distance_km(self.latitude, self.longitude, latitude, longitude) <= (
                self.radius_km
            )
        return True


def _degrees(field: str, text: str, count: int, example: str) -> list[float]:
    """``count`` comma-separated finite numbers, or an error naming the field."""
    values = [_float(p.strip()) for p in str(text).split(",")]
    numbers = [v for v in values if v is not None]
    if len(values) != count or len(numbers) != count:
        raise ValueError(f"{field}={text!r}: expected {example}")
    return numbers


def parse_near(near: str, radius_km: float) -> Area:
    """``"LAT,LON"`` and a radius -> an :class:`Area`; errors name the field and range."""
    lat, lon = _degrees("near", near, 2, "'LAT,LON' in degrees, e.g. '45.07,7.69'")
    _check_lat_lon("near", lat, lon)
    if not (isinstance(radius_km, (int, float)) and 0 < radius_km <= 20_000):
        raise ValueError(f"radius_km={radius_km!r} is out of range (0, 20000] km")
    return Area(lat, lon, radius_km=float(radius_km))


def parse_bbox(bbox: str) -> Area:
    """``"SOUTH,WEST,NORTH,EAST"`` (degrees; WEST > EAST crosses the antimeridian)."""
    south, west, north, east = _degrees(
        "bbox", bbox, 4, "'SOUTH,WEST,NORTH,EAST' in degrees, e.g. '44,6,46,9'"
    )
    _check_lat_lon("bbox", south, west)
    _check_lat_lon("bbox", north, east)
    if south >= north:
        raise ValueError(f"bbox={bbox!r}: SOUTH ({south}) must be below NORTH ({north})")
    span = (east - west) % 360 or 360.0
    centre_lon = (west + span / 2 + 180) % 360 - 180
    return Area((south + north) / 2, centre_lon, bbox=(south, west, north, east))


def _check_lat_lon(name: str, lat: float, lon: float) -> None:
    if not -90 <= lat <= 90:
        raise ValueError(f"{name}: latitude {lat} is out of range [-90, 90] degrees")
    if not -180 <= lon <= 180:
        raise ValueError(f"{name}: longitude {lon} is out of range [-180, 180] degrees")


def target_grid(area: Area, radius_km: float, steps: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Points of the target area (a ``steps`` x ``steps`` grid clipped to a disc of
    ``radius_km`` around the target) at which the geometry is judged."""
    offsets = np.linspace(-radius_km, radius_km, steps)
    east, north = np.meshgrid(offsets, offsets)
    inside = np.hypot(east, north) <= radius_km + 1e-9
    east, north = east[inside], north[inside]
    lat = area.latitude + np.degrees(north / EARTH_RADIUS_KM)
    coslat = max(math.cos(math.radians(area.latitude)), 1e-3)
    lon = area.longitude + np.degrees(east / (EARTH_RADIUS_KM * coslat))
    return np.clip(lat, -90, 90), (lon + 180) % 360 - 180


def tdoa_gdop(bearings: np.ndarray) -> np.ndarray:
    """Horizontal GDOP of time-difference positioning, per grid point.

    ``bearings`` (receivers x points, degrees) point from each grid point to each
    receiver; a range's gradient is the unit vector along it. Time differences are
    modelled as times of arrival with an unknown common emission time (equal, independent
    errors), which is equivalent to TDOA against a reference receiver with its correlated
    errors: rows ``[sin b, cos b, 1]``, GDOP = sqrt(trace of the position block of
    (G^T G)^-1). Fewer than 3 receivers, or a degenerate layout, give infinity.
    """
    b = np.radians(np.asarray(bearings, dtype=float))
    if b.ndim == 1:
        b = b[:, None]
    if b.shape[0] < 3:
        return np.full(b.shape[1], np.inf)
    g = np.stack([np.sin(b), np.cos(b), np.ones_like(b)], axis=-1)  # rx, pts, 3
    m = np.einsum("rpi,rpj->pij", g, g)
    return _gdop_from_normal(m)


def _gdop_from_normal(m: np.ndarray) -> np.ndarray:
    """GDOP from normal matrices ``m`` (..., 3, 3); singular ones give infinity."""
    det = np.linalg.det(m)
    ok = np.abs(det) > 1e-9
    out = np.full(det.shape, np.inf)
    if ok.any():
        inv = np.linalg.inv(m[ok])
        out[ok] = np.sqrt(np.maximum(inv[..., 0, 0] + inv[..., 1, 1], 0.0))
    return out


# --- selection and choice ----------------------------------------------------------------


@dataclass(frozen=True)
class Criteria:
    """What a receiver must offer to be a candidate."""

    frequency_hz: float | None = None
    area: Area | None = None
    require_gps: bool = False


def rejection(entry: DirectoryEntry, criteria: Criteria) -> str | None:
    """The first reason ``entry`` cannot serve, or None when it can."""
    if not entry.online:
        return OFFLINE
    if entry.free_channels <= 0:
        return FULL
    if criteria.frequency_hz is not None and not entry.covers(criteria.frequency_hz):
        return FREQUENCY_NOT_COVERED
    if criteria.area is not None and not criteria.area.contains(entry.latitude, entry.longitude):
        return OUTSIDE_AREA
    if criteria.require_gps:
        if not entry.gps_locked:
            return GPS_UNLOCKED
        if not entry.timestamps_on:
            return TIMESTAMPS_OFF
    return None


def select(
    entries: Iterable[DirectoryEntry], criteria: Criteria
) -> tuple[list[DirectoryEntry], Counter[str]]:
    """Candidates meeting ``criteria``, and the others counted by their first reason."""
    candidates: list[DirectoryEntry] = []
    rejected: Counter[str] = Counter()
    for entry in entries:
        reason = rejection(entry, criteria)
        if reason is None:
            candidates.append(entry)
        else:
            rejected[reason] += 1
    return candidates, rejected


@dataclass(frozen=True)
class Choice:
    """A chosen receiver, why it was chosen, and where it sits from the target."""

    entry: DirectoryEntry
    reason: str
    distance_km: float | None = None
    bearing_deg: float | None = None
    mean_gdop: float | None = None  # of the set chosen so far, this one included

    def summary(self) -> dict[str, Any]:
        out = self.entry.summary()
        out.update(
            reason=self.reason,
            distance_km=None if self.distance_km is None else round(self.distance_km, 1),
            bearing_deg=None if self.bearing_deg is None else round(self.bearing_deg, 1),
            mean_gdop=None
            if self.mean_gdop is None or not math.isfinite(self.mean_gdop)
            else round(self.mean_gdop, 3),
        )
        return out


def choose(
    candidates: Sequence[DirectoryEntry],
    area: Area | None,
    limit: int | None,
    *,
    target_radius_km: float = 50.0,
) -> list[Choice]:
    """Pick ``limit`` receivers (all when None) for locating in ``area``.

    Greedy: the receiver nearest the target first, then the one seen from the target
    furthest in azimuth from it, then each time the one that lowers the mean TDOA GDOP
    over the target area the most (ties: the wider azimuth gap, then the nearer). A
    receiver within 1 km of one already chosen comes only when no other is left. Without
    an area: the receivers with the most free channels and the best SNR.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} is out of range: at least 1 receiver")
    if not candidates:
        return []
    count = len(candidates) if limit is None else min(limit, len(candidates))
    if area is None:
        ranked = sorted(candidates, key=lambda e: (-e.free_channels, -(e.snr_db or 0.0), e.url))
        return [
            Choice(e, f"no target area: {e.free_channels} free channels, SNR {e.snr_db} dB")
            for e in ranked[:count]
        ]
    lat = np.array([e.latitude for e in candidates])
    lon = np.array([e.longitude for e in candidates])
    dist = distances_km(np.asarray(area.latitude), np.asarray(area.longitude), lat, lon)
    azimuth = bearings_deg(
        np.full(lat.shape, area.latitude), np.full(lon.shape, area.longitude), lat, lon
    )
    grid_lat, grid_lon = target_grid(area, target_radius_km)
    # Bearings from every grid point to every candidate -> rows of the geometry matrix.
    b = np.radians(bearings_deg(grid_lat[None, :], grid_lon[None, :], lat[:, None], lon[:, None]))
    rows = np.stack([np.sin(b), np.cos(b), np.ones_like(b)], axis=-1)  # cand, pts, 3
    outer = np.einsum("cpi,cpj->cpij", rows, rows)
    normal = np.zeros(outer.shape[1:])  # pts, 3, 3 of the chosen set
    chosen: list[int] = []
    out: list[Choice] = []
    remaining = np.ones(len(candidates), dtype=bool)
    mean_before = math.inf
    while len(chosen) < count:
        idx = np.flatnonzero(remaining)
        if not chosen:
            pick = int(idx[np.lexsort((idx, dist[idx]))[0]])
            reason = f"nearest to the target: {dist[pick]:.0f} km, bearing {azimuth[pick]:.0f}°"
        else:
            means = _area_mean(_gdop_from_normal(normal[None] + outer[idx]))  # per candidate
            gap = np.array([_azimuth_gap(azimuth[i], azimuth[chosen]) for i in idx])
            # A second receiver at a site already chosen shares its antenna, noise and
            # multipath: it comes last, whatever its GDOP.
            site = distances_km(
                lat[idx, None], lon[idx, None], lat[None, chosen], lon[None, chosen]
            )
            same_site = site.min(axis=1) < SAME_SITE_KM
            if np.isfinite(means).any():
                order = np.lexsort((idx, dist[idx], -gap, np.round(means, 6), same_site))
                pick = int(idx[order[0]])
                mean_after = float(means[order[0]])
                before = "∞" if not math.isfinite(mean_before) else f"{mean_before:.2f}"
                reason = (
                    f"lowers mean GDOP over the area {before} -> {mean_after:.2f} "
                    f"({dist[pick]:.0f} km, bearing {azimuth[pick]:.0f}°)"
                )
                if same_site[order[0]]:
                    reason += "; shares a site with one chosen (no other left)"
            else:
                order = np.lexsort((idx, dist[idx], -gap, same_site))
                pick = int(idx[order[0]])
                reason = (
                    f"widest azimuth gap: bearing {azimuth[pick]:.0f}°, "
                    f"{gap[order[0]]:.0f}° from those chosen ({dist[pick]:.0f} km)"
                )
        chosen.append(pick)
        remaining[pick] = False
        normal = normal + outer[pick]
        mean_before = float(_area_mean(_gdop_from_normal(normal)))
        out.append(
            Choice(
                candidates[pick],
                reason,
                distance_km=float(dist[pick]),
                bearing_deg=float(azimuth[pick]),
                mean_gdop=mean_before,
            )
        )
    return out


def _azimuth_gap(bearing: float, chosen: np.ndarray) -> float:
    """Smallest angle between ``bearing`` and any chosen bearing (0-180 degrees)."""
    diff = np.abs((np.asarray(chosen) - bearing + 180.0) % 360.0 - 180.0)
    return float(diff.min()) if diff.size else 180.0


def mean_gdop(entries: Sequence[DirectoryEntry], area: Area, target_radius_km: float) -> float:
    """Mean TDOA GDOP of ``entries`` over the target area (to compare with other sets)."""
    grid_lat, grid_lon = target_grid(area, target_radius_km)
    lat = np.array([e.latitude for e in entries])[:, None]
    lon = np.array([e.longitude for e in entries])[:, None]
    return float(
        _area_mean(tdoa_gdop(bearings_deg(grid_lat[None, :], grid_lon[None, :], lat, lon)))
    )


def _area_mean(gdop: np.ndarray) -> np.ndarray:
    """Mean GDOP over the area's points (last axis), each capped at GDOP_CAP: a point on
    the extension of a receiver baseline is degenerate (infinite) and must not hide how
    good the geometry is everywhere else. A mean at the cap means no fix anywhere: inf."""
    mean = np.minimum(gdop, GDOP_CAP).mean(axis=-1)
    return np.where(mean >= GDOP_CAP, np.inf, mean)
