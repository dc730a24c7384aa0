"""The health flow: is everything an acquisition needs usable right now?

Storage (reachable, credentials accepted, bucket present, a probe object written, read
back and deleted), the database (a query, and TimescaleDB's version and license) and every
enabled receiver's ``/status``. It resolves storage, database and receivers exactly as
``acquire`` does, publishes a table artifact ``health``, and ends Completed or Failed with
one line such as "storage ok, database ok, 7/7 receivers reachable".

Run it from a deployment (every 10 minutes, see prefect.yaml), or:
``python -m flows.health --storage auto --database auto``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
from prefect import flow
from prefect.artifacts import acreate_table_artifact
from prefect.logging import get_run_logger
from prefect.states import Completed, Failed, State

from blocks.resolve import default_data_dir, resolve_database, resolve_storage, select_receivers
from flows import cli
from tasks.capture import StatusCheck, check_status
from tasks.health import DatabaseHealth, StorageHealth, check_database, check_storage
from tasks.plan import Network, load_receivers

# Only tunes the simulated network when it is the one checked; /status ignores it.
SIMULATED_FREQUENCY_HZ = 145_500_000.0


@dataclass
class HealthReport:
    """Everything the health flow found; ``message`` is its final state's message."""

    storage_target: str
    storage: StorageHealth | None = None
    storage_error: str | None = None  # the storage could not even be resolved
    database_target: str = ""
    database: DatabaseHealth | None = None
    database_error: str | None = None
    receivers: list[StatusCheck] = field(default_factory=list)
    receivers_error: str | None = None

    @property
    def storage_ok(self) -> bool:
        return self.storage is not None and self.storage.ok

    @property
    def database_ok(self) -> bool:
        return self.database is not None and self.database.ok

    @property
    def reachable(self) -> int:
        return sum(1 for r in self.receivers if r.ok)

    @property
    def ok(self) -> bool:
        """Storage and database healthy and at least one receiver reachable (a receiver
        that is down is reported, but one acquisition can still use the others)."""
        return self.storage_ok and self.database_ok and self.reachable > 0

    @property
    def message(self) -> str:
        parts = [
            _part("storage", self.storage_ok, self.storage_error or self._storage_reason()),
            _part(
                "database",
                self.database_ok,
                self.database_error or (self.database.error if self.database else None),
            ),
        ]
        receivers = f"{self.reachable}/{len(self.receivers)} receivers reachable"
        if self.receivers_error:
            receivers = f"receivers FAILED ({self.receivers_error})"
        return ", ".join([*parts, receivers])

    def _storage_reason(self) -> str | None:
        return self.storage.summary if self.storage and not self.storage.ok else None

    def rows(self) -> list[dict[str, str]]:
        """The table artifact: component, check, result, detail."""
        rows = []
        if self.storage is not None:
            for row in self.storage.rows():
                rows.append({"component": "storage", **row})
            rows.append(
                {
                    "component": "storage",
                    "check": "latency ms",
                    "result": _ms(self.storage.latency_ms),
                    "detail": self.storage_target,
                }
            )
        else:
            rows.append(_row("storage", "configuration", False, self.storage_error))
        if self.database is not None:
            rows.append(
                _row("database", "query", self.database.ok, self.database.error)
                | {"detail": self.database.error or self.database_target}
            )
            if self.database.timescaledb_version:
                rows.append(
                    {
                        "component": "database",
                        "check": "timescaledb",
                        "result": self.database.timescaledb_version,
                        "detail": f"license {self.database.timescaledb_license}",
                    }
                )
            rows.append(
                {
                    "component": "database",
                    "check": "latency ms",
                    "result": _ms(self.database.latency_ms),
                    "detail": self.database.dialect,
                }
            )
        else:
            rows.append(_row("database", "configuration", False, self.database_error))
        if self.receivers_error:
            rows.append(_row("receivers", "configuration", False, self.receivers_error))
        for check in self.receivers:
            detail = check.reason
            if check.ok and check.status is not None:
                s = check.status
                gps = "GPS fix" if s.gps_fix else "no GPS fix"
                detail = f"{s.users}/{s.users_max} users, {gps}"
            rows.append(_row("receiver", check.receiver, check.ok, detail))
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "message": self.message,
            "storage": {
                "target": self.storage_target,
                "ok": self.storage_ok,
                **(asdict(self.storage) if self.storage else {"error": self.storage_error}),
            },
            "database": {
                "target": self.database_target,
                "ok": self.database_ok,
                **(asdict(self.database) if self.database else {"error": self.database_error}),
            },
            "receivers": [
                {"receiver": r.receiver, "ok": r.ok, "reason": r.reason} for r in self.receivers
            ],
        }


