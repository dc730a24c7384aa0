"""Row validation: pydantic types generated from the SQLAlchemy columns.

Each column becomes a typed field: its Python type, NULL allowed or not, its range
(:class:`tasks.records.models.Range`: the same bounds as the CHECK constraint), its
allowed values (``status``) and its length. A batch is validated in one
``TypeAdapter.validate_python`` call (pydantic-core, no Python per value on the good
path), then laid out as tuples in column order for the COPY. Any failure becomes a
:class:`tasks.errors.RecordError` that names the receiver (or acquisition), the field and
the allowed range; nothing is written.

NaN and infinities mean "not measurable": stored as NULL in a nullable column, refused in
a required one. Timestamps must be timezone-aware and are stored in UTC.
"""

from __future__ import annotations

import contextlib
import gc
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired, Required  # pydantic needs these on 3.11

from pydantic import AfterValidator, AwareDatetime, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from tasks.errors import RecordError
from tasks.records.models import (
    ACQUISITION_RANGES,
    MEASUREMENT_KEY,
    MEASUREMENT_RANGES,
    MEASUREMENT_STATUSES,
    Acquisition,
    Base,
    Measurement,
    Range,
)

_KIND_NAMES = {float: "float", int: "int", bool: "bool", str: "str", uuid.UUID: "UUID"}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


@dataclass(frozen=True)
class Column:
    """What validation knows of one column (and uses to explain a refusal)."""

    name: str
    kind: type
    nullable: bool
    default: Any
    range: Range | None
    allowed: tuple[str, ...] | None
    max_length: int | None

    @property
    def required(self) -> bool:
        """A row must give this key (no NULL, no column default)."""
        return not self.nullable and self.default is None

    def annotation(self) -> Any:
        """The pydantic type of this column's values."""
        limits: dict[str, Any] = {}
        if self.range is not None:
            if self.range.low is not None:
                limits["gt" if self.range.low_exclusive else "ge"] = self.range.low
            if self.range.high is not None:
                limits["le"] = self.range.high
        if self.kind is float and not self.nullable:
            limits["allow_inf_nan"] = False
        if self.max_length is not None:
            limits["max_length"] = self.max_length
        base: Any
        if self.allowed is not None:
            base = Literal[self.allowed]  # type: ignore[valid-type]
        elif self.kind is datetime:
            base = Annotated[AwareDatetime, AfterValidator(_utc)]
        else:
            base = self.kind
        typed = Annotated[base, Field(**limits)] if limits else base
        return typed | None if self.nullable else typed


def columns_of(
    model: type[Base], ranges: Mapping[str, Range], allowed: Mapping[str, tuple[str, ...]]
) -> dict[str, Column]:
    """The :class:`Column` of every column of ``model``'s table, in table order."""
    out = {}
    for col in model.__table__.columns:
        default = col.default.arg if col.default is not None and col.default.is_scalar else None
        out[col.name] = Column(
            name=col.name,
            kind=col.type.python_type,
            nullable=bool(col.nullable) or col.server_default is not None,
            default=default,
            range=ranges.get(col.name),
            allowed=allowed.get(col.name),
            max_length=getattr(col.type, "length", None),
        )
    return out


def _row_type(name: str, columns: Mapping[str, Column]) -> Any:
    """A TypedDict of the columns (extra keys refused): validates to plain dicts, which is
    what the COPY needs and several times faster than model instances."""
    fields = {
        c.name: (Required if c.required else NotRequired)[c.annotation()] for c in columns.values()
    }
    row = TypedDict(name, fields)  # type: ignore[operator]
    row.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return row


MEASUREMENT_FIELDS = columns_of(Measurement, MEASUREMENT_RANGES, {"status": MEASUREMENT_STATUSES})
ACQUISITION_FIELDS = columns_of(Acquisition, ACQUISITION_RANGES, {})
MeasurementRow = _row_type("MeasurementRow", MEASUREMENT_FIELDS)
AcquisitionRow = _row_type("AcquisitionRow", ACQUISITION_FIELDS)
_MEASUREMENTS = TypeAdapter(list[MeasurementRow])
_ACQUISITION = TypeAdapter(AcquisitionRow)
_NULLABLE_FLOATS = frozenset(
    c.name for c in MEASUREMENT_FIELDS.values() if c.kind is float and c.nullable
)


# --------------------------------------------------------------------------- explain


def _explain(column: Column | None, field: str, error: Mapping[str, Any], who: str) -> str:
    """One pydantic error as a sentence naming the row, the field and what is allowed."""
    kind, value = error["type"], error.get("input")
    if column is None:
        return f"{who}: unknown field {field!r}"
    if kind == "missing" or value is None:
        return f"{who}: field {field!r} is required"
    if kind == "finite_number":
        return f"{who}: field {field!r} is required (got {value})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        assert column.range is not None
        return f"{who}: field {field!r} is {value!r}, must be {column.range.describe()}"
    if kind == "literal_error" and column.allowed is not None:
        return f"{who}: field {field!r} is {value!r}, not one of {', '.join(column.allowed)}"
    if kind == "string_too_long":
        return f"{who}: field {field!r} is longer than {column.max_length} characters"
    if kind == "timezone_aware":
        return f"{who}: field {field!r} must be timezone-aware"
    name = _KIND_NAMES.get(column.kind, column.kind.__name__)
    return f"{who}: field {field!r} must be {name}, got {value!r}"


