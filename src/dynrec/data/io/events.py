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
mapping the columns are ``user_id``, ``item_id``, ``timestamp``, plus ``rating`` (else ``value``) as
the event value and ``event_type`` when the source has them.

Duplicates: rows equal on user, item, timestamp, event type and value are *exact duplicates*.
`read_events` reports them (count and first lines) and by default drops the later copies
(``duplicates="drop"``); ``"keep"`` keeps them, ``"error"`` raises `DataError`.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import polars as pl

from dynrec.data.events import ROW_FIELD, EventLog, validate_frame
from dynrec.data.io.text import (
    INVALID_SCHEMA,
    Text,
    count_check,
    fields_to_frame,
    header,
    no_invalid,
    read_text,
    split_csv,
    split_plain,
    text_lines,
)
from dynrec.errors import DataError

log = logging.getLogger(__name__)

Format = Literal["csv", "tsv", "parquet", "jsonl", "recbole", "ml-100k", "ml-dat", "user-lines", "pair-lines"]
Duplicates = Literal["drop", "keep", "error"]

DUPLICATE_KEYS = ("user_id", "item_id", "timestamp", "event_type", "value")
VALUE_COLUMNS = ("rating", "value")  # read as the event value when no mapping is given
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


def _auto_columns(available: list[str]) -> ColumnMap:
    """The mapping used when none is given: defaults plus a value and event type column if present."""
    return ColumnMap(
        value=next((c for c in VALUE_COLUMNS if c in available), None),
        event_type="event_type" if "event_type" in available else None,
    )


# --------------------------------------------------------------------------------------------
# column mapping -> SCHEMA-named raw frame


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


def _select_columns(frame: pl.DataFrame, cm: ColumnMap, source: str) -> pl.DataFrame:
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


def _check_event_types(cm: ColumnMap, event_types: Mapping[str, float] | None, source: str) -> None:
    if event_types is not None and cm.event_type is None:
        raise DataError(
            "event_types were given but the source has no event type column (set ColumnMap(event_type=...))",
            source=source,
        )


def _validated(
    raw: pl.DataFrame,
    cm: ColumnMap,
    source: str,
    *,
    event_types: Mapping[str, float] | None,
    extra: pl.DataFrame | None = None,
    has_time: bool | None = None,
) -> EventLog:
    _check_event_types(cm, event_types, source)
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


# --------------------------------------------------------------------------------------------
# duplicates and empty results


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


def _require_events(out: EventLog) -> None:
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


# --------------------------------------------------------------------------------------------
# events


def _peek_lines(path: Path, n: int = 2000) -> list[str]:
    """The first `n` non-blank lines (gunzipped if needed), without reading the whole file."""
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if gz else open
    out: list[str] = []
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    out.append(line)
                if len(out) >= n:
                    break
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"truncated or corrupt gzip file ({exc})", source=str(path)) from exc
    return out


