"""One reader per event file format (headerless MovieLens, CSV/TSV with a header, RecBole atomic,
JSON lines, per-user and pair line files): bytes -> records (`dynrec.data.io.text`) -> mapped
columns -> validated `EventLog` (`dynrec.data.io.columns`). `dynrec.data.io.events.read_events`
picks the reader for a file's format."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from dynrec.data.events import ROW_FIELD, EventLog
from dynrec.data.io.columns import ColumnMap, auto_columns, check_event_types, select_columns, validated
from dynrec.data.io.formats import peek_lines
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


def read_headerless(
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
    raw = select_columns(fields_to_frame(ok, names, names), cm, str(p))
    return validated(raw, cm, str(p), event_types=event_types, extra=wrong)


def read_with_header(
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
    cm = columns or auto_columns(names)
    check_event_types(cm, event_types, src)
    wanted = cm.wanted()
    absent = [c for c in wanted if c not in names]
    if absent:
        raise DataError(f"column {absent[0]!r} not found (header: {names})", source=src, field=absent[0])
    if table is not None:
        index = {n: i for i, n in enumerate(names)}
        raw_fields = fields.select("line", *[pl.col(f"c{index[w]}").alias(w) for w in wanted])
    else:
        raw_fields = fields_to_frame(fields, names, wanted)
    raw = select_columns(raw_fields, cm, src)
    return validated(raw, cm, src, event_types=event_types, extra=wrong)


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


def read_recbole(
    p: Path,
    *,
    columns: ColumnMap | None,
    event_types: Mapping[str, float] | None,
    encoding: str,
    strict: bool,
) -> EventLog:
    """RecBole atomic ``.inter``: tab-separated, header ``name:type`` (types are dropped)."""
    if columns is None:
        first = peek_lines(p, 1)
        cols = [c.split(":", 1)[0].strip() for c in (first[0].rstrip("\r\n").split("\t") if first else [])]
        columns = ColumnMap(
            user="user_id",
            item="item_id",
            timestamp="timestamp" if "timestamp" in cols else None,
            value=next((c for c in ("rating", "label", "value") if c in cols), None),
            event_type="event_type" if "event_type" in cols else None,
        )
    return read_with_header(
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


def read_jsonl(
    p: Path,
    *,
    columns: ColumnMap | None,
    event_types: Mapping[str, float] | None,
    encoding: str,
    strict: bool,
) -> EventLog:
    src = str(p)
    if columns is not None:
        check_event_types(columns, event_types, src)
    text = read_text(p, encoding, strict=strict)
    lines = text_lines(text.text)
    bad_bytes = lines.filter(pl.col("line").is_in(list(text.bad_lines)))
    if not text.bad_lines:  # fast path: the whole file parses
        try:
            frame = pl.read_ndjson(io.StringIO("\n".join(lines["text"].to_list())), infer_schema_length=None)
            if frame.height != lines.height:
                raise ValueError("row count mismatch")
            cm = columns or auto_columns(frame.columns)
            wanted = cm.wanted()
            missing = [c for c in wanted if c not in frame.columns]
            if missing and frame.height:
                raise DataError(
                    f"column {missing[0]!r} not found in any record", source=src, field=missing[0]
                )
            frame = frame.select([c for c in wanted if c in frame.columns]).with_columns(lines["line"])
            raw = select_columns(frame, cm, src)
            return validated(raw, cm, src, event_types=event_types)
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
    cm = columns or auto_columns(list(dict.fromkeys(k for _, o in objs for k in o)))
    check_event_types(cm, event_types, src)
    wanted = cm.wanted()
    records: dict[str, list[str | None]] = {c: [_json_scalar(o.get(c)) for _, o in objs] for c in wanted}
    frame = pl.DataFrame(
        {"line": [ln for ln, _ in objs], **records},
        schema={"line": pl.Int64, **{c: pl.String for c in wanted}},
    )
    raw = select_columns(frame, cm, src)
    extra = pl.DataFrame(bad, schema=INVALID_SCHEMA, orient="row").sort("line")
    return validated(raw, cm, src, event_types=event_types, extra=extra)


def read_line_file(p: Path, *, per_user: bool, encoding: str, strict: bool) -> EventLog:
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
    return validated(raw, cm, str(p), event_types=None, extra=wrong, has_time=False)


__all__ = ["read_headerless", "read_jsonl", "read_line_file", "read_recbole", "read_with_header"]
