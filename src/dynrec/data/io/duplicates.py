"""Exact duplicate events (equal on `DUPLICATE_KEYS`): found, reported, kept/dropped/refused per
policy; and the rule that a read yielding no valid event is an error."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

import polars as pl

from dynrec.data.events import EventLog
from dynrec.errors import DataError

log = logging.getLogger(__name__)

Duplicates = Literal["drop", "keep", "error"]

DUPLICATE_KEYS = ("user_id", "item_id", "timestamp", "event_type", "value")


def apply_duplicates(out: EventLog, policy: Duplicates, *, limit: int = 10) -> EventLog:
    """Find exact duplicate events (equal on `DUPLICATE_KEYS`; the earliest row is the original)
    and keep, drop or reject them per `policy`; the report records count and first lines."""
    if policy not in ("drop", "keep", "error"):
        raise DataError(f"duplicates must be 'drop', 'keep' or 'error', not {policy!r}", source=out.source)
    frame = out.frame
    if frame.height == 0:
        return out
    keys = list(DUPLICATE_KEYS)
    ordered = frame if frame["row"].is_sorted() else frame.sort("row")
    first = pl.struct(keys).is_first_distinct()
    n_dup = ordered.height - int(ordered.select(first.sum()).item())
    if n_dup == 0:
        return out
    shown = (
        ordered.with_columns(pl.col("line").first().over(keys).alias("_first"), first.alias("_keep"))
        .filter(~pl.col("_keep"))
        .head(limit)
        .select("line", "_first")
    )
    pairs = tuple((int(a), int(b)) for a, b in shown.iter_rows())
    if policy == "error":
        a, b = pairs[0]
        more = f" ({n_dup - 1} more)" if n_dup > 1 else ""
        raise DataError(
            f"exact duplicate row (same user, item, timestamp, event type, value as line {b}){more}; "
            "pass duplicates='drop' or 'keep'",
            source=out.source,
            line=a,
        )
    report = replace(out.report, exact_duplicates=out.report.exact_duplicates + n_dup, duplicate_lines=pairs)
    if policy == "keep":
        log.warning("%s: %s (kept)", out.source, report.duplicates_summary())
        return out.with_frame(frame, report=report)
    kept = ordered.filter(first)
    report = replace(report, n_valid=report.n_valid - n_dup, n_duplicates=report.n_duplicates + n_dup)
    log.warning("%s: %s (dropped, the first copy kept)", out.source, report.duplicates_summary())
    return out.with_frame(kept, report=report)


def require_events(out: EventLog) -> None:
    """A read that produced no valid event is an error, with the first invalid rows in the message."""
    if len(out):
        return
    rep = out.report
    if not rep.invalid:
        raise DataError("no valid events: the file has no data rows", source=out.source)
    first = rep.invalid[0]
    raise DataError(
        f"no valid events: {rep.n_invalid} invalid rows; first: line {first.line}: "
        f"field {first.field!r}: {first.reason}",
        source=out.source,
    )


__all__ = ["DUPLICATE_KEYS", "Duplicates", "apply_duplicates", "require_events"]
