"""Turn one capture into a recording (``.npy`` + SigMF metadata) and its measurements.

The numbers come from :mod:`tasks.dsp`, the file format from :mod:`tasks.recording`;
this module only joins them and keeps what the database row needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from blocks.receiver import KiwiSDRReceiver
from tasks.dsp import measure, rssi_dbm
from tasks.kiwisdr.client import Capture
from tasks.pictures import Spectrum
from tasks.recording import EXTENSION, Recording, build_recording
from tasks.report import sparkline


@dataclass(frozen=True)
class ProcessedCapture:
    """A capture's recording plus the fields of its database row."""

    receiver: str
    recording: Recording
    row: dict[str, Any]
    spectrum: str = ""
    psd: Any = None  # tasks.pictures.Spectrum: the capture's PSD, small enough to draw


def process_capture(
    capture: Capture,
    receiver: KiwiSDRReceiver,
    *,
    acquisition_id: str,
    name: str,
    passband_hz: tuple[float, float] = (-5000.0, 5000.0),
    simulated: bool = False,
) -> ProcessedCapture:
    """Measure ``capture`` and build its recording; pure computation, no I/O."""
    m = measure(capture.samples, capture.sample_rate, passband_hz=passband_hz, gaps=capture.gaps)
    rssi = rssi_dbm(capture.smeter) if capture.smeter.size else float("nan")
    measurements: dict[str, Any] = {**m.as_dict(), "rssi_dbm": rssi}
    quality = {
        "gps_fix": capture.gps_fix,
        "lost_frames": capture.lost_frames,
        "adc_overflow_frames": capture.adc_overflow_frames,
        "adc_overflow_fraction": capture.adc_overflow_frames / max(capture.frames_expected, 1),
        "frames_expected": capture.frames_expected,
        "tuned_khz": capture.tuned_khz,
        "freq_offset_khz": capture.freq_offset_khz,
        "attempts": capture.attempts,
        "simulated": simulated,
    }
    recording = build_recording(
        capture.samples,
        name=name,
        sample_rate=capture.sample_rate,
        frequency_hz=capture.frequency_hz,
        start_utc=capture.start_utc,
        acquisition_id=acquisition_id,
        receiver=name,
        latitude=receiver.latitude,
        longitude=receiver.longitude,
        altitude_m=receiver.altitude_m,
        hw=_hardware(capture, receiver),
        duration_s=capture.duration_s,
        measurements=measurements,
        quality=quality,
        gaps=capture.gaps,
        timing=capture.frame_timing(),
        timing_model=capture.timing.as_dict() if capture.timing is not None else None,
        description=f"{receiver.display_name or name} at {capture.frequency_hz / 1e6:.6f} MHz",
    )
    row = row_from_metadata(recording.meta)
    spectrum, psd = "", None
    if m.spectrum is not None:
        spectrum = sparkline(m.spectrum.density)
        psd = Spectrum.from_density(m.spectrum.density, capture.sample_rate)
    return ProcessedCapture(receiver=name, recording=recording, row=row, spectrum=spectrum, psd=psd)


_MEASURED = (
    "power_dbfs",
    "noise_floor_dbfs_hz",
    "signal_power_dbfs",
    "cn0_dbhz",
    "snr_db",
    "snr_bandwidth_hz",
    "frequency_offset_hz",
    "rssi_dbm",
    # detection and quality (schema 0003)
    "detected",
    "detection_reason",
    "occupied_bandwidth_hz",
    "noise_method",
    "modulation",
    "clipped_fraction",
    "dc_dbfs",
    "edge_distance_hz",
)


def row_from_metadata(meta: dict[str, Any], object_key: str | None = None) -> dict[str, Any]:
    """The measurements row of a recording, from its SigMF metadata alone.

    One mapping for both paths: the acquisition flow builds its rows with it, and the
    reconcile flow rebuilds the rows of stored recordings whose rows were never written,
    so a backfilled row is exactly the row the flow would have written.
    """
    g, capture = meta["global"], meta["captures"][0]
    ns = f"{EXTENSION}:"
    measured = g.get(ns + "measurements", {})
    coords = (g.get("core:geolocation") or {}).get("coordinates") or []
    lon, lat, alt = [*coords, None, None, None][:3]  # altitude is optional
    return {
        "time": datetime.fromisoformat(capture["core:datetime"].replace("Z", "+00:00")),
        "acquisition_id": g[ns + "acquisition_id"],
        "receiver": g[ns + "receiver"],
        "status": "ok",
        "error": None,
        "attempts": g.get(ns + "attempts") or 1,
        "latitude": lat,
        "longitude": lon,
        "altitude_m": alt,
        "frequency_hz": capture["core:frequency"],
        "sample_rate": g["core:sample_rate"],
        "sample_count": g[ns + "sample_count"],
        **{k: measured.get(k) for k in _MEASURED},
        "gps_fix": g.get(ns + "gps_fix"),
        "lost_frames": g.get(ns + "lost_frames"),
        "adc_overflow_frames": g.get(ns + "adc_overflow_frames"),
        "object_key": object_key,
        "sha512": g["core:sha512"],
        "simulated": g.get(ns + "simulated"),
        **timing_row_fields(g.get(ns + "timing_model")),
    }


def timing_row_fields(model: dict[str, Any] | None) -> dict[str, Any]:
    """The timing fields of a row (fitted rate, residual, fixes, sample 0 in integer ns)
    from the recording's ``rfacq:timing_model``; none for recordings made before it."""
    if not model:
        return {}
    from tasks.timing import TimingModel

    return TimingModel.from_dict(model).row_fields()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _hardware(capture: Capture, receiver: KiwiSDRReceiver) -> str:
    version = f"{capture.server.get('version_maj', '?')}.{capture.server.get('version_min', '?')}"
    return f"KiwiSDR v{version}" + (f", {receiver.antenna}" if receiver.antenna else "")


@task(name="process", cache_policy=NO_CACHE, task_run_name="process-{name}")
def process(
    capture: Capture, receiver: KiwiSDRReceiver, acquisition_id: str, name: str
) -> ProcessedCapture:
    """Measurements and recording of one capture (sync: pure numpy in a worker thread)."""
    result = process_capture(capture, receiver, acquisition_id=acquisition_id, name=name)
    row = result.row
    measured = result.recording.meta["global"][f"{EXTENSION}:measurements"]
    get_run_logger().info(
        "%s: power %s dBFS, SNR %s dB, C/N0 %s dB-Hz, offset %s Hz, %s (%s)",
        name,
        *(_fmt(row.get(k)) for k in ("power_dbfs", "snr_db", "cn0_dbhz", "frequency_offset_hz")),
        measured.get("modulation") or "no signal",
        measured.get("detection_reason"),
    )
    return result
