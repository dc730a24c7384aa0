"""Planning: the start instant, robust /status checks, receiver selection."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from blocks.receiver import KiwiSDRReceiver
from blocks.resolve import select_receivers
from tasks.capture import StartBarrier, check_status, ns_to_datetime, start_margin_s
from tasks.kiwisdr.network import simulated_network
from tasks.kiwisdr.status import parse_status


def test_start_instant_is_fixed_when_all_captures_are_ready() -> None:
    """Three captures in three threads (each with its own event loop, like the task
    runner's): the instant is set when the last is ready, plus the margin, to the us."""
    barrier = StartBarrier(3, margin_s=0.25, timeout_s=5.0)
    got: list[int] = []
    ready_at: list[int] = []

    def party(delay_s: float) -> None:
        time.sleep(delay_s)
        ready_at.append(time.time_ns())
        got.append(asyncio.run(barrier.ready()))

    threads = [threading.Thread(target=party, args=(d,)) for d in (0.0, 0.1, 0.3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(got)) == 1
    instant = got[0]
    assert instant % 1000 == 0  # whole microseconds, no whole-second round-up
    lead_ns = instant - max(ready_at)
    assert 0.25e9 <= lead_ns < 0.25e9 + 50e6
    assert ns_to_datetime(instant).timestamp() == pytest.approx(instant / 1e9, abs=1e-6)


def test_start_instant_does_not_wait_for_a_capture_that_never_comes() -> None:
    barrier = StartBarrier(3, margin_s=0.1, timeout_s=0.3)
    barrier.leave()  # one receiver dropped out before capturing
    t0 = time.time_ns()
    instant = asyncio.run(barrier.ready())  # the third never arrives: the timeout rules
    waited = time.time_ns() - t0
    assert 0.3e9 <= waited < 1.0e9
    assert instant - t0 - waited + 50e6 >= 0.1e9
    assert asyncio.run(barrier.ready()) == instant  # a late party gets the same instant


def test_margin_is_one_slow_round_trip_past_the_host_clock_allowance() -> None:
    assert start_margin_s([0.01, None, 0.02], 7) == pytest.approx(0.2 + 0.02)
    assert start_margin_s([], 200) == pytest.approx(0.2 + 0.05)
    assert start_margin_s([100.0], 1) == 30.0


def test_status_page_without_a_fix_parses() -> None:
    status = parse_status("users=0\nusers_max=4\ngps=(-, -)\ngps_good=0\n")
    assert (status.latitude, status.longitude, status.gps_fix) == (None, None, False)


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:1"])
def test_a_broken_receiver_is_skipped_not_fatal(url: str) -> None:
    rx = KiwiSDRReceiver.model_construct(url=url, latitude=45.0, longitude=7.0)
    check = asyncio.run(check_status("broken", rx, timeout_s=2.0))
    assert not check.ok
    assert check.reason.startswith("status check failed:")


def test_named_disabled_receiver_is_an_error() -> None:
    _, receivers = simulated_network()
    available = {r._block_document_name or "": r for r in receivers}
    available["torino"] = available["torino"].model_copy(update={"enabled": False})
    with pytest.raises(ValueError, match=r"receivers: torino disabled \(enabled: false"):
        select_receivers(available, ["torino", "genova"], None)
    assert "torino" not in select_receivers(available, None, None)


def test_simulated_network_scales_around_the_seed_area() -> None:
    network, receivers = simulated_network(count=50, emitter_at=(45.1, 8.3), modulation="bpsk")
    names = [r._block_document_name for r in receivers]
    assert len(set(names)) == 50 and names[7] == "aquila-di-giaveno-2"
    seed = {r._block_document_name: r for r in receivers[:7]}
    for rx in receivers[7:]:
        base = seed[rx._block_document_name.rsplit("-", 1)[0]]
        assert abs(rx.latitude - base.latitude) + abs(rx.longitude - base.longitude) > 0
        assert abs(rx.latitude - base.latitude) <= 0.3 + 1e-9
    positions = {(round(r.latitude, 6), round(r.longitude, 6)) for r in receivers}
    assert len(positions) == 50  # no two receivers on the same spot
    assert (network.emitter.latitude, network.emitter.longitude) == (45.1, 8.3)
    assert network.emitter.modulation == "bpsk"
    assert set(network.receivers) == set(names)
    with pytest.raises(ValueError, match="modulation"):
        simulated_network(modulation="no-such-modulation")


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ("gps_good=0\nfixes_min=0\ntdoa_ch=4", "GPS not locked (gps_good=0)"),
        ("gps_good=9\nfixes_min=30\ntdoa_ch=-1", "GPS timestamps are turned off (tdoa_ch=-1)"),
        ("gps_good=9\nfixes_min=0\ntdoa_ch=4", "no GPS fix in the last minute (fixes_min=0)"),
        ("gps_good=9\nfixes_min=30\ntdoa_ch=4", None),
    ],
)
def test_require_gps_skips_receivers_whose_timestamps_are_unusable(
    lines: str, reason: str | None
) -> None:
    from tasks.capture import StatusCheck
    from tasks.plan import skip_reason

    status = parse_status(f"users=0\nusers_max=4\n{lines}\n")
    check = StatusCheck("rx", True, "", status, 0.01)
    assert skip_reason(check, require_gps=False) is None
    got = skip_reason(check, require_gps=True)
    assert (got is None) if reason is None else (got is not None and got.startswith(reason))
