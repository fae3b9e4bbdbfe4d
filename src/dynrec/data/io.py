"""Readers: files and DataFrames -> validated `EventLog` (events) or `ItemMetadata` (items).

Events: CSV/TSV (header row, column mapping), Parquet, JSON lines, pandas/Polars DataFrames,
RecBole atomic ``.inter``, MovieLens ``u.data`` (tab) and ``ratings.dat`` (``::``), per-user
sequence lines (``user item item ...``) and ``user item`` pair lines. Any text file may be gzipped
(detected from the magic bytes). For line files, time order = file order: the timestamp is the
event's position within its user's sequence and ``EventLog.has_time`` is False.

Items: MovieLens ``u.item`` and ``movies.dat`` (both Latin-1), RecBole ``.item``, and
CSV/TSV/JSONL/Parquet with an `ItemColumns` mapping.

Validation: every text format is split into physical lines first, so every rejected row is
reported with its 1-based line number (DataFrames and Parquet: 1-based row number) and the source
column name; nothing valid is dropped. Rejected: wrong column count, missing user/item id, missing
or non-numeric or non-finite or negative timestamp, missing/NaN/non-numeric/infinite value,
unknown event type (when `event_types` is given). ``strict=True`` raises `DataError` at the first
one. Timestamps: integers are seconds; fractional seconds are truncated; ISO-8601 strings (with
or without an offset; naive ones are taken as UTC) and datetime columns are converted to epoch
seconds.

CSV quoting follows RFC 4180 (quoted separators, doubled quotes; fields spanning lines go through
Python's C ``csv`` module and are reported at the record's first line). Text is UTF-8 unless
`encoding` says otherwise (MovieLens item files default to Latin-1); undecodable bytes become
U+FFFD with a warning naming the line, the row is kept.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from dynrec.data.events import (
    ROW_FIELD,
    EventLog,
    InvalidRow,
    ValidationReport,
    validate_frame,
)
from dynrec.data.items import ItemMetadata
from dynrec.errors import DataError

log = logging.getLogger(__name__)

Format = Literal["csv", "tsv", "parquet", "jsonl", "recbole", "ml-100k", "ml-dat", "user-lines", "pair-lines"]
ItemFormat = Literal["ml-100k-item", "ml-dat-item", "recbole-item", "csv", "tsv", "jsonl", "parquet"]

# MovieLens 100K genre flags, in u.item column order (as listed in u.genre).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
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


@dataclass(frozen=True)
class ItemColumns:
    """Source columns of an item table; `genres` may be a list column or a `genre_sep`-joined string."""

    item: str = "item_id"
    title: str | None = "title"
    genres: str | None = "genres"
    genre_sep: str = "|"


# --------------------------------------------------------------------------------------------
# text -> lines -> fields


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Whole file as text (gunzipped if gzip magic is present; a leading BOM removed).

    Bytes that are not valid in `encoding` become U+FFFD and a warning names the first bad line.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", source=str(path)) from exc
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"corrupt gzip data: {exc}", source=str(path)) from exc
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        log.warning("%s:%d: bytes not valid %s, replaced with U+FFFD", path, line, encoding)
        text = data.decode(encoding, errors="replace")
    return text.removeprefix("\ufeff")


def has_irregular_space(text: str) -> bool:
    """True unless every line is single-space separated with no leading/trailing blanks, tabs or
    ``\\r`` (plain substring scans: much faster than a regex over the whole file)."""
    return (
        any(s in text for s in ("\t", "  ", "\n ", " \n", "\r", "\f", "\v"))
        or text.startswith(" ")
        or text.endswith(" ")
    )


def text_lines(text: str, *, irregular: bool | None = None) -> pl.DataFrame:
    """One row per non-blank physical line: ``line`` (1-based, Int64) and ``text`` (no ``\\r``).

    Lines are split on ``\\n`` only, so line numbers match what editors and ``sed -n`` show.
    `irregular` is `has_irregular_space(text)` if the caller already knows it.
    """
    if irregular is None:
        irregular = has_irregular_space(text)
    lines = pl.DataFrame({"text": [text]}).select(pl.col("text").str.split("\n").explode())
    lines = lines.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))
    if not irregular:  # no whitespace-only lines possible: only empty ones
        return lines.filter(pl.col("text").str.len_bytes() > 0)
    if "\r" in text:
        lines = lines.with_columns(pl.col("text").str.strip_chars_end("\r"))
    return lines.filter(pl.col("text").str.strip_chars() != "")


def _split_fields(lines: pl.DataFrame, sep: str | None, *, irregular: bool = True) -> pl.DataFrame:
    """Add ``f`` (list of fields) and ``n`` (their count). ``sep=None``: runs of whitespace
    (a plain split on ``" "`` when `irregular` is False)."""
    if sep is None:
        f = pl.col("text").str.extract_all(r"\S+") if irregular else pl.col("text").str.split(" ")
    else:
        f = pl.col("text").str.split(sep)
    return lines.with_columns(f.alias("f")).with_columns(pl.col("f").list.len().alias("n"))


def _split_quoted(text: str, sep: str) -> pl.DataFrame:
    """Quote-aware split (RFC 4180: quoted fields may hold separators, ``""`` and newlines).

    Fast path, vectorised: when every line has an even number of quotes, each line is one record;
    its field count is 1 + the separators outside quotes, and the lines of the header's width
    are parsed by Polars' CSV reader. Otherwise (a quoted field spans lines) Python's C `csv`
    module parses the file. Either way each record is reported at the line where it starts.
    """
    lines = text_lines(text)
    if bool((lines["text"].str.count_matches('"', literal=True) % 2 == 1).any()):
        return _split_quoted_python(text, sep)
    outside = pl.col("text").str.replace_all(r'"[^"]*"', "")
    lines = lines.with_columns((outside.str.count_matches(sep, literal=True) + 1).cast(pl.UInt32).alias("n"))
    if lines.height == 0:
        return lines.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias("f")).select("line", "f", "n")
    header = next(csv.reader([lines["text"][0]], delimiter=sep))
    width = len(header)
    body = lines.slice(1)
    good = body.filter(pl.col("n") == width)
    try:
        table = pl.read_csv(
            io.StringIO(str(good["text"].str.join("\n").item()) + "\n"),
            separator=sep,
            has_header=False,
            new_columns=[f"c{i}" for i in range(width)],
            infer_schema=False,
            quote_char='"',
        )
    except pl.exceptions.PolarsError:
        return _split_quoted_python(text, sep)
    if table.height != good.height or table.width != width:
        return _split_quoted_python(text, sep)
    head = pl.DataFrame(
        {"line": [int(lines["line"][0])], "f": [header], "n": [width]},
        schema={"line": pl.Int64, "f": pl.List(pl.String), "n": pl.UInt32},
    )
    good = (
        good.select("line", pl.concat_list(table.get_columns()).alias("f"), "n")
        if good.height
        else head.clear()
    )
    bad = body.filter(pl.col("n") != width).select(
        "line", pl.lit(None, dtype=pl.List(pl.String)).alias("f"), "n"
    )
    return pl.concat([head, good, bad]).sort("line")


def _split_quoted_python(text: str, sep: str) -> pl.DataFrame:
    """`_split_quoted` for files where a quoted field spans lines: Python's C `csv` module."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    starts: list[int] = []
    fields: list[list[str]] = []
    prev = 0
    for rec in reader:
        start, prev = prev + 1, reader.line_num
        if not rec or (len(rec) == 1 and not rec[0].strip()):
            continue
        starts.append(start)
        fields.append(rec)
    return pl.DataFrame(
        {"line": starts, "f": fields},
        schema={"line": pl.Int64, "f": pl.List(pl.String)},
    ).with_columns(pl.col("f").list.len().alias("n"))


