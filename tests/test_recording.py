"""The .npy + SigMF recording format, checked against numpy and the `sigmf` reference library."""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sigmf

from tasks.recording import (
    EXTENSION,
    IntegrityError,
    Recording,
    RecordingError,
    build_recording,
    read_recording,
)

FS = 12001.135
START = datetime(2025, 3, 4, 5, 6, 7, 89012, tzinfo=UTC)


def samples(n: int = 6144, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64) * 0.1
    x[512:1024] = 0  # a zero-filled lost frame
    # values whose bits a lossy path would change
    x[0] = complex(-0.0, 1e-42)  # negative zero, float32 subnormal
    x[1] = complex(np.float32(1.0) + np.float32(2**-23), -(2**-30))
    return x


def build(x: np.ndarray | None = None, **overrides: Any) -> Recording:
    kwargs: dict[str, Any] = {
        "name": "kiwi-nl1",
        "sample_rate": FS,
        "frequency_hz": 10_000_000.0,
        "start_utc": START,
        "acquisition_id": "acq-2025-03-04T050607Z",
        "receiver": "kiwi-nl1",
        "latitude": 52.0907,
        "longitude": 5.1214,
        "altitude_m": 12.5,
        "hw": "KiwiSDR 1.801, mini-whip",
        "duration_s": 0.512,
        "measurements": {
            "power_dbfs": -23.5,
            "cn0_dbhz": 61.2,
            "sample_count": 6144,
            "rssi_dbm": float("nan"),
            "snr_db": float("-inf"),
        },
        "quality": {
            "gps_fix": True,
            "lost_frames": 1,
            "adc_overflow_frames": 0,
            "attempts": 2,
            "adc_overflow_fraction": np.float64(0.0),
        },
        "gaps": [(2048, 512), (512, 512)],
        "description": "kiwi-nl1 at 10.000000 MHz",
    }
    kwargs.update(overrides)
    return build_recording(samples() if x is None else x, **kwargs)


def write_pair(directory: Path, rec: Recording) -> Path:
    (directory / rec.npy_name).write_bytes(rec.npy)
    meta_path = directory / rec.meta_name
    meta_path.write_bytes(rec.meta_bytes)
    return meta_path


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- round trip


def test_round_trip_is_bit_exact() -> None:
    x = samples()
    rec = build(x)
    y, meta = read_recording(rec.npy, rec.meta_bytes, name="kiwi-nl1")
    assert same_bits(y, x)
    assert y.dtype == np.complex64
    assert meta == json.loads(rec.meta_bytes)


def test_npy_is_plain_numpy_complex64_c_order() -> None:
    x = samples()
    rec = build(x.astype(np.complex128))  # converted to the storage type
    y = np.load(io.BytesIO(rec.npy), allow_pickle=False)
    assert y.dtype == np.dtype("<c8") and y.flags.c_contiguous
    assert same_bits(y, x)


def test_header_bytes_is_the_real_npy_header_length() -> None:
    x = samples()
    rec = build(x)
    header = rec.meta["captures"][0]["core:header_bytes"]
    # independent parse of the v1/v2 layout: magic(6) version(2) HEADER_LEN(2 or 4) header
    major = rec.npy[6]
    if major == 1:
        expected = 10 + int.from_bytes(rec.npy[8:10], "little")
    else:
        expected = 12 + int.from_bytes(rec.npy[8:12], "little")
    assert header == expected
    assert rec.npy[header:] == x.tobytes()


def test_sha512_covers_the_whole_npy_file() -> None:
    rec = build()
    assert rec.sha512 == hashlib.sha512(rec.npy).hexdigest()
    assert rec.meta["global"]["core:sha512"] == rec.sha512


@pytest.mark.parametrize("where", ["samples", "header"])
def test_tampered_byte_raises_integrity_error_naming_the_recording(where: str) -> None:
    rec = build()
    data = bytearray(rec.npy)
    index = len(data) - 100 if where == "samples" else 20
    data[index] ^= 0x01
    with pytest.raises(IntegrityError, match=r"^acq-1/kiwi-nl1: sha512 .* does not match"):
        read_recording(bytes(data), rec.meta_bytes, name="acq-1/kiwi-nl1")


def test_integrity_error_is_a_recording_error() -> None:
    assert issubclass(IntegrityError, RecordingError)
    assert issubclass(RecordingError, ValueError)


# --------------------------------------------------------------------------- metadata


