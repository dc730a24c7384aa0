"""The frame codec against frames built by hand from kiwisdr-protocol.md's table."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from tasks.kiwisdr import codec


def hand_built_frame(*, flags: int, little: bool = False) -> tuple[bytes, np.ndarray]:
    iq = np.arange(-512, 512, dtype=np.int16).reshape(512, 2)
    iq[0] = (32767, -32768)
    body = iq.astype("<i2" if little else ">i2").tobytes()
    header = (
        b"SND"
        + bytes([flags])
        + (123456).to_bytes(4, "little")  # seq LE
        + ((-73 + 127) * 10).to_bytes(2, "big")  # smeter BE: -73 dBm
        + bytes([17, 0])  # 17 s since last fix, zero
        + (345678).to_bytes(4, "little")  # gpssec LE
        + (987654321).to_bytes(4, "little")  # gpsnsec LE
    )
    assert len(header) == 20
    return header + body, iq


def test_decode_big_endian_frame_fields() -> None:
    data, iq = hand_built_frame(flags=codec.FLAG_IQ | codec.FLAG_ADC_OVERFLOW)
    assert len(data) == 2068
    f = codec.decode_snd(data)
    assert f.seq == 123456
    assert f.smeter == 540 and f.rssi_dbm == pytest.approx(-73.0)
    assert f.last_gps_solution == 17 and f.has_gps
    assert (f.gpssec, f.gpsnsec) == (345678, 987654321)
    assert f.adc_overflow
    np.testing.assert_array_equal(f.iq, iq)
    z = f.complex_samples()
    assert z.dtype == np.complex64
    assert z[0] == pytest.approx(complex(32767 / 32768, -1.0))


def test_decode_honours_little_endian_flag() -> None:
    data, iq = hand_built_frame(flags=codec.FLAG_IQ | codec.FLAG_LITTLE_ENDIAN, little=True)
    f = codec.decode_snd(data)
    np.testing.assert_array_equal(f.iq, iq)
    assert not f.adc_overflow


def test_encode_matches_hand_built_bytes() -> None:
    data, iq = hand_built_frame(flags=codec.FLAG_IQ)
    encoded = codec.encode_snd(
        iq, seq=123456, smeter=540, gpssec=345678, gpsnsec=987654321, last_gps_solution=17
    )
    assert encoded == data


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d[:-2], "2068 bytes"),
        (lambda d: b"MSG" + d[3:], "not an SND frame"),
        (lambda d: d[:3] + bytes([0]) + d[4:], "IQ flag"),
        (lambda d: d[:16] + struct.pack("<I", 1_000_000_000) + d[20:], "gpsnsec"),
    ],
)
def test_decode_rejects_malformed(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    data, _ = hand_built_frame(flags=codec.FLAG_IQ)
    with pytest.raises(codec.FrameError, match=match):
        codec.decode_snd(mutate(data))


def test_no_gps_marker() -> None:
    data, _ = hand_built_frame(flags=codec.FLAG_IQ)
    data = data[:10] + bytes([255]) + data[11:]
    assert not codec.decode_snd(data).has_gps


def test_msg_round_trip_and_url_decoding() -> None:
    assert codec.parse_msg(b"MSG sample_rate=12001.135") == {"sample_rate": "12001.135"}
    parsed = codec.parse_msg(b"MSG load_cfg=%7B%22a%22%3A1%7D badp=0 down")
    assert parsed == {"load_cfg": '{"a":1}', "badp": "0", "down": ""}
    assert codec.parse_msg(codec.encode_msg(redirect="http://h:8073/x", too_busy=4)) == {
        "redirect": "http://h:8073/x",
        "too_busy": "4",
    }


def test_parse_set_commands() -> None:
    assert codec.parse_set("SET mod=iq low_cut=-5000 high_cut=5000 freq=29500.000") == (
        "mod",
        {"mod": "iq", "low_cut": "-5000", "high_cut": "5000", "freq": "29500.000"},
    )
    assert codec.parse_set("SET keepalive") == ("keepalive", {"keepalive": ""})
    with pytest.raises(codec.FrameError):
        codec.parse_set("GET x")


def test_gps_time_round_trip_and_week_rollover() -> None:
    t = datetime(2026, 11, 28, 12, 0, 0, 250000, tzinfo=UTC)
    week, sow, ns = codec.utc_to_gps(t)
    # 2026-11-28 is a Saturday: late in GPS week; GPS runs 18 s ahead of UTC.
    assert ns == 250_000_000
    assert codec.gps_to_utc(sow, ns, now=t) == t
    # A frame stamped just before the week rollover, read just after it.
    sunday = datetime(2026, 11, 29, 0, 0, 5, tzinfo=UTC)
    before = sunday - timedelta(seconds=30)
    _, sow_b, ns_b = codec.utc_to_gps(before)
    assert codec.gps_to_utc(sow_b, ns_b, now=sunday) == before
    assert week * codec.SECONDS_PER_WEEK + sow == int(
        (t - codec.GPS_EPOCH).total_seconds() + codec.GPS_UTC_LEAP_SECONDS
    )


def test_smeter_conversions() -> None:
    assert codec.smeter_to_dbm(0) == -127.0
    assert codec.dbm_to_smeter(-73.0) == 540
    assert codec.dbm_to_smeter(-500.0) == 0


def test_simulator_frames_parse_the_way_kiwiclient_reads_them() -> None:
    """kiwirecorder's IQ path reads: '<BI' flags+seq, '>H' smeter, '<BBII' GPS, '>h' samples,
    offsets taken after the 3-byte tag. Parse a simulator frame exactly that way."""
    from tasks.kiwisdr.network import simulated_network

    network, _ = simulated_network()
    iq, _ = network.frame_iq("torino", 512 * 1000, 145.5e6, (-5000.0, 5000.0))
    frame = codec.encode_snd(
        iq, seq=42, smeter=codec.dbm_to_smeter(-80.0), gpssec=7, gpsnsec=9, last_gps_solution=3
    )
    body = frame[3:]
    flags, seq = struct.unpack("<BI", body[0:5])
    (smeter,) = struct.unpack(">H", body[5:7])
    data = body[7:]
    last_fix, _dummy, gpssec, gpsnsec = struct.unpack("<BBII", data[0:10])
    samples = np.frombuffer(data[10:], dtype=">h")
    assert (flags & codec.FLAG_IQ, seq, last_fix, gpssec, gpsnsec) == (codec.FLAG_IQ, 42, 3, 7, 9)
    assert 0.1 * smeter - 127 == pytest.approx(-80.0)
    np.testing.assert_array_equal(samples[0::2], iq[:, 0])
    np.testing.assert_array_equal(samples[1::2], iq[:, 1])
