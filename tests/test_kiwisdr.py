"""The real async KiwiSDR client against the real simulator over loopback websockets.

No mocks: every test opens real websockets to a :class:`SimulatedNetwork` running in a
background thread, and checks what the client recorded against what the simulator
regenerates (bit for bit), against the emitter's ground truth (delay, power, carrier
offset), and against the simulator's log of client commands and connection attempts.
Frames come in real time, so captures are kept short (0.3-0.5 s).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.signal
from websockets.asyncio.server import ServerConnection, serve

from blocks.receiver import KiwiSDRReceiver
from tasks import dsp
from tasks.capture import StageFailed, StartBarrier, StatusCheck, capture_at, check_status
from tasks.kiwisdr import codec
from tasks.kiwisdr.client import Capture, CaptureSettings, capture_iq
from tasks.kiwisdr.emitter import Emitter
from tasks.kiwisdr.errors import (
    AuthenticationFailed,
    FrequencyOutOfRange,
    GpsUnusable,
    KiwiSDRError,
    ProtocolError,
    ReceiverBusy,
    ReceiverDown,
    ReceiverUnreachable,
    StreamDropped,
    StreamStalled,
    bad_password_error,
    is_transient,
)
from tasks.kiwisdr.simulator import Faults, SimulatedNetwork, SimulatedReceiver
from tasks.kiwisdr.status import fetch_status, require_gps
from tasks.timing import NS_PER_S, datetime_to_ns, ns_to_datetime

RF_HZ = 145.5e6  # the 2 m emitter; behind a 116 MHz down-converter the Kiwi dials 29500 kHz
OFFSET_KHZ = 116000.0
DIAL_KHZ = 29500.0
HF_HZ = 14.2e6  # what the bare (HF-only) receiver is tuned to
PASSBAND = (-5000.0, 5000.0)
SHORT_S = 0.3
PASSWORD = "hunter2"
N = codec.SAMPLES_PER_FRAME
RANGE_2M = (144e6, 146e6)


def _rx(name: str, lat: float, lon: float, **kwargs: object) -> SimulatedReceiver:
    kwargs.setdefault("freq_offset_khz", OFFSET_KHZ)
    return SimulatedReceiver(name=name, latitude=lat, longitude=lon, altitude_m=300, **kwargs)


@pytest.fixture(scope="module")
def remote() -> Iterator[SimulatedNetwork]:
    """A second network whose one receiver is the target of the main network's redirect."""
    emitter = Emitter(44.90, 8.20, 300, RF_HZ, eirp_dbm=40.0, seed=3)
    with SimulatedNetwork(
        [_rx("target", 45.10, 7.60, sample_rate=12000.874, lo_ppm=-0.3)], emitter, seed=5
    ) as net:
        yield net


@pytest.fixture(scope="module")
def network(remote: SimulatedNetwork) -> Iterator[SimulatedNetwork]:
    """2 m carrier emitter, healthy receivers, and one receiver per injected fault."""
    emitter = Emitter(44.90, 8.20, 300, RF_HZ, eirp_dbm=40.0, modulation="carrier", seed=7)
    receivers = [
        _rx("alpha", 45.02, 7.29, sample_rate=12001.135, lo_ppm=0.40),
        _rx("bravo", 45.234, 7.857, sample_rate=12000.981, lo_ppm=-0.25, password=PASSWORD),
        # A bare KiwiSDR on 3-channel firmware: HF only, nominal 20250 Hz.
        _rx("hf", 45.5, 9.1, sample_rate=20250.518, freq_offset_khz=0.0),
        _rx("single", 45.3, 7.9, users_max=1),
        _rx("refuse", 45.1, 7.5, faults=Faults(refuse=True)),
        _rx("busy", 45.1, 7.5, faults=Faults(too_busy=True)),
        _rx("down", 45.1, 7.5, faults=Faults(down=True)),
        _rx("drop", 45.1, 7.5, faults=Faults(drop_after_frames=2)),
        _rx("drop-twice", 45.1, 7.5, faults=Faults(drop_after_frames=2, drop_attempts=2)),
        _rx("stall", 45.1, 7.5, faults=Faults(stall_after_frames=3)),
        _rx("malformed", 45.1, 7.5, faults=Faults(malformed_at_frame=2)),
        _rx("lossy", 45.2, 7.7, sample_rate=12001.412, faults=Faults(lost_frames=(2, 3))),
        _rx("nogps", 45.1, 7.5, faults=Faults(no_gps=True)),
        _rx("redirector", 45.1, 7.5, faults=Faults(redirect_to=remote.url("target"))),
    ]
    with SimulatedNetwork(receivers, emitter, seed=11) as net:
        yield net


@pytest.fixture(scope="module")
def tdoa_network() -> Iterator[SimulatedNetwork]:
    """A BPSK emitter on HF heard by a near and a far receiver with the same sample rate."""
    emitter = Emitter(45.0, 7.5, 200, 10.1e6, eirp_dbm=20.0, modulation="bpsk", symbol_rate=2400)
    receivers = [
        _rx("near", 45.05, 7.52, freq_offset_khz=0.0, sample_rate=12001.135),
        _rx("far", 43.0, 8.6, freq_offset_khz=0.0, sample_rate=12001.135),
    ]
    with SimulatedNetwork(receivers, emitter, seed=13) as net:
        yield net


