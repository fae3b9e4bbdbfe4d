"""Readers: files and DataFrames -> validated `EventLog`.

Supported: CSV/TSV/Parquet/JSONL (with a column mapping), pandas/Polars DataFrames, RecBole atomic
``.inter`` files, MovieLens ``u.data`` and ``ratings.dat``, per-user sequence lines
(``user item item ...``) and ``user item`` pair lines (``.txt``, optionally gzipped). For line files,
time order = file order: the timestamp is the event's position within its user's sequence and
``EventLog.has_time`` is False.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from dynrec.data.events import EventLog, validate_frame
from dynrec.errors import DataError

Format = Literal["csv", "tsv", "parquet", "jsonl", "recbole", "ml-100k", "ml-dat", "user-lines", "pair-lines"]


@dataclass(frozen=True)
class ColumnMap:
    """Names of the source columns holding each field; None = absent (a default is used)."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str | None = "timestamp"
    event_type: str | None = None
    value: str | None = None


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", source=str(path)) from exc
    if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def _lines(path: Path) -> pl.DataFrame:
    """One row per non-empty line: columns ``text`` and ``line`` (1-based line number)."""
    text = _read_bytes(path).decode("utf-8", errors="replace")
    lines = pl.Series("text", text.splitlines(), dtype=pl.String)
    df = pl.DataFrame([lines]).with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))
    return df.filter(pl.col("text").str.strip_chars() != "")


def detect_format(path: Path) -> Format:
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem == "u.data":
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
        head = _lines(path).head(2000)
        counts = head["text"].str.strip_chars().str.split(" ").list.len()
        return "pair-lines" if counts.len() and int(counts.max()) <= 2 else "user-lines"  # type: ignore[arg-type]
    raise DataError(
        "unknown file format; use .csv/.tsv/.parquet/.jsonl/.inter/.txt or pass format=...",
        source=str(path),
    )


