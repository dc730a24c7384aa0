"""The KiwiSDR directory: tolerant parsing, normalised entries, selection, geometric choice.

Directory files are written here in the documented ``kiwisdr_com.js`` format (comments,
``var kiwisdr_com = [...]``, every value a string, trailing commas) with the messy cases
real dumps contain; every count and value that comes out is asserted.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import Counter
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from blocks.receiver import check_receiver_name
from tasks.directory import (
    Area,
    Criteria,
    DirectoryEntry,
    DirectoryFormatError,
    choose,
    distance_km,
    mean_gdop,
    normalise_url,
    parse_bbox,
    parse_directory,
    parse_near,
    read_directory,
    receiver_name_for_url,
    select,
    tdoa_gdop,
)
from tasks.discovery import read_directory_text

LONG_NAME = "📡 Very long station name " + "x" * 600


def entry(host: str, lat: float | None, lon: float | None, **fields: str) -> dict[str, str]:
    """A directory entry as real dumps have it: every value a string."""
    out = {
        "id": host.split(".")[0],
        "name": f"{host} 🌍 | loop | 10 m",
        "url": f"http://{host}:8073",
        "gps": "" if lat is None else f"({lat:.6f}, {lon:.6f})",
        "asl": "250",
        "grid": "JN35",
        "bands": "0-30000000",
        "freq_offset": "0.000",
        "users": "1",
        "users_max": "4",
        "preempt": "0",
        "status": "active",
        "offline": "no",
        "sdr_hw": "KiwiSDR 2 v1.826 GPS Limits DRM D11.9",
        "gps_good": "8",
        "fixes": "100000",
        "fixes_min": "30",
        "fixes_hour": "1800",
        "tdoa_id": host.split(".")[0],
        "tdoa_ch": "3",
        "snr": "42,38",
        "antenna": "Mini-Whip",
        "updated": "1764300000",
    }
    out.update(fields)
    return out


def write_directory(path: Path, entries: list[dict[str, str]], broken: list[str] = ()) -> Path:
    """The ``kiwisdr_com.js`` layout: comment lines, one entry per line, trailing commas."""
    lines = [
        "// KiwiSDR.com receiver list for dyatlov map maker",
        "// File generation timestamp: Sun Nov 29 04:00:00 2026",
        "/* a block comment, as some mirrors add */",
        "",
        "var kiwisdr_com =",
        "[",
    ]
    rows = [
        "\t{ " + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in e.items()) + ", },"
        for e in entries
    ]
    middle = len(rows) // 2  # broken lines amid good ones: those after must still be read
    lines += rows[:middle] + [f"\t{b}" for b in broken] + rows[middle:]
    lines.append("];")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# Around Turin: a target at (45.0, 7.7).
TARGET = (45.0, 7.7)


def messy_entries() -> tuple[list[dict[str, str]], list[str]]:
    entries = [
        entry("north.example", 45.2, 7.7),  # ok, 22 km north
        entry("east.example", 45.0, 8.6, name=LONG_NAME),  # ok, very long emoji name
        entry("south.example", 44.3, 7.7, name="🛰️🛰️ Sud\tstation"),  # ok, control char
        entry("west.example", 45.0, 6.8),  # ok
        entry("cluster1.example", 45.25, 7.75),  # ok, a cluster with north
        entry("cluster2.example", 45.22, 7.62),  # ok, a cluster with north
        entry("full.example", 45.1, 7.8, users="4", users_max="4"),  # full
        entry("offline.example", 45.1, 7.8, offline="yes", status="offline"),  # offline
        entry("nolock.example", 45.2, 7.6, gps_good="0", fixes_min="0"),  # GPS unlocked
        entry("nostamps.example", 44.8, 7.6, tdoa_ch="-1"),  # timestamps off
        entry("far.example", 52.0, 13.0),  # outside 300 km
        # Air-band receiver behind a down-converter: bands in RF, offset in kHz.
        entry("air.example", 45.05, 7.65, bands="110000000-142000000", freq_offset="110000.000"),
        # Same URL twice (case and trailing slash differ): the fresher one is kept.
        entry("dup.example", 44.9, 7.0, url="http://DUP.example:8073/", updated="100"),
        entry("dup.example", 44.95, 7.05, updated="200"),
        entry("nogps.example", None, None),  # missing position
        entry("badgps.example", 45.0, 7.0, gps="(45.1 N, 7.2 E)"),  # malformed
        entry("range.example", 45.0, 7.0, gps="(95.000000, 7.000000)"),  # out of range
        entry("zero.example", 0.0, 0.0),  # position never set
        entry("badbands.example", 45.0, 7.0, bands="HF"),
        entry("badusers.example", 45.0, 7.0, users="?"),
        entry("nourl.example", 45.0, 7.0, url=""),
    ]
    broken = [
        '"just a string",',
        # A stray quote: this line is lost (with any non-object line after it); the
        # entries on the following lines are read again.
        '{ "name": "stray "quote", "url": "http://stray.example:8073", "gps": "(45, 7)" },',
    ]
    return entries, broken


@pytest.fixture
def messy_file(tmp_path: Path) -> Path:
    entries, broken = messy_entries()
    return write_directory(tmp_path / "kiwisdr_com.js", entries, broken)


def test_messy_directory_parses_and_counts_every_skip(messy_file: Path) -> None:
    directory = read_directory(messy_file.read_text(encoding="utf-8"))
    assert directory.skipped == Counter(
        {
            "no_position": 2,  # "" and (0, 0)
            "bad_position": 2,  # "45.1 N" and latitude 95
            "unparseable": 1,
            "not_an_object": 1,
            "duplicate_url": 1,
            "bad_bands": 1,
            "bad_users": 1,
            "no_url": 1,
        }
    )
    by_host = {e.url.split("//")[1].split(":")[0]: e for e in directory.entries}
    assert sorted(by_host) == sorted(
        [
            "north.example", "east.example", "south.example", "west.example",
            "cluster1.example", "cluster2.example", "full.example", "offline.example",
            "nolock.example", "nostamps.example", "far.example", "air.example", "dup.example",
        ]
    )  # fmt: skip
    north = by_host["north.example"]
    assert north.url == "http://north.example:8073"
    assert north.name == "kiwi-north-example-8073"
    assert (north.latitude, north.longitude, north.altitude_m) == (45.2, 7.7, 250.0)
    assert (north.min_frequency_hz, north.max_frequency_hz) == (10e3, 30e6)
    assert (north.users, north.users_max, north.free_channels) == (1, 4, 3)
    assert north.online and north.gps_locked and north.timestamps_on
    assert (north.snr_db, north.snr_hf_db) == (42.0, 38.0)
    # Free text survives (emoji included), bounded and without control characters.
    assert by_host["east.example"].display_name == LONG_NAME[:200]
    assert by_host["south.example"].display_name == "🛰️🛰️ Sud station"
    # Down-converter: coverage in RF, the offset kept for tuning.
    air = by_host["air.example"]
    assert (air.min_frequency_hz, air.max_frequency_hz, air.freq_offset_khz) == (
        110e6,
        142e6,
        110000.0,
    )
    assert air.covers(125e6) and not air.covers(10e6)
    # The duplicate kept is the fresher one (updated 200), under the normalised URL.
    assert by_host["dup.example"].latitude == 44.95
    assert not by_host["full.example"].free_channels
    assert not by_host["offline.example"].online
    assert not by_host["nolock.example"].gps_locked
    assert not by_host["nostamps.example"].timestamps_on
    for e in directory.entries:
        assert check_receiver_name(e.name) == e.name


def test_selection_rejects_by_first_reason_and_accounts_for_every_entry(messy_file: Path) -> None:
    directory = read_directory(messy_file.read_text(encoding="utf-8"))
    area = parse_near(f"{TARGET[0]},{TARGET[1]}", 300)
    candidates, rejected = select(
        directory.entries, Criteria(frequency_hz=7.1e6, area=area, require_gps=True)
    )
    assert rejected == Counter(
        {
            "full": 1,
            "offline": 1,
            "gps_unlocked": 1,
            "timestamps_off": 1,
            "outside_area": 1,
            "frequency_not_covered": 1,  # the air-band receiver
        }
    )
    assert sorted(e.name for e in candidates) == sorted(
        f"kiwi-{h}-example-8073"
        for h in ("north", "east", "south", "west", "cluster1", "cluster2", "dup")
    )
    # Without GPS requirement the unlocked and stamp-less receivers qualify.
    loose, _ = select(directory.entries, Criteria(frequency_hz=7.1e6, area=area))
    assert len(loose) == len(candidates) + 2
    # At 125 MHz only the down-converter qualifies.
    air, _ = select(directory.entries, Criteria(frequency_hz=125e6))
    assert [e.name for e in air] == ["kiwi-air-example-8073"]
    total = len(directory.entries) + sum(directory.skipped.values())
    assert total == 23
    assert len(candidates) + sum(rejected.values()) == len(directory.entries)


def test_geometric_choice_spreads_around_the_target(messy_file: Path) -> None:
    """The nearest receivers are a cluster in the north; the choice surrounds the target."""
    directory = read_directory(messy_file.read_text(encoding="utf-8"))
    area = Area(*TARGET, radius_km=300)
    candidates, _ = select(directory.entries, Criteria(7.1e6, area, require_gps=True))
    chosen = choose(candidates, area, 4, target_radius_km=30)
    names = [c.entry.name.split("-")[1] for c in chosen]
    assert names[:2] == ["north", "south"]
    assert chosen[0].reason == "nearest to the target: 22 km, bearing 0°"
    assert chosen[1].reason == "widest azimuth gap: bearing 180°, 180° from those chosen (78 km)"
    assert chosen[2].reason.startswith("lowers mean GDOP over the area ∞ -> ")
    assert names[2] in ("east", "west", "dup") and names[3] in ("east", "west", "dup")
    assert "east" in names  # east and west: one of each side
    assert not {"cluster1", "cluster2"} & set(names)
    # Bearings from the target are spread: no two chosen within 60 degrees.
    bearings = sorted(c.bearing_deg for c in chosen)
    gaps = np.diff([*bearings, bearings[0] + 360])
    assert gaps.min() > 60
    gdop_chosen = mean_gdop([c.entry for c in chosen], area, 30)
    assert chosen[-1].mean_gdop == pytest.approx(gdop_chosen)
    nearest = sorted(candidates, key=lambda e: distance_km(*TARGET, e.latitude, e.longitude))[:4]
    gdop_nearest = mean_gdop(nearest, area, 30)
    assert gdop_chosen < 1.2 and gdop_nearest > 2 * gdop_chosen
    # A limit above the number of candidates chooses them all, co-sited ones last.
    everything = choose(candidates, area, 50, target_radius_km=30)
    assert len(everything) == len(candidates)


def test_receivers_at_one_site_come_last() -> None:
    def rx(i: int, lat: float, lon: float) -> DirectoryEntry:
        return DirectoryEntry(
            url=f"http://r{i}.example:8073", name=f"r{i}", display_name="", latitude=lat,
            longitude=lon, altitude_m=0, antenna="", location="", min_frequency_hz=1e4,
            max_frequency_hz=3e7, freq_offset_khz=0, users=0, users_max=4, online=True,
            gps_good=5, fixes_min=10, tdoa_ch=2, snr_db=30, snr_hf_db=25,
        )  # fmt: skip

    area = Area(45.0, 8.0, radius_km=500)
    sites = [rx(0, 45.5, 8.0), rx(1, 44.6, 8.6), rx(2, 44.6, 7.4), rx(3, 45.5001, 8.0001)]
    chosen = choose(sites, area, 4)
    assert [c.entry.name for c in chosen][-1] in ("r0", "r3")
    assert "shares a site" in chosen[-1].reason


def test_tdoa_gdop_reference_geometries() -> None:
    # Three receivers 120 degrees apart: 2/sqrt(3); four at 90 degrees: 1.
    assert tdoa_gdop(np.array([0.0, 120.0, 240.0])) == pytest.approx([2 / math.sqrt(3)])
    assert tdoa_gdop(np.array([0.0, 90.0, 180.0, 270.0])) == pytest.approx([1.0])
    # Two receivers, or all on one line through the point: no fix.
    assert np.isinf(tdoa_gdop(np.array([0.0, 90.0]))).all()
    assert np.isinf(tdoa_gdop(np.array([0.0, 180.0, 0.0]))).all()
    # Bunched in azimuth: much worse than spread.
    assert (
        tdoa_gdop(np.array([0.0, 20.0, 40.0]))[0] > 10 * tdoa_gdop(np.array([0.0, 120.0, 240.0]))[0]
    )


def test_choice_without_area_prefers_free_channels_and_snr() -> None:
    text = "var kiwisdr_com = [" + ",".join(
        json.dumps(entry(f"h{i}.example", 40 + i, 5, users=str(i), snr=f"{20 + i},1"))
        for i in range(4)
    ) + ",];"  # fmt: skip
    directory = read_directory(text)
    chosen = choose(directory.entries, None, 2)
    assert [c.entry.name for c in chosen] == ["kiwi-h0-example-8073", "kiwi-h1-example-8073"]
    assert chosen[0].reason.startswith("no target area: 4 free channels")


def test_urls_and_names_are_stable_and_slug_safe() -> None:
    assert normalise_url("Kiwi.Example.ORG:8073/") == "http://kiwi.example.org:8073"
    assert normalise_url("https://kiwi.example.org/") == "https://kiwi.example.org:443"
    assert normalise_url("http://proxy.example:80/kiwi/") == "http://proxy.example:80/kiwi"
    for bad in ("ftp://x:8073", "http://:8073", "http://host:99999"):
        with pytest.raises(ValueError):
            normalise_url(bad)
    assert receiver_name_for_url("http://kiwi.example.org:8073") == "kiwi-kiwi-example-org-8073"
    assert receiver_name_for_url("http://127.0.0.1:40001") == "kiwi-127-0-0-1-40001"
    long_url = "http://" + "a" * 70 + ".example:8073"
    name = receiver_name_for_url(long_url)
    assert len(name) <= 64 and check_receiver_name(name) == name
    assert name == receiver_name_for_url(long_url)  # stable
    # Two URLs whose slugs collide get two names.
    text = "[" + json.dumps(entry("a.b", 45, 7)) + "," + json.dumps(entry("a-b", 45, 7)) + "]"
    names = [e.name for e in read_directory(text).entries]
    assert len(set(names)) == 2 and "kiwi-a-b-8073" in names


def test_area_parsing_names_the_field_and_range() -> None:
    assert parse_near("45.07, 7.69", 100).contains(45.5, 7.69)
    assert not parse_near("45.07,7.69", 40).contains(45.5, 7.69)
    with pytest.raises(ValueError, match=r"near='45\.07': expected 'LAT,LON'"):
        parse_near("45.07", 100)
    with pytest.raises(ValueError, match=r"latitude 91.0 is out of range \[-90, 90\]"):
        parse_near("91,7", 100)
    with pytest.raises(ValueError, match=r"radius_km=0 is out of range \(0, 20000\] km"):
        parse_near("45,7", 0)
    box = parse_bbox("44,6,46,9")
    assert (box.latitude, box.longitude) == (45.0, 7.5)
    assert box.contains(45, 8) and not box.contains(45, 10) and not box.contains(47, 8)
    # Across the antimeridian (west > east).
    pacific = parse_bbox("-20,170,-10,-170")
    assert pacific.longitude == pytest.approx(-180.0) or pacific.longitude == pytest.approx(180.0)
    assert pacific.contains(-15, 175) and pacific.contains(-15, -175)
    assert not pacific.contains(-15, 0)
    with pytest.raises(ValueError, match=r"SOUTH .* must be below NORTH"):
        parse_bbox("46,6,44,9")


def test_truncated_or_garbled_directories_never_crash(messy_file: Path) -> None:
    """A download cut anywhere, or a character replaced anywhere, costs entries, never the
    run: the only error allowed is "not a directory" when the list itself is gone."""
    text = messy_file.read_text(encoding="utf-8")
    full = read_directory(text)
    rng = np.random.default_rng(7)
    for cut in range(0, len(text), 37):
        try:
            directory = read_directory(text[:cut])
        except DirectoryFormatError:
            assert "[" not in text[:cut].split("var kiwisdr_com")[-1]
            continue
        assert len(directory.entries) <= len(full.entries)
    for position in rng.integers(0, len(text), 40):
        for char in "\"{}[],:'\\\n":
            garbled = text[:position] + char + text[position + 1 :]
            directory = read_directory(garbled)
            # One character breaks at most the entries on its line and the next (an
            # offline sweep of every third position over 40 000 variants lost at most 3).
            assert len(directory.entries) >= len(full.entries) - 3


def test_a_public_directory_cannot_point_at_private_addresses() -> None:
    hosts = ["127.0.0.1", "10.1.2.3", "192.168.0.9", "169.254.169.254", "localhost", "[::1]"]
    entries = [entry(h, 45, 7, url=f"http://{h}:8073") for h in hosts]
    entries.append(entry("8.8.8.8", 45, 7, url="http://8.8.8.8:8073"))
    entries.append(entry("kiwi.example", 45, 7))
    text = json.dumps(entries)
    public = read_directory(text, allow_private=False)
    assert [e.url for e in public.entries] == ["http://8.8.8.8:8073", "http://kiwi.example:8073"]
    assert public.skipped == Counter({"private_address": 6})
    assert len(read_directory(text).entries) == 8  # a local file may (the simulator)


def test_not_a_directory_is_one_clear_error() -> None:
    with pytest.raises(DirectoryFormatError, match="not a KiwiSDR directory"):
        parse_directory("<html><body>502 Bad Gateway</body></html>")
    # A bare JSON list is accepted too.
    entries, skipped = parse_directory(json.dumps([entry("j.example", 45, 7)]))
    assert len(entries) == 1 and not skipped


def test_kiwisdr_com_public_html_listing() -> None:
    """kiwisdr.com/public/ itself: ``<!-- key=value -->`` comments per receiver."""
    html = "<html><body>\nSun Nov 29 2026<br>\n"
    for host, gps in (("one.example", "(45.1, 7.1)"), ("two.example", "(44.1, 8.1)")):
        html += "<div class='cl-entry'><div class='cl-info'>\n"
        for key, value in {**entry(host, 0, 0), "gps": gps, "name": "A &amp; B"}.items():
            if key != "url":
                html += f"<!-- {key}={value} -->\n"
        html += f"<a href='http://{host}:8073' target='_blank'>http://{host}:8073</a>\n</div>\n"
    directory = read_directory(html)
    assert [e.url for e in directory.entries] == [
        "http://one.example:8073",
        "http://two.example:8073",
    ]
    assert directory.entries[0].display_name == "A & B"
    assert directory.entries[1].latitude == 44.1


@pytest.fixture
def http_directory(messy_file: Path) -> Iterator[str]:
    """The directory served over HTTP on loopback by a real server in a thread."""
    handler = partial(_QuietHandler, directory=str(messy_file.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_directory_read_over_http_equals_the_file(http_directory: str, messy_file: Path) -> None:
    text = asyncio.run(read_directory_text(f"{http_directory}/kiwisdr_com.js"))
    assert text == messy_file.read_text(encoding="utf-8")
    with pytest.raises(httpx.HTTPStatusError):
        asyncio.run(read_directory_text(f"{http_directory}/missing.js"))
    with pytest.raises(FileNotFoundError, match=r"directory=./nonexistent\.js.: no such file"):
        asyncio.run(read_directory_text("/nonexistent.js"))