# --- helpers ------------------------------------------------------------------------------


def settings(
    frequency_hz: float = RF_HZ, duration_s: float = SHORT_S, **kw: object
) -> CaptureSettings:
    return CaptureSettings(frequency_hz=frequency_hz, duration_s=duration_s, **kw)


def grab(
    net: SimulatedNetwork,
    name: str,
    s: CaptureSettings | None = None,
    *,
    url_of: str | None = None,
    **kwargs: object,
) -> Capture:
    """One capture with the real client (offset from the simulated receiver by default)."""
    kwargs.setdefault("freq_offset_khz", net.receivers[name].freq_offset_khz)
    return asyncio.run(
        capture_iq(net.url(url_of or name), s or settings(), receiver=name, **kwargs)
    )


def first_sample_index(net: SimulatedNetwork, cap: Capture, name: str | None = None) -> int:
    """Absolute sample index of the capture's sample 0, from its fitted timing model."""
    assert cap.timing is not None and cap.first_sample_ns is not None
    exact = net.sample_index_at(name or cap.receiver, cap.first_sample_ns)
    index = round(exact)
    assert abs(exact - index) < 0.01, "sample 0 is not on the simulator's sample grid"
    return index


def as_int16(samples: np.ndarray) -> np.ndarray:
    """complex64 full scale 1.0 back to the (n, 2) int16 the server sent (checked exact)."""
    scaled = np.column_stack([samples.real, samples.imag]).astype(np.float64) * 32768.0
    assert np.array_equal(scaled, np.rint(scaled)), "samples are not int16 / 32768"
    return scaled.astype(np.int16)


def assert_bit_exact(
    net: SimulatedNetwork,
    name: str,
    cap: Capture,
    rf_hz: float,
    *,
    passband: tuple[float, float] = PASSBAND,
) -> int:
    """Every sample equals the simulator's regeneration; gaps are zeros. Returns index 0."""
    index0 = first_sample_index(net, cap, name)
    got = as_int16(cap.samples)
    assert got.shape == (cap.frames_expected * N, 2)
    expected = net.samples_iq(name, index0, got.shape[0], rf_hz, passband).copy()
    for start, count in cap.gaps:
        assert not got[start : start + count].any(), f"gap at {start} is not zero-filled"
        expected[start : start + count] = 0
    np.testing.assert_array_equal(got, expected, err_msg=name)
    return index0


def whole_second_ahead(seconds: float = 1.0) -> datetime:
    now = datetime.now(UTC) + timedelta(seconds=seconds)
    return now.replace(microsecond=0) + timedelta(seconds=1)


def handshake(*, freq_khz: float = DIAL_KHZ, gain: int = 50) -> list[str]:
    """The client commands kiwisdr-protocol.md prescribes, in order (password masked)."""
    return [
        "SET auth t=kiwi p=***",
        "SET AR OK in=12000 out=44100",
        "SET squelch=0 max=0",
        "SET genattn=0",
        "SET gen=0 mix=-1",
        "SET ident_user=rf-acquisition",
        f"SET mod=iq low_cut=-5000 high_cut=5000 freq={freq_khz:.3f}",
        f"SET agc=0 hang=0 thresh=-100 slope=6 decay=1000 manGain={gain}",
        "SET keepalive",
    ]


def block(net: SimulatedNetwork, name: str, **kwargs: object) -> KiwiSDRReceiver:
    rx = net.receivers[name]
    return KiwiSDRReceiver(
        url=net.url(name),
        latitude=rx.latitude,
        longitude=rx.longitude,
        min_frequency_hz=RANGE_2M[0],
        max_frequency_hz=RANGE_2M[1],
        freq_offset_khz=rx.freq_offset_khz,
        **kwargs,
    )


# --- 1. bit-exact samples -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rf_hz", "dial_khz", "password"),
    [
        ("alpha", RF_HZ, DIAL_KHZ, None),  # 2 m behind the 116 MHz down-converter
        ("bravo", RF_HZ, DIAL_KHZ, PASSWORD),  # another true rate, password protected
        ("hf", HF_HZ, 14200.0, None),  # bare Kiwi at 20250.518 Hz, carrier out of band
    ],
)
def test_samples_are_bit_exact(
    network: SimulatedNetwork, name: str, rf_hz: float, dial_khz: float, password: str | None
) -> None:
    rx = network.receivers[name]
    cap = grab(network, name, settings(rf_hz), password=password)
    assert cap.receiver == name
    assert cap.sample_rate == rx.sample_rate
    assert cap.tuned_khz == dial_khz
    assert cap.freq_offset_khz == rx.freq_offset_khz
    assert cap.frequency_hz == rf_hz
    assert cap.frames_expected == math.ceil(SHORT_S * rx.sample_rate / N)
    assert cap.frames_received == cap.frames_expected
    assert cap.samples.dtype == np.complex64
    assert cap.lost_frames == 0 and cap.gaps == []
    assert cap.gps_fix and not cap.little_endian
    assert cap.adc_overflow_frames == 0
    np.testing.assert_array_equal(cap.frame_seq, np.arange(1, cap.frames_expected + 1))
    assert cap.timing is not None and cap.timing.gps
    assert cap.timing.sample_rate_hz == pytest.approx(rx.true_sample_rate, abs=0.01)
    assert cap.timing.residual_ns < 1000
    assert cap.stamps[0].gpssec == 0 and cap.stamps[0].gpsnsec == 0  # as real Kiwis send
    index0 = assert_bit_exact(network, name, cap, rf_hz)
    assert index0 > 0
    if name == "hf":  # the 2 m carrier cannot leak into an HF passband: noise only
        assert 10 * np.log10(np.mean(np.abs(cap.samples) ** 2)) < -55


