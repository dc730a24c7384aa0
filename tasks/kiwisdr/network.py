"""The simulated receiver network: the seed network (or any receiver file) served by the
simulator on loopback, scaled to any size, with an emitter placed and modulated at will.

It lives beside the simulator, not in ``blocks/``: blocks hold configuration only, and
this builds running simulators from it. The receivers it returns are ordinary
:class:`~blocks.receiver.KiwiSDRReceiver` blocks (unsaved), so the acquisition flow
treats a simulated network exactly like a real one.

:func:`serve_simulated_network` decides where the simulator runs for a flow: in a child
process (:class:`~tasks.kiwisdr.simulator.SimulatorProcess`) or in this one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from blocks.receiver import (
    KiwiSDRReceiver,
    load_receiver_file,
    read_network_file,
    receiver_name,
    seed_network_path,
)
from tasks.kiwisdr.emitter import Emitter
from tasks.kiwisdr.simulator import Faults, SimulatedNetwork, SimulatedReceiver, SimulatorProcess

MAX_SIMULATED_RECEIVERS = 2000
# Copies of a file's receivers sit on a golden-angle spiral around their original, up to
# about this far away (degrees of latitude): a few tens of km, the same area as the seed.
SPREAD_DEG = 0.3
_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def simulated_network(
    path: str | Path | None = None,
    *,
    frequency_hz: float | None = None,
    ports: dict[str, int] | None = None,
    faults: Mapping[str, Faults] | None = None,
    seed: int = 0,
    count: int | None = None,
    emitter_at: tuple[float, float] | None = None,
    modulation: str | None = None,
) -> tuple[SimulatedNetwork, list[KiwiSDRReceiver]]:
    """Build (not start) the simulator for a receiver file, and the matching receivers.

    Args:
        path: a receiver YAML/JSON file (default: the seed network).
        frequency_hz: the emitter's frequency when the file names none.
        ports: fixed loopback ports by receiver name (default: free ports).
        faults: per-receiver fault injection.
        seed: the simulator's noise seed.
        count: how many receivers: the file's receivers are repeated (``torino-2`` ...),
            each copy spread around its original, to demo and load-test large networks.
        emitter_at: ``(latitude, longitude)`` of the emitter instead of the file's.
        modulation: the emitter's modulation name (passed to :class:`Emitter`, which
            names the allowed ones when it refuses).

    Returns:
        The network and its receivers; :func:`bind_urls` fills in their URLs once the
        network has started.

    Example:
        >>> network, receivers = simulated_network(count=50, emitter_at=(45.0, 8.0))
        >>> with network:  # doctest: +SKIP
        ...     bind_urls(network, receivers)
    """
    path = path or seed_network_path()
    data = read_network_file(path)
    receivers = load_receiver_file(path, placeholder_url="http://127.0.0.1:0")
    entries = list(data["receivers"])
    if count is not None and count != len(receivers):
        receivers, entries = _replicate(receivers, entries, count)
    emitter_args: dict[str, Any] = dict(data.get("emitter") or {})
    if frequency_hz is not None and "frequency_hz" not in emitter_args:
        emitter_args["frequency_hz"] = frequency_hz
    if emitter_at is not None:
        lat, lon = emitter_at
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ValueError(
                f"emitter={emitter_at!r}: latitude in [-90, 90], longitude in [-180, 180]"
            )
        emitter_args.update(latitude=float(lat), longitude=float(lon))
    if modulation is not None:
        emitter_args["modulation"] = modulation
    emitter = Emitter(**emitter_args)
    simulated = []
    for rx, entry in zip(receivers, entries, strict=True):
        sim = dict(entry.get("simulation") or {})
        name = receiver_name(rx)
        simulated.append(
            SimulatedReceiver(
                name=name,
                latitude=rx.latitude,
                longitude=rx.longitude,
                altitude_m=rx.altitude_m,
                freq_offset_khz=rx.freq_offset_khz,
                antenna=rx.antenna,
                password=rx.password.get_secret_value() if rx.password else None,
                faults=(faults or {}).get(name, Faults()),
                **sim,
            )
        )
    return SimulatedNetwork(simulated, emitter, ports=ports, seed=seed), receivers


def _replicate(
    receivers: list[KiwiSDRReceiver], entries: list[Any], count: int
) -> tuple[list[KiwiSDRReceiver], list[Any]]:
    """``count`` receivers: the originals, then copies spread around them."""
    if not 1 <= count <= MAX_SIMULATED_RECEIVERS:
        raise ValueError(f"count={count} is out of range [1, {MAX_SIMULATED_RECEIVERS}]")
    out_rx, out_entries = [], []
    copies = math.ceil(count / len(receivers))
    for i in range(count):
        base, entry = receivers[i % len(receivers)], entries[i % len(entries)]
        copy = i // len(receivers)
        rx = base
        if copy:
            radius = SPREAD_DEG * math.sqrt(copy / max(copies - 1, 1))
            angle = copy * _GOLDEN_ANGLE + i  # each original's spiral turned differently
            lat = base.latitude + radius * math.cos(angle)
            lon = base.longitude + radius * math.sin(angle) / math.cos(math.radians(lat))
            rx = base.model_copy(update={"latitude": lat, "longitude": lon})
        rx._block_document_name = receiver_name(base) + (f"-{copy + 1}" if copy else "")
        out_rx.append(rx)
        out_entries.append(entry)
    return out_rx, out_entries


SimulatorMode = Literal["auto", "inline", "process"]
SIMULATOR_MODES: tuple[str, ...] = get_args(SimulatorMode)
# "auto" serves up to this many receivers in-process, more from a child process.
INLINE_MAX_RECEIVERS = 16


def serve_simulated_network(
    simulator: str = "auto", **options: Any
) -> tuple[SimulatedNetwork | SimulatorProcess, list[KiwiSDRReceiver]]:
    """:func:`simulated_network` (same ``options``), ready to be served where ``simulator``
    says: ``"process"`` a child process, ``"inline"`` a thread of this process, ``"auto"``
    a child process above ``INLINE_MAX_RECEIVERS`` receivers (on POSIX, where its pipes
    can be waited on), else inline.

    Why a process: the simulator paces every session in real time, and in the flow's own
    process it competed with capture and processing for one GIL: at 200 x 60 s about half
    the sessions saw 5 s frame stalls and were retried; served from a child, 200/200 with
    none. Why not always: the child's start (an interpreter, numpy, websockets) costs
    ~0.2 s of the ~1.2 s a warm 7 x 2 s run spends beyond its capture, and a handful of
    receivers never contends. The in-process network also serves the tests that inject
    faults and read its command logs and connection counts.
    """
    if simulator not in SIMULATOR_MODES:
        allowed = ", ".join(repr(m) for m in SIMULATOR_MODES)
        raise ValueError(f"simulator={simulator!r}: use one of {allowed}")
    network, receivers = simulated_network(**options)
    inline = os.name != "posix" or len(receivers) <= INLINE_MAX_RECEIVERS
    if simulator == "inline" or (simulator == "auto" and inline):
        return network, receivers
    return SimulatorProcess(network), receivers


class _Served(Protocol):
    def url(self, name: str) -> str: ...


def bind_urls(network: _Served, receivers: list[KiwiSDRReceiver]) -> None:
    """Point each receiver at its simulated port (call after ``network.start()``)."""
    for rx in receivers:
        rx.url = network.url(receiver_name(rx))
