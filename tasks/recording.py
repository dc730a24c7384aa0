"""The recording format: a complex64 ``.npy`` plus a SigMF 1.2 ``.sigmf-meta``.

The metadata is assembled and schema-validated by sigmf-python (``SigMFFile``); this
module adds only what the format leaves to us: the npy header length, the rfacq
namespace's fields, and error messages that name the offending field.

Samples are stored as ``.npy`` so numpy (and anything that speaks it) loads them with no
SigMF tooling; the metadata declares that file a SigMF *Non-Conforming Dataset*
(``core:dataset`` + ``core:header_bytes``) so SigMF readers find the same samples behind
the npy header. Project fields live in the ``rfacq`` extension namespace.

``core:sha512`` covers the whole ``.npy`` file (header included), as SigMF specifies for
the dataset file, so a corrupted header is caught as well as corrupted samples.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import metadata as importlib_metadata
from typing import Any

import numpy as np
import sigmf
import sigmf.error

from tasks.errors import RfAcquisitionError

__all__ = [
    "DATATYPE",
    "EXTENSION",
    "EXTENSION_VERSION",
    "SIGMF_VERSION",
    "IntegrityError",
    "Recording",
    "RecordingError",
    "build_recording",
    "read_recording",
]

SIGMF_VERSION = "1.2.0"
DATATYPE = "cf32_le"
NPY_DTYPE = np.dtype("<c8")  # what cf32_le means, independent of the host's byte order
EXTENSION = "rfacq"
# 0.2.0: rfacq:measurements carries detection, occupied bandwidth, noise method, modulation
# and the quality flags (clipped fraction, DC level, edge distance); 0.1.0 files still load.
EXTENSION_VERSION = "0.2.0"
# SigMF: optional=false means a reader that doesn't know the namespace must refuse the
# recording. Nothing in rfacq is needed to read the samples, so it is optional.
EXTENSION_OPTIONAL = True
GAP_LABEL = "lost frames"
# Quality fields that are always written (null when the caller doesn't know them), so a
# query can rely on the key being there.
_QUALITY_KEYS = ("gps_fix", "lost_frames", "adc_overflow_frames")
# Characters core:dataset may not contain (the SigMF schema's pattern), plus control chars.
_BAD_NAME_CHARS = set('/\\:*?"<>|')

Scalar = float | int | bool | str | None


class RecordingError(RfAcquisitionError, ValueError):
    """The inputs can't make a valid recording, or stored bytes aren't one."""


class IntegrityError(RecordingError):
    """The dataset's SHA-512 doesn't match ``core:sha512``: the samples can't be trusted."""


@dataclass(frozen=True)
class Recording:
    """One recording: the ``.npy`` bytes and the SigMF metadata that describes them."""

    npy: bytes
    meta: dict[str, Any]

    @property
    def meta_bytes(self) -> bytes:
        """Pretty, key-sorted UTF-8 JSON: stable bytes, readable diffs."""
        return _dump_json(self.meta)

    @property
    def sha512(self) -> str:
        return hashlib.sha512(self.npy).hexdigest()

    @property
    def npy_name(self) -> str:
        """File name of the dataset (``core:dataset``)."""
        return str(self.meta["global"]["core:dataset"])

    @property
    def meta_name(self) -> str:
        """File name the metadata must have: SigMF pairs files by base name."""
        return self.npy_name.removesuffix(".npy") + ".sigmf-meta"


# --------------------------------------------------------------------------- helpers


@cache
def _recorder() -> str:
    try:
        version = importlib_metadata.version("rf-acquisition")
    except importlib_metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"rf-acquisition {version}"


def _dump_json(obj: Any) -> bytes:
    # allow_nan=False: NaN/Inf would be written as bare NaN, which is not JSON.
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _finite(value: Any, field: str, *, low: float = -math.inf, high: float = math.inf) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecordingError(f"{field}: must be a number, got {value!r}") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise RecordingError(
            f"{field}: must be finite and within [{low:g}, {high:g}], got {value!r}"
        )
    return number


def _sample_rate(value: Any) -> float:
    rate = _finite(value, "sample_rate", low=0.0, high=1e12)
    if rate <= 0.0:
        raise RecordingError(f"sample_rate: must be > 0 Hz, got {value!r}")
    return rate


