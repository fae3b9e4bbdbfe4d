"""Event readers: files and DataFrames -> validated `EventLog`.

Formats: CSV/TSV (header row, column mapping), Parquet, JSON lines, pandas/Polars DataFrames,
RecBole atomic ``.inter``, MovieLens ``u.data`` (tab) and ``ratings.dat`` (``::``), per-user
sequence lines (``user item item ...``) and ``user item`` pair lines. Any text file may be gzipped
(detected from the magic bytes). For line files, time order = file order: the timestamp is the
event's position within its user's sequence and ``EventLog.has_time`` is False.

Validation: every rejected row is reported with its 1-based line number (DataFrames and Parquet:
1-based row number) and the source column name; nothing valid is dropped. Rejected: broken CSV
quoting, undecodable bytes (see `dynrec.data.io.text`), wrong column count, missing user/item id,
missing or non-numeric or non-finite or negative timestamp, missing/NaN/non-numeric/infinite
value, unknown event type (when `event_types` is given). ``strict=True`` raises `DataError` at the
first one. A file that yields no valid event at all is a `DataError` (never an empty log).

Timestamps: integers are seconds; fractional seconds are truncated; ISO-8601 strings (with or
without an offset; naive ones are taken as UTC) and datetime columns are converted to epoch seconds.

Columns: `ColumnMap` (or `parse_columns("user=u,item=i,time=t,rating=r,type=e")`). Without a
mapping they are found by common names, case-insensitively (`dynrec.data.io.columns.ALIASES`): user
``user_id``/``user``/``userId``/``uid``, item ``item_id``/``item``/``itemId``/``movieId``/``iid``/
``productId``/``asin``, time ``timestamp``/``time``/``ts``/``datetime``, plus ``rating``/``score``
(else ``value``) as the event value and ``event_type``/``event``/``type`` when the source has them.
A header without a recognised user, item or time column, or with two columns for one role, is a
`DataError` naming the header and the ``--columns`` spec that fixes it.

Duplicates: rows equal on user, item, timestamp, event type and value are *exact duplicates*.
`read_events` reports them (count and first lines) and by default drops the later copies
(``duplicates="drop"``); ``"keep"`` keeps them, ``"error"`` raises `DataError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from dynrec.data.events import EventLog
from dynrec.data.io.columns import ColumnMap, auto_columns, check_event_types, select_columns, validated
from dynrec.data.io.duplicates import Duplicates, apply_duplicates, require_events
from dynrec.data.io.formats import Format, detect_format
from dynrec.data.io.readers import read_headerless, read_jsonl, read_line_file, read_recbole, read_with_header
from dynrec.errors import DataError, requires_extra


def read_events(
    path: str | Path,
    *,
    format: Format | None = None,
    columns: ColumnMap | None = None,
    event_types: Mapping[str, float] | None = None,
    strict: bool = False,
    encoding: str = "utf-8",
    separator: str | None = None,
    duplicates: Duplicates = "drop",
) -> EventLog:
    """Read an event file into a validated `EventLog`.

    `columns` maps source columns for every format with named columns (CSV/TSV/Parquet/JSONL/
    RecBole); without it, see the module docstring (RecBole: value from ``rating``/``label``/
    ``value``). `event_types` (type -> weight) rejects rows whose type is not a key and is kept on
    the log as ``event_weights``. `separator` overrides CSV's ``,`` / TSV's tab. Invalid rows are
    reported in ``log.report`` (and logged); ``strict=True`` raises `DataError` naming file, line
    and field. `duplicates`: policy for exact duplicate rows (default: drop the later copies,
    with a warning and the count in the report). No valid event at all: `DataError`.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", source=str(p))
    if p.is_dir():
        raise DataError("is a directory, not an event file", source=str(p))
    fmt = format or detect_format(p)
    src = str(p)
    out: EventLog
    if fmt in ("user-lines", "pair-lines"):
        if event_types is not None:
            raise DataError("line files have no event types; drop event_types", source=src)
        out = read_line_file(p, per_user=fmt == "user-lines", encoding=encoding, strict=strict)
    elif fmt in ("ml-100k", "ml-dat"):
        out = read_headerless(
            p,
            sep="\t" if fmt == "ml-100k" else "::",
            names=["user_id", "item_id", "value", "timestamp"],
            cm=ColumnMap(value="value"),
            event_types=event_types,
            encoding=encoding,
            strict=strict,
        )
    elif fmt == "recbole":
        out = read_recbole(p, columns=columns, event_types=event_types, encoding=encoding, strict=strict)
    elif fmt in ("csv", "tsv"):
        out = read_with_header(
            p,
            sep=separator or ("\t" if fmt == "tsv" else ","),
            quoted=fmt == "csv",
            columns=columns,
            event_types=event_types,
            encoding=encoding,
            strict=strict,
        )
    elif fmt == "parquet":
        try:
            frame = pl.read_parquet(p)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(f"cannot read Parquet: {exc}", source=src) from exc
        out = from_dataframe(frame, columns=columns, event_types=event_types, source=src)
    elif fmt == "jsonl":
        out = read_jsonl(p, columns=columns, event_types=event_types, encoding=encoding, strict=strict)
    else:  # pragma: no cover - Literal exhausted
        raise DataError(f"unsupported format {fmt!r}", source=src)
    if strict:
        out.report.raise_if_invalid()
    out = apply_duplicates(out, duplicates)
    require_events(out)
    return out


def from_dataframe(
    df: Any,
    *,
    columns: ColumnMap | None = None,
    event_types: Mapping[str, float] | None = None,
    source: str = "<dataframe>",
    strict: bool = False,
    duplicates: Duplicates = "keep",
) -> EventLog:
    """Validate a pandas or Polars DataFrame; ``line`` in reports is the 1-based row number.

    Datetime/date columns become epoch seconds (naive = UTC); float id columns holding whole
    numbers (pandas ints with missing values) become ``"1"``, not ``"1.0"``. Without `columns`,
    the columns are found by their names as for files (see the module docstring).
    Exact duplicates are kept by default here (in-memory data is the caller's own; see
    `dynrec.preprocessing.filters.dedup`); an empty result is returned, not an error.
    """
    available = [str(c) for c in df.columns] if hasattr(df, "columns") else []
    cm = columns or auto_columns(available)
    check_event_types(cm, event_types, source)
    frame = df if isinstance(df, pl.DataFrame) else _from_pandas(df, cm, source)
    raw = select_columns(frame, cm, source)
    out = validated(raw, cm, source, event_types=event_types)
    if strict:
        out.report.raise_if_invalid()
    return apply_duplicates(out, duplicates)


def _from_pandas(df: Any, cm: ColumnMap, source: str) -> pl.DataFrame:
    try:
        import pandas as pd
    except ImportError:  # no pandas here: `df` is not a pandas frame either
        raise DataError(
            f"expected a Polars or pandas DataFrame, got {type(df).__name__}", source=source
        ) from None
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"expected a Polars or pandas DataFrame, got {type(df).__name__}", source=source)
    with requires_extra("pandas", "reading a pandas DataFrame"):
        import pyarrow  # noqa: F401  (pl.from_pandas converts string and nullable columns through Arrow)
    wanted = cm.wanted()
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(
            f"column {missing[0]!r} not found (columns: {list(df.columns)})", source=source, field=missing[0]
        )
    sub = df[wanted]
    # object columns (mixed ints/strings) as pandas strings, so Arrow conversion cannot fail
    conv = {c: "string" for c in sub.columns if sub[c].dtype == object}
    return pl.from_pandas(sub.astype(conv) if conv else sub)


__all__ = ["from_dataframe", "read_events"]