def test_metadata_content() -> None:
    rec = build()
    g = rec.meta["global"]
    assert g["core:dataset"] == "kiwi-nl1.npy"
    assert rec.meta_name == "kiwi-nl1.sigmf-meta"
    assert g["core:datatype"] == "cf32_le"
    assert g["core:version"] == "1.2.0"
    assert g["core:sample_rate"] == FS
    assert g["core:hw"] == "KiwiSDR 1.801, mini-whip"
    assert re.fullmatch(r"rf-acquisition \S+", g["core:recorder"])
    assert g["core:geolocation"] == {"type": "Point", "coordinates": [5.1214, 52.0907, 12.5]}
    assert g["core:extensions"] == [{"name": EXTENSION, "version": "0.2.0", "optional": True}]
    assert g["rfacq:acquisition_id"] == "acq-2025-03-04T050607Z"
    assert g["rfacq:receiver"] == "kiwi-nl1"
    assert g["rfacq:duration_s"] == 0.512
    assert g["rfacq:sample_count"] == 6144
    assert g["rfacq:gps_fix"] is True
    assert g["rfacq:lost_frames"] == 1
    assert g["rfacq:adc_overflow_frames"] == 0
    assert g["rfacq:attempts"] == 2
    assert g["rfacq:adc_overflow_fraction"] == 0.0
    assert g["rfacq:measurements"] == {
        "power_dbfs": -23.5,
        "cn0_dbhz": 61.2,
        "sample_count": 6144,
        "rssi_dbm": None,
        "snr_db": None,
    }
    capture = rec.meta["captures"]
    assert capture == [
        {
            "core:sample_start": 0,
            "core:frequency": 10_000_000.0,
            "core:datetime": "2025-03-04T05:06:07.089012Z",
            "core:header_bytes": capture[0]["core:header_bytes"],
        }
    ]
    assert rec.meta["annotations"] == [
        {"core:sample_start": 512, "core:sample_count": 512, "core:label": "lost frames"},
        {"core:sample_start": 2048, "core:sample_count": 512, "core:label": "lost frames"},
    ]