def _scalar(value: Any, field: str) -> Scalar:
    """JSON-safe scalar: numpy scalars unwrapped, NaN/Inf become null."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    raise RecordingError(
        f"{field}: must be a scalar (number, bool, string or None), got {type(value).__name__}"
    )


def _check_key(key: Any, field: str) -> str:
    if not isinstance(key, str) or not key or ":" in key or not key.isprintable():
        raise RecordingError(f"{field}: keys must be non-empty strings without ':', got {key!r}")
    return key


def _check_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or name in {".", ".."}
        or any(c in _BAD_NAME_CHARS or not c.isprintable() for c in name)
    ):
        raise RecordingError(
            f"name: {name!r} must be a non-empty base file name without any of "
            f"{''.join(sorted(_BAD_NAME_CHARS))} or control characters"
        )
    return name


def _utc_iso(start_utc: datetime) -> str:
    if not isinstance(start_utc, datetime) or start_utc.utcoffset() is None:
        raise RecordingError(
            f"start_utc: must be a timezone-aware datetime (UTC), got {start_utc!r}"
        )
    return start_utc.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _samples_npy(samples: np.ndarray) -> tuple[np.ndarray, bytes]:
    arr = np.asarray(samples)
    if arr.dtype.kind != "c" or arr.ndim != 1:
        raise RecordingError(
            f"samples: must be a 1-D complex array, got {arr.dtype} of shape {arr.shape}"
        )
    data = np.ascontiguousarray(arr, dtype=NPY_DTYPE)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, data, allow_pickle=False)
    return data, buf.getvalue()


def _npy_header_bytes(npy: bytes) -> int:
    """Length of the .npy header, read from the bytes (it is not always 128)."""
    fp = io.BytesIO(npy)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            np.lib.format.read_array_header_2_0(fp)
        else:
            raise RecordingError(f"npy: unsupported .npy format version {version}")
    except ValueError as exc:
        if isinstance(exc, RecordingError):
            raise
        raise RecordingError(f"npy: not a valid .npy file: {exc}") from None
    return fp.tell()


def _geolocation(
    latitude: float | None, longitude: float | None, altitude_m: float | None
) -> dict[str, Any] | None:
    if latitude is None and longitude is None:
        return None
    if latitude is None or longitude is None:
        raise RecordingError(
            "latitude/longitude: give both or neither "
            f"(got latitude={latitude!r}, longitude={longitude!r})"
        )
    coordinates = [
        _finite(longitude, "longitude", low=-180.0, high=180.0),
        _finite(latitude, "latitude", low=-90.0, high=90.0),
    ]
    if altitude_m is not None:
        coordinates.append(_finite(altitude_m, "altitude_m"))
    return {"type": "Point", "coordinates": coordinates}


def _timing(timing: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars and equal-length lists of finite numbers, checked so the JSON stays valid."""
    out: dict[str, Any] = {}
    lengths = set()
    for key, value in timing.items():
        key = _check_key(key, "timing")
        if isinstance(value, (list, tuple, np.ndarray)):
            items = [_scalar(v, f"timing[{key!r}]") for v in value]
            if any(v is None or isinstance(v, (bool, str)) for v in items):
                raise RecordingError(f"timing[{key!r}]: every item must be a finite number")
            lengths.add(len(items))
            out[key] = items
        else:
            out[key] = _scalar(value, f"timing[{key!r}]")
    if len(lengths) > 1:
        raise RecordingError(f"timing: lists must have equal lengths, got {sorted(lengths)}")
    return out


def _annotations(gaps: Sequence[tuple[int, int]], sample_count: int) -> list[dict[str, Any]]:
    out = []
    for gap in gaps:
        pair = tuple(gap) if isinstance(gap, Sequence) else ()
        if len(pair) != 2 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in pair
        ):
            raise RecordingError(
                f"gaps: {gap!r} is not a (sample_start, sample_count) pair of integers"
            )
        start, count = int(pair[0]), int(pair[1])
        if start < 0 or count <= 0 or start + count > sample_count:
            raise RecordingError(
                f"gaps: ({start}, {count}) must have 0 <= start, count > 0 and "
                f"start + count <= {sample_count} (the sample count)"
            )
        out.append(
            {"core:sample_start": start, "core:sample_count": count, "core:label": GAP_LABEL}
        )
    # SigMF requires annotations sorted by sample_start
    return sorted(out, key=lambda a: (a["core:sample_start"], a["core:sample_count"]))


# --------------------------------------------------------------------------- API


