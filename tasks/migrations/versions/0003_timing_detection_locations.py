"""Timing model and detection fields on measurements, ``simulated`` flags, and ``locations``.

Measurements gain the per-recording GPS timing model summary (fitted sample rate, fit
residual, fixes, outliers, the UTC of sample 0 in integer nanoseconds) and the detection
fields that say whether a signal was there at all. ``locations`` holds one position fix per
localisation; a hypertable on ``time`` on TimescaleDB like ``measurements``. All new
measurement columns are nullable: old rows simply do not know them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MEASUREMENT_COLUMNS = [
    sa.Column("simulated", sa.Boolean(), nullable=True),
    sa.Column("sample_rate_fitted_hz", sa.Float(), nullable=True),
    sa.Column("timing_residual_ns", sa.Float(), nullable=True),
    sa.Column("gps_locked", sa.Boolean(), nullable=True),
    sa.Column("timing_fixes", sa.Integer(), nullable=True),
    sa.Column("timing_outliers", sa.Integer(), nullable=True),
    sa.Column("first_sample_ns", sa.BigInteger(), nullable=True),
    sa.Column("detected", sa.Boolean(), nullable=True),
    sa.Column("detection_reason", sa.Text(), nullable=True),
    sa.Column("occupied_bandwidth_hz", sa.Float(), nullable=True),
    sa.Column("noise_method", sa.String(32), nullable=True),
    sa.Column("modulation", sa.String(16), nullable=True),
    sa.Column("clipped_fraction", sa.Float(), nullable=True),
    sa.Column("dc_dbfs", sa.Float(), nullable=True),
    sa.Column("edge_distance_hz", sa.Float(), nullable=True),
]

LOCATION_CHECKS = {
    "ck_locations_status": "status IN ('ok', 'failed')",
    "ck_locations_source": "source IN ('acquisition', 'kiwi-wav')",
    "ck_locations_latitude": "latitude >= -90 AND latitude <= 90",
    "ck_locations_longitude": "longitude >= -180 AND longitude <= 180",
    "ck_locations_frequency_hz": "frequency_hz > 0",
    "ck_locations_receivers_used": "receivers_used >= 0",
    "ck_locations_pairs_used": "pairs_used >= 0",
}


def _is_timescaledb(bind: sa.Connection) -> bool:
    if bind.dialect.name != "postgresql":
        return False
    return bool(
        bind.scalar(sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"))
    )


def upgrade() -> None:
    with op.batch_alter_table("acquisitions") as batch:
        batch.add_column(sa.Column("simulated", sa.Boolean(), nullable=True))
    with op.batch_alter_table("measurements") as batch:
        for column in MEASUREMENT_COLUMNS:
            batch.add_column(column.copy())
    op.create_table(
        "locations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acquisition_id", sa.Uuid(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("frequency_hz", sa.Float(), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("ellipse_major_m", sa.Float(), nullable=True),
        sa.Column("ellipse_minor_m", sa.Float(), nullable=True),
        sa.Column("ellipse_orientation_deg", sa.Float(), nullable=True),
        sa.Column("gdop", sa.Float(), nullable=True),
        sa.Column("receivers_used", sa.Integer(), nullable=False),
        sa.Column("pairs_used", sa.Integer(), nullable=False),
        sa.Column("receivers", sa.Text(), nullable=True),
        sa.Column("residual_rms_ns", sa.Float(), nullable=True),
        sa.Column("propagation_speed_m_s", sa.Float(), nullable=False),
        sa.Column("truth_latitude", sa.Float(), nullable=True),
        sa.Column("truth_longitude", sa.Float(), nullable=True),
        sa.Column("error_m", sa.Float(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", "time", name="locations_pkey"),
        *[sa.CheckConstraint(s, name=n) for n, s in LOCATION_CHECKS.items()],
    )
    op.create_index("locations_acquisition_idx", "locations", ["acquisition_id"])
    if _is_timescaledb(op.get_bind()):
        op.execute(
            "SELECT create_hypertable('locations', 'time', "
            "chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE)"
        )
    else:
        op.create_index("locations_time_idx", "locations", [sa.text("time DESC")])


def downgrade() -> None:
    op.drop_table("locations")
    with op.batch_alter_table("measurements") as batch:
        for column in reversed(MEASUREMENT_COLUMNS):
            batch.drop_column(column.name)
    with op.batch_alter_table("acquisitions") as batch:
        batch.drop_column("simulated")
