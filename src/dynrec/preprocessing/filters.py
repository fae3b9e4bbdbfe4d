"""Event-log cleaning steps: dedup, consecutive-repeat collapse, iterative k-core, rating threshold.

Every step takes an `EventLog` and returns ``(new_log, FilterStats)``: nothing is removed without
being counted, and each step logs its counts at INFO. Steps are vectorised Polars expressions and
keep the input's row order.

Order and ties: "time order" always means the stable order ``(timestamp, row)`` — events with
equal timestamps keep their file order. This decides which event of a run of consecutive repeats
is kept and which events are "consecutive" at all, exactly as it decides leave-one-out targets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import polars as pl

from dynrec.data.events import EventLog

log = logging.getLogger(__name__)

DEDUP_KEYS = ("user_id", "item_id", "timestamp", "event_type", "value")


@dataclass(frozen=True)
class FilterStats:
    """What one cleaning step removed."""

    step: str
    n_before: int
    n_after: int
    details: Mapping[str, int] = field(default_factory=dict)

    @property
    def n_removed(self) -> int:
        return self.n_before - self.n_after

    def __str__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.details.items())
        return f"{self.step}: removed {self.n_removed} of {self.n_before} events ({self.n_after} left{extra})"


def _finish(step: str, before: EventLog, after: EventLog, **details: int) -> tuple[EventLog, FilterStats]:
    stats = FilterStats(step, len(before), len(after), dict(details))
    log.info("%s: %s", before.source, stats)
    return after, stats


def dedup(
    log_: EventLog,
    *,
    keys: Sequence[str] = DEDUP_KEYS,
    consecutive: bool = False,
    consecutive_by_event_type: bool = False,
) -> tuple[EventLog, FilterStats]:
    """Remove exact duplicate events, and optionally collapse consecutive repeats.

    * Exact duplicates: events equal on `keys` (default: user, item, timestamp, event type and
      value); the one earliest in the file (smallest ``row``) is kept.
    * ``consecutive=True``: then, per user in time order ``(timestamp, row)`` (equal timestamps
      keep file order), an event whose item equals the user's previous event's item is dropped —
      a run ``a a a b a`` becomes ``a b a``; the first event of each run is kept. With
      ``consecutive_by_event_type=True`` only repeats of the same item *and* event type collapse
      (a click followed by a purchase of the same item stays).

    Details: ``exact`` and ``consecutive`` counts. The removed count is added to
    ``report.n_duplicates``.
    """
    frame = log_.frame
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        raise ValueError(f"dedup keys not in the event frame: {missing}")
    first = pl.struct(list(keys)).is_first_distinct()
    if frame["row"].is_sorted():
        kept = frame.filter(first)
    else:  # decide "first" in file order, then restore the input order
        pos = frame.with_row_index("_pos").sort("row")
        kept = pos.filter(first).sort("_pos").drop("_pos")
    n_exact = frame.height - kept.height
    n_consecutive = 0
    if consecutive:
        group = ["user_id", "event_type"] if consecutive_by_event_type else ["user_id"]
        ordered = kept.select(*group, "item_id", "timestamp", "row").sort([*group, "timestamp", "row"])
        same_group = pl.all_horizontal([pl.col(g) == pl.col(g).shift(1) for g in group])
        repeat = ordered.filter(same_group & (pl.col("item_id") == pl.col("item_id").shift(1)))["row"]
        n_consecutive = repeat.len()
        if n_consecutive:
            kept = kept.filter(~pl.col("row").is_in(repeat.implode()))
    report = replace(log_.report, n_duplicates=log_.report.n_duplicates + n_exact + n_consecutive)
    return _finish(
        "dedup", log_, log_.with_frame(kept, report=report), exact=n_exact, consecutive=n_consecutive
    )


def k_core(
    log_: EventLog,
    *,
    user_k: int = 5,
    item_k: int = 5,
    distinct: bool = False,
    max_iter: int = 10_000,
) -> tuple[EventLog, FilterStats]:
    """Iterative k-core: repeatedly drop users with < `user_k` events and items with < `item_k`
    events until every remaining user and item meets its threshold (removing an item can push a
    user below `user_k` and vice versa, so one pass is not enough).

    Counts are events, or distinct items per user / users per item with ``distinct=True``. Both
    thresholds are applied together in each pass on the counts of that pass. Details:
    ``iterations`` (passes that removed something), ``users_removed``, ``items_removed``.
    """
    if user_k < 0 or item_k < 0:
        raise ValueError("user_k and item_k must be >= 0")
    frame = log_.frame
    work = frame.select("user_id", "item_id", "row")
    if distinct:
        u_count = pl.col("item_id").n_unique().over("user_id")
        i_count = pl.col("user_id").n_unique().over("item_id")
    else:
        u_count = pl.len().over("user_id")
        i_count = pl.len().over("item_id")
    iterations = 0
    while iterations < max_iter:
        keep = work.select(((u_count >= user_k) & (i_count >= item_k)).alias("k"))["k"]
        if bool(keep.all()):
            break
        work = work.filter(keep)
        iterations += 1
    else:  # pragma: no cover - k-core converges in far fewer passes than events
        raise RuntimeError(f"k-core did not converge in {max_iter} passes")
    kept = frame.filter(pl.col("row").is_in(work["row"].implode())) if work.height != frame.height else frame
    users_removed = int(frame["user_id"].n_unique()) - int(kept["user_id"].n_unique())
    items_removed = int(frame["item_id"].n_unique()) - int(kept["item_id"].n_unique())
    return _finish(
        f"k_core(user_k={user_k}, item_k={item_k})",
        log_,
        log_.with_frame(kept),
        iterations=iterations,
        users_removed=users_removed,
        items_removed=items_removed,
    )


def implicit_by_threshold(
    log_: EventLog, threshold: float, *, binarize: bool = False
) -> tuple[EventLog, FilterStats]:
    """Explicit ratings -> implicit feedback: keep events with ``value >= threshold`` (e.g. 4 on a
    1-5 scale); with ``binarize=True`` the kept values become 1.0. Details: ``below_threshold``."""
    frame = log_.frame
    kept = frame.filter(pl.col("value") >= threshold)
    if binarize:
        kept = kept.with_columns(pl.lit(1.0, dtype=pl.Float64).alias("value"))
    removed = frame.height - kept.height
    if removed and not kept.height:
        log.warning(
            "%s: no event has value >= %g; does this source have ratings? (values here: %s..%s)",
            log_.source,
            threshold,
            frame["value"].min(),
            frame["value"].max(),
        )
    return _finish(
        f"implicit_by_threshold({threshold:g})", log_, log_.with_frame(kept), below_threshold=removed
    )