# --- 2. GPS time --------------------------------------------------------------------------


def test_first_sample_time_matches_simulator(network: SimulatedNetwork) -> None:
    cap = grab(network, "alpha")
    index0 = first_sample_index(network, cap)
    truth_ns = network.sample_utc_ns("alpha", index0)
    assert cap.first_sample_ns is not None and abs(cap.first_sample_ns - truth_ns) <= 100
    assert cap.start_utc == ns_to_datetime(cap.first_sample_ns)
    assert cap.start_utc.tzinfo is not None
    # And it is "now": the capture just happened.
    assert abs((datetime.now(UTC) - cap.start_utc).total_seconds()) < 5


def test_start_at_aligns_first_sample(network: SimulatedNetwork) -> None:
    start_at = whole_second_ahead(1.0)
    cap = grab(network, "bravo", settings(start_at=start_at), password=PASSWORD)
    index0 = assert_bit_exact(network, "bravo", cap, RF_HZ)
    truth_ns = network.sample_utc_ns("bravo", index0)
    period_ns = NS_PER_S / network.receivers["bravo"].true_sample_rate
    # Sample 0 is the first sample at or after the instant: within one sample period.
    assert 0 <= truth_ns - datetime_to_ns(start_at) < period_ns
    assert cap.first_sample_ns is not None and abs(cap.first_sample_ns - truth_ns) <= 100
    assert cap.start_offset_ns is not None and -100 <= cap.start_offset_ns < period_ns + 100


# --- 3. handshake and keepalive -----------------------------------------------------------


def test_handshake_order(network: SimulatedNetwork) -> None:
    before = len(network.commands("alpha"))
    connections = network.connections("alpha")
    grab(network, "alpha")
    assert network.connections("alpha") == connections + 1
    assert network.commands("alpha")[before:] == handshake()


def test_handshake_masks_password(network: SimulatedNetwork) -> None:
    before = len(network.commands("bravo"))
    cap = grab(network, "bravo", settings(gain_db=37.0), password=PASSWORD)
    sent = network.commands("bravo")[before:]
    assert sent == handshake(gain=37)
    assert not any(PASSWORD in c for c in sent)
    # The server's messages are kept (badp=0 and the converter offset among them).
    assert cap.server["badp"] == "0"
    assert float(cap.server["freq_offset"]) == OFFSET_KHZ
    assert cap.server["audio_rate"] == "12000"


def test_keepalive_about_once_a_second(network: SimulatedNetwork) -> None:
    before = len(network.commands("alpha"))
    t0 = time.monotonic()
    cap = grab(network, "alpha", settings(duration_s=2.5))
    elapsed = time.monotonic() - t0
    sent = network.commands("alpha")[before:]
    assert sent[: len(handshake())] == handshake()
    periodic = sent[len(handshake()) :]
    assert set(periodic) == {"SET keepalive"}
    assert 2 <= len(periodic) <= math.ceil(elapsed)
    assert cap.frames_received == math.ceil(2.5 * cap.sample_rate / N)


# --- 4. little-endian samples -------------------------------------------------------------


def test_little_endian(network: SimulatedNetwork) -> None:
    before = len(network.commands("alpha"))
    cap = grab(network, "alpha", settings(little_endian=True))
    assert cap.little_endian
    assert "SET little-endian" in network.commands("alpha")[before:]
    assert_bit_exact(network, "alpha", cap, RF_HZ)


# --- 5. faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error", "extra"),
    [
        ("refuse", ReceiverUnreachable, {}),
        ("busy", ReceiverBusy, {}),
        ("down", ReceiverDown, {}),
        ("drop", StreamDropped, {}),
        ("stall", StreamStalled, {"frame_timeout_s": 0.5}),
        ("malformed", ProtocolError, {}),
    ],
)
def test_fault_raises_typed_error(
    network: SimulatedNetwork, name: str, error: type[KiwiSDRError], extra: dict
) -> None:
    connections = network.connections(name)
    t0 = time.monotonic()
    with pytest.raises(error) as info:
        grab(network, name, settings(**extra))
    assert time.monotonic() - t0 < 3.0
    assert type(info.value) is error
    assert info.value.receiver == name
    assert is_transient(info.value) is (error is not ProtocolError)
    # A refused port never sees a websocket; every other fault is one connection.
    assert network.connections(name) == connections + (0 if name == "refuse" else 1)
    if name == "drop":
        assert "after 2 of" in str(info.value)
    if name == "stall":
        assert "IQ frame" in str(info.value)


