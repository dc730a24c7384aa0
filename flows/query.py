"""The ``query`` command: read the recorded rows back, as a table or as JSON.

    python -m flows.query latest [--status ok] [--receiver torino ...]
    python -m flows.query series [--metric snr_db] [--hours 24] [--bucket-minutes 60]
    python -m flows.query availability [--days 7]      # whole UTC days, today included
    python -m flows.query acquisition <acquisition id>

Add ``--json`` for one JSON document on stdout. The database is chosen as for the flows
(``--database auto | sqlite | timescaledb-connection/<name>``) or given as a SQLAlchemy
URL. Windows end now unless ``--end`` says otherwise; days and buckets are UTC.

A command, not a flow: a read needs no orchestration, and no run should be recorded for
it. The queries themselves are :mod:`tasks.queries`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import SQLAlchemyError

from blocks.resolve import default_data_dir, resolve_database
from tasks.errors import redact
from tasks.queries import (
    METRICS,
    acquisition_with_measurements,
    latest_measurements,
    metric_series,
    receiver_availability,
)

# The columns `latest` prints as a table (JSON has them all).
LATEST_COLUMNS = ("receiver", "time", "status", "snr_db", "rssi_dbm", "frequency_offset_hz")


def engine_for(spec: str, data_dir: Path | None) -> tuple[Engine, str]:
    """An engine and its description (never with the password) for ``--database``."""
    if "://" in spec:
        engine = create_engine(spec)
        return engine, str(engine.url)  # str() renders the password as ***
    choice = asyncio.run(resolve_database(spec, data_dir or default_data_dir()))
    return choice.engine, choice.description


def _utc_instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone, e.g. {text}+00:00")
    return value.astimezone(UTC)


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
        return value

    return parse


def run(engine: Engine, args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    """The query the arguments ask for: (its JSON document, its table rows)."""
    end: datetime = args.end or datetime.now(UTC)
    receivers = args.receiver or None
    if args.command == "latest":
        rows = latest_measurements(engine, receivers=receivers, status=args.status)
        return rows, [{c: r.get(c) for c in LATEST_COLUMNS} for r in rows]
    if args.command == "series":
        points = metric_series(
            engine,
            args.metric,
            start=end - timedelta(hours=args.hours),
            end=end,
            bucket=timedelta(minutes=args.bucket_minutes),
            receivers=receivers,
        )
        found = [asdict(p) for p in points]
        return {"metric": args.metric, "points": found}, found
    if args.command == "availability":
        first = datetime.combine(end.date() - timedelta(days=args.days - 1), time(), UTC)
        days = receiver_availability(engine, start=first, end=end, receivers=receivers)
        found = [{**asdict(a), "total": a.total, "ok_fraction": a.ok_fraction} for a in days]
        return found, found
    record = acquisition_with_measurements(engine, args.acquisition_id)
    if record is None:
        raise LookupError(f"acquisition {args.acquisition_id}: no rows")
    table = [{c: r.get(c) for c in LATEST_COLUMNS} for r in record.measurements]
    return asdict(record), table


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as aligned text columns (floats to 3 significant decimals, instants in UTC)."""
    if not rows:
        return "(no rows)"
    names = list(rows[0])
    cells = [[_cell(row.get(n)) for n in names] for row in rows]
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def parser() -> argparse.ArgumentParser:
    prog = os.environ.get("RF_COMMAND_NAME", "python -m flows.query")  # `rfacq query`
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database",
        default="auto",
        help="auto | sqlite | timescaledb-connection/<name> | a SQLAlchemy URL",
    )
    common.add_argument("--data-dir", type=Path, default=None, help="folder of the SQLite default")
    common.add_argument("--json", action="store_true", help="one JSON document on stdout")
    common.add_argument(
        "--receiver",
        "--receivers",
        dest="receiver",
        nargs="+",
        action="extend",
        help="only these receivers (repeatable)",
    )
    common.add_argument("--end", type=_utc_instant, help="end of the window (default: now)")
    sub = p.add_subparsers(dest="command", required=True)
    latest = sub.add_parser("latest", parents=[common], help="the newest row of each receiver")
    latest.add_argument("--status", choices=["ok", "failed", "skipped"])
    series = sub.add_parser("series", parents=[common], help="a measurement, bucketed in time")
    series.add_argument("--metric", choices=METRICS, default="snr_db")
    series.add_argument("--hours", type=_positive(float), default=24.0)
    series.add_argument("--bucket-minutes", type=_positive(float), default=60.0)
    days = sub.add_parser("availability", parents=[common], help="ok/failed/skipped per day")
    days.add_argument("--days", type=_positive(int), default=7)
    one = sub.add_parser("acquisition", parents=[common], help="one acquisition and its rows")
    one.add_argument("acquisition_id", type=uuid.UUID)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one query and print it; exit status 1 when there was nothing to show or the
    database refused, 2 for bad arguments."""
    args = parser().parse_args(argv)
    engine, where = engine_for(args.database, args.data_dir)
    try:
        document, table = run(engine, args)
    except (LookupError, ValueError) as exc:
        print(f"query: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:  # e.g. no tables yet: nothing was ever recorded there
        cause = getattr(exc, "orig", None) or exc
        reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        print(f"query: {where}: {redact(reason, [engine.url.password])}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(document, default=_json_default, indent=1))
    else:
        print(f"# {args.command} from {where}", file=sys.stderr)
        print(format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