def _split_delimited(text: str, sep: str | None, *, quoted: bool) -> pl.DataFrame:
    if quoted and sep is not None and '"' in text:
        return _split_quoted(text, sep)
    return _split_fields(text_lines(text), sep)


def _count_check(
    parts: pl.DataFrame, *, exactly: int | None = None, at_least: int | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows with an acceptable field count, invalid-row frame ``line, field, reason`` for the rest)."""
    if exactly is not None:
        ok_cond = pl.col("n") == exactly
        expect = f"expected {exactly} fields"
    elif at_least is not None:
        ok_cond = pl.col("n") >= at_least
        expect = f"expected at least {at_least} fields"
    else:
        return parts, _no_invalid()
    wrong = parts.filter(~ok_cond).select(
        "line",
        pl.lit(ROW_FIELD).alias("field"),
        pl.format("{}, found {}", pl.lit(expect), pl.col("n")).alias("reason"),
    )
    return parts.filter(ok_cond), wrong


def _no_invalid() -> pl.DataFrame:
    return pl.DataFrame(schema={"line": pl.Int64, "field": pl.String, "reason": pl.String})


def _header(parts: pl.DataFrame, source: str) -> tuple[list[str], pl.DataFrame]:
    """Column names from the first row (stripped, quotes removed) and the remaining rows."""
    if parts.height == 0:
        raise DataError("file is empty (no header row)", source=source)
    names = [str(c).strip().strip('"') for c in parts["f"][0].to_list()]
    return names, parts.slice(1)


def _fields_to_frame(parts: pl.DataFrame, names: Sequence[str], wanted: Sequence[str]) -> pl.DataFrame:
    """String columns `wanted` (by header name) out of the field lists, plus ``line``."""
    index = {n: i for i, n in enumerate(names)}
    return parts.select(
        "line",
        *[pl.col("f").list.get(index[w], null_on_oob=True).alias(w) for w in wanted if w in index],
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
    for need in (cm.user, cm.item, cm.timestamp, cm.event_type, cm.value):
        if need is not None and need not in frame.columns:
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
# events


def _peek_lines(path: Path, n: int = 2000) -> list[str]:
    """The first `n` non-blank lines (gunzipped if needed), without reading the whole file."""
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if gz else open
    out: list[str] = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                out.append(line)
            if len(out) >= n:
                break
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
) -> EventLog:
    """Read an event file into a validated `EventLog`.

    `columns` maps source columns for CSV/TSV/Parquet/JSONL/RecBole (RecBole default: ``user_id``,
    ``item_id``, ``timestamp``, value from ``rating``/``label``/``value``, ``event_type``).
    `event_types` (type -> weight) rejects rows whose type is not a key and is kept on the log
    as ``event_weights``. `separator` overrides CSV's ``,`` / TSV's tab. Invalid rows are reported
    in ``log.report`` (and logged); ``strict=True`` raises `DataError` naming file, line and field.
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
        out = _read_line_file(p, per_user=fmt == "user-lines", encoding=encoding)
    elif fmt == "ml-100k":
        cm = ColumnMap(value="value")
        out = _read_headerless(
            p,
            sep="\t",
            names=["user_id", "item_id", "value", "timestamp"],
            cm=cm,
            event_types=event_types,
            encoding=encoding,
        )
    elif fmt == "ml-dat":
        cm = ColumnMap(value="value")
        out = _read_headerless(
            p,
            sep="::",
            names=["user_id", "item_id", "value", "timestamp"],
            cm=cm,
            event_types=event_types,
            encoding=encoding,
        )
    elif fmt == "recbole":
        out = _read_recbole(p, columns=columns, event_types=event_types, encoding=encoding)
    elif fmt in ("csv", "tsv"):
        sep = separator or ("\t" if fmt == "tsv" else ",")
        out = _read_with_header(
            p,
            sep=sep,
            quoted=fmt == "csv",
            columns=columns or ColumnMap(),
            event_types=event_types,
            encoding=encoding,
        )
    elif fmt == "parquet":
        try:
            frame = pl.read_parquet(p)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise DataError(f"cannot read Parquet: {exc}", source=src) from exc
        out = from_dataframe(frame, columns=columns, event_types=event_types, source=src)
    elif fmt == "jsonl":
        out = _read_jsonl(p, columns=columns or ColumnMap(), event_types=event_types, encoding=encoding)
    else:  # pragma: no cover - Literal exhausted
        raise DataError(f"unsupported format {fmt!r}", source=src)
    if strict:
        out.report.raise_if_invalid()
    return out


