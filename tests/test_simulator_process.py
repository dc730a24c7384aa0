"""The simulated network served from a child process (the flow's default): the same
samples as in-process, real websockets, and the child always gone afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from blocks.database import sqlite_engine
from flows.acquisition import acquire
from tasks.kiwisdr.client import CaptureSettings, capture_iq
from tasks.kiwisdr.network import (
    INLINE_MAX_RECEIVERS,
    bind_urls,
    serve_simulated_network,
    simulated_network,
)
from tasks.kiwisdr.simulator import (
    Faults,
    SimulatedNetwork,
    SimulatorProcess,
    network_from_spec,
    network_spec,
)
from tasks.records import measurements_for

FREQUENCY_HZ = 145_500_000.0
ROOT = Path(__file__).resolve().parent.parent


def simulator_children(parent: int | None = None) -> list[int]:
    """Pids of live simulator children of ``parent`` (default: this process)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == parent and state != "Z" and b"--serve-stdin" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def test_child_sends_the_samples_the_in_process_network_regenerates() -> None:
    """A capture over real websockets from the child equals, sample for sample, what the
    same network built here generates: the spec carries receivers, emitter, seed and the
    sample-grid epoch."""
    served, receivers = serve_simulated_network(
        "process", frequency_hz=FREQUENCY_HZ, count=3, modulation="rrc-bpsk"
    )
    assert isinstance(served, SimulatorProcess)
    with served:
        pid = served.pid
        assert pid is not None and alive(pid)
        bind_urls(served, receivers)
        rx = receivers[1]
        name = rx._block_document_name or ""
        settings = CaptureSettings(frequency_hz=FREQUENCY_HZ, duration_s=0.3)
        cap = asyncio.run(
            capture_iq(rx.url, settings, receiver=name, freq_offset_khz=rx.freq_offset_khz)
        )
    assert not alive(pid)
    net: SimulatedNetwork = served.network
    assert cap.first_sample_ns is not None and not cap.gaps
    exact = net.sample_index_at(name, cap.first_sample_ns)
    index0 = round(exact)
    assert abs(exact - index0) < 0.01
    got = np.column_stack([cap.samples.real, cap.samples.imag]).astype(np.float64) * 32768.0
    rf_hz = FREQUENCY_HZ  # tuned RF: the simulator adds the offset back to the dial
    expected = net.samples_iq(name, index0, got.shape[0], rf_hz, settings.passband_hz)
    np.testing.assert_array_equal(got.astype(np.int16), expected)
    # Ground truth stays available in this process.
    assert served.emitter == net.emitter
    assert served.truth(name, FREQUENCY_HZ) == net.truth(name, FREQUENCY_HZ)


def test_the_spec_carries_faults_and_the_sample_grid_through_json() -> None:
    """What the child rebuilds is the network built here, faults included."""
    faults = {
        "torino": Faults(lost_frames=(3, 9), outlier_stamps=((5, 2.5),), drop_after_frames=4),
        "genova": Faults(down=True, stale_first_s=1.5),
    }
    network, _ = simulated_network(faults=faults, seed=7, modulation="am")
    rebuilt = network_from_spec(json.loads(json.dumps(network_spec(network))))
    assert rebuilt.receivers == network.receivers
    assert rebuilt.emitter == network.emitter
    assert (rebuilt.seed, rebuilt.epoch_gps_s) == (network.seed, network.epoch_gps_s)


def test_faults_are_served_by_the_child() -> None:
    """A receiver that reports itself down does so from the child too."""
    network, receivers = simulated_network(count=2, faults={"montanaro": Faults(down=True)})
    with SimulatorProcess(network) as served:
        bind_urls(served, receivers)
        pages = {r._block_document_name: httpx.get(f"{r.url}/status").text for r in receivers}
    assert "offline=yes" in pages["montanaro"]
    assert "offline=no" in pages["aquila-di-giaveno"]


def test_a_child_that_cannot_serve_fails_start_with_its_error_and_is_gone() -> None:
    """A port already taken: start() raises with the child's own error, no child left."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        network, _ = simulated_network(count=1, ports={"aquila-di-giaveno": port})
        refused = r"(?s)exited \(1\) before it was ready.*address already in use"
        with pytest.raises(RuntimeError, match=refused):
            SimulatorProcess(network).start()
    assert simulator_children() == []


def test_the_child_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    """The lifeline: a parent killed with SIGKILL (no cleanup at all) takes the child."""
    script = (
        "import sys, time\n"
        "from tasks.kiwisdr.network import serve_simulated_network\n"
        "served, _ = serve_simulated_network('process', count=2)\n"
        "served.start()\n"
        "print(served.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_ctrl_c_in_the_parent_ends_the_child(tmp_path: Path) -> None:
    """SIGINT reaches only the parent (the child has its own session); the parent's exit
    stack stops the child in order, as a flow's does."""
    script = (
        "import asyncio, contextlib\n"
        "from tasks.kiwisdr.network import serve_simulated_network\n"
        "async def main():\n"
        "    async with contextlib.AsyncExitStack() as stack:\n"
        "        served, _ = serve_simulated_network('process', count=2)\n"
        "        stack.enter_context(served)\n"
        "        print(served.pid, flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(signal.SIGINT)
        assert parent.wait(15) != 0  # KeyboardInterrupt
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
    assert not alive(child)


def test_auto_serves_small_networks_inline_and_large_ones_from_a_child() -> None:
    small, _ = serve_simulated_network("auto", count=INLINE_MAX_RECEIVERS)
    large, _ = serve_simulated_network("auto", count=INLINE_MAX_RECEIVERS + 1)
    forced, _ = serve_simulated_network("inline", count=INLINE_MAX_RECEIVERS + 1)
    assert type(small) is SimulatedNetwork and type(forced) is SimulatedNetwork
    assert isinstance(large, SimulatorProcess) and large.pid is None  # built, not started


def test_unknown_simulator_mode_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"simulator='thread'.*'auto', 'inline', 'process'"):
        serve_simulated_network("thread")


def test_the_flow_offers_the_modes_the_network_serves() -> None:
    from typing import get_args

    from flows.acquisition import SimulatorChoice
    from tasks.kiwisdr.network import SIMULATOR_MODES

    assert get_args(SimulatorChoice) == SIMULATOR_MODES == ("auto", "inline", "process")


@pytest.mark.flow
def test_flow_with_the_process_simulator_end_to_end(prefect_server: None, tmp_path: Path) -> None:
    """``network="simulated"`` serves from a child process over real websockets: every
    receiver ok, first samples within one sample period, rows marked simulated, the
    emitter's truth passed to locate, and no child left afterwards."""
    state = asyncio.run(
        acquire(
            frequency_hz=FREQUENCY_HZ,
            duration_s=2.0,
            network="simulated",
            simulated_receivers=4,
            simulator="process",
            modulation="rrc-bpsk",
            emitter=(45.05, 7.6),
            data_dir=str(tmp_path),
            locate=True,
            return_state=True,
        )
    )
    assert simulator_children() == []
    assert state.is_completed(), state.message
    summary: dict[str, Any] = state.result()
    assert summary["ok"] == 4
    assert summary["start_spread_ms"] < 1000.0 / 12001.135
    rows = measurements_for(
        sqlite_engine(tmp_path / "rf_acquisition.db"), summary["acquisition_id"]
    )
    assert len(rows) == 4 and all(r["simulated"] in (True, 1) for r in rows)
    # Scored against the emitter the child serves: the truth came through.
    away = re.search(r"truth (\d+) m away", summary["located"]["message"])
    assert away is not None and int(away.group(1)) < 500, summary["located"]
