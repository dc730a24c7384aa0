"""The record schema as SQLAlchemy models: acquisitions, measurements, locations.

One model serves TimescaleDB (``measurements`` and ``locations`` are hypertables on
``time``) and SQLite (the embedded default). The models are the source of truth: the
Alembic migrations in :mod:`tasks.migrations` make the same tables (a test checks that
they agree), row validation (:mod:`tasks.records.rows`) is generated from the columns,
and each column's physical range (:class:`Range`) is both checked before a write and a
CHECK constraint.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    Uuid,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MEASUREMENT_KEY = ("acquisition_id", "receiver", "time")
MEASUREMENT_STATUSES = ("ok", "failed", "skipped")


@dataclass(frozen=True)
class Range:
    """The physical range of a column: checked before a write (:mod:`tasks.records.rows`)
    and by a CHECK constraint.

    NULL is always admitted (a nullable column means "not measured").

    Example:
        >>> Range(low=0, low_exclusive=True).sql("sample_rate")
        'sample_rate > 0'
        >>> Range(-90, 90).describe()
        '>= -90 and <= 90'
    """

    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False

    def sql(self, name: str) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{name} {'>' if self.low_exclusive else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{name} <= {self.high:g}")
        return " AND ".join(parts)

    def describe(self) -> str:
        """The range for people (error messages), e.g. ``> 0`` or ``>= -90 and <= 90``."""
        return self.sql("value").removeprefix("value ").replace(" AND value", " and")


MEASUREMENT_RANGES: dict[str, Range] = {
    "attempts": Range(low=0),
    "latitude": Range(-90, 90),
    "longitude": Range(-180, 180),
    "frequency_hz": Range(low=0, low_exclusive=True),
    "sample_rate": Range(low=0, low_exclusive=True),
    "sample_count": Range(low=0),
    "snr_bandwidth_hz": Range(low=0, low_exclusive=True),
    "lost_frames": Range(low=0),
    "adc_overflow_frames": Range(low=0),
}
ACQUISITION_RANGES: dict[str, Range] = {
    "frequency_hz": Range(low=0, low_exclusive=True),
    "duration_s": Range(low=0, low_exclusive=True),
    "receivers_requested": Range(low=0),
    "receivers_ok": Range(low=0),
    "receivers_failed": Range(low=0),
    "receivers_skipped": Range(low=0),
}


def _range_checks(table_name: str, ranges: Mapping[str, Range]) -> list[CheckConstraint]:
    return [CheckConstraint(r.sql(c), name=f"ck_{table_name}_{c}") for c, r in ranges.items()]


class Base(DeclarativeBase):
    pass


class Acquisition(Base):
    """One acquisition: what was asked for and how it went."""

    __tablename__ = "acquisitions"
    __table_args__ = (
        *_range_checks("acquisitions", ACQUISITION_RANGES),
        CheckConstraint(
            "receivers_ok + receivers_failed + receivers_skipped <= receivers_requested",
            name="ck_acquisitions_receiver_counts",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    frequency_hz: Mapped[float] = mapped_column(Float, nullable=False)
    duration_s: Mapped[float] = mapped_column(Float, nullable=False)
    start_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    receivers_requested: Mapped[int] = mapped_column(Integer, nullable=False)
    receivers_ok: Mapped[int] = mapped_column(Integer, nullable=False)
    receivers_failed: Mapped[int] = mapped_column(Integer, nullable=False)
    receivers_skipped: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    simulated: Mapped[bool | None] = mapped_column(Boolean)


class Measurement(Base):
    """One receiver in one acquisition; a hypertable on ``time`` (UTC of the first sample,
    or the planned start when nothing was captured).

    The key (acquisition, receiver, time) makes writes upserts and serves lookups of one
    acquisition; ``measurements_time_idx`` serves time ranges.
    """

    __tablename__ = "measurements"
    __table_args__ = (
        PrimaryKeyConstraint(*MEASUREMENT_KEY, name="measurements_pkey"),
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s}'" for s in MEASUREMENT_STATUSES)),
            name="ck_measurements_status",
        ),
        *_range_checks("measurements", MEASUREMENT_RANGES),
    )

    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acquisition_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    receiver: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    altitude_m: Mapped[float | None] = mapped_column(Float)
    frequency_hz: Mapped[float] = mapped_column(Float, nullable=False)
    sample_rate: Mapped[float | None] = mapped_column(Float)
    sample_count: Mapped[int | None] = mapped_column(Integer)
    power_dbfs: Mapped[float | None] = mapped_column(Float)
    noise_floor_dbfs_hz: Mapped[float | None] = mapped_column(Float)
    signal_power_dbfs: Mapped[float | None] = mapped_column(Float)
    cn0_dbhz: Mapped[float | None] = mapped_column(Float)
    snr_db: Mapped[float | None] = mapped_column(Float)
    snr_bandwidth_hz: Mapped[float | None] = mapped_column(Float)
    frequency_offset_hz: Mapped[float | None] = mapped_column(Float)
    rssi_dbm: Mapped[float | None] = mapped_column(Float)
    gps_fix: Mapped[bool | None] = mapped_column(Boolean)
    lost_frames: Mapped[int | None] = mapped_column(Integer)
    adc_overflow_frames: Mapped[int | None] = mapped_column(Integer)
    object_key: Mapped[str | None] = mapped_column(Text)
    sha512: Mapped[str | None] = mapped_column(String(128))
    # 0003: where the samples came from, the GPS timing model, and detection.
    simulated: Mapped[bool | None] = mapped_column(Boolean)
    sample_rate_fitted_hz: Mapped[float | None] = mapped_column(Float)
    timing_residual_ns: Mapped[float | None] = mapped_column(Float)
    gps_locked: Mapped[bool | None] = mapped_column(Boolean)
    timing_fixes: Mapped[int | None] = mapped_column(Integer)
    timing_outliers: Mapped[int | None] = mapped_column(Integer)
    first_sample_ns: Mapped[int | None] = mapped_column(BigInteger)
    detected: Mapped[bool | None] = mapped_column(Boolean)
    detection_reason: Mapped[str | None] = mapped_column(Text)
    occupied_bandwidth_hz: Mapped[float | None] = mapped_column(Float)
    noise_method: Mapped[str | None] = mapped_column(String(32))
    modulation: Mapped[str | None] = mapped_column(String(16))
    clipped_fraction: Mapped[float | None] = mapped_column(Float)
    dc_dbfs: Mapped[float | None] = mapped_column(Float)
    edge_distance_hz: Mapped[float | None] = mapped_column(Float)


Index("measurements_time_idx", Measurement.__table__.c.time.desc())

LOCATION_STATUSES = ("ok", "failed")
LOCATION_SOURCES = ("acquisition", "kiwi-wav")
LOCATION_RANGES: dict[str, Range] = {
    "latitude": Range(-90, 90),
    "longitude": Range(-180, 180),
    "frequency_hz": Range(low=0, low_exclusive=True),
    "receivers_used": Range(low=0),
    "pairs_used": Range(low=0),
}


class Location(Base):
    """One transmitter position from time differences of arrival; a hypertable on ``time``
    (the start of the common capture window) on TimescaleDB.

    ``acquisition_id`` is NULL for positions computed from imported kiwirecorder files; the
    ``truth_*`` and ``error_m`` columns are set only when the emitter's position is known
    (simulated runs).
    """

    __tablename__ = "locations"
    __table_args__ = (
        PrimaryKeyConstraint("id", "time", name="locations_pkey"),
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s}'" for s in LOCATION_STATUSES)),
            name="ck_locations_status",
        ),
        CheckConstraint(
            "source IN ({})".format(", ".join(f"'{s}'" for s in LOCATION_SOURCES)),
            name="ck_locations_source",
        ),
        *_range_checks("locations", LOCATION_RANGES),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acquisition_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    frequency_hz: Mapped[float] = mapped_column(Float, nullable=False)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    ellipse_major_m: Mapped[float | None] = mapped_column(Float)
    ellipse_minor_m: Mapped[float | None] = mapped_column(Float)
    ellipse_orientation_deg: Mapped[float | None] = mapped_column(Float)
    gdop: Mapped[float | None] = mapped_column(Float)
    receivers_used: Mapped[int] = mapped_column(Integer, nullable=False)
    pairs_used: Mapped[int] = mapped_column(Integer, nullable=False)
    receivers: Mapped[str | None] = mapped_column(Text)
    residual_rms_ns: Mapped[float | None] = mapped_column(Float)
    propagation_speed_m_s: Mapped[float] = mapped_column(Float, nullable=False)
    truth_latitude: Mapped[float | None] = mapped_column(Float)
    truth_longitude: Mapped[float | None] = mapped_column(Float)
    error_m: Mapped[float | None] = mapped_column(Float)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


Index("locations_time_idx", Location.__table__.c.time.desc())
Index("locations_acquisition_idx", Location.__table__.c.acquisition_id)