def from_dataframe(
    df: Any,
    *,
    columns: ColumnMap | None = None,
    event_types: Mapping[str, float] | None = None,
    source: str = "<dataframe>",
    strict: bool = False,
) -> EventLog:
    """Validate a pandas or Polars DataFrame; ``line`` in reports is the 1-based row number.

    Datetime/date columns become epoch seconds (naive = UTC); float id columns holding whole
    numbers (pandas ints with missing values) become ``"1"``, not ``"1.0"``.
    """
    cm = columns or ColumnMap()
    _check_event_types(cm, event_types, source)
    frame = df if isinstance(df, pl.DataFrame) else _from_pandas(df, cm, source)
    raw = _select_columns(frame, cm, source)
    out = _validated(raw, cm, source, event_types=event_types)
    if strict:
        out.report.raise_if_invalid()
    return out


def _from_pandas(df: Any, cm: ColumnMap, source: str) -> pl.DataFrame:
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is a dependency
        raise DataError("expected a Polars or pandas DataFrame", source=source) from exc
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"expected a Polars or pandas DataFrame, got {type(df).__name__}", source=source)
    wanted = [c for c in (cm.user, cm.item, cm.timestamp, cm.event_type, cm.value) if c is not None]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(
            f"column {missing[0]!r} not found (columns: {list(df.columns)})", source=source, field=missing[0]
        )
    sub = df[list(dict.fromkeys(wanted))]
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
) -> EventLog:
    parts = _split_delimited(read_text(p, encoding), sep, quoted=False)
    ok, wrong = _count_check(parts, exactly=len(names))
    raw = _select_columns(_fields_to_frame(ok, names, names), cm, str(p))
    return _validated(raw, cm, str(p), event_types=event_types, extra=wrong)


