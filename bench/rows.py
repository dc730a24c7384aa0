"""The benches' common result rows: what ``--json PATH`` writes and ``bench/run.py`` reads.

Every speed or memory bench script takes ``--json PATH`` and writes there a JSON list of
rows, one per figure, each set against a baseline measured in the same run:

``bench`` (the script, e.g. ``flow``), ``case`` (e.g. ``7x2s``), ``metric``, ``value``,
``unit``, ``baseline_name``, ``baseline_value``, ``ratio`` (value / baseline_value),
``target`` (a short text such as ``"<= 1.5"``, on the ratio unless it names a unit),
``ok`` (the target met, or None when there is none) and ``note`` (why a row has no value,
e.g. "skipped: no services").

A separate module, imported by path from the scripts' own folder, so each script stays
runnable on its own (``python bench/bench_dsp.py --json out.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FIELDS = (
    "bench",
    "case",
    "metric",
    "value",
    "unit",
    "baseline_name",
    "baseline_value",
    "ratio",
    "target",
    "ok",
    "note",
)


def _number(x: Any) -> float | None:
    """A finite float, or None (JSON has no NaN; a missing figure stays visible as None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def row(
    bench: str,
    case: str,
    metric: str,
    value: float | None,
    unit: str,
    baseline_name: str | None = None,
    baseline_value: float | None = None,
    *,
    ratio: float | None = None,
    target: str | None = None,
    ok: bool | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One result row; ``ratio`` defaults to value / baseline_value."""
    value, baseline_value = _number(value), _number(baseline_value)
    if ratio is None and value is not None and baseline_value:
        ratio = value / baseline_value
    return {
        "bench": bench,
        "case": case,
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline_name": baseline_name,
        "baseline_value": baseline_value,
        "ratio": _number(ratio),
        "target": target,
        "ok": None if ok is None else bool(ok),
        "note": note,
    }


def skipped(bench: str, reason: str) -> dict[str, Any]:
    """The row of a bench that did not run (missing services, a failed script)."""
    return row(bench, "-", "-", None, "", note=reason)


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as the JSON list ``bench/run.py`` collects."""
    missing = [r for r in rows if set(r) != set(FIELDS)]
    if missing:
        raise ValueError(f"rows must have exactly the fields {FIELDS}: {missing[0]}")
    Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text())


def _cell(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e6 else f"{x:,.0f}"
    return str(x)


def format_table(rows: list[dict[str, Any]]) -> str:
    """One plain-text table of every row (ratio = value / baseline)."""
    head = ("bench", "case", "metric", "value", "unit", "baseline", "base value", "ratio")
    head += ("target", "ok")
    body = []
    for r in rows:
        if r["value"] is None:
            body.append((r["bench"], r["case"], r["note"] or "no value", *[""] * 7))
            continue
        body.append(
            (
                r["bench"],
                r["case"],
                r["metric"],
                _cell(r["value"]),
                r["unit"],
                r["baseline_name"] or "-",
                _cell(r["baseline_value"]),
                _cell(r["ratio"]),
                r["target"] or "-",
                _cell(r["ok"]),
            )
        )
    sized = [b for b, r in zip(body, rows, strict=True) if r["value"] is not None]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *sized, strict=True)]
    widths[:2] = [max(len(str(c)) for c in col) for col in list(zip(head, *body, strict=True))[:2]]

    def line(cells: tuple[str, ...]) -> str:
        # a skipped bench's note runs on across the empty columns
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(head), line(tuple("-" * w for w in widths))]
    out += [line(b) for b in body]
    return "\n".join(out)
