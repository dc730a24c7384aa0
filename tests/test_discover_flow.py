"""The discover flow on Prefect's test server: a directory served over HTTP, blocks saved
idempotently and disabled when their receiver vanishes, the CLI's ``--json`` contract,
and discovered blocks driving an acquisition against the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_directory import entry, messy_entries, write_directory

from blocks.database import sqlite_engine
from blocks.receiver import KiwiSDRReceiver, receiver_name
from blocks.resolve import saved_receivers
from flows.acquisition import acquire
from flows.discover import discover, main
from tasks.kiwisdr.network import simulated_network
from tasks.kiwisdr.simulator import Faults
from tasks.records import measurements_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.flow


def run(**kwargs: Any) -> Any:
    return asyncio.run(discover(return_state=True, **kwargs))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """``tmp_path`` served by a real HTTP server on loopback, in a thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=tmp_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _blocks(names: list[str]) -> dict[str, KiwiSDRReceiver]:
    saved = asyncio.run(saved_receivers())
    return {n: saved[n] for n in names if n in saved}


def test_dry_run_over_http_chooses_and_saves_nothing(
    prefect_server: None, served: str, tmp_path: Path
) -> None:
    entries, broken = messy_entries()
    write_directory(tmp_path / "kiwisdr_com.js", entries, broken)
    state = run(
        directory=f"{served}/kiwisdr_com.js",
        frequency_hz=7.1e6,
        near="45.0,7.7",
        radius_km=300,
        require_gps=True,
        limit=4,
        target_radius_km=30,
        dry_run=True,
    )
    assert state.is_completed(), state.message
    assert state.message == "4 receivers chosen from 23 directory entries; dry run, nothing saved"
    summary = state.result()
    names = [s["name"] for s in summary["selected"]]
    assert names == [
        "kiwi-north-example-8073",
        "kiwi-south-example-8073",
        "kiwi-dup-example-8073",
        "kiwi-east-example-8073",
    ]
    north = summary["selected"][0]
    assert (north["url"], north["latitude"], north["longitude"]) == (
        "http://north.example:8073",
        45.2,
        7.7,
    )
    assert north["distance_km"] == pytest.approx(22.2, abs=0.1)
    assert summary["selected"][-1]["mean_gdop"] == pytest.approx(1.18, abs=0.01)
    assert summary["rejected"] == {
        "bad_bands": 1,
        "bad_position": 2,
        "bad_users": 1,
        "duplicate_url": 1,
        "frequency_not_covered": 1,
        "full": 1,
        "gps_unlocked": 1,
        "no_position": 2,
        "no_url": 1,
        "not_an_object": 1,
        "not_chosen": 3,
        "offline": 1,
        "outside_area": 1,
        "timestamps_off": 1,
        "unparseable": 1,
    }
    assert len(names) + sum(summary["rejected"].values()) == 23
    assert summary["blocks"] is None
    assert _blocks(names) == {}


def _ring(unique: str, **changes: dict[str, str]) -> list[dict[str, str]]:
    """Four GPS-locked receivers around (45.0, 7.7), hosts unique to one test."""
    sites = {"n": (45.5, 7.7), "s": (44.5, 7.7), "e": (45.0, 8.4), "w": (45.0, 7.0)}
    out = []
    for key, (lat, lon) in sites.items():
        if changes.get(key) == {"gone": "yes"}:
            continue
        out.append(entry(f"{key}-{unique}.example", lat, lon, **changes.get(key, {})))
    return out


def test_blocks_saved_idempotently_and_disabled_when_the_receiver_vanishes(
    prefect_server: None, tmp_path: Path, unique: str
) -> None:
    directory = tmp_path / "kiwisdr_com.js"
    name = {k: f"kiwi-{k}-{unique}-example-8073" for k in "nsew"}
    params = dict(
        directory=str(directory),
        frequency_hz=10e6,
        near="45.0,7.7",
        radius_km=200,
        require_gps=True,
        tag=unique,
    )
    # A block made by hand with the same tag is never touched by discover.
    by_hand = KiwiSDRReceiver(
        url="http://mine.example:8073", latitude=45, longitude=7, tags=[unique]
    )
    by_hand.save(f"mine-{unique}", overwrite=True)

    write_directory(directory, _ring(unique))
    first = run(**params)
    assert first.is_completed(), first.message
    blocks = first.result()["blocks"]
    assert sorted(blocks["created"]) == sorted(name.values())
    assert blocks["updated"] == blocks["unchanged"] == [] and blocks["disabled"] == {}
    saved = _blocks(list(name.values()))
    north = saved[name["n"]]
    assert north.url == f"http://n-{unique}.example:8073"
    assert (north.latitude, north.longitude, north.altitude_m) == (45.5, 7.7, 250.0)
    assert (north.min_frequency_hz, north.max_frequency_hz, north.freq_offset_khz) == (
        10e3,
        30e6,
        0.0,
    )
    assert north.tags == ["discovered", unique, "gps"] and north.enabled
    assert north.display_name == f"n-{unique}.example 🌍 | loop | 10 m"

    # Settings made by hand survive a refresh; nothing changed, so nothing is rewritten.
    edited = north.model_copy(
        update={"password": "hunter2", "gain_db": 30.0, "tags": [*north.tags, "mine"]}
    )
    edited.save(name["n"], overwrite=True)
    second = run(**params)
    blocks = second.result()["blocks"]
    assert sorted(blocks["unchanged"]) == sorted(name.values())
    assert blocks["created"] == blocks["updated"] == [] and blocks["disabled"] == {}
    north = _blocks([name["n"]])[name["n"]]
    assert north.password is not None and north.password.get_secret_value() == "hunter2"
    assert north.gain_db == 30.0 and north.tags == ["discovered", unique, "gps", "mine"]

    # East vanished, west lost its GPS lock, south moved: two disabled, one updated.
    write_directory(
        directory,
        _ring(
            unique,
            e={"gone": "yes"},
            w={"gps_good": "0", "fixes_min": "0"},
            s={"gps": "(44.510000, 7.700000)"},
        ),
    )
    third = run(**params)
    assert third.is_completed(), third.message
    summary = third.result()
    assert third.message == (
        "2 receivers chosen from 3 directory entries; "
        "blocks: 0 created, 1 updated, 1 unchanged, 2 disabled"
    )
    assert summary["blocks"]["updated"] == [name["s"]]
    assert summary["blocks"]["disabled"] == {
        name["e"]: "vanished from the directory",
        name["w"]: "lost its GPS lock (gps_good=0, fixes_min=0)",
    }
    assert summary["rejected"] == {"gps_unlocked": 1}
    saved = _blocks([*name.values(), f"mine-{unique}"])
    assert len(saved) == 5  # disabled, never deleted
    assert not saved[name["e"]].enabled and not saved[name["w"]].enabled
    assert saved[name["s"]].latitude == 44.51 and saved[name["s"]].enabled
    assert saved[f"mine-{unique}"].enabled

    # Both come back: enabled again.
    write_directory(directory, _ring(unique))
    fourth = run(**params)
    blocks = fourth.result()["blocks"]
    assert sorted(blocks["updated"]) == sorted([name["e"], name["w"], name["s"]])
    assert all(b.enabled for b in _blocks(list(name.values())).values())