def _refusal(
    exc: ValidationError,
    columns: Mapping[str, Column],
    rows: Sequence[Mapping[str, Any]],
    kind: str,
    batch: bool,
) -> RecordError:
    """The first row's errors as one RecordError (all its unknown fields named at once)."""
    errors = exc.errors()
    first = errors[0]
    index = first["loc"][0] if batch else None
    row = rows[index] if isinstance(index, int) else rows[0]
    loc = first["loc"][1:] if batch else first["loc"]
    who = _who(row, kind)
    if first["type"] == "extra_forbidden":
        unknown = sorted(
            str(e["loc"][-1])
            for e in errors
            if e["type"] == "extra_forbidden" and (not batch or e["loc"][0] == index)
        )
        return RecordError(f"{who}: unknown {kind} fields: {', '.join(unknown)}")
    field = str(loc[0]) if loc else "?"
    return RecordError(_explain(columns.get(field), field, first, who))


def _who(row: Mapping[str, Any], kind: str) -> str:
    if kind == "acquisition":
        return f"acquisition {row.get('id')}"
    return f"receiver {row.get('receiver')!r}"


# --------------------------------------------------------------------------- validate


def _without_non_finite(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``rows`` with NaN/Inf in nullable float columns made None (copies of those rows
    only): "not measurable" is NULL, and NaN would fail a range check."""
    out: list[Mapping[str, Any]] = []
    for row in rows:
        bad = [
            k
            for k in _NULLABLE_FLOATS.intersection(row)
            if isinstance(row[k], float) and not math.isfinite(row[k])
        ]
        out.append({**row, **dict.fromkeys(bad)} if bad else row)
    return out


def _non_finite_refused(exc: ValidationError) -> bool:
    """Whether some error is a range check failed by NaN/Inf in a nullable float column."""
    return any(
        len(e["loc"]) > 1
        and e["loc"][1] in _NULLABLE_FLOATS
        and isinstance(e.get("input"), float)
        and not math.isfinite(e["input"])
        for e in exc.errors()
    )


def _finite_or_none(values: list[Any]) -> list[Any]:
    # A sum of finite physical values stays finite; one NaN or infinity makes it not.
    if math.isfinite(sum(filter(None, values))):
        return values
    return [v if v is None or math.isfinite(v) else None for v in values]


def measurement_tuples(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[list[tuple[Any, ...]], set[str]]:
    """Validated rows as tuples in column order, and the columns the caller gave (the ones
    an upsert updates).

    Raises:
        RecordError: a row is invalid (naming its receiver, the field and the allowed
            range), or the batch holds one (acquisition, receiver, time) twice.
    """
    with _gc_paused():
        try:
            valid = _MEASUREMENTS.validate_python(rows)
        except ValidationError as exc:
            if not _non_finite_refused(exc):
                raise _refusal(exc, MEASUREMENT_FIELDS, rows, "measurement", batch=True) from None
            rows = _without_non_finite(rows)  # rare: NaN in a column with a range
            try:
                valid = _MEASUREMENTS.validate_python(rows)
            except ValidationError as again:
                raise _refusal(again, MEASUREMENT_FIELDS, rows, "measurement", True) from None
        provided: set[str] = set().union(*(row.keys() for row in valid))
        columns: list[list[Any]] = []
        for name, column in MEASUREMENT_FIELDS.items():
            if name not in provided:
                columns.append([column.default] * len(valid))
                continue
            values = [row.get(name, column.default) for row in valid]
            if name in _NULLABLE_FLOATS:
                values = _finite_or_none(values)
            columns.append(values)
        _refuse_duplicates(columns, rows)
        return list(zip(*columns, strict=True)), provided


def _refuse_duplicates(columns: Sequence[list[Any]], rows: Sequence[Mapping[str, Any]]) -> None:
    names = list(MEASUREMENT_FIELDS)
    keys = list(zip(*(columns[names.index(k)] for k in MEASUREMENT_KEY), strict=True))
    if len(set(keys)) == len(keys):
        return
    seen: set[tuple[Any, ...]] = set()
    for i, k in enumerate(keys):
        if k in seen:
            raise RecordError(
                f"{_who(rows[i], 'measurement')}: the batch holds this "
                "(acquisition, receiver, time) twice"
            )
        seen.add(k)


def acquisition_values(acquisition: Mapping[str, Any]) -> dict[str, Any]:
    """The acquisition row validated: every column given, plus required ones' defaults.

    Raises:
        RecordError: a value is missing or out of range, naming the acquisition and field.
    """
    try:
        valid = _ACQUISITION.validate_python(acquisition)
    except ValidationError as exc:
        raise _refusal(exc, ACQUISITION_FIELDS, [acquisition], "acquisition", batch=False) from None
    for name, column in ACQUISITION_FIELDS.items():
        if name not in valid and column.default is not None:
            valid[name] = column.default
    return dict(valid)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while building ~10^5 short-lived containers (none of them cyclic):
    otherwise collections that walk every live object take two thirds of the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