def read_events(
    path: str | Path,
    *,
    format: Format | None = None,
    columns: ColumnMap | None = None,
    event_types: Mapping[str, float] | None = None,
    strict: bool = False,
) -> EventLog:
    """Read an event file into a validated `EventLog` (invalid rows reported; `strict` raises on any)."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", source=str(p))
    fmt = format or detect_format(p)
    if fmt in ("user-lines", "pair-lines"):
        log = _read_line_file(p, per_user=fmt == "user-lines", event_types=event_types)
    elif fmt == "ml-100k":
        log = _read_delimited(
            p,
            sep="\t",
            names=["user_id", "item_id", "value", "timestamp"],
            has_header=False,
            columns=ColumnMap(value="value"),
            event_types=event_types,
            n_fields=4,
        )
    elif fmt == "ml-dat":
        log = _read_ml_dat(p, event_types=event_types)
    elif fmt == "recbole":
        log = _read_recbole(p, event_types=event_types)
    elif fmt in ("csv", "tsv"):
        log = _read_delimited(
            p,
            sep="\t" if fmt == "tsv" else ",",
            names=None,
            has_header=True,
            columns=columns or ColumnMap(),
            event_types=event_types,
            n_fields=None,
        )
    elif fmt == "parquet":
        log = from_dataframe(pl.read_parquet(p), columns=columns, event_types=event_types, source=str(p))
    elif fmt == "jsonl":
        log = _read_jsonl(p, columns=columns or ColumnMap(), event_types=event_types)
    else:  # pragma: no cover - Literal exhausted
        raise DataError(f"unsupported format {fmt!r}", source=str(p))
    if strict:
        log.report.raise_if_invalid()
    return log


def from_dataframe(
    df: Any,
    *,
    columns: ColumnMap | None = None,
    event_types: Mapping[str, float] | None = None,
    source: str = "<dataframe>",
    strict: bool = False,
) -> EventLog:
    """Validate a pandas or Polars DataFrame; `line` in reports is the 1-based row number."""
    cm = columns or ColumnMap()
    frame = df if isinstance(df, pl.DataFrame) else pl.from_pandas(df)
    raw = _select_columns(frame, cm, source, line_offset=1)
    good, report = validate_frame(raw, source=source, event_types=event_types)
    out = EventLog(good, has_time=cm.timestamp is not None, source=source, report=report)
    if strict:
        report.raise_if_invalid()
    return out


def _select_columns(frame: pl.DataFrame, cm: ColumnMap, source: str, *, line_offset: int) -> pl.DataFrame:
    for need in (cm.user, cm.item, cm.timestamp, cm.event_type, cm.value):
        if need is not None and need not in frame.columns:
            raise DataError(
                f"column {need!r} not found (columns: {frame.columns})", source=source, field=need
            )
    exprs = [
        pl.col(cm.user).cast(pl.String).alias("user_id"),
        pl.col(cm.item).cast(pl.String).alias("item_id"),
    ]
    if cm.timestamp is not None:
        ts = frame[cm.timestamp]
        if ts.dtype == pl.Datetime or ts.dtype == pl.Date:
            exprs.append(
                pl.col(cm.timestamp).cast(pl.Datetime("ms")).dt.epoch("s").cast(pl.String).alias("timestamp")
            )
        elif ts.dtype == pl.String and ts.str.contains(r"^\d{4}-\d\d-\d\d").any():
            exprs.append(
                pl.col(cm.timestamp)
                .str.to_datetime(strict=False, time_zone="UTC")
                .dt.epoch("s")
                .cast(pl.String)
                .fill_null(pl.col(cm.timestamp))
                .alias("timestamp")
            )
        else:
            exprs.append(pl.col(cm.timestamp).cast(pl.String).alias("timestamp"))
    else:
        exprs.append(pl.int_range(0, pl.len()).cast(pl.String).alias("timestamp"))
    if cm.event_type is not None:
        exprs.append(pl.col(cm.event_type).cast(pl.String).alias("event_type"))
    if cm.value is not None:
        exprs.append(pl.col(cm.value).cast(pl.String).alias("value"))
    return (
        frame.select(exprs)
        .with_row_index("line", offset=line_offset)
        .with_columns(pl.col("line").cast(pl.Int64))
    )


def _read_delimited(
    p: Path,
    *,
    sep: str,
    names: list[str] | None,
    has_header: bool,
    columns: ColumnMap,
    event_types: Mapping[str, float] | None,
    n_fields: int | None,
) -> EventLog:
    data = _read_bytes(p)
    try:
        frame = pl.read_csv(
            io.BytesIO(data),
            separator=sep,
            has_header=has_header,
            new_columns=names,
            infer_schema=False,  # everything as strings; validation converts and reports
            truncate_ragged_lines=True,
            quote_char='"' if sep == "," else None,
        )
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"cannot parse as delimited text: {exc}", source=str(p)) from exc
    offset = 2 if has_header else 1
    extra = None
    if n_fields is not None:
        counts = _lines(p).with_columns(pl.col("text").str.split(sep).list.len().alias("n"))
        wrong = counts.filter(pl.col("n") != n_fields)
        if wrong.height:
            extra = wrong.select(
                "line",
                pl.lit("<row>").alias("field"),
                pl.format("expected {} fields, found {}", pl.lit(n_fields), pl.col("n")).alias("reason"),
            )
            bad_lines = set(wrong["line"].to_list())
            frame = (
                frame.with_row_index("_l", offset=offset)
                .filter(~pl.col("_l").is_in(list(bad_lines)))
                .drop("_l")
            )
            raw = _select_columns_keep_lines(
                frame, columns, str(p), counts.filter(pl.col("n") == n_fields)["line"]
            )
            good, report = validate_frame(raw, source=str(p), event_types=event_types, extra_invalid=extra)
            return EventLog(good, has_time=columns.timestamp is not None, source=str(p), report=report)
    raw = _select_columns(frame, columns, str(p), line_offset=offset)
    good, report = validate_frame(raw, source=str(p), event_types=event_types, extra_invalid=extra)
    return EventLog(good, has_time=columns.timestamp is not None, source=str(p), report=report)


def _select_columns_keep_lines(
    frame: pl.DataFrame, cm: ColumnMap, source: str, lines: pl.Series
) -> pl.DataFrame:
    out = _select_columns(frame, cm, source, line_offset=1)
    return out.with_columns(lines.cast(pl.Int64).alias("line"))


def _read_ml_dat(p: Path, *, event_types: Mapping[str, float] | None) -> EventLog:
    """MovieLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``."""
    lines = _lines(p)
    parts = lines.with_columns(pl.col("text").str.split("::").alias("f"))
    parts = parts.with_columns(pl.col("f").list.len().alias("n"))
    wrong = parts.filter(pl.col("n") != 4).select(
        "line",
        pl.lit("<row>").alias("field"),
        pl.format("expected 4 fields, found {}", pl.col("n")).alias("reason"),
    )
    ok = parts.filter(pl.col("n") == 4).select(
        pl.col("f").list.get(0).alias("user_id"),
        pl.col("f").list.get(1).alias("item_id"),
        pl.col("f").list.get(2).alias("value"),
        pl.col("f").list.get(3).alias("timestamp"),
        "line",
    )
    good, report = validate_frame(ok, source=str(p), event_types=event_types, extra_invalid=wrong)
    return EventLog(good, has_time=True, source=str(p), report=report)


def _read_recbole(p: Path, *, event_types: Mapping[str, float] | None) -> EventLog:
    """RecBole atomic ``.inter``: tab-separated with a typed header ``name:type``."""
    data = _read_bytes(p)
    frame = pl.read_csv(
        io.BytesIO(data), separator="\t", infer_schema=False, quote_char=None, truncate_ragged_lines=True
    )
    rename = {c: c.split(":", 1)[0] for c in frame.columns}
    frame = frame.rename(rename)
    cols = frame.columns
    ts = "timestamp" if "timestamp" in cols else None
    value = next((c for c in ("rating", "label", "value") if c in cols), None)
    etype = "event_type" if "event_type" in cols else None
    cm = ColumnMap(user="user_id", item="item_id", timestamp=ts, value=value, event_type=etype)
    raw = _select_columns(frame, cm, str(p), line_offset=2)
    good, report = validate_frame(raw, source=str(p), event_types=event_types)
    return EventLog(good, has_time=ts is not None, source=str(p), report=report)


def _read_jsonl(p: Path, *, columns: ColumnMap, event_types: Mapping[str, float] | None) -> EventLog:
    data = _read_bytes(p)
    try:
        frame = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"invalid JSON lines: {exc}", source=str(p)) from exc
    raw = _select_columns(frame, columns, str(p), line_offset=1)
    good, report = validate_frame(raw, source=str(p), event_types=event_types)
    return EventLog(good, has_time=columns.timestamp is not None, source=str(p), report=report)


def _read_line_file(p: Path, *, per_user: bool, event_types: Mapping[str, float] | None) -> EventLog:
    lines = _lines(p).with_columns(pl.col("text").str.strip_chars().str.split(" ").alias("f"))
    lines = lines.with_columns(pl.col("f").list.len().alias("n"))
    if per_user:
        wrong = lines.filter(pl.col("n") < 2)
        ok = lines.filter(pl.col("n") >= 2).select(
            "line", pl.col("f").list.get(0).alias("user_id"), pl.col("f").list.slice(1).alias("item_id")
        )
        raw = ok.explode("item_id")
        expect = "at least 2 fields (user item ...)"
    else:
        wrong = lines.filter(pl.col("n") != 2)
        raw = lines.filter(pl.col("n") == 2).select(
            "line", pl.col("f").list.get(0).alias("user_id"), pl.col("f").list.get(1).alias("item_id")
        )
        expect = "2 fields (user item)"
    extra = wrong.select(
        "line",
        pl.lit("<row>").alias("field"),
        pl.format("expected {}, found {}", pl.lit(expect), pl.col("n")).alias("reason"),
    )
    # Time order = file order: the timestamp is the position within the user's sequence.
    raw = raw.with_columns(pl.int_range(0, pl.len()).over("user_id").cast(pl.String).alias("timestamp"))
    good, report = validate_frame(raw, source=str(p), event_types=event_types, extra_invalid=extra)
    return EventLog(good, has_time=False, source=str(p), report=report)
