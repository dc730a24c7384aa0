"""Baseline: acquisitions and measurements; measurements a hypertable on TimescaleDB.

Exactly the schema the pre-migration ``create_all`` made, so databases from that time are
adopted by stamping this revision. Chunks are one day; nothing TSL-only is used.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def _timescaledb(bind: sa.Connection) -> bool:
    """Installed, or installable now; without it ``measurements`` stays a plain table."""
    if bind.dialect.name != "postgresql":
        return False
    if bind.scalar(sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")):
        return True
    if not bind.scalar(
        sa.text("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    ):
        return False
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
    except sa.exc.DBAPIError as exc:  # not preloaded, or no privilege to create it
        log.warning("timescaledb is available but could not be created: %s", exc.orig)
        return False
    return True


def upgrade() -> None:
    op.create_table(
        "acquisitions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("frequency_hz", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("receivers_requested", sa.Integer(), nullable=False),
        sa.Column("receivers_ok", sa.Integer(), nullable=False),
        sa.Column("receivers_failed", sa.Integer(), nullable=False),
        sa.Column("receivers_skipped", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "measurements",
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acquisition_id", sa.Uuid(), nullable=False),
        sa.Column("receiver", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("altitude_m", sa.Float(), nullable=True),
        sa.Column("frequency_hz", sa.Float(), nullable=False),
        sa.Column("sample_rate", sa.Float(), nullable=True),
        sa.Column("sample_count", sa.Integer(), nullable=True),
        sa.Column("power_dbfs", sa.Float(), nullable=True),
        sa.Column("noise_floor_dbfs_hz", sa.Float(), nullable=True),
        sa.Column("signal_power_dbfs", sa.Float(), nullable=True),
        sa.Column("cn0_dbhz", sa.Float(), nullable=True),
        sa.Column("snr_db", sa.Float(), nullable=True),
        sa.Column("snr_bandwidth_hz", sa.Float(), nullable=True),
        sa.Column("frequency_offset_hz", sa.Float(), nullable=True),
        sa.Column("rssi_dbm", sa.Float(), nullable=True),
        sa.Column("gps_fix", sa.Boolean(), nullable=True),
        sa.Column("lost_frames", sa.Integer(), nullable=True),
        sa.Column("adc_overflow_frames", sa.Integer(), nullable=True),
        sa.Column("object_key", sa.Text(), nullable=True),
        sa.Column("sha512", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("time", "acquisition_id", "receiver"),
    )
    if _timescaledb(op.get_bind()):
        # Also creates measurements_time_idx ("time" DESC), as the pre-migration code did.
        op.execute(
            "SELECT create_hypertable('measurements', 'time', "
            "chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE)"
        )


def downgrade() -> None:
    op.drop_table("measurements")  # a hypertable's chunks go with it
    op.drop_table("acquisitions")
