"""Planning: the start instant, robust /status checks, receiver selection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from blocks.receiver import KiwiSDRReceiver, simulated_network
from blocks.resolve import select_receivers
from tasks.capture import check_status
from tasks.kiwisdr.status import parse_status
from tasks.plan import choose_start


def test_start_is_a_whole_second_after_the_lead() -> None:
    now = datetime(2026, 11, 28, 12, 0, 0, 900_000, tzinfo=UTC)
    start = choose_start(2.0, receivers=7, now=now)
    # 12:00:00.9 + 2 s + 7 x 20 ms = 12:00:03.04 -> the next whole second
    assert start == datetime(2026, 11, 28, 12, 0, 4, tzinfo=UTC)
    assert start - now >= timedelta(seconds=2.14)
    assert choose_start(0.5, 1, now=now) == datetime(2026, 11, 28, 12, 0, 2, tzinfo=UTC)


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