def build_recording(
    samples: np.ndarray,
    *,
    name: str,
    sample_rate: float,
    frequency_hz: float,
    start_utc: datetime,
    acquisition_id: str,
    receiver: str,
    latitude: float | None,
    longitude: float | None,
    altitude_m: float | None,
    hw: str,
    duration_s: float,
    measurements: Mapping[str, float | int | bool | None],
    quality: Mapping[str, Scalar],
    gaps: Sequence[tuple[int, int]] = (),
    description: str = "",
    timing: Mapping[str, Any] | None = None,
    timing_model: Mapping[str, Any] | None = None,
) -> Recording:
    """Serialise one capture: ``<name>.npy`` bytes and its ``<name>.sigmf-meta`` dict.

    ``quality`` carries ``gps_fix``, ``lost_frames`` and ``adc_overflow_frames`` (written as
    null when absent, since "unknown" is not "zero") and any extra scalars, all under
    ``rfacq:``. ``gaps`` are (sample_start, sample_count) runs of zero-filled lost frames.
    NaN/Inf values become null so the metadata stays valid JSON. ``timing`` (per-frame
    GPS times, see ``Capture.frame_timing``) is kept as ``rfacq:timing``.
    """
    name = _check_name(name)
    data, npy = _samples_npy(samples)
    sample_count = int(data.size)

    ns = f"{EXTENSION}:"
    glob: dict[str, Any] = {
        "core:datatype": DATATYPE,
        "core:version": SIGMF_VERSION,
        "core:sample_rate": _sample_rate(sample_rate),
        "core:dataset": f"{name}.npy",
        "core:sha512": hashlib.sha512(npy).hexdigest(),
        "core:hw": str(hw),
        "core:recorder": _recorder(),
        "core:num_channels": 1,
        "core:extensions": [
            {"name": EXTENSION, "version": EXTENSION_VERSION, "optional": EXTENSION_OPTIONAL}
        ],
        ns + "acquisition_id": str(acquisition_id),
        ns + "receiver": str(receiver),
        ns + "duration_s": _finite(duration_s, "duration_s", low=0.0),
        ns + "sample_count": sample_count,
        ns + "measurements": {
            _check_key(k, "measurements"): _scalar(v, f"measurements[{k!r}]")
            for k, v in measurements.items()
        },
    }
    if description:
        glob["core:description"] = str(description)
    geolocation = _geolocation(latitude, longitude, altitude_m)
    if geolocation is not None:
        glob["core:geolocation"] = geolocation

    for key in _QUALITY_KEYS:
        glob[ns + key] = None
    for key, value in quality.items():
        key = _check_key(key, "quality")
        if ns + key in glob and key not in _QUALITY_KEYS:
            raise RecordingError(f"quality: key {key!r} clashes with a built-in rfacq field")
        glob[ns + key] = _scalar(value, f"quality[{key!r}]")
    for key in ("lost_frames", "adc_overflow_frames"):
        value = glob[ns + key]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise RecordingError(
                f"quality[{key!r}]: must be an integer >= 0 or None, got {value!r}"
            )

    if timing is not None:
        glob[ns + "timing"] = _timing(timing)
    if timing_model is not None:
        # tasks.timing.TimingModel.as_dict(): t0_ns stays an exact JSON integer.
        glob[ns + "timing_model"] = json.loads(json.dumps(dict(timing_model), allow_nan=False))

    capture = {
        "core:sample_start": 0,
        "core:frequency": _finite(frequency_hz, "frequency_hz", low=-1e12, high=1e12),
        "core:datetime": _utc_iso(start_utc),
        "core:header_bytes": _npy_header_bytes(npy),
    }
    handle = sigmf.SigMFFile(global_info=glob)
    handle.add_capture(0, metadata=capture)
    for annotation in _annotations(gaps, sample_count):
        handle.add_annotation(annotation.pop("core:sample_start"), metadata=annotation)
    return Recording(npy=npy, meta=_validated(handle, name))


def _validated(handle: sigmf.SigMFFile, name: str) -> dict[str, Any]:
    """The metadata of ``handle`` as a plain dict, after sigmf-python's schema check."""
    try:
        handle.validate()
    except sigmf.error.SigMFValidationError as exc:
        raise RecordingError(f"{name}: metadata fails the SigMF schema: {exc}") from None
    return json.loads(handle.dumps(pretty=False))


def read_recording(
    npy: bytes, meta_bytes: bytes, *, name: str = "recording"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Load a recording written by :func:`build_recording`, verifying it first.

    The SHA-512 is checked before anything is parsed from the .npy, so a damaged file
    fails as an :class:`IntegrityError` naming ``name`` rather than as odd samples.
    """

    def reject(constant: str) -> None:
        raise ValueError(f"non-JSON constant {constant}")

    try:
        meta = json.loads(meta_bytes.decode("utf-8"), parse_constant=reject)
        glob = meta["global"]
        expected = glob["core:sha512"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise RecordingError(
            f"{name}: metadata is not a SigMF meta with core:sha512 ({exc})"
        ) from None
    actual = hashlib.sha512(npy).hexdigest()
    if not isinstance(expected, str) or actual != expected.lower():
        raise IntegrityError(
            f"{name}: sha512 of the dataset ({actual[:16]}…) does not match core:sha512 "
            f"({str(expected)[:16]}…); the recording is corrupt or the files are mismatched"
        )
    if glob.get("core:datatype") != DATATYPE:
        raise RecordingError(
            f"{name}: core:datatype is {glob.get('core:datatype')!r}, expected {DATATYPE!r}"
        )
    try:
        samples = np.load(io.BytesIO(npy), allow_pickle=False)
    except ValueError as exc:
        raise RecordingError(f"{name}: dataset is not a valid .npy file ({exc})") from None
    if samples.dtype != NPY_DTYPE or samples.ndim != 1:
        raise RecordingError(
            f"{name}: dataset holds {samples.dtype} of shape {samples.shape}, expected 1-D "
            f"complex64 ({DATATYPE})"
        )
    captures = meta.get("captures") or [{}]
    header = captures[0].get("core:header_bytes")
    if header != _npy_header_bytes(npy):
        raise RecordingError(
            f"{name}: core:header_bytes is {header!r} but the .npy header is "
            f"{_npy_header_bytes(npy)} bytes"
        )
    return samples.astype(np.complex64, copy=False), meta