def test_meta_bytes_are_strict_sorted_pretty_utf8_json() -> None:
    rec = build(receiver="Zürich 🛰", description="")

    def reject(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON")

    text = rec.meta_bytes.decode("utf-8")
    parsed = json.loads(text, parse_constant=reject)
    assert parsed["global"]["rfacq:receiver"] == "Zürich 🛰"
    assert "core:description" not in parsed["global"]
    assert text == json.dumps(parsed, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_datetime_is_converted_to_utc_with_microseconds() -> None:
    cest = timezone(timedelta(hours=2))
    rec = build(start_utc=datetime(2025, 6, 1, 14, 0, 0, tzinfo=cest))
    assert rec.meta["captures"][0]["core:datetime"] == "2025-06-01T12:00:00.000000Z"


def test_no_position_and_unknown_quality() -> None:
    rec = build(latitude=None, longitude=None, altitude_m=None, quality={}, gaps=())
    g = rec.meta["global"]
    assert "core:geolocation" not in g
    assert g["rfacq:gps_fix"] is None
    assert g["rfacq:lost_frames"] is None
    assert g["rfacq:adc_overflow_frames"] is None
    assert rec.meta["annotations"] == []
    rec2 = build(altitude_m=None)
    assert rec2.meta["global"]["core:geolocation"]["coordinates"] == [5.1214, 52.0907]


# --------------------------------------------------------------------------- sigmf library


def test_sigmf_library_reads_the_pair_and_validates_it(tmp_path: Path) -> None:
    from sigmf import validate as sigmf_validate

    x = samples()
    rec = build(x)
    meta_path = write_pair(tmp_path, rec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. undeclared extension namespaces
        handle = sigmf.fromfile(meta_path)  # also verifies core:sha512 against the file
        got = handle.read_samples()
        handle.validate()
        sigmf_validate.validate(rec.meta)
    assert same_bits(np.asarray(got), x)
    assert handle.get_global_field("core:dataset") == "kiwi-nl1.npy"
    assert [a["core:sample_start"] for a in handle.get_annotations()] == [512, 2048]


def test_sigmf_library_rejects_a_tampered_dataset(tmp_path: Path) -> None:
    rec = build()
    meta_path = write_pair(tmp_path, rec)
    npy_path = tmp_path / rec.npy_name
    data = bytearray(npy_path.read_bytes())
    data[-1] ^= 0xFF
    npy_path.write_bytes(bytes(data))
    with pytest.raises(sigmf.error.SigMFFileError, match="hash"):
        sigmf.fromfile(meta_path)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"start_utc": datetime(2025, 1, 1)}, r"start_utc: must be a timezone-aware datetime"),
        ({"name": "a/b"}, r"name: 'a/b' must be a non-empty base file name"),
        ({"name": ""}, r"name: '' must be a non-empty base file name"),
        ({"sample_rate": 0.0}, r"sample_rate: must be > 0 Hz"),
        ({"sample_rate": float("nan")}, r"sample_rate: must be finite"),
        ({"frequency_hz": float("inf")}, r"frequency_hz: must be finite"),
        ({"duration_s": -1.0}, r"duration_s: must be finite and within \[0, inf\]"),
        ({"latitude": 91.0}, r"latitude: must be finite and within \[-90, 90\]"),
        ({"longitude": None}, r"latitude/longitude: give both or neither"),
        ({"gaps": [(6000, 512)]}, r"gaps: \(6000, 512\) .* start \+ count <= 6144"),
        ({"gaps": [(-1, 5)]}, r"gaps: \(-1, 5\) must have 0 <= start"),
        ({"gaps": [(1.5, 5)]}, r"gaps: .* pair of integers"),
        ({"measurements": {"x": [1, 2]}}, r"measurements\['x'\]: must be a scalar"),
        ({"quality": {"a:b": 1}}, r"quality: keys must be non-empty strings without ':'"),
        ({"quality": {"lost_frames": -2}}, r"quality\['lost_frames'\]: must be an integer >= 0"),
        ({"quality": {"receiver": "x"}}, r"quality: key 'receiver' clashes"),
    ],
)
def test_bad_build_input(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(RecordingError, match=match):
        build(**overrides)


@pytest.mark.parametrize("bad", [np.ones(10, np.float32), np.ones((2, 5), np.complex64)])
def test_bad_samples(bad: np.ndarray) -> None:
    with pytest.raises(RecordingError, match=r"samples: must be a 1-D complex array"):
        build(bad, gaps=())


def test_read_rejects_bad_metadata() -> None:
    rec = build()
    with pytest.raises(RecordingError, match=r"^r1: metadata is not a SigMF meta"):
        read_recording(rec.npy, b"{not json", name="r1")
    with pytest.raises(RecordingError, match=r"^r1: metadata is not a SigMF meta"):
        read_recording(rec.npy, b'{"global": {}}', name="r1")
    meta = json.loads(rec.meta_bytes)
    meta["global"]["core:datatype"] = "ci16_le"
    with pytest.raises(RecordingError, match=r"^r1: core:datatype is 'ci16_le'"):
        read_recording(rec.npy, json.dumps(meta).encode(), name="r1")
    meta = json.loads(rec.meta_bytes)
    meta["captures"][0]["core:header_bytes"] = 64
    with pytest.raises(RecordingError, match=r"^r1: core:header_bytes is 64"):
        read_recording(rec.npy, json.dumps(meta).encode(), name="r1")


def test_measurements_from_dsp_serialise() -> None:
    from tasks.dsp import measure

    x = samples(24000)
    m = measure(x, FS)
    rec = build(x, measurements={**m.as_dict(), "rssi_dbm": float("nan")}, gaps=[(512, 512)])
    got = json.loads(rec.meta_bytes)["global"]["rfacq:measurements"]
    assert got["sample_count"] == 24000
    assert got["rssi_dbm"] is None
    assert got["cn0_dbhz"] == m.cn0_dbhz


def test_new_measurement_fields_are_written_and_sigmf_valid(tmp_path: Path) -> None:
    from tasks.dsp import measure

    rng = np.random.default_rng(5)
    noise = (0.01 * (rng.standard_normal(24000) + 1j * rng.standard_normal(24000))).astype(
        np.complex64
    )
    m = measure(noise, FS)  # empty channel: signal fields None, detected False
    rec = build(noise, measurements=m.as_dict())
    got = json.loads(rec.meta_bytes)["global"]["rfacq:measurements"]
    assert got["detected"] is False and got["detection_reason"].startswith("no signal")
    assert got["cn0_dbhz"] is None and got["frequency_offset_hz"] is None
    assert got["modulation"] is None and got["noise_method"] == "quiet-bins"
    assert set(got) >= {"occupied_bandwidth_hz", "clipped_fraction", "dc_dbfs", "edge_distance_hz"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = sigmf.fromfile(write_pair(tmp_path, rec))
        handle.validate()
    assert handle.get_global_field("rfacq:measurements")["detected"] is False


def test_recording_of_extension_0_1_0_still_loads(tmp_path: Path) -> None:
    """A recording written before the new measurement fields (rfacq 0.1.0) still reads."""
    x = samples()
    rec = build(x, measurements={"power_dbfs": -20.0, "cn0_dbhz": 55.0, "sample_count": x.size})
    meta = json.loads(rec.meta_bytes)
    meta["global"]["core:extensions"][0]["version"] = "0.1.0"
    got, back = read_recording(rec.npy, json.dumps(meta).encode(), name="old")
    assert same_bits(got, x)
    assert back["global"]["rfacq:measurements"] == {
        "power_dbfs": -20.0,
        "cn0_dbhz": 55.0,
        "sample_count": x.size,
    }
    old = Recording(npy=rec.npy, meta=meta)
    sigmf.fromfile(write_pair(tmp_path, old)).validate()


def test_timing_is_kept_and_checked() -> None:
    samples = np.zeros(2048, dtype=np.complex64)
    kwargs = dict(
        name="t",
        sample_rate=12000.0,
        frequency_hz=1e7,
        start_utc=datetime(2026, 1, 1, tzinfo=UTC),
        acquisition_id="a",
        receiver="r",
        latitude=None,
        longitude=None,
        altitude_m=None,
        hw="x",
        duration_s=0.2,
        measurements={},
        quality={},
    )
    timing = {"gps_week": 2400, "frame_sample_start": [0, 512], "frame_gps_offset_s": [0.0, 0.04]}
    rec = build_recording(samples, timing=timing, **kwargs)
    assert rec.meta["global"]["rfacq:timing"] == timing
    with pytest.raises(RecordingError, match="equal lengths"):
        build_recording(samples, timing={"a": [1, 2], "b": [1]}, **kwargs)
    with pytest.raises(RecordingError, match=r"timing\['a'\]: every item must be a finite number"):
        build_recording(samples, timing={"a": [1.0, float("nan")]}, **kwargs)