def _part(name: str, ok: bool, reason: str | None) -> str:
    return f"{name} ok" if ok else f"{name} FAILED ({reason or 'unknown'})"


def _row(component: str, check: str, ok: bool, detail: str | None) -> dict[str, str]:
    return {
        "component": component,
        "check": check,
        "result": "ok" if ok else "FAILED",
        "detail": detail or "",
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@flow(name="health", description="Check storage, database and receivers; report what fails.")
async def health(
    storage: str = "auto",
    database: str = "auto",
    network: Network = "auto",
    data_dir: str | None = None,
) -> State[dict[str, Any]]:
    """Check everything an acquisition needs.

    Args:
        storage: ``"auto"``, ``"local"`` or ``"<block-type>/<name>"``, as for ``acquire``.
        database: ``"auto"``, ``"sqlite"`` or ``"timescaledb-connection/<name>"``.
        network: ``"blocks"``, ``"simulated"`` or ``"auto"``, as for ``acquire``.
        data_dir: folder of the local defaults (default ``$RF_DATA_DIR`` or ``./data``).

    Returns:
        Completed when storage and database are healthy and at least one receiver is
        reachable, else Failed; the message says which part failed and why, the result
        is the report as a dict.
    """
    logger = get_run_logger()
    folder = Path(data_dir).resolve() if data_dir else default_data_dir()
    report = HealthReport(storage_target=storage, database_target=database)
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.gather(
            _check_storage(report, storage, folder),
            _check_database(report, database, folder),
            _check_receivers(report, network, stack),
        )
    await acreate_table_artifact(key="health", table=report.rows(), description=report.message)
    (logger.info if report.ok else logger.error)("%s", report.message)
    if report.ok:
        return Completed(message=report.message, data=report.as_dict())
    return Failed(message=report.message, data=report.as_dict())


async def _check_storage(report: HealthReport, spec: str, folder: Path) -> None:
    try:
        choice = await resolve_storage(spec, folder)
    except (ValueError, TypeError) as exc:
        report.storage_error = str(exc)
        return
    report.storage_target = choice.description
    report.storage = await check_storage(choice.block)


async def _check_database(report: HealthReport, spec: str, folder: Path) -> None:
    try:
        choice = await resolve_database(spec, folder)
    except (ValueError, TypeError) as exc:
        report.database_error = str(exc)
        return
    report.database_target = choice.description
    try:
        report.database = await anyio.to_thread.run_sync(check_database, choice.engine)
    finally:
        choice.engine.dispose()


async def _check_receivers(
    report: HealthReport, network: Network, stack: contextlib.AsyncExitStack
) -> None:
    try:
        available = await load_receivers(network, SIMULATED_FREQUENCY_HZ, stack)
        chosen = select_receivers(available, None, None)
    except ValueError as exc:
        report.receivers_error = str(exc)
        return
    if not chosen:
        report.receivers_error = "no enabled receivers"
        return
    report.receivers = list(await asyncio.gather(*(check_status(n, r) for n, r in chosen.items())))


def main(argv: list[str] | None = None) -> int:
    """Command line: run the health flow once and print its message."""
    p = cli.parser("flows.health", __doc__)
    p.add_argument("--network", choices=["auto", "simulated", "blocks"], default="auto")
    args = p.parse_args(argv)
    return cli.run_and_print(health, **vars(args))


if __name__ == "__main__":
    sys.exit(main())