def test_cli_json_is_the_only_output_on_stdout(prefect_server: None, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    directory = write_directory(tmp_path / "kiwisdr_com.js", *messy_entries())
    done = subprocess.run(
        [
            sys.executable, "-m", "flows.discover", "--directory", str(directory),
            "--frequency-hz", "7.1e6", "--near", "45.0,7.7", "--radius-km", "300",
            "--require-gps", "--limit", "2", "--dry-run", "--json",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_LOGGING_LEVEL": "INFO",  # the run logs this test looks for on stderr
        },
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"selected", "rejected"}
    assert [s["name"] for s in out["selected"]] == [
        "kiwi-north-example-8073",
        "kiwi-south-example-8073",
    ]
    for s in out["selected"]:
        assert {"name", "url", "latitude", "longitude", "reason"} <= set(s)
    assert out["rejected"]["not_chosen"] == 5 and out["rejected"]["no_position"] == 2
    # The run's logs went to stderr.
    assert "chose kiwi-north-example-8073" in done.stderr


def test_cli_bad_area_fails_naming_the_field(
    prefect_server: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = write_directory(tmp_path / "kiwisdr_com.js", *messy_entries())
    code = main(["--directory", str(directory), "--near", "95,7", "--dry-run", "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "near: latitude 95.0 is out of range [-90, 90] degrees" in captured.err


FREQUENCY_HZ = 145_500_000.0


def test_discovered_receivers_drive_an_acquisition(
    prefect_server: None, tmp_path: Path, unique: str
) -> None:
    """Directory -> discover (with /status) -> blocks -> acquire --tag -> rows."""
    network, seed = simulated_network(
        frequency_hz=FREQUENCY_HZ,
        faults={"genova": Faults(no_gps=True), "coazze": Faults(down=True)},
    )
    with network:
        sim_by_url = {network.url(receiver_name(rx)): receiver_name(rx) for rx in seed}
        # The directory still says every receiver is locked and online: only /status knows.
        entries = [
            entry(
                "unused",
                rx.latitude,
                rx.longitude,
                url=url + "/",
                name=f"{rx.display_name} 📡 2 m",
                bands="144000000-146000000",
                freq_offset="116000.000",
                users="0",
                asl=str(int(rx.altitude_m)),
            )
            for url, rx in zip(sim_by_url, seed, strict=True)
        ]
        write_directory(tmp_path / "kiwisdr_com.js", entries)
        found = run(
            directory=str(tmp_path / "kiwisdr_com.js"),
            frequency_hz=FREQUENCY_HZ,
            near="44.90,8.20",  # the simulated emitter
            radius_km=300,
            require_gps=True,
            limit=6,
            check_status=True,
            tag=unique,
        )
        assert found.is_completed(), found.message
        summary = found.result()
        # Six asked for, two ruled out by /status and not replaceable: five remain.
        assert summary["rejected"] == {"status_gps_unlocked": 1, "status_offline": 1}
        chosen = {s["name"]: s["url"] for s in summary["selected"]}
        healthy = {u for u, n in sim_by_url.items() if n not in ("genova", "coazze")}
        assert set(chosen.values()) == healthy
        assert sorted(summary["blocks"]["created"]) == sorted(chosen)
        state = asyncio.run(
            acquire(
                frequency_hz=FREQUENCY_HZ,
                duration_s=0.5,
                network="blocks",
                tag=unique,
                storage="local",
                database="sqlite",
                data_dir=str(tmp_path / "data"),
                return_state=True,
            )
        )
    assert state.is_completed(), state.message
    assert state.message == "5/5 receivers ok"
    acquisition = state.result()
    rows = measurements_for(
        sqlite_engine(tmp_path / "data" / "rf_acquisition.db"), acquisition["acquisition_id"]
    )
    assert sorted(r["receiver"] for r in rows) == sorted(chosen)
    for row in rows:
        assert row["status"] == "ok", row
        sim_name = sim_by_url[chosen[row["receiver"]]]
        truth = network.truth(sim_name, FREQUENCY_HZ)
        assert row["power_dbfs"] == pytest.approx(truth.power_dbfs, abs=0.5)
        assert row["frequency_offset_hz"] == pytest.approx(truth.frequency_offset_hz, abs=1.0)
