"""Reconcile: stored recordings whose rows are missing get exactly the rows the flow writes."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from blocks.database import TimescaleDBConnection, sqlite_engine
from flows.acquisition import acquire
from flows.reconcile import reconcile
from tasks.records import Acquisition, Measurement, measurements_for

pytestmark = pytest.mark.flow


def _acquire(tmp_path: Path, **kwargs: Any) -> Any:
    return asyncio.run(
        acquire(
            frequency_hz=145.5e6,
            duration_s=0.5,
            network="simulated",
            storage="local",
            data_dir=str(tmp_path),
            return_state=True,
            **kwargs,
        )
    )


def _reconcile(tmp_path: Path) -> Any:
    return asyncio.run(
        reconcile(
            days=1, storage="local", database="sqlite", data_dir=str(tmp_path), return_state=True
        )
    )


def test_lost_rows_are_backfilled_exactly(prefect_server: None, tmp_path: Path) -> None:
    state = _acquire(tmp_path, database="sqlite")
    acquisition_id = state.result()["acquisition_id"]
    engine = sqlite_engine(tmp_path / "rf_acquisition.db")
    original = {r["receiver"]: r for r in measurements_for(engine, acquisition_id)}
    assert len(original) == 7
    lost = ["genova", "torino", "coazze"]
    with engine.begin() as conn:
        conn.execute(delete(Measurement).where(Measurement.receiver.in_(lost)))
        conn.execute(delete(Acquisition))

    first = _reconcile(tmp_path)
    assert first.is_completed(), first.message
    assert first.result()["backfilled"] == {acquisition_id: sorted(lost)}
    assert first.message.startswith("3 rows backfilled in 1 acquisitions")
    restored = {r["receiver"]: r for r in measurements_for(engine, acquisition_id)}
    assert restored == original  # every column, as the flow wrote it

    again = _reconcile(tmp_path)
    assert again.result()["rows_backfilled"] == 0


def test_database_down_then_reconciled(prefect_server: None, tmp_path: Path, unique: str) -> None:
    """The database is unreachable for the whole acquisition: recordings are stored, the
    flow fails saying which acquisition lacks rows, and reconcile writes all 7."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    TimescaleDBConnection(
        host="127.0.0.1", port=port, password="not-this", connect_timeout_s=2
    ).save(f"down-{unique}", overwrite=True)
    state = _acquire(tmp_path, database=f"timescaledb-connection/down-{unique}")
    assert state.is_failed()
    summary = state.result(raise_on_failure=False)
    acquisition_id = summary["acquisition_id"]
    assert f"rows missing for acquisition {acquisition_id}" in state.message
    assert "not-this" not in state.message
    assert len(list((tmp_path / "recordings").rglob("*.sigmf-meta"))) == 7

    done = _reconcile(tmp_path)
    assert done.result()["backfilled"] == {
        acquisition_id: sorted(r["receiver"] for r in summary["receivers"])
    }
    rows = measurements_for(sqlite_engine(tmp_path / "rf_acquisition.db"), acquisition_id)
    assert len(rows) == 7 and all(r["status"] == "ok" and r["object_key"] for r in rows)
