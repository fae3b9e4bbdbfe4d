"""Column mapping: which source column holds each event field (`ColumnMap`, `parse_columns`), the
mapping applied to a raw table (SCHEMA-named columns; datetime and ISO-8601 timestamps become epoch
seconds) and row validation of the result into an `EventLog` (`validated`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

from dynrec.data.events import EventLog, validate_frame
from dynrec.errors import DataError

_ISO_DATE = r"^\s*\d{4}-\d\d-\d\d"
_ISO_FORMATS_TZ = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z")
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")


@dataclass(frozen=True)
class ColumnMap:
    """Names of the source columns holding each field; None = absent (a default is used).

    No `timestamp` column: time order = row order (``EventLog.has_time`` False). No `value`: 1.0.
    No `event_type`: ``"interaction"``.
    """

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str | None = "timestamp"
    event_type: str | None = None
    value: str | None = None

    def field_names(self) -> dict[str, str]:
        """SCHEMA name -> source column name, for reports."""
        out = {"user_id": self.user, "item_id": self.item}
        for key, col in (
            ("timestamp", self.timestamp),
            ("event_type", self.event_type),
            ("value", self.value),
        ):
            if col is not None:
                out[key] = col
        return out

    def wanted(self) -> list[str]:
        """Source columns this mapping reads, in a fixed order, without repeats."""
        cols = (self.user, self.item, self.timestamp, self.event_type, self.value)
        return list(dict.fromkeys(c for c in cols if c is not None))


# spec key -> ColumnMap field
COLUMN_KEYS: dict[str, str] = {
    "user": "user",
    "item": "item",
    "time": "timestamp",
    "rating": "value",
    "type": "event_type",
}


def parse_columns(spec: str) -> ColumnMap:
    """A `ColumnMap` from ``"user=COL,item=COL,time=COL,rating=COL,type=COL"`` (any subset, any order).

    Keys left out keep `ColumnMap`'s defaults (``user_id``, ``item_id``, ``timestamp``, no event
    type, no rating). ``time=`` with an empty name declares that the source has no timestamp
    (time order = row order). A declared rating column becomes the event value.
    """
    allowed = ", ".join(COLUMN_KEYS)
    values: dict[str, str | None] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, col = part.partition("=")
        key, col = key.strip(), col.strip()
        if not eq:
            raise DataError(f"column spec {part!r} is not KEY=COLUMN (keys: {allowed})", field=key)
        if key not in COLUMN_KEYS:
            raise DataError(f"unknown column key {key!r} in {spec!r} (allowed keys: {allowed})", field=key)
        name = COLUMN_KEYS[key]
        if name in values:
            raise DataError(f"column key {key!r} given twice in {spec!r}", field=key)
        if not col and key != "time":
            raise DataError(f"column key {key!r} has an empty column name in {spec!r}", field=key)
        values[name] = col or None
    return ColumnMap(**values)  # type: ignore[arg-type]


# role -> header names recognised for it without a mapping, compared case-insensitively
ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "user", "userid", "uid"),
    "item": ("item_id", "item", "itemid", "movieid", "iid", "productid", "asin"),
    "time": ("timestamp", "time", "ts", "datetime"),
    "rating": ("rating", "score"),
    "type": ("event_type", "event", "type"),
}
VALUE_FALLBACK = "value"  # the event value when no rating alias is present


def _matches(available: list[str], role: str) -> list[str]:
    names = ALIASES[role]
    return [c for c in available if c.strip().lower() in names]


def _fix(found: dict[str, str], available: list[str]) -> str:
    """The ``--columns`` spec naming user, item and time: the columns recognised for them, the
    header's other columns in order for the rest (a guess the user checks), else a placeholder."""
    spare = iter(c for c in available if c not in found.values())
    parts = []
    for role in ("user", "item", "time"):
        col = found.get(role) or next(spare, None)
        parts.append(f"{role}={col if col is not None else role.upper() + '_COLUMN'}")
    return ",".join(parts)