def test_close_during_handshake_is_stream_dropped() -> None:
    """Regression: a close first seen by a *send* (the tuning commands) used to escape as
    a raw websockets ConnectionClosedOK, which is_transient() rejects, so no retry. The
    simulator never closes there, so this one talks to a minimal real websocket server."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(codec.encode_msg(sample_rate="12001.135000"))
        await ws.recv()  # SET auth
        await ws.send(codec.encode_msg(badp=0))
        await ws.send(codec.encode_msg(audio_init=0, audio_rate=12000))
        await ws.close()

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            await capture_iq(f"http://127.0.0.1:{port}", settings(HF_HZ), receiver="closer")

    with pytest.raises(StreamDropped) as info:
        asyncio.run(scenario())
    assert is_transient(info.value)
    assert info.value.receiver == "closer"


def test_wrong_password_is_permanent(network: SimulatedNetwork) -> None:
    for wrong in ("not-it", None):
        with pytest.raises(AuthenticationFailed) as info:
            grab(network, "bravo", password=wrong)
        assert not is_transient(info.value)
        assert "badp=1" in str(info.value)
    cap = grab(network, "bravo", password=PASSWORD)
    assert cap.frames_received == cap.frames_expected


def test_lost_frames_are_zero_filled_gaps(network: SimulatedNetwork) -> None:
    cap = grab(network, "lossy")
    assert cap.frames_expected == math.ceil(SHORT_S * 12001.412 / N) == 8
    assert cap.lost_frames == 2
    assert cap.frames_received == 6
    assert cap.gaps == [(2 * N, 1024)]
    assert not cap.samples[2 * N : 4 * N].any()
    np.testing.assert_array_equal(cap.frame_seq, [1, 2, 5, 6, 7, 8, 9, 10][: cap.frames_received])
    assert cap.smeter.size == cap.frame_gps_s.size == 6
    # The time axis stays true: frame 4 is three frames after frame 1 (frame 0 is 0/0).
    assert cap.frame_gps_s[2] - cap.frame_gps_s[1] == pytest.approx(3 * N / 12001.412, abs=2e-9)
    assert_bit_exact(network, "lossy", cap, RF_HZ)
    # Per-frame timing as the recording keeps it: positions skip the gap, and each frame's
    # GPS offset is its position over the true rate (to the nanosecond rounding).
    timing = cap.frame_timing()
    # (the 0/0 first frame has no stamp to keep)
    assert timing["frame_sample_start"] == [N, 4 * N, 5 * N, 6 * N, 7 * N]
    expected = [k / 12001.412 for k in timing["frame_sample_start"]]
    assert timing["frame_gps_offset_s"] == pytest.approx(expected, abs=2e-9)
    assert timing["gps_fix"] is True
    assert timing["first_frame_gps_seconds_of_week"] == pytest.approx(cap.frame_gps_s[1], abs=1e-9)


def test_no_gps_clears_fix(network: SimulatedNetwork) -> None:
    cap = grab(network, "nogps")
    assert not cap.gps_fix
    assert cap.timing is not None and not cap.timing.locked
    assert "no_gps" in cap.timing.flags and "host_clock" in cap.timing.flags
    assert cap.frames_received == cap.frames_expected
    # Host-clock estimate of the start: recent, though not GPS-accurate.
    assert abs((datetime.now(UTC) - cap.start_utc).total_seconds()) < 5


def test_redirect_is_followed_once(network: SimulatedNetwork, remote: SimulatedNetwork) -> None:
    before = len(network.commands("redirector"))
    target_before = len(remote.commands("target"))
    connections = (network.connections("redirector"), remote.connections("target"))
    cap = grab(network, "redirector")
    assert (network.connections("redirector"), remote.connections("target")) == (
        connections[0] + 1,
        connections[1] + 1,
    )
    assert network.commands("redirector")[before:] == ["SET auth t=kiwi p=***"]
    assert remote.commands("target")[target_before:] == handshake()
    assert cap.receiver == "redirector"
    assert cap.sample_rate == remote.receivers["target"].sample_rate
    assert_bit_exact(remote, "target", cap, RF_HZ)


def test_out_of_range_fails_before_connecting(network: SimulatedNetwork) -> None:
    connections = network.connections("alpha")
    with pytest.raises(FrequencyOutOfRange) as info:
        grab(network, "alpha", settings(147e6), tunable_range_hz=RANGE_2M)
    assert not is_transient(info.value)
    assert "tunable range" in str(info.value)
    assert network.connections("alpha") == connections


@pytest.mark.parametrize(
    ("name", "rf_hz", "client_offset_khz", "dial"),
    [
        ("alpha", 150e6, OFFSET_KHZ, "34000.000"),  # beyond 30 MHz behind the converter
        # Configured as a 2 m station, but the server says it has no converter: its
        # offset wins, and 145.5 MHz cannot be tuned on a bare Kiwi.
        ("hf", RF_HZ, OFFSET_KHZ, "145500.000"),
    ],
)
def test_dial_outside_kiwi_coverage(
    network: SimulatedNetwork, name: str, rf_hz: float, client_offset_khz: float, dial: str
) -> None:
    connections = network.connections(name)
    before = len(network.commands(name))
    with pytest.raises(FrequencyOutOfRange) as info:
        grab(network, name, settings(rf_hz), freq_offset_khz=client_offset_khz)
    assert not is_transient(info.value)
    assert f"{dial} kHz" in str(info.value)
    assert network.connections(name) == connections + 1
    # Refused before tuning: nothing past the authentication was sent.
    assert network.commands(name)[before:] == ["SET auth t=kiwi p=***"]


# --- 6. retries in the capture step -------------------------------------------------------


def capture_with_retries(name: str, receiver: KiwiSDRReceiver, s: CaptureSettings) -> Capture:
    """The pipeline's capture step (tasks.capture.capture_at), no backoff between tries."""
    log = logging.getLogger("test-capture")
    return asyncio.run(capture_at(name, receiver, s, StartBarrier(1, 0.2), log, backoff_s=0.0))