def detect_format(path: Path) -> Format:
    """Event format from the file name (``.gz`` ignored); ``.txt``: per-user vs pair lines by content."""
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem in ("u.item", "movies.dat") or stem.endswith(".item"):
        raise DataError("this is an item metadata file; read it with read_items()", source=str(path))
    if stem in ("u.user", "users.dat") or stem.endswith(".user"):
        raise DataError("this is a user metadata file, not events", source=str(path))
    if re.fullmatch(r"u(\.data|[1-5ab]\.(base|test))", stem):
        return "ml-100k"
    if stem.endswith(".dat"):
        return "ml-dat"
    if stem.endswith(".inter"):
        return "recbole"
    if stem.endswith(".parquet"):
        return "parquet"
    if stem.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if stem.endswith(".tsv"):
        return "tsv"
    if stem.endswith(".csv"):
        return "csv"
    if stem.endswith(".txt"):
        counts = [len(line.split()) for line in _peek_lines(path)]
        return "pair-lines" if counts and max(counts) <= 2 else "user-lines"
    raise DataError(
        "unknown file format; use .csv/.tsv/.parquet/.jsonl/.inter/.dat/.txt or pass format=...",
        source=str(path),
    )


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
        out = _read_line_file(p, per_user=fmt == "user-lines", encoding=encoding, strict=strict)
    elif fmt in ("ml-100k", "ml-dat"):
        out = _read_headerless(
            p,
            sep="\t" if fmt == "ml-100k" else "::",
            names=["user_id", "item_id", "value", "timestamp"],
            cm=ColumnMap(value="value"),
            event_types=event_types,
            encoding=encoding,
            strict=strict,
        )
    elif fmt == "recbole":
        out = _read_recbole(p, columns=columns, event_types=event_types, encoding=encoding, strict=strict)
    elif fmt in ("csv", "tsv"):
        out = _read_with_header(
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
        out = _read_jsonl(p, columns=columns, event_types=event_types, encoding=encoding, strict=strict)
    else:  # pragma: no cover - Literal exhausted
        raise DataError(f"unsupported format {fmt!r}", source=src)
    if strict:
        out.report.raise_if_invalid()
    out = apply_duplicates(out, duplicates)
    _require_events(out)
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
    a ``rating`` (else ``value``) column is the event value and ``event_type`` the event type.
    Exact duplicates are kept by default here (in-memory data is the caller's own; see
    `dynrec.preprocessing.filters.dedup`); an empty result is returned, not an error.
    """
    available = [str(c) for c in df.columns] if hasattr(df, "columns") else []
    cm = columns or _auto_columns(available)
    _check_event_types(cm, event_types, source)
    frame = df if isinstance(df, pl.DataFrame) else _from_pandas(df, cm, source)
    raw = _select_columns(frame, cm, source)
    out = _validated(raw, cm, source, event_types=event_types)
    if strict:
        out.report.raise_if_invalid()
    return apply_duplicates(out, duplicates)


def _from_pandas(df: Any, cm: ColumnMap, source: str) -> pl.DataFrame:
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is a dependency
        raise DataError("expected a Polars or pandas DataFrame", source=source) from exc
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"expected a Polars or pandas DataFrame, got {type(df).__name__}", source=source)
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


def _read_headerless(
    p: Path,
    *,
    sep: str,
    names: list[str],
    cm: ColumnMap,
    event_types: Mapping[str, float] | None,
    encoding: str,
    strict: bool,
) -> EventLog:
    parts = split_plain(read_text(p, encoding, strict=strict), sep)
    ok, wrong = count_check(parts, exactly=len(names))
    raw = _select_columns(fields_to_frame(ok, names, names), cm, str(p))
    return _validated(raw, cm, str(p), event_types=event_types, extra=wrong)


def _read_with_header(
    p: Path,
    *,
    sep: str,
    quoted: bool,
    columns: ColumnMap | None,
    event_types: Mapping[str, float] | None,
    encoding: str,
    strict: bool,
    strip_types: bool = False,
) -> EventLog:
    src = str(p)
    text = read_text(p, encoding, strict=strict)
    table = _regular_table(text, sep, quoted=quoted)
    if table is not None:
        names, fields = table
        wrong = no_invalid()
    else:
        parts = split_csv(text, sep) if quoted else split_plain(text, sep)
        names, rows = header(parts, src)
        fields, wrong = count_check(rows, exactly=len(names))
    del text  # the decoded file is no longer needed: free it before validation
    if strip_types:
        names = [n.split(":", 1)[0] for n in names]
    cm = columns or _auto_columns(names)
    _check_event_types(cm, event_types, src)
    wanted = cm.wanted()
    absent = [c for c in wanted if c not in names]
    if absent:
        raise DataError(f"column {absent[0]!r} not found (header: {names})", source=src, field=absent[0])
    if table is not None:
        index = {n: i for i, n in enumerate(names)}
        raw_fields = fields.select("line", *[pl.col(f"c{index[w]}").alias(w) for w in wanted])
    else:
        raw_fields = fields_to_frame(fields, names, wanted)
    raw = _select_columns(raw_fields, cm, src)
    return _validated(raw, cm, src, event_types=event_types, extra=wrong)


def _regular_table(text: Text, sep: str, *, quoted: bool) -> tuple[list[str], pl.DataFrame] | None:
    """Header names and string columns ``c0, c1, ...`` plus ``line`` of a *regular* file, parsed in
    one pass by Polars' CSV reader; None when the file is not provably regular (then the general
    record splitter decides and reports every irregular row).

    Regular: decodable, a single-character separator, no ``\r``, no blank line, no quote character
    when `quoted` (for plain formats quotes are literal text either way), at least two columns, and
    as many separators in the whole file as ``lines x (columns - 1)``. Polars rejects a line with
    more fields than the header, so with that total no line can have fewer either: every line has
    exactly the header's field count, and data line k (0-based) is physical line k + 2.
    Fields come out exactly as the splitter gives them (unstripped, empty ones as ``""``).
    """
    body = text.text
    if text.bad_lines or len(sep) != 1 or sep == "\n" or "\r" in body or (quoted and '"' in body):
        return None
    if body.startswith("\n") or "\n\n" in body:
        return None
    first = body[: body.find("\n")]
    width = first.count(sep) + 1
    n_lines = body.count("\n") + (0 if body.endswith("\n") else 1)
    if width < 2 or n_lines < 2 or body.count(sep) != n_lines * (width - 1):
        return None
    try:
        frame = pl.read_csv(
            body.encode("utf-8"),
            separator=sep,
            has_header=False,
            skip_rows=1,
            new_columns=[f"c{i}" for i in range(width)],
            infer_schema=False,
            quote_char=None,
            empty_string_is_null=False,
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError:
        return None
    if frame.height != n_lines - 1 or frame.width != width:
        return None
    names = [c.strip().strip('"') for c in first.split(sep)]
    frame = frame.with_columns(pl.int_range(2, frame.height + 2, dtype=pl.Int64).alias("line"))
    return names, frame


def _read_recbole(
    p: Path,
    *,
    columns: ColumnMap | None,
    event_types: Mapping[str, float] | None,
    encoding: str,
    strict: bool,
) -> EventLog:
    """RecBole atomic ``.inter``: tab-separated, header ``name:type`` (types are dropped)."""
    if columns is None:
        first = _peek_lines(p, 1)
        cols = [c.split(":", 1)[0].strip() for c in (first[0].rstrip("\r\n").split("\t") if first else [])]
        columns = ColumnMap(
            user="user_id",
            item="item_id",
            timestamp="timestamp" if "timestamp" in cols else None,
            value=next((c for c in ("rating", "label", "value") if c in cols), None),
            event_type="event_type" if "event_type" in cols else None,
        )
    return _read_with_header(
        p,
        sep="\t",
        quoted=False,
        columns=columns,
        event_types=event_types,
        encoding=encoding,
        strict=strict,
        strip_types=True,
    )


def _json_scalar(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return json.dumps(v)


def _read_jsonl(
    p: Path,
    *,
    columns: ColumnMap | None,
    event_types: Mapping[str, float] | None,
    encoding: str,
    strict: bool,
) -> EventLog:
    src = str(p)
    if columns is not None:
        _check_event_types(columns, event_types, src)
    text = read_text(p, encoding, strict=strict)
    lines = text_lines(text.text)
    bad_bytes = lines.filter(pl.col("line").is_in(list(text.bad_lines)))
    if not text.bad_lines:  # fast path: the whole file parses
        try:
            frame = pl.read_ndjson(io.StringIO("\n".join(lines["text"].to_list())), infer_schema_length=None)
            if frame.height != lines.height:
                raise ValueError("row count mismatch")
            cm = columns or _auto_columns(frame.columns)
            wanted = cm.wanted()
            missing = [c for c in wanted if c not in frame.columns]
            if missing and frame.height:
                raise DataError(
                    f"column {missing[0]!r} not found in any record", source=src, field=missing[0]
                )
            frame = frame.select([c for c in wanted if c in frame.columns]).with_columns(lines["line"])
            raw = _select_columns(frame, cm, src)
            return _validated(raw, cm, src, event_types=event_types)
        except (pl.exceptions.PolarsError, ValueError):
            pass
    # slow path, for files with broken lines: parse line by line and report the bad ones
    objs: list[tuple[int, dict[str, Any]]] = []
    bad: list[tuple[int, str, str]] = [
        (int(ln), ROW_FIELD, text.bad_lines[int(ln)]) for ln in bad_bytes["line"].to_list()
    ]
    for line, raw_text in lines.filter(~pl.col("line").is_in(list(text.bad_lines))).iter_rows():
        try:
            obj = json.loads(raw_text)
        except json.JSONDecodeError as exc:
            bad.append((line, ROW_FIELD, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            bad.append((line, ROW_FIELD, "not a JSON object"))
            continue
        objs.append((line, obj))
    cm = columns or _auto_columns(list(dict.fromkeys(k for _, o in objs for k in o)))
    _check_event_types(cm, event_types, src)
    wanted = cm.wanted()
    records: dict[str, list[str | None]] = {c: [_json_scalar(o.get(c)) for _, o in objs] for c in wanted}
    frame = pl.DataFrame(
        {"line": [ln for ln, _ in objs], **records},
        schema={"line": pl.Int64, **{c: pl.String for c in wanted}},
    )
    raw = _select_columns(frame, cm, src)
    extra = pl.DataFrame(bad, schema=INVALID_SCHEMA, orient="row").sort("line")
    return _validated(raw, cm, src, event_types=event_types, extra=extra)


def _read_line_file(p: Path, *, per_user: bool, encoding: str, strict: bool) -> EventLog:
    """``user item item ...`` (per_user) or ``user item`` lines, whitespace-separated, time = file order."""
    parts = split_plain(read_text(p, encoding, strict=strict), None)
    if per_user:
        ok, wrong = count_check(parts, at_least=2)
        raw = ok.select(
            "line", pl.col("f").list.first().alias("user_id"), pl.col("f").list.slice(1).alias("item_id")
        ).explode("item_id")
    else:
        ok, wrong = count_check(parts, exactly=2)
        raw = ok.select(
            "line", pl.col("f").list.first().alias("user_id"), pl.col("f").list.last().alias("item_id")
        )
    # Time order = file order: the timestamp is the position within the user's sequence.
    raw = raw.with_columns(pl.int_range(0, pl.len(), dtype=pl.Int64).over("user_id").alias("timestamp"))
    cm = ColumnMap(user="user_id", item="item_id", timestamp=None)
    return _validated(raw, cm, str(p), event_types=None, extra=wrong, has_time=False)


__all__ = [
    "COLUMN_KEYS",
    "DUPLICATE_KEYS",
    "ColumnMap",
    "Duplicates",
    "Format",
    "apply_duplicates",
    "detect_format",
    "from_dataframe",
    "parse_columns",
    "read_events",
]
