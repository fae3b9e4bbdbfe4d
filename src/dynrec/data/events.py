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


