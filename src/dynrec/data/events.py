"""EventLog: the validated table of behaviour events every other layer starts from.

Columns (Polars): ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64, seconds UTC or, for
order-only data, the position in the source), ``event_type`` (str), ``value`` (float64, e.g. a
rating; 1.0 when the source has none), ``row`` (int64, global source order, used as the stable
tie-break for equal timestamps) and ``line`` (int64, 1-based line in the source file, for messages).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

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
    """Every rejected row with its source, line, field and reason; `n_valid` rows were kept."""

    n_valid: int = 0
    invalid: tuple[InvalidRow, ...] = ()
    n_duplicates: int = 0

    @property
    def n_invalid(self) -> int:
        return len(self.invalid)

    def merge(self, other: ValidationReport) -> ValidationReport:
        return ValidationReport(
            self.n_valid + other.n_valid,
            self.invalid + other.invalid,
            self.n_duplicates + other.n_duplicates,
        )

    def summary(self, limit: int = 5) -> str:
        if not self.invalid:
            return f"{self.n_valid} valid rows, no invalid rows"
        shown = "\n".join(f"  {r}" for r in self.invalid[:limit])
        more = f"\n  ... and {self.n_invalid - limit} more" if self.n_invalid > limit else ""
        return f"{self.n_valid} valid rows, {self.n_invalid} invalid rows skipped:\n{shown}{more}"

    def raise_if_invalid(self) -> None:
        """Strict mode: the first invalid row becomes a `DataError` (the count of the rest is added)."""
        if self.invalid:
            first = self.invalid[0]
            extra = f" ({self.n_invalid - 1} more invalid rows)" if self.n_invalid > 1 else ""
            raise DataError(first.reason + extra, source=first.source, line=first.line, field=first.field)


@dataclass(frozen=True)
class EventLog:
    """A validated event table plus the report of what was rejected while reading it."""

    frame: pl.DataFrame
    has_time: bool = True
    source: str = "<memory>"
    report: ValidationReport = field(default_factory=ValidationReport)

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

    def with_frame(self, frame: pl.DataFrame) -> EventLog:
        return EventLog(frame.select(list(SCHEMA)), self.has_time, self.source, self.report)

    def sorted(self) -> EventLog:
        """Events ordered by (timestamp, source row): equal timestamps keep source order (stable)."""
        return self.with_frame(self.frame.sort(["timestamp", "row"]))

    @staticmethod
    def concat(logs: list[EventLog]) -> EventLog:
        """Append logs; rows of later logs come after earlier ones in the stable order."""
        frames, offset = [], 0
        for lg in logs:
            frames.append(lg.frame.with_columns(pl.col("row") + offset))
            offset += lg.frame.height
        report = ValidationReport()
        for lg in logs:
            report = report.merge(lg.report)
        return EventLog(
            pl.concat(frames) if frames else empty_frame(),
            all(lg.has_time for lg in logs),
            "+".join(lg.source for lg in logs),
            report,
        )


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


def validate_frame(
    raw: pl.DataFrame,
    *,
    source: str,
    event_types: Mapping[str, float] | None = None,
    extra_invalid: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, ValidationReport]:
    """Split `raw` (string/any typed columns named as SCHEMA, plus ``line``) into valid rows and a report.

    Checks, vectorised: missing/empty user or item id; timestamp not an integer >= 0 (floats with a
    fractional part are truncated to seconds); value NaN or not a number; event type not in
    `event_types` (when given). `extra_invalid` carries rows already rejected by the reader
    (columns ``line``, ``field``, ``reason``), e.g. wrong column counts.
    """
    n = raw.height
    df = raw
    if "row" not in df.columns:
        df = df.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    if "event_type" not in df.columns:
        df = df.with_columns(pl.lit(DEFAULT_EVENT_TYPE).alias("event_type"))
    if "value" not in df.columns:
        df = df.with_columns(pl.lit(1.0).alias("value"))
    df = df.with_columns(
        pl.col("user_id").cast(pl.String).str.strip_chars().alias("user_id"),
        pl.col("item_id").cast(pl.String).str.strip_chars().alias("item_id"),
        pl.col("event_type").cast(pl.String).str.strip_chars().alias("event_type"),
        pl.col("timestamp").cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False).alias("_ts"),
        pl.col("value").cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False).alias("_val"),
    )
    checks: list[tuple[str, str, pl.Expr]] = [
        ("user_id", "missing user id", pl.col("user_id").is_null() | (pl.col("user_id") == "")),
        ("item_id", "missing item id", pl.col("item_id").is_null() | (pl.col("item_id") == "")),
        (
            "timestamp",
            "timestamp is missing or not a number",
            pl.col("_ts").is_null() | pl.col("_ts").is_nan(),
        ),
        ("timestamp", "negative timestamp", pl.col("_ts") < 0),
        (
            "value",
            "value is missing, NaN or not a number",
            pl.col("_val").is_null() | pl.col("_val").is_nan(),
        ),
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
    reason_expr: pl.Expr = pl.lit(None, dtype=pl.String)
    field_expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for fld, reason, cond in reversed(checks):  # first failing check wins
        reason_expr = pl.when(cond.fill_null(True)).then(pl.lit(reason)).otherwise(reason_expr)
        field_expr = pl.when(cond.fill_null(True)).then(pl.lit(fld)).otherwise(field_expr)
    df = df.with_columns(reason_expr.alias("_reason"), field_expr.alias("_field"))
    bad = df.filter(pl.col("_reason").is_not_null()).select("line", "_field", "_reason")
    good = df.filter(pl.col("_reason").is_null()).select(
        "user_id",
        "item_id",
        pl.col("_ts").cast(pl.Int64).alias("timestamp"),
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
    assert good.height + bad.height == n
    return good, report