def test_capture_retries_dropped_stream(network: SimulatedNetwork) -> None:
    assert network.connections("drop-twice") == 0
    cap = capture_with_retries("drop-twice", block(network, "drop-twice"), settings())
    assert network.connections("drop-twice") == 3
    assert cap.attempts == 3
    assert cap.frames_received >= cap.frames_expected
    assert_bit_exact(network, "drop-twice", cap, RF_HZ)


def test_capture_does_not_retry_wrong_password(network: SimulatedNetwork) -> None:
    connections = network.connections("bravo")
    with pytest.raises(StageFailed) as info:
        capture_with_retries("bravo", block(network, "bravo", password="wrong"), settings())
    assert isinstance(info.value.__cause__, AuthenticationFailed)
    assert info.value.attempts == 1
    assert network.connections("bravo") == connections + 1


def test_capture_retries_busy_three_times(network: SimulatedNetwork) -> None:
    connections = network.connections("busy")
    with pytest.raises(StageFailed) as info:
        capture_with_retries("busy", block(network, "busy"), settings())
    assert isinstance(info.value.__cause__, ReceiverBusy)
    assert info.value.attempts == 4
    assert network.connections("busy") == connections + 4


# --- 7. /status ---------------------------------------------------------------------------


def test_status_page(network: SimulatedNetwork) -> None:
    rx = network.receivers["alpha"]
    status = asyncio.run(fetch_status(network.url("alpha")))
    assert status.users == 0 and status.users_max == 4 and not status.full
    assert status.latitude == pytest.approx(rx.latitude)
    assert status.longitude == pytest.approx(rx.longitude)
    assert status.antenna == rx.antenna
    assert status.gps_fix and not status.offline
    assert "alpha" in status.name
    assert float(status.raw["freq_offset"]) == OFFSET_KHZ
    assert not asyncio.run(fetch_status(network.url("nogps"))).gps_fix
    down = asyncio.run(check_status("down", block(network, "down")))
    assert not down.ok and "offline" in down.reason


def test_status_unreachable(network: SimulatedNetwork) -> None:
    with pytest.raises(ReceiverUnreachable) as info:
        asyncio.run(fetch_status(network.url("refuse"), timeout_s=2.0))
    assert is_transient(info.value)
    result = asyncio.run(check_status("refuse", block(network, "refuse"), timeout_s=2.0))
    assert not result.ok and result.status is None
    assert "status check failed" in result.reason


def test_status_counts_users_while_capturing(network: SimulatedNetwork) -> None:
    url = network.url("single")
    receiver = block(network, "single")

    async def scenario() -> tuple[list[int], StatusCheck, BaseException | None, Capture, int]:
        idle = await check_status("single", receiver)
        running = asyncio.create_task(
            capture_iq(url, settings(duration_s=1.0), receiver="single", freq_offset_khz=OFFSET_KHZ)
        )
        users = [(await fetch_status(url)).users]
        deadline = time.monotonic() + 2.0
        while users[-1] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            users.append((await fetch_status(url)).users)
        busy = await check_status("single", receiver)
        second: BaseException | None = None
        try:
            await capture_iq(url, settings(), receiver="single", freq_offset_khz=OFFSET_KHZ)
        except KiwiSDRError as exc:
            second = exc
        cap = await running
        after = (await fetch_status(url)).users
        deadline = time.monotonic() + 2.0
        while after and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            after = (await fetch_status(url)).users
        assert idle.ok and idle.status is not None and idle.status.users == 0
        return users, busy, second, cap, after

    users, busy, second, cap, after = asyncio.run(scenario())
    assert users[-1] == 1
    assert not busy.ok and "full" in busy.reason
    assert busy.status is not None
    assert busy.status.users == 1 and busy.status.users_max == 1
    assert isinstance(second, ReceiverBusy)  # the one channel is taken
    assert cap.frames_received == cap.frames_expected
    assert after == 0


# --- 8. the emitter model: TDOA, power, carrier offset ------------------------------------


def _peak_lag(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    """Lag (samples) by which ``b`` trails ``a``, parabolic-interpolated |xcorr| peak."""
    c = np.abs(scipy.signal.correlate(b, a, mode="full", method="fft"))
    lags = scipy.signal.correlation_lags(b.size, a.size, mode="full")
    window = np.abs(lags) <= max_lag
    c, lags = c[window], lags[window]
    k = int(np.argmax(c))
    assert 0 < k < c.size - 1
    y0, y1, y2 = c[k - 1], c[k], c[k + 1]
    return float(lags[k] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2))


