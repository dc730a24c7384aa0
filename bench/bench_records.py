"""Benchmark the record path: 10,000 measurement rows through ``upsert_measurements``
against a raw psycopg ``COPY`` of the same rows, in the same run on the same server.

Run: ``set -a; . .services/env; set +a; python bench/bench_records.py`` (reads RF_PG_*).
Targets: record path / COPY >= 0.3, and record path >= 5,000 rows/s. Always exits 0.

Both sides write into a scratch database (created and dropped here; when the role may not
create databases, the configured one, cleaned up afterwards). The record path goes into the
``measurements`` hypertable made by the migrations, validating every row and upserting
(INSERT ... ON CONFLICT DO UPDATE); the baseline COPYs into a plain table of the same
columns, key, CHECKs and time index. Both time the conversion of the same list of dicts and
a commit. Rounds alternate between the two; medians are reported. A re-run of the same rows
(every row an update) is timed too. ``--json PATH`` writes the rows ``bench/run.py``
collects (bench/rows.py); ``--rows`` / ``--rounds`` shrink the run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rows import row, skipped, write_rows
from sqlalchemy import Engine, text

from blocks.database import PG_ENV, timescaledb_from_env
from tasks.records import Measurement, ensure_schema, upsert_measurements

ROWS = 10_000
ROUNDS = 5
TARGET_RATIO = 0.3
TARGET_RATE = 5_000.0
COLUMNS = [c.name for c in Measurement.__table__.columns]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_rows(n: int) -> list[dict[str, Any]]:
    """Rows shaped like the flow's: 200 receivers x 50 instants, one acquisition."""
    acq = uuid.uuid4()
    return [
        {
            "time": T0 + timedelta(seconds=i // 200),
            "acquisition_id": acq,
            "receiver": f"rx-{i % 200:03d}",
            "status": "ok",
            "error": None,
            "attempts": 1,
            "latitude": 45.0 + (i % 200) / 1000,
            "longitude": 7.5,
            "altitude_m": 300.0,
            "frequency_hz": 145.5e6,
            "sample_rate": 12001.135,
            "sample_count": 24_064,
            "power_dbfs": -31.2,
            "noise_floor_dbfs_hz": -112.4,
            "signal_power_dbfs": -32.0,
            "cn0_dbhz": 58.1 + (i % 7),
            "snr_db": 18.1 + (i % 7),
            "snr_bandwidth_hz": 10_000.0,
            "frequency_offset_hz": 1.25,
            "rssi_dbm": -87.5 if i % 50 else float("nan"),
            "gps_fix": True,
            "lost_frames": 0,
            "adc_overflow_frames": 0,
            "object_key": f"acquisitions/2026/01/01/{acq}/rx-{i % 200:03d}.npy",
            "sha512": "0" * 128,
        }
        for i in range(n)
    ]


def copy_rows(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """The baseline: psycopg COPY of the same dicts into the scratch table, committed."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY bench_copy ({', '.join(COLUMNS)}) FROM STDIN") as cp,
        ):
            for row in rows:
                cp.write_row(
                    [None if isinstance(v, float) and v != v else v for v in map(row.get, COLUMNS)]
                )
        conn.commit()
    finally:
        raw.close()


def timed(fn: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def scratch_database(admin: Engine) -> str | None:
    name = f"rf_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # no CREATEDB privilege: use the configured database
        print(f"cannot create a scratch database ({type(exc).__name__}); using the configured one")
        return None
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=ROWS, help="rows per round (%(default)s)")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds (%(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result rows here")
    args = p.parse_args(argv)
    rows_per_round, rounds = args.rows, args.rounds
    missing = [k for k in PG_ENV if not os.environ.get(k)]
    if missing:
        print(f"bench_records: skipped, {', '.join(missing)} not set")
        if args.json:
            write_rows(args.json, [skipped("records", "skipped: no services")])
        return 0
    block = timescaledb_from_env(dict(os.environ))
    admin = block.get_engine(isolation_level="AUTOCOMMIT")
    scratch = scratch_database(admin)
    if scratch:
        block = block.model_copy(update={"database": scratch})
    engine = block.get_engine()
    written: list[uuid.UUID] = []
    try:
        ensure_schema(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_copy"))
            conn.execute(
                text(
                    "CREATE TABLE bench_copy (LIKE measurements INCLUDING DEFAULTS "
                    "INCLUDING CONSTRAINTS INCLUDING INDEXES)"
                )
            )
        warm = make_rows(rows_per_round)
        upsert_measurements(engine, warm)  # warm caches, pool, the staging path
        copy_rows(engine, make_rows(rows_per_round))
        written.append(warm[0]["acquisition_id"])
        t_record, t_copy = [], []
        for _ in range(rounds):
            rows = make_rows(rows_per_round)
            written.append(rows[0]["acquisition_id"])
            t_record.append(timed(upsert_measurements, engine, rows))
            t_copy.append(timed(copy_rows, engine, make_rows(rows_per_round)))
        t_rerun = timed(upsert_measurements, engine, rows)  # same rows again: all updates
        with engine.connect() as conn:
            count = conn.execute(
                text("SELECT count(*) FROM measurements WHERE acquisition_id = :a"),
                {"a": rows[0]["acquisition_id"]},
            ).scalar()
        rec_rate = rows_per_round / statistics.median(t_record)
        copy_rate = rows_per_round / statistics.median(t_copy)
        ratio = rec_rate / copy_rate
        ok = ratio >= TARGET_RATIO and rec_rate >= TARGET_RATE
        print(
            f"bench_records: {rows_per_round} rows, median of {rounds} rounds, "
            f"{block.host}:{block.port}"
        )
        print(f"  record path (upsert_measurements): {rec_rate:10,.0f} rows/s")
        print(f"  raw psycopg COPY (scratch table):  {copy_rate:10,.0f} rows/s")
        print(
            f"  re-run of the same rows (updates): {rows_per_round / t_rerun:10,.0f} rows/s, "
            f"{count} rows kept"
        )
        print(
            f"  ratio record/COPY = {ratio:.2f} (target >= {TARGET_RATIO}), "
            f"record >= {TARGET_RATE:,.0f} rows/s: {'PASS' if ok else 'FAIL'}"
        )
        if args.json:
            write_rows(
                args.json,
                [
                    row(
                        "records",
                        f"{rows_per_round} rows",
                        "record path",
                        rec_rate,
                        "rows/s",
                        "raw psycopg COPY",
                        copy_rate,
                        target=f">= {TARGET_RATIO} and >= {TARGET_RATE:.0f} rows/s",
                        ok=ok,
                    ),
                    row(
                        "records",
                        f"{rows_per_round} rows",
                        "re-run (updates)",
                        rows_per_round / t_rerun,
                        "rows/s",
                        "raw psycopg COPY",
                        copy_rate,
                    ),
                ],
            )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            if scratch:
                conn.execute(text(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
            else:
                cleanup = block.get_engine()
                with cleanup.begin() as c:
                    c.execute(text("DROP TABLE IF EXISTS bench_copy"))
                    c.execute(
                        text("DELETE FROM measurements WHERE acquisition_id = ANY(:ids)"),
                        {"ids": written},
                    )
                cleanup.dispose()
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
