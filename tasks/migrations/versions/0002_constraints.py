"""Physical-range CHECK constraints; key (acquisition_id, receiver, time); time index.

The key's column order lets one acquisition be found through the primary key's index
(it was (time, acquisition_id, receiver)); the ``time`` index serves time ranges on
every backend (TimescaleDB made it already). SQLite cannot alter constraints, so there
the tables are rebuilt from the frozen definitions below (Alembic batch mode).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACQUISITION_CHECKS = {
    "ck_acquisitions_frequency_hz": "frequency_hz > 0",
    "ck_acquisitions_duration_s": "duration_s > 0",
    "ck_acquisitions_receivers_requested": "receivers_requested >= 0",
    "ck_acquisitions_receivers_ok": "receivers_ok >= 0",
    "ck_acquisitions_receivers_failed": "receivers_failed >= 0",
    "ck_acquisitions_receivers_skipped": "receivers_skipped >= 0",
    "ck_acquisitions_receiver_counts": (
        "receivers_ok + receivers_failed + receivers_skipped <= receivers_requested"
    ),
}
MEASUREMENT_CHECKS = {
    "ck_measurements_status": "status IN ('ok', 'failed', 'skipped')",
    "ck_measurements_attempts": "attempts >= 0",
    "ck_measurements_latitude": "latitude >= -90 AND latitude <= 90",
    "ck_measurements_longitude": "longitude >= -180 AND longitude <= 180",
    "ck_measurements_frequency_hz": "frequency_hz > 0",
    "ck_measurements_sample_rate": "sample_rate > 0",
    "ck_measurements_sample_count": "sample_count >= 0",
    "ck_measurements_snr_bandwidth_hz": "snr_bandwidth_hz > 0",
    "ck_measurements_lost_frames": "lost_frames >= 0",
    "ck_measurements_adc_overflow_frames": "adc_overflow_frames >= 0",
}
OLD_KEY = ["time", "acquisition_id", "receiver"]
NEW_KEY = ["acquisition_id", "receiver", "time"]
TIME_INDEX = "measurements_time_idx"


def _acquisitions(new: bool) -> sa.Table:
    return sa.Table(
        "acquisitions",
        sa.MetaData(),
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
        *([sa.CheckConstraint(s, name=n) for n, s in ACQUISITION_CHECKS.items()] if new else []),
    )


def _measurements(new: bool) -> sa.Table:
    return sa.Table(
        "measurements",
        sa.MetaData(),
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
        sa.PrimaryKeyConstraint(*(NEW_KEY if new else OLD_KEY), name="measurements_pkey"),
        *([sa.CheckConstraint(s, name=n) for n, s in MEASUREMENT_CHECKS.items()] if new else []),
    )


def _is_hypertable(bind: sa.Connection) -> bool:
    if bind.dialect.name != "postgresql" or not bind.scalar(
        sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
    ):
        return False
    return bool(
        bind.scalar(
            sa.text(
                "SELECT count(*) FROM timescaledb_information.hypertables "
                "WHERE hypertable_name = 'measurements' AND hypertable_schema = current_schema()"
            )
        )
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for table in (_acquisitions(new=True), _measurements(new=True)):
            with op.batch_alter_table(table.name, recreate="always", copy_from=table):
                pass
    else:
        for name, sql in ACQUISITION_CHECKS.items():
            op.create_check_constraint(name, "acquisitions", sql)
        for name, sql in MEASUREMENT_CHECKS.items():
            op.create_check_constraint(name, "measurements", sql)
        op.drop_constraint("measurements_pkey", "measurements", type_="primary")
        op.create_primary_key("measurements_pkey", "measurements", NEW_KEY)
    op.create_index(TIME_INDEX, "measurements", [sa.text('"time" DESC')], if_not_exists=True)


def downgrade() -> None:
    bind = op.get_bind()
    if not _is_hypertable(bind):
        op.drop_index(TIME_INDEX, "measurements", if_exists=True)  # 0001 had none here
    if bind.dialect.name == "sqlite":
        for table in (_acquisitions(new=False), _measurements(new=False)):
            with op.batch_alter_table(table.name, recreate="always", copy_from=table):
                pass
    else:
        op.drop_constraint("measurements_pkey", "measurements", type_="primary")
        op.create_primary_key("measurements_pkey", "measurements", OLD_KEY)
        for name in MEASUREMENT_CHECKS:
            op.drop_constraint(name, "measurements", type_="check")
        for name in ACQUISITION_CHECKS:
            op.drop_constraint(name, "acquisitions", type_="check")