def test_tdoa_between_two_receivers(tdoa_network: SimulatedNetwork) -> None:
    net = tdoa_network
    f_hz = net.emitter.frequency_hz
    start_at = whole_second_ahead(1.0)
    s = settings(f_hz, 0.5, start_at=start_at)

    async def both() -> list[Capture]:
        return await asyncio.gather(
            *(capture_iq(net.url(n), s, receiver=n) for n in ("near", "far"))
        )

    near, far = asyncio.run(both())
    fs = near.sample_rate
    assert far.sample_rate == fs
    # Same start instant, same sample grid: the very same frames in GPS time.
    np.testing.assert_array_equal(near.frame_gps_s, far.frame_gps_s)
    assert first_sample_index(net, near) == first_sample_index(net, far)
    assert near.first_sample_ns == far.first_sample_ns
    assert near.start_utc == far.start_utc >= start_at
    for name, cap in (("near", near), ("far", far)):
        assert cap.adc_overflow_frames == 0 and cap.lost_frames == 0
        assert_bit_exact(net, name, cap, f_hz)

    t_near, t_far = net.truth("near", f_hz), net.truth("far", f_hz)
    expected = (t_far.delay_s - t_near.delay_s) * fs
    assert expected > 5  # a meaningful delay: ~240 km of path difference
    measured = _peak_lag(near.samples.astype(np.complex128), far.samples, max_lag=64)
    assert abs(measured - expected) < 1.0, (measured, expected)


def test_power_and_carrier_offset_match_truth(network: SimulatedNetwork) -> None:
    cap = grab(network, "alpha", settings(duration_s=0.5))
    truth = network.truth("alpha", RF_HZ)
    assert truth.cn0_dbhz > 60  # strong carrier: noise adds < 0.01 dB to the power
    assert abs(truth.frequency_offset_hz - (-0.40e-6 * RF_HZ)) < 1e-3
    power = 10 * np.log10(np.mean(np.abs(cap.samples.astype(np.complex128)) ** 2))
    assert abs(power - truth.power_dbfs) < 0.5
    m = dsp.measure(cap.samples, cap.sample_rate)
    assert abs(m.signal_power_dbfs - truth.power_dbfs) < 0.5
    cfo = dsp.carrier_offset_hz(cap.samples, cap.sample_rate)
    assert abs(cfo - truth.frequency_offset_hz) < 1.0
    # The S-meter reports the same power in dBm (0.1 dB steps).
    rssi = np.array([codec.smeter_to_dbm(int(v)) for v in cap.smeter])
    assert np.all(np.abs(rssi - truth.received_dbm) < 0.5)


def test_password_is_not_sent_to_another_host_on_redirect() -> None:
    """A redirect to a different host name gets no password; the same host keeps it."""
    emitter = Emitter(44.90, 8.20, 300, RF_HZ, eirp_dbm=40.0, seed=3)
    with SimulatedNetwork([_rx("locked", 45.1, 7.6, password=PASSWORD)], emitter) as target:
        port = target.ports["locked"]
        redirectors = [
            _rx("same-host", 45.1, 7.5, password=PASSWORD,
                faults=Faults(redirect_to=f"http://127.0.0.1:{port}")),
            _rx("other-host", 45.1, 7.5, password=PASSWORD,
                faults=Faults(redirect_to=f"http://localhost:{port}")),
        ]  # fmt: skip
        with SimulatedNetwork(redirectors, emitter) as net:
            s = settings()
            same = asyncio.run(
                capture_iq(net.url("same-host"), s, receiver="same-host", password=PASSWORD,
                           freq_offset_khz=OFFSET_KHZ)
            )  # fmt: skip
            assert same.frames_received == same.frames_expected
            with pytest.raises(AuthenticationFailed):
                asyncio.run(
                    capture_iq(net.url("other-host"), s, receiver="other-host",
                               password=PASSWORD, freq_offset_khz=OFFSET_KHZ)
                )  # fmt: skip


# --- timing defects of real KiwiSDRs (issue 9) --------------------------------------------


@pytest.fixture(scope="module")
def defects_network() -> Iterator[SimulatedNetwork]:
    """Receivers with every timing defect real KiwiSDRs show, each at its own true rate."""
    emitter = Emitter(45.0, 7.5, 200, 10.1e6, eirp_dbm=20.0, modulation="bpsk", symbol_rate=2400)
    hf = {"freq_offset_khz": 0.0, "gps_fix_interval_s": 1.2}
    receivers = [
        _rx("clean", 45.05, 7.52, sample_rate=12000.0, clock_ppm=86.0, **hf),  # 12001.032 Hz
        _rx("fast", 43.0, 8.6, sample_rate=12000.0, clock_ppm=100.0, **hf),  # 12001.200 Hz
        _rx("stale", 45.2, 7.6, sample_rate=12001.07, faults=Faults(stale_first_s=240.0), **hf),
        _rx(
            "outlier",
            45.3,
            7.7,
            sample_rate=12001.11,
            faults=Faults(outlier_stamps=((3, -5 * 3600.0), (9, 0.002))),
            **hf,
        ),
        _rx("stamps-off", 45.4, 7.8, faults=Faults(timestamps_off=True), **hf),
        _rx("starting", 45.4, 7.8, faults=Faults(badp=2), **hf),
        _rx("updating", 45.4, 7.8, faults=Faults(badp=6), **hf),
        _rx("admin-ip", 45.4, 7.8, faults=Faults(badp=3), **hf),
    ]
    with SimulatedNetwork(receivers, emitter, seed=17) as net:
        yield net