def _read_with_header(
    p: Path,
    *,
    sep: str,
    quoted: bool,
    columns: ColumnMap,
    event_types: Mapping[str, float] | None,
    encoding: str,
    strip_types: bool = False,
) -> EventLog:
    src = str(p)
    _check_event_types(columns, event_types, src)
    parts = _split_delimited(read_text(p, encoding), sep, quoted=quoted)
    names, rows = _header(parts, src)
    if strip_types:
        names = [n.split(":", 1)[0] for n in names]
    ok, wrong = _count_check(rows, exactly=len(names))
    wanted = [
        c for c in (columns.user, columns.item, columns.timestamp, columns.event_type, columns.value) if c
    ]
    absent = [c for c in wanted if c not in names]
    if absent:
        raise DataError(f"column {absent[0]!r} not found (header: {names})", source=src, field=absent[0])
    raw = _select_columns(_fields_to_frame(ok, names, wanted), columns, src)
    return _validated(raw, columns, src, event_types=event_types, extra=wrong)


def _read_recbole(
    p: Path, *, columns: ColumnMap | None, event_types: Mapping[str, float] | None, encoding: str
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
    p: Path, *, columns: ColumnMap, event_types: Mapping[str, float] | None, encoding: str
) -> EventLog:
    src = str(p)
    _check_event_types(columns, event_types, src)
    lines = text_lines(read_text(p, encoding))
    wanted = [
        c for c in (columns.user, columns.item, columns.timestamp, columns.event_type, columns.value) if c
    ]
    try:  # fast path: the whole file parses
        frame = pl.read_ndjson(io.StringIO("\n".join(lines["text"].to_list())), infer_schema_length=None)
        if frame.height != lines.height:
            raise ValueError("row count mismatch")
        missing = [c for c in wanted if c not in frame.columns]
        if missing and frame.height:
            raise DataError(f"column {missing[0]!r} not found in any record", source=src, field=missing[0])
        frame = frame.select([c for c in wanted if c in frame.columns]).with_columns(lines["line"])
        raw = _select_columns(frame, columns, src)
        return _validated(raw, columns, src, event_types=event_types)
    except (pl.exceptions.PolarsError, ValueError):
        pass
    # slow path, only for files with broken lines: parse line by line and report the bad ones
    records: dict[str, list[str | None]] = {c: [] for c in wanted}
    good_lines: list[int] = []
    bad: list[tuple[int, str, str]] = []
    for line, text in lines.iter_rows():
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append((line, ROW_FIELD, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            bad.append((line, ROW_FIELD, "not a JSON object"))
            continue
        good_lines.append(line)
        for c in wanted:
            records[c].append(_json_scalar(obj.get(c)))
    frame = pl.DataFrame(
        {"line": good_lines, **records}, schema={"line": pl.Int64, **{c: pl.String for c in wanted}}
    )
    raw = _select_columns(frame, columns, src)
    extra = pl.DataFrame(
        bad, schema={"line": pl.Int64, "field": pl.String, "reason": pl.String}, orient="row"
    )
    return _validated(raw, columns, src, event_types=event_types, extra=extra)


def _read_line_file(p: Path, *, per_user: bool, encoding: str) -> EventLog:
    """``user item item ...`` (per_user) or ``user item`` lines, whitespace-separated, time = file order."""
    text = read_text(p, encoding)
    irregular = has_irregular_space(text)
    parts = _split_fields(text_lines(text, irregular=irregular), None, irregular=irregular)
    if per_user:
        ok, wrong = _count_check(parts, at_least=2)
        raw = ok.select(
            "line", pl.col("f").list.first().alias("user_id"), pl.col("f").list.slice(1).alias("item_id")
        ).explode("item_id")
    else:
        ok, wrong = _count_check(parts, exactly=2)
        raw = ok.select(
            "line", pl.col("f").list.first().alias("user_id"), pl.col("f").list.last().alias("item_id")
        )
    # Time order = file order: the timestamp is the position within the user's sequence.
    raw = raw.with_columns(pl.int_range(0, pl.len(), dtype=pl.Int64).over("user_id").alias("timestamp"))
    cm = ColumnMap(user="user_id", item="item_id", timestamp=None)
    return _validated(raw, cm, str(p), event_types=None, extra=wrong, has_time=False)


# --------------------------------------------------------------------------------------------
# item metadata


def detect_item_format(path: Path) -> ItemFormat:
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem == "u.item":
        return "ml-100k-item"
    if stem.endswith(".dat"):
        return "ml-dat-item"
    if stem.endswith(".item"):
        return "recbole-item"
    for ext, fmt in (
        (".parquet", "parquet"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".tsv", "tsv"),
        (".csv", "csv"),
    ):
        if stem.endswith(ext):
            return fmt  # type: ignore[return-value]
    raise DataError("unknown item file format; pass format=...", source=str(path))


def read_items(
    path: str | Path,
    *,
    format: ItemFormat | None = None,
    columns: ItemColumns | None = None,
    strict: bool = False,
    encoding: str | None = None,
) -> ItemMetadata:
    """Read item metadata (title, genres, other columns as strings) keyed by item id.

    MovieLens files are Latin-1 (the default `encoding` for them); others UTF-8. Rows with a
    missing id or wrong column count are reported; a repeated id keeps its first row and reports
    the later ones.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", source=str(p))
    fmt = format or detect_item_format(p)
    src = str(p)
    enc = encoding or ("latin-1" if fmt in ("ml-100k-item", "ml-dat-item") else "utf-8")
    extra = _no_invalid()
    if fmt == "ml-100k-item":
        parts = _split_delimited(read_text(p, enc), "|", quoted=False)
        ok, extra = _count_check(parts, exactly=5 + len(ML100K_GENRES))
        flags = [
            pl.when(pl.col("f").list.get(5 + i).str.strip_chars() == "1").then(pl.lit(g))
            for i, g in enumerate(ML100K_GENRES)
        ]
        frame = ok.select(
            "line",
            pl.col("f").list.get(0).alias("item_id"),
            pl.col("f").list.get(1).alias("title"),
            pl.concat_list(flags).list.drop_nulls().alias("genres"),
            pl.col("f").list.get(2).alias("release_date"),
            pl.col("f").list.get(3).alias("video_release_date"),
            pl.col("f").list.get(4).alias("imdb_url"),
        )
    elif fmt == "ml-dat-item":
        parts = _split_delimited(read_text(p, enc), "::", quoted=False)
        ok, extra = _count_check(parts, exactly=3)
        frame = ok.select(
            "line",
            pl.col("f").list.get(0).alias("item_id"),
            pl.col("f").list.get(1).alias("title"),
            _split_genres(pl.col("f").list.get(2), "|").alias("genres"),
        )
    elif fmt == "recbole-item":
        parts = _split_delimited(read_text(p, enc), "\t", quoted=False)
        names, rows = _header(parts, src)
        types = {n.split(":", 1)[0]: (n.split(":", 1)[1] if ":" in n else "token") for n in names}
        names = list(types)
        ok, extra = _count_check(rows, exactly=len(names))
        table = _fields_to_frame(ok, names, names)
        title = next((c for c in ("title", "movie_title", "name", "item_name") if c in names), None)
        genre = next((c for c in ("genres", "genre", "class", "categories", "category") if c in names), None)
        sep = " " if genre is not None and types[genre] == "token_seq" else "|"
        frame = _item_frame(table, ItemColumns(item="item_id", title=title, genres=genre, genre_sep=sep), src)
    else:
        cols = columns or ItemColumns()
        if fmt in ("csv", "tsv"):
            parts = _split_delimited(read_text(p, enc), "\t" if fmt == "tsv" else ",", quoted=fmt == "csv")
            names, rows = _header(parts, src)
            ok, extra = _count_check(rows, exactly=len(names))
            table = _fields_to_frame(ok, names, names)
        elif fmt == "jsonl":
            lines = text_lines(read_text(p, enc))
            try:
                table = pl.read_ndjson(
                    io.StringIO("\n".join(lines["text"].to_list())), infer_schema_length=None
                )
            except pl.exceptions.PolarsError as exc:
                raise DataError(f"invalid JSON lines: {exc}", source=src) from exc
            table = table.with_columns(lines["line"])
        else:
            table = pl.read_parquet(p)
        frame = _item_frame(table, cols, src)
    out = _finish_items(frame, src, extra)
    if strict:
        out.report.raise_if_invalid()
    return out


def items_from_dataframe(
    df: Any, *, columns: ItemColumns | None = None, source: str = "<dataframe>", strict: bool = False
) -> ItemMetadata:
    """Item metadata from a pandas or Polars DataFrame (``line`` in reports = 1-based row)."""
    frame = df if isinstance(df, pl.DataFrame) else pl.from_pandas(df)
    out = _finish_items(_item_frame(frame, columns or ItemColumns(), source), source, _no_invalid())
    if strict:
        out.report.raise_if_invalid()
    return out


def _split_genres(expr: pl.Expr, sep: str) -> pl.Expr:
    parts = expr.cast(pl.String).str.strip_chars().str.split(sep)
    return parts.list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))


def _item_frame(table: pl.DataFrame, cols: ItemColumns, source: str) -> pl.DataFrame:
    """``line, item_id, title, genres`` + other columns as strings, from a mapped table."""
    if cols.item not in table.columns:
        raise DataError(
            f"column {cols.item!r} not found (columns: {table.columns})", source=source, field=cols.item
        )
    if "line" not in table.columns:
        table = table.with_row_index("line", offset=1)
    used = {"line", cols.item, cols.title, cols.genres}
    if cols.title is not None and cols.title in table.columns:
        title = pl.col(cols.title).cast(pl.String)
    else:
        title = pl.lit(None, dtype=pl.String)
    if cols.genres is not None and cols.genres in table.columns:
        g = table.schema[cols.genres]
        genres = (
            pl.col(cols.genres).cast(pl.List(pl.String))
            if isinstance(g, pl.List)
            else _split_genres(pl.col(cols.genres), cols.genre_sep)
        )
    else:
        genres = pl.lit([], dtype=pl.List(pl.String))
    extras = [
        pl.col(c).cast(pl.String)
        for c in table.columns
        if c not in used and c not in ("item_id", "title", "genres")
    ]
    return table.select(
        pl.col("line").cast(pl.Int64),
        pl.col(cols.item).cast(pl.String).alias("item_id"),
        title.alias("title"),
        genres.alias("genres"),
        *extras,
    )


def _finish_items(frame: pl.DataFrame, source: str, extra: pl.DataFrame) -> ItemMetadata:
    extras = [c for c in frame.columns if c not in ("line", "item_id", "title", "genres")]
    frame = frame.with_columns(
        pl.col("item_id").str.strip_chars(),
        *[
            pl.when(pl.col(c).str.strip_chars() != "").then(pl.col(c).str.strip_chars()).alias(c)
            for c in ("title", *extras)
        ],  # blank text -> null
        pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String))),
    )
    missing = pl.col("item_id").is_null() | (pl.col("item_id") == "")
    first_line = pl.col("line").first().over("item_id")
    frame = frame.with_columns(
        pl.when(missing)
        .then(pl.lit("missing item id"))
        .when(~pl.col("item_id").is_first_distinct())
        .then(pl.format("duplicate item id (first at line {})", first_line))
        .alias("_reason")
    )
    bad = frame.filter(pl.col("_reason").is_not_null())
    rows = [
        InvalidRow(source, int(ln), "item_id", str(r)) for ln, r in bad.select("line", "_reason").iter_rows()
    ]
    rows += [InvalidRow(source, int(a), str(b), str(c)) for a, b, c in extra.iter_rows()]
    rows.sort(key=lambda r: r.line)
    good = frame.filter(pl.col("_reason").is_null()).drop("_reason", "line")
    report = ValidationReport(n_valid=good.height, invalid=tuple(rows))
    if rows:
        log.warning("%s: %s", source, report.summary())
    return ItemMetadata(good, source, report)
