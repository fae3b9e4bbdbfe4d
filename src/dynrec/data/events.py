"""EventLog: the validated table of behaviour events every other layer starts from.

Columns (Polars): ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64, seconds UTC or, for
order-only data, the position in the user's sequence), ``event_type`` (str), ``value`` (float64,
e.g. a rating; 1.0 when the source has none), ``row`` (int64, global source order, used as the
stable tie-break for equal timestamps) and ``line`` (int64, 1-based line in the source file, or
1-based row of a DataFrame, for messages).

Ordering rule used everywhere: events are ordered by ``(timestamp, row)``, i.e. a *stable* sort by
time — events with equal timestamps keep their file order.

`Event` is one event at the public boundary (what the HTTP service, a session and a store take);
`validate_events` checks a batch of them (user, item and the optional event ids by the rule of
`dynrec.data.ids`, timestamps in [0, `MAX_TIMESTAMP`], weights finite and > 0) and names the first
bad event's index and field in an `InvalidEventError`.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from dynrec.data.ids import EMPTY, IdKind, id_problem, id_problem_expr
from dynrec.errors import DataError

log = logging.getLogger(__name__)

SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "timestamp": pl.Int64(),
    "event_type": pl.String(),
    "value": pl.Float64(),
    "row": pl.Int64(),
    "line": pl.Int64(),
}
DEFAULT_EVENT_TYPE = "interaction"
ROW_FIELD = "<row>"  # InvalidRow.field for whole-row problems (wrong column count, bad JSON, ...)

# Reasons, shared with the readers so reports read the same whatever the source format.
MISSING_USER = "missing user id"
MISSING_ITEM = "missing item id"
BAD_TIMESTAMP = "timestamp is missing or not a number"
NONFINITE_TIMESTAMP = "timestamp is not finite or out of range"
NEGATIVE_TIMESTAMP = "negative timestamp"
BAD_VALUE = "value is missing, NaN or not a number"
NONFINITE_VALUE = "value is infinite"


@dataclass(frozen=True)
class InvalidRow:
    source: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: field {self.field!r}: {self.reason}"


@dataclass(frozen=True)
class ValidationReport:
    """Every rejected row with its source, line, field and reason; `n_valid` rows were kept.

    `n_duplicates` counts events removed as duplicates: exact duplicates dropped by the reader
    (``read_events(duplicates="drop")``) and those later removed by
    `dynrec.preprocessing.filters.dedup`. `exact_duplicates` is the number of exact duplicate rows
    the reader found (dropped or kept, per its policy) and `duplicate_lines` the first few of them
    as ``(line, line of the first copy)``.
    """

    n_valid: int = 0
    invalid: tuple[InvalidRow, ...] = ()
    n_duplicates: int = 0
    exact_duplicates: int = 0
    duplicate_lines: tuple[tuple[int, int], ...] = ()

    @property
    def n_invalid(self) -> int:
        return len(self.invalid)

    def by_reason(self) -> dict[str, int]:
        """Count of invalid rows per reason (for summaries and tests)."""
        out: dict[str, int] = {}
        for r in self.invalid:
            out[r.reason] = out.get(r.reason, 0) + 1
        return out

    def merge(self, other: ValidationReport) -> ValidationReport:
        return ValidationReport(
            self.n_valid + other.n_valid,
            self.invalid + other.invalid,
            self.n_duplicates + other.n_duplicates,
            self.exact_duplicates + other.exact_duplicates,
            self.duplicate_lines + other.duplicate_lines,
        )

    def duplicates_summary(self, limit: int = 5) -> str:
        """One line about the exact duplicate rows the reader found ("" when none)."""
        if not self.exact_duplicates:
            return ""
        shown = ", ".join(f"line {a} (= line {b})" for a, b in self.duplicate_lines[:limit])
        more = ", ..." if self.exact_duplicates > min(limit, len(self.duplicate_lines)) else ""
        return f"{self.exact_duplicates} exact duplicate rows: {shown}{more}"

    def summary(self, limit: int = 5) -> str:
        dup = self.duplicates_summary(limit)
        dup = f"; {dup}" if dup else ""
        if not self.invalid:
            return f"{self.n_valid} valid rows, no invalid rows{dup}"
        shown = "\n".join(f"  {r}" for r in self.invalid[:limit])
        more = f"\n  ... and {self.n_invalid - limit} more" if self.n_invalid > limit else ""
        return f"{self.n_valid} valid rows, {self.n_invalid} invalid rows skipped{dup}:\n{shown}{more}"

    def raise_if_invalid(self) -> None:
        """Strict mode: the first invalid row becomes a `DataError` (the count of the rest is added)."""
        if self.invalid:
            first = self.invalid[0]
            extra = f" ({self.n_invalid - 1} more invalid rows)" if self.n_invalid > 1 else ""
            raise DataError(first.reason + extra, source=first.source, line=first.line, field=first.field)


@dataclass(frozen=True)
class EventLog:
    """A validated event table plus the report of what was rejected while reading it.

    `event_weights` (event type -> implicit-feedback weight, e.g. ``{"view": 1, "click": 2,
    "purchase": 5}``) is what the reader validated event types against; pass it on with
    ``InteractionData.from_events(log, event_weights=log.event_weights)``.
    """

    frame: pl.DataFrame
    has_time: bool = True
    source: str = "<memory>"
    report: ValidationReport = field(default_factory=ValidationReport)
    event_weights: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        missing = [c for c in SCHEMA if c not in self.frame.columns]
        if missing:
            raise DataError(f"event frame lacks columns {missing}", source=self.source)

    def __len__(self) -> int:
        return self.frame.height

    @property
    def n_users(self) -> int:
        return int(self.frame["user_id"].n_unique())

    @property
    def n_items(self) -> int:
        return int(self.frame["item_id"].n_unique())

    def with_frame(self, frame: pl.DataFrame, *, report: ValidationReport | None = None) -> EventLog:
        return EventLog(
            frame.select(list(SCHEMA)),
            self.has_time,
            self.source,
            self.report if report is None else report,
            self.event_weights,
        )

    def sorted(self) -> EventLog:
        """Events ordered by (timestamp, source row): equal timestamps keep source order (stable)."""
        return self.with_frame(self.frame.sort(["timestamp", "row"]))

    def weights(self, default: float = 1.0) -> pl.Series:
        """Per-event weight from `event_weights` (`default` where no mapping or type is unknown)."""
        if not self.event_weights:
            return pl.repeat(default, self.frame.height, dtype=pl.Float64, eager=True).alias("weight")
        return (
            self.frame["event_type"]
            .replace_strict(dict(self.event_weights), default=default, return_dtype=pl.Float64)
            .alias("weight")
        )

    @staticmethod
    def concat(logs: list[EventLog]) -> EventLog:
        """Append logs; rows of later logs come after earlier ones in the stable order."""
        frames, offset = [], 0
        for lg in logs:
            frames.append(lg.frame.with_columns(pl.col("row") + offset))
            offset += lg.frame.height
        report = ValidationReport()
        weights: dict[str, float] = {}
        for lg in logs:
            report = report.merge(lg.report)
            weights.update(lg.event_weights or {})
        return EventLog(
            pl.concat(frames) if frames else empty_frame(),
            all(lg.has_time for lg in logs),
            "+".join(lg.source for lg in logs),
            report,
            weights or None,
        )


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


def _as_string(col: str, dtype: pl.DataType, *, strip: bool = True) -> pl.Expr:
    """A column as strings (stripped unless `strip` is False: ids are checked as they are);
    integral floats (pandas ints with NaN) lose their ``.0``."""
    e = pl.col(col)
    if dtype.is_float():
        e = pl.when(e.is_finite() & (e == e.round(0))).then(e.cast(pl.Int64, strict=False).cast(pl.String))
        e = e.otherwise(pl.col(col).cast(pl.String))
    e = e.cast(pl.String)
    return e.str.strip_chars() if strip else e


def _as_float(col: str, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_numeric() or dtype == pl.Boolean:
        return pl.col(col).cast(pl.Float64)
    return pl.col(col).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


_INT64_LIMIT = 9.2e18


def _timestamp_exprs(dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr]:
    """(seconds as Int64 or null, finite-check) for a timestamp column of any dtype.

    Integers are used as they are; floats are truncated towards zero; strings are parsed as an
    integer first (exact for 64-bit values) and as a float otherwise ("1.5", "1e9").
    """
    c = pl.col("timestamp")
    if dtype.is_integer():
        return c.cast(pl.Int64), pl.lit(True)
    if dtype.is_float():
        f = c.cast(pl.Float64)
    else:
        s = c.cast(pl.String).str.strip_chars()
        f = s.cast(pl.Float64, strict=False)
        as_int = s.cast(pl.Int64, strict=False)
    finite = f.is_finite() & (f.abs() < _INT64_LIMIT)
    from_float = pl.when(finite).then(f.cast(pl.Int64, strict=False))
    if dtype.is_float():
        return from_float, finite | f.is_null()
    return pl.coalesce(as_int, from_float), finite | f.is_null() | as_int.is_not_null()


def validate_frame(
    raw: pl.DataFrame,
    *,
    source: str,
    event_types: Mapping[str, float] | None = None,
    extra_invalid: pl.DataFrame | None = None,
    field_names: Mapping[str, str] | None = None,
) -> tuple[pl.DataFrame, ValidationReport]:
    """Split `raw` (columns named as SCHEMA, any dtype, plus ``line``) into valid rows and a report.

    Checks, vectorised, first failing check wins: missing/empty user or item id; an id that breaks
    the id rule (`dynrec.data.ids`: leading/trailing whitespace, too long, a comma/newline in an
    item id — ids are never stripped, so ``" u1"`` cannot merge with ``"u1"``); timestamp missing,
    not a number, not finite or negative (fractional seconds are truncated); value missing, NaN,
    not a number or infinite; event type not in `event_types` (when given). `extra_invalid` carries
    rows the reader already rejected (columns ``line``, ``field``, ``reason``), e.g. wrong column
    counts. `field_names` maps SCHEMA names to the source's column names for the report.
    Row order is preserved; ``row`` (if absent) is the position in `raw`.
    """
    n = raw.height
    df = raw
    if "row" not in df.columns:
        df = df.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    if "event_type" not in df.columns:
        df = df.with_columns(pl.lit(DEFAULT_EVENT_TYPE).alias("event_type"))
    if "value" not in df.columns:
        df = df.with_columns(pl.lit(1.0).alias("value"))
    schema = df.schema
    ts_expr, ts_finite = _timestamp_exprs(schema["timestamp"])
    df = df.with_columns(
        _as_string("user_id", schema["user_id"], strip=False).alias("user_id"),
        _as_string("item_id", schema["item_id"], strip=False).alias("item_id"),
        _as_string("event_type", schema["event_type"]).alias("event_type"),
        ts_expr.alias("_ts"),
        ts_finite.alias("_ts_finite"),
        _as_float("value", schema["value"]).alias("_val"),
    )
    df = df.with_columns(  # once per column: several checks read them
        id_problem_expr("user_id", "user").alias("_user_problem"),
        id_problem_expr("item_id", "item").alias("_item_problem"),
    )
    user_problem, item_problem = pl.col("_user_problem"), pl.col("_item_problem")
    blank = pl.lit(EMPTY)
    checks: list[tuple[str, str | pl.Expr, pl.Expr]] = [
        ("user_id", MISSING_USER, pl.col("user_id").is_null() | user_problem.eq_missing(blank)),
        ("user_id", pl.lit("user id ") + user_problem, user_problem.is_not_null()),
        ("item_id", MISSING_ITEM, pl.col("item_id").is_null() | item_problem.eq_missing(blank)),
        ("item_id", pl.lit("item id ") + item_problem, item_problem.is_not_null()),
        ("timestamp", NONFINITE_TIMESTAMP, ~pl.col("_ts_finite")),
        ("timestamp", BAD_TIMESTAMP, pl.col("_ts").is_null()),
        ("timestamp", NEGATIVE_TIMESTAMP, pl.col("_ts") < 0),
        ("value", BAD_VALUE, pl.col("_val").is_null() | pl.col("_val").is_nan()),
        ("value", NONFINITE_VALUE, pl.col("_val").is_infinite()),
    ]
    if event_types is not None:
        allowed = list(event_types)
        checks.append(
            (
                "event_type",
                f"unknown event type (allowed: {', '.join(sorted(allowed))})",
                ~pl.col("event_type").is_in(allowed) | pl.col("event_type").is_null(),
            )
        )
    names = dict(field_names or {})
    reason_expr: pl.Expr = pl.lit(None, dtype=pl.String)
    field_expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for fld, reason, cond in reversed(checks):  # first failing check wins
        hit = cond.fill_null(True)
        why = pl.lit(reason) if isinstance(reason, str) else reason
        reason_expr = pl.when(hit).then(why).otherwise(reason_expr)
        field_expr = pl.when(hit).then(pl.lit(names.get(fld, fld))).otherwise(field_expr)
    df = df.with_columns(reason_expr.alias("_reason"), field_expr.alias("_field"))
    bad = df.filter(pl.col("_reason").is_not_null()).select("line", "_field", "_reason")
    good = df.filter(pl.col("_reason").is_null()).select(
        "user_id",
        "item_id",
        pl.col("_ts").alias("timestamp"),
        "event_type",
        pl.col("_val").alias("value"),
        pl.col("row").cast(pl.Int64),
        pl.col("line").cast(pl.Int64),
    )
    rows = [
        InvalidRow(source, int(line), str(fld), str(reason))
        for line, fld, reason in bad.iter_rows()  # only the rejected rows, never the hot path
    ]
    if extra_invalid is not None and extra_invalid.height:
        rows += [InvalidRow(source, int(a), str(b), str(c)) for a, b, c in extra_invalid.iter_rows()]
        rows.sort(key=lambda r: r.line)
    report = ValidationReport(n_valid=good.height, invalid=tuple(rows))
    if rows:
        log.warning("%s: %s", source, report.summary())
    if good.height + bad.height != n:  # pragma: no cover - internal invariant
        raise AssertionError("validation lost rows")
    return good, report


# ---- one event at the public boundary ----------------------------------------------------------

MAX_TIMESTAMP = 2**53
"""Largest accepted timestamp: covers epoch seconds, milliseconds and microseconds, and every
integer up to it is exact as a float (so a float timestamp converts without loss)."""


@dataclass(frozen=True)
class Event:
    """One behaviour event at the public boundary (external ids; timestamp in seconds UTC, or the
    position in the user's sequence for order-only data). Checked by `validate_events` when it
    enters a store or a session."""

    user_id: str
    item_id: str
    timestamp: int = 0
    event_type: str = DEFAULT_EVENT_TYPE
    weight: float = 1.0
    """The event's strength (a rating, a dwell-time share, ...): finite and > 0; stored with the
    event and exported as its value."""
    event_id: str | None = None
    """The producer's id of the event (an id by the rule of `dynrec.data.ids`; an integer is
    converted with str()), unique at least per user. A store applies an event whose id it already
    applied for the user only once (`dynrec.online.store.protocol.StateStore.append`): a re-sent
    or re-delivered event is skipped. None = no such check. Not stored with the history."""


class InvalidEventError(DataError):
    """An event of a batch is invalid; `index` is its position in the batch, `field` the field.
    Nothing of the batch was written."""

    def __init__(self, index: int, field: str, problem: str, value: object) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"event {index} of the batch: field {field!r} {problem}, got {shown}")
        self.field = field
        self.index = index


def _check_id(index: int, name: str, value: object, kind: IdKind) -> str:
    """A string that follows the id rule (`dynrec.data.ids`: not blank, no leading/trailing
    whitespace, <= 512 characters, no comma/newline in item ids); an integer (not a bool) is
    converted with str()."""
    if type(value) is str:  # the common case, without the numeric checks below
        problem = id_problem(value, kind)
        if problem is not None:
            raise InvalidEventError(index, name, problem, value)
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
        return str(int(value))
    if not isinstance(value, str):
        raise InvalidEventError(index, name, "must be a non-empty string (or an integer)", value)
    problem = id_problem(value, kind)
    if problem is not None:
        raise InvalidEventError(index, name, problem, value)
    return str(value)


def _check_timestamp(index: int, value: object) -> int:
    """A finite number in [0, MAX_TIMESTAMP]; fractional seconds are truncated (as when reading
    files, `dynrec.data.events`)."""
    if type(value) is int and 0 <= value <= MAX_TIMESTAMP:  # the common case
        return value
    problem = f"must be a finite number of seconds in [0, {MAX_TIMESTAMP}]"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidEventError(index, "timestamp", problem, value)
    if isinstance(value, numbers.Integral):
        ts = int(value)
    else:
        f = float(value)
        if not math.isfinite(f) or not 0 <= f <= MAX_TIMESTAMP:
            raise InvalidEventError(index, "timestamp", problem, value)
        ts = int(f)
    if not 0 <= ts <= MAX_TIMESTAMP:
        raise InvalidEventError(index, "timestamp", problem, value)
    return ts


def _check_weight(index: int, value: object) -> float:
    """A finite number > 0 (an integer is converted to float)."""
    if type(value) is float and 0 < value < math.inf:  # the common case
        return value
    problem = "must be a finite number > 0"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidEventError(index, "weight", problem, value)
    w = float(value)
    if not math.isfinite(w) or w <= 0:
        raise InvalidEventError(index, "weight", problem, value)
    return w


class ValidEvents(tuple[Event, ...]):
    """A batch `validate_events` checked and normalised. Immutable, so it stays valid: every door an
    event batch passes (the service, the session, the store) calls `validate_events`, and only the
    first one does the work."""

    __slots__ = ()


def validate_events(events: Event | Iterable[Event]) -> ValidEvents:
    """The batch as normalised events (plain `str` ids, `int` timestamps, `float` weights), or an
    `InvalidEventError` naming the first bad event's index and field. Checks every event before
    returning, so a caller can write the batch all or nothing. A `ValidEvents` is returned as it is."""
    if isinstance(events, ValidEvents):
        return events
    evs = [events] if isinstance(events, Event) else list(events)
    out = []
    for i, e in enumerate(evs):
        if not isinstance(e, Event):
            raise InvalidEventError(i, "event", "must be an Event", e)
        et = e.event_type
        if not isinstance(et, str) or not et.strip():
            raise InvalidEventError(i, "event_type", "must be a non-empty string", et)
        out.append(
            Event(
                _check_id(i, "user_id", e.user_id, "user"),
                _check_id(i, "item_id", e.item_id, "item"),
                _check_timestamp(i, e.timestamp),
                str(et),
                _check_weight(i, e.weight),
                None if e.event_id is None else _check_id(i, "event_id", e.event_id, "user"),
            )
        )
    return ValidEvents(out)