F_HF = 10.1e6


def check_timing(net: SimulatedNetwork, name: str, cap: Capture) -> None:
    """The fitted model against the simulator's exact truth (issue 9 tolerances)."""
    m = cap.timing
    assert m is not None and m.gps
    index0 = first_sample_index(net, cap, name)
    assert abs(m.t0_ns - net.sample_utc_ns(name, index0)) <= 100
    assert m.sample_rate_hz == pytest.approx(net.receivers[name].true_sample_rate, abs=0.01)
    assert m.residual_ns is not None and m.residual_ns < 1000
    assert_bit_exact(net, name, cap, F_HF)


def test_true_rate_from_clock_ppm(defects_network: SimulatedNetwork) -> None:
    assert defects_network.receivers["clean"].true_sample_rate == 12001.032
    assert defects_network.receivers["fast"].true_sample_rate == 12001.2
    cap = grab(defects_network, "fast", settings(F_HF, 1.0))
    assert cap.sample_rate == 12001.2  # the announced rate is the true one
    check_timing(defects_network, "fast", cap)


def test_stamps_are_exact_to_the_nanosecond(defects_network: SimulatedNetwork) -> None:
    cap = grab(defects_network, "clean", settings(F_HF, 0.5))
    net = defects_network
    index0 = first_sample_index(net, cap, "clean")
    for st in cap.stamps[1:]:
        gps_ns = net.sample_gps_ns("clean", index0 + st.sample_index)
        assert (st.gpssec, st.gpsnsec) == (
            gps_ns // NS_PER_S % codec.SECONDS_PER_WEEK,
            gps_ns % NS_PER_S,
        )
    check_timing(net, "clean", cap)


def test_stale_first_stamp_is_not_the_start(defects_network: SimulatedNetwork) -> None:
    cap = grab(defects_network, "stale", settings(F_HF, 0.5))
    assert cap.stamps[0].gpssec != 0  # the first stamp is there, but minutes old
    check_timing(defects_network, "stale", cap)
    assert "first_frame_dropped" in cap.timing.flags  # type: ignore[union-attr]
    assert cap.timing.outliers == 0  # type: ignore[union-attr]


def test_outlier_stamps_marked_fresh_are_dropped(defects_network: SimulatedNetwork) -> None:
    cap = grab(defects_network, "outlier", settings(F_HF, 1.0))
    assert cap.stamps[3].last_gps_solution == 0
    check_timing(defects_network, "outlier", cap)
    assert cap.timing.outliers == 2  # type: ignore[union-attr]
    assert "far_from_host" in cap.timing.flags  # type: ignore[union-attr]


def test_fresh_fixes_counted(defects_network: SimulatedNetwork) -> None:
    cap = grab(defects_network, "clean", settings(F_HF, 3.0))
    m = cap.timing
    assert m is not None
    # A fix every 1.2 s over ~3 s: two or three fresh stamps, so the clock is locked.
    assert 2 <= m.fixes <= 3 and m.locked
    assert m.row_fields()["gps_locked"] is True


def test_timestamps_off_falls_back_to_host_clock(defects_network: SimulatedNetwork) -> None:
    start_at = whole_second_ahead(0.5)
    cap = grab(defects_network, "stamps-off", settings(F_HF, 0.3, start_at=start_at))
    assert not cap.gps_fix
    m = cap.timing
    assert m is not None and not m.locked and "no_gps_stamps" in m.flags
    # Host clock: near the instant, but no GPS accuracy is claimed.
    assert cap.start_offset_ns is not None and abs(cap.start_offset_ns) < 0.5 * NS_PER_S
    status = asyncio.run(fetch_status(defects_network.url("stamps-off")))
    assert status.tdoa_ch == -1 and status.gps_timestamps_off
    with pytest.raises(GpsUnusable, match="tdoa_ch=-1") as info:
        require_gps(status, receiver="stamps-off")
    assert not is_transient(info.value)


def test_status_gps_fields(defects_network: SimulatedNetwork, network: SimulatedNetwork) -> None:
    status = asyncio.run(fetch_status(defects_network.url("clean")))
    assert status.gps_good == 9 and status.fixes_min == 50 and status.tdoa_ch is not None
    assert status.tdoa_ch >= 0 and status.tdoa_problem() is None
    require_gps(status)
    nogps = asyncio.run(fetch_status(network.url("nogps")))
    assert nogps.tdoa_problem() is not None and nogps.tdoa_ch == -1


@pytest.mark.parametrize(
    ("name", "transient", "reason"),
    [
        ("starting", True, "server still starting"),
        ("updating", True, "database update in progress"),
        ("admin-ip", False, "admin connection not allowed from this IP"),
    ],
)
def test_badp_reason_codes(
    defects_network: SimulatedNetwork, name: str, transient: bool, reason: str
) -> None:
    with pytest.raises(KiwiSDRError, match=reason) as info:
        grab(defects_network, name, settings(F_HF))
    assert is_transient(info.value) is transient
    assert f"badp={defects_network.receivers[name].faults.badp}" in str(info.value)


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5, 6, 7, "x"])
def test_badp_codes_classified(code: object) -> None:
    exc = bad_password_error(code, receiver="rx")  # type: ignore[arg-type]
    assert is_transient(exc) is (code in (2, 6))
    assert f"badp={code}" in str(exc) and str(exc).startswith("rx: ")