def auto_columns(available: list[str]) -> ColumnMap:
    """The mapping used when none is given, from the header's names: each role's column found by
    the names in `ALIASES` (case-insensitive; ISO time strings are parsed later), ``value`` as the
    event value when no rating column is present.

    A user, item or time column that is not recognised, or a role two columns claim, is a
    `DataError` naming the header and the ``--columns`` spec that fixes it (``time=`` empty when the
    rows are in time order and there is no time column).
    """
    found: dict[str, str] = {}
    for role in ALIASES:
        hits = _matches(available, role)
        if len(hits) > 1:
            raise DataError(
                f"columns {hits[0]!r} and {hits[1]!r} both look like the {role} column (header: {available}); "
                f"choose one with --columns {role}={hits[0]} (or {role}={hits[1]})",
                field=hits[0],
            )
        if hits:
            found[role] = hits[0]
    missing = [role for role in ("user", "item", "time") if role not in found]
    if missing:
        spec = _fix(found, available)
        known = "; ".join(f"{role}: {', '.join(ALIASES[role])}" for role in missing)
        no_time = (
            " (or time= with an empty name when the rows are in time order)" if "time" in missing else ""
        )
        raise DataError(
            f"no {' / '.join(missing)} column recognised in the header {available} (recognised names, any case: "
            f"{known}); name the columns with --columns {spec}{no_time} "
            f'(Python: read_events(path, columns=parse_columns("{spec}")))',
            field=missing[0],
        )
    value = found.get("rating")
    if value is None and VALUE_FALLBACK in available:
        value = VALUE_FALLBACK
    return ColumnMap(
        user=found["user"],
        item=found["item"],
        timestamp=found["time"],
        value=value,
        event_type=found.get("type"),
    )


def _epoch_seconds(col: str, dtype: pl.DataType) -> pl.Expr | None:
    """Expression converting a datetime/date column to epoch seconds, or None if not temporal."""
    if dtype == pl.Datetime or dtype == pl.Date:
        return pl.col(col).dt.epoch("s")
    return None


def _iso_to_epoch(col: str) -> pl.Expr:
    """ISO-8601 strings -> epoch seconds as strings; anything else passes through unchanged."""
    c = pl.col(col).cast(pl.String).str.strip_chars()
    parsed = [c.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC") for f in _ISO_FORMATS_TZ]
    parsed += [
        c.str.to_datetime(f, strict=False, time_unit="us").dt.replace_time_zone("UTC") for f in _ISO_FORMATS
    ]
    epoch = pl.coalesce([p.dt.epoch("s") for p in parsed])
    return epoch.cast(pl.String).fill_null(c)


def select_columns(frame: pl.DataFrame, cm: ColumnMap, source: str) -> pl.DataFrame:
    """SCHEMA-named columns (any dtype; `validate_frame` converts) plus ``line``.

    `frame` must hold a ``line`` column or one is made from the 1-based row number.
    """
    for need in cm.wanted():
        if need not in frame.columns:
            cols = [c for c in frame.columns if c != "line"]
            raise DataError(f"column {need!r} not found (columns: {cols})", source=source, field=need)
    if "line" not in frame.columns:
        frame = frame.with_row_index("line", offset=1)
    exprs = [
        pl.col("line").cast(pl.Int64),
        pl.col(cm.user).alias("user_id"),
        pl.col(cm.item).alias("item_id"),
    ]
    if cm.timestamp is not None:
        dtype = frame.schema[cm.timestamp]
        epoch = _epoch_seconds(cm.timestamp, dtype)
        if epoch is not None:
            exprs.append(epoch.alias("timestamp"))
        elif dtype == pl.String and bool(frame[cm.timestamp].str.contains(_ISO_DATE).any()):
            exprs.append(_iso_to_epoch(cm.timestamp).alias("timestamp"))
        else:
            exprs.append(pl.col(cm.timestamp).alias("timestamp"))
    else:
        exprs.append(pl.int_range(0, pl.len(), dtype=pl.Int64).alias("timestamp"))
    if cm.event_type is not None:
        exprs.append(pl.col(cm.event_type).alias("event_type"))
    if cm.value is not None:
        exprs.append(pl.col(cm.value).alias("value"))
    return frame.select(exprs)


def check_event_types(cm: ColumnMap, event_types: Mapping[str, float] | None, source: str) -> None:
    if event_types is not None and cm.event_type is None:
        raise DataError(
            "event_types were given but the source has no event type column (set ColumnMap(event_type=...))",
            source=source,
        )


def validated(
    raw: pl.DataFrame,
    cm: ColumnMap,
    source: str,
    *,
    event_types: Mapping[str, float] | None,
    extra: pl.DataFrame | None = None,
    has_time: bool | None = None,
) -> EventLog:
    check_event_types(cm, event_types, source)
    good, report = validate_frame(
        raw, source=source, event_types=event_types, extra_invalid=extra, field_names=cm.field_names()
    )
    return EventLog(
        good,
        has_time=cm.timestamp is not None if has_time is None else has_time,
        source=source,
        report=report,
        event_weights=dict(event_types) if event_types is not None else None,
    )


__all__ = [
    "ALIASES",
    "COLUMN_KEYS",
    "ColumnMap",
    "auto_columns",
    "check_event_types",
    "parse_columns",
    "select_columns",
    "validated",
]