def test_two_receivers_aligned_to_one_sample(defects_network: SimulatedNetwork) -> None:
    """Different true rates, an integer-ns instant: both first samples within one period."""
    net = defects_network
    start_ns = datetime_to_ns(whole_second_ahead(0.5)) + 123_456_789
    s = settings(F_HF, 1.0, start_at=start_ns)

    async def both() -> list[Capture]:
        return await asyncio.gather(
            *(capture_iq(net.url(n), s, receiver=n) for n in ("clean", "fast"))
        )

    caps = asyncio.run(both())
    firsts = []
    for name, cap in zip(("clean", "fast"), caps, strict=True):
        check_timing(net, name, cap)
        period = NS_PER_S / net.receivers[name].true_sample_rate
        truth = net.sample_utc_ns(name, first_sample_index(net, cap, name))
        assert 0 <= truth - start_ns < period  # the first sample at/after the instant
        assert cap.start_offset_ns is not None and -100 <= cap.start_offset_ns < period + 100
        firsts.append(truth)
    assert abs(firsts[0] - firsts[1]) < NS_PER_S / 12001.0


def test_instant_already_passed_reports_lateness(defects_network: SimulatedNetwork) -> None:
    """An instant before the session's first frame: capture from the first frame on, and
    say how late sample 0 is instead of pretending to be aligned."""
    start_ns = time.time_ns() - 2 * NS_PER_S
    cap = grab(defects_network, "clean", settings(F_HF, 0.3, start_at=start_ns))
    check_timing(defects_network, "clean", cap)
    assert cap.start_offset_ns is not None and cap.start_offset_ns > 1.5 * NS_PER_S
    assert cap.first_sample_ns == start_ns + cap.start_offset_ns


def test_start_at_must_be_datetime_or_ns() -> None:
    with pytest.raises(ValueError, match="start_at"):
        settings(start_at=1.5e18)
    assert settings(start_at=datetime(2026, 1, 1, tzinfo=UTC)).start_at_ns == (
        1_767_225_600 * NS_PER_S
    )


def test_a_capture_streamed_to_disk_equals_the_one_in_memory(
    network: SimulatedNetwork, tmp_path: Path
) -> None:
    """Frames written to a file as they arrive: the samples are a memory map of it, bit
    exact, lost frames read as zeros, and release() deletes the file."""
    cap = grab(network, "lossy", settings(spool_dir=str(tmp_path)))
    assert isinstance(cap.samples, np.memmap)
    assert cap.spool_path is not None and Path(cap.spool_path).parent == tmp_path
    assert cap.lost_frames == 2 and cap.gaps == [(2 * N, 1024)]
    assert not cap.samples[2 * N : 4 * N].any()
    assert_bit_exact(network, "lossy", cap, RF_HZ)
    cap.release()
    assert list(tmp_path.iterdir()) == [] and cap.samples.size == 0


def test_a_failed_session_leaves_no_file(network: SimulatedNetwork, tmp_path: Path) -> None:
    with pytest.raises(StreamDropped):
        grab(network, "drop", settings(spool_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_noise_table_is_built_before_the_first_stream() -> None:
    """Built in start(), not on the event loop at the first stream (which held up every
    receiver's first frames ~100 ms): the first frame costs a frame, not a table."""
    from tasks.kiwisdr.network import simulated_network

    network, _ = simulated_network(frequency_hz=145.5e6)
    with network:
        assert network._noise is not None  # ready before any client connects
        name = next(iter(network.receivers))
        t0 = time.perf_counter()
        network.frame_iq(name, 0, 145.5e6)
        first_s = time.perf_counter() - t0
    assert first_s < 0.01, f"first frame took {first_s * 1e3:.1f} ms"


def test_standalone_simulator_writes_the_receivers_file(tmp_path: Any) -> None:
    """``--write-receivers FILE`` writes a file ``rfacq configure receivers`` accepts,
    pointing at the simulator; the printed kiwirecorder line passes the down-converter
    offset (-o 116000), without which -f 145500 is outside a KiwiSDR's 0-30 MHz."""
    import subprocess
    import sys
    from pathlib import Path

    from blocks.receiver import load_receiver_file, receiver_name

    target = tmp_path / "receivers.json"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.kiwisdr.simulator", "--base-port", "0",
         "--write-receivers", str(target)],
        cwd=root, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "READY":
                break
        urls = dict(line.split(" ", 1) for line in lines[:7])
        receivers = load_receiver_file(target)
        assert {receiver_name(r): r.url for r in receivers} == urls
        assert all(r.freq_offset_khz == 116000 for r in receivers)
        status = fetch_status_text(urls["torino"])
        assert "name=torino (simulated)" in status
        (command,) = [line for line in lines if line.startswith("kiwirecorder: ")]
        port = urls[lines[0].split()[0]].rsplit(":", 1)[1]
        assert f"-s 127.0.0.1 -p {port} -f 145500 -o 116000 -m iq --kiwi-wav" in command
    finally:
        proc.terminate()
        proc.wait(10)


def fetch_status_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/status", timeout=5) as response:
        return response.read().decode()
