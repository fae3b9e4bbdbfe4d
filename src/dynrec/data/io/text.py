"""Text layer of the readers: bytes -> decoded text -> physical lines -> records of fields.

Every text format is split into records that remember the physical lines they came from
(``line`` = first, ``last`` = last 1-based line), so every rejected row can be reported where an
editor or ``sed -n`` shows it. The frame of records ("parts") has the columns ``line``, ``last``
(Int64), ``f`` (list of field strings), ``n`` (field count) and ``error`` (a whole-record problem
found while reading — undecodable bytes, broken quoting — or null); `count_check` turns records
with an error or a wrong field count into invalid rows.

Decoding: text is decoded with the caller's encoding (UTF-8 by default). A line holding bytes
that are not valid in it is *not* repaired: its record is reported as invalid ("bytes not valid
utf-8 ...") and skipped, and `DataError` is raised under ``strict``. (Replacing bad bytes with
U+FFFD would silently merge distinct ids such as ``b"caf\\xe9"`` and ``b"caf\\xe8"``.) Pass the
file's real ``encoding`` (e.g. ``"latin-1"``) to read such files whole.

CSV: RFC 4180 through Python's C `csv` module with ``strict=True`` (quoted separators, doubled
quotes, quoted fields spanning lines), with two safety rules: a record that fails to parse is
reported at its first line and parsing resumes on the next physical line; a record spanning lines
whose field count differs from the header's is taken to be an unbalanced quote and handled the
same way, so one stray quote never swallows the rest of the file. Files whose every line is a
well-formed single-line record take a vectorised path through Polars' CSV reader instead.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from dynrec.data.events import ROW_FIELD
from dynrec.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
UNBALANCED_QUOTE = "unbalanced quote: a quoted field is not closed (the record is skipped)"

PARTS_SCHEMA: dict[str, pl.DataType] = {
    "line": pl.Int64(),
    "last": pl.Int64(),
    "f": pl.List(pl.String()),
    "n": pl.UInt32(),
    "error": pl.String(),
}
INVALID_SCHEMA: dict[str, pl.DataType] = {"line": pl.Int64(), "field": pl.String(), "reason": pl.String()}


@dataclass(frozen=True)
class Text:
    """Decoded file contents plus the physical lines (1-based) that held undecodable bytes."""

    source: str
    text: str
    bad_lines: dict[int, str] = field(default_factory=dict)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic.

    A truncated or corrupt gzip stream is a `DataError` naming the file (never an EOFError or a
    zlib traceback).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", source=str(path)) from exc
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"truncated or corrupt gzip file ({exc})", source=str(path)) from exc
    return data


def decode(data: bytes, encoding: str, source: str, *, strict: bool = False) -> Text:
    """Decode `data`; lines with bytes invalid in `encoding` are recorded in ``bad_lines`` (their
    text is decoded with U+FFFD only so the rest of the record can still be split) or, under
    `strict`, raise `DataError` naming the first such line. A leading BOM is removed."""
    try:
        return Text(source, data.decode(encoding).removeprefix("\ufeff"))
    except UnicodeDecodeError:
        pass
    except LookupError as exc:
        raise DataError(f"unknown encoding {encoding!r}", source=source) from exc
    out: list[str] = []
    bad: dict[int, str] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            out.append(raw.decode(encoding))
        except UnicodeDecodeError as exc:
            snippet = raw[exc.start : exc.end + 3]
            reason = (
                f"bytes not valid {encoding} at byte {exc.start + 1} of the line ({snippet!r}); "
                f"pass encoding=... if the file is not {encoding}"
            )
            if strict:
                raise DataError(reason, source=source, line=number) from exc
            bad[number] = reason
            out.append(raw.decode(encoding, errors="replace"))
    return Text(source, "\n".join(out).removeprefix("\ufeff"), bad)


def read_text(path: Path, encoding: str = "utf-8", *, strict: bool = False) -> Text:
    """`read_bytes` then `decode`."""
    return decode(read_bytes(path), encoding, str(path), strict=strict)


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

    Lines are split on ``\\n`` only, so line numbers match what editors and ``sed -n`` show (not
    on U+0085 or U+2028, which `str.splitlines` would also break at).
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


def _finish_parts(parts: pl.DataFrame, bad_lines: dict[int, str]) -> pl.DataFrame:
    """Give every record an ``error`` column and mark records touching an undecodable line."""
    if "error" not in parts.columns:
        parts = parts.with_columns(pl.lit(None, dtype=pl.String).alias("error"))
    parts = parts.select(
        pl.col("line").cast(pl.Int64),
        pl.col("last").cast(pl.Int64),
        pl.col("f").cast(pl.List(pl.String)),
        pl.col("n").cast(pl.UInt32),
        pl.col("error").cast(pl.String),
    )
    if not bad_lines or parts.height == 0:
        return parts
    bad = pl.DataFrame(
        {"_b": list(bad_lines), "_reason": list(bad_lines.values())},
        schema={"_b": pl.Int64, "_reason": pl.String},
    ).sort("_b")
    # each bad line -> the record that starts at or before it; it belongs there if within [line, last]
    hit = (
        bad.join_asof(parts.select("line", "last").sort("line"), left_on="_b", right_on="line")
        .filter(pl.col("_b") <= pl.col("last"))
        .group_by("line")
        .agg(pl.col("_reason").first())
    )
    parts = parts.join(hit, on="line", how="left", maintain_order="left")
    return parts.with_columns(pl.coalesce("error", "_reason").alias("error")).drop("_reason")


def split_plain(src: Text, sep: str | None) -> pl.DataFrame:
    """Records = non-blank lines split on `sep` literally; ``sep=None``: runs of whitespace."""
    irregular = has_irregular_space(src.text)
    lines = text_lines(src.text, irregular=irregular)
    if sep is None:
        f = pl.col("text").str.extract_all(r"\S+") if irregular else pl.col("text").str.split(" ")
    else:
        f = pl.col("text").str.split(sep)
    parts = lines.select("line", pl.col("line").alias("last"), f.alias("f"), f.list.len().alias("n"))
    return _finish_parts(parts, src.bad_lines)


def split_csv(src: Text, sep: str) -> pl.DataFrame:
    """Quote-aware records (RFC 4180); the first record is the header. See the module docstring."""
    if '"' not in src.text:
        return split_plain(src, sep)
    lines = text_lines(src.text)
    if lines.height == 0:
        return _finish_parts(pl.DataFrame(schema=PARTS_SCHEMA), src.bad_lines)
    esc = re.escape(sep)
    field_re = f'(?:[^"{esc}]*|"(?:[^"]|"")*")' if len(sep) == 1 else None
    if field_re is not None and bool(
        lines["text"].str.strip_chars_end("\r").str.contains(f"^{field_re}(?:{esc}{field_re})*$").all()
    ):
        fast = _split_csv_polars(lines, sep)
        if fast is not None:
            return _finish_parts(fast, src.bad_lines)
    return _finish_parts(_split_csv_python(src.text, sep, src.source), src.bad_lines)


def _split_csv_polars(lines: pl.DataFrame, sep: str) -> pl.DataFrame | None:
    """Every line is one well-formed record: parse them with Polars' CSV reader (None if it
    disagrees about the record count, then the `csv` module decides)."""
    header = next(csv.reader([lines["text"][0]], delimiter=sep, strict=True))
    width = len(header)
    outside = pl.col("text").str.replace_all(r'"(?:[^"]|"")*"', "")
    lines = lines.with_columns((outside.str.count_matches(sep, literal=True) + 1).cast(pl.UInt32).alias("n"))
    body = lines.slice(1)
    good = body.filter(pl.col("n") == width)
    head = pl.DataFrame(
        {"line": [int(lines["line"][0])], "f": [header], "n": [width]},
        schema={"line": pl.Int64, "f": pl.List(pl.String), "n": pl.UInt32},
    )
    if good.height:
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
            return None
        if table.height != good.height or table.width != width:
            return None
        good = good.select("line", pl.concat_list(table.get_columns()).alias("f"), "n")
    else:
        good = head.clear()
    bad = body.filter(pl.col("n") != width).select(
        "line", pl.lit(None, dtype=pl.List(pl.String)).alias("f"), "n"
    )
    out = pl.concat([head, good, bad]).sort("line")
    return out.with_columns(pl.col("line").alias("last"))


def _physical(lines: Sequence[str], start: int) -> Iterator[str]:
    """Physical lines from 0-based index `start`, each with its ``\\n`` (for the `csv` module)."""
    last = len(lines) - 1
    for k in range(start, len(lines)):
        yield lines[k] + "\n" if k < last else lines[k]


def _split_csv_python(text: str, sep: str, source: str) -> pl.DataFrame:
    """The `csv` module (strict quoting) with per-record recovery; see the module docstring."""
    phys = text.split("\n")
    clean = _split_csv_clean(phys, sep)
    if clean is not None:
        return clean
    line: list[int] = []
    last: list[int] = []
    errors: list[str | None] = []
    values: list[str] = []  # every field of every kept record, flat (lists of lists build slowly)
    owner: list[int] = []  # index of the record each value belongs to
    width: int | None = None
    start = 0  # 0-based index of the line the current reader started at
    while start < len(phys):
        reader = csv.reader(_physical(phys, start), delimiter=sep, strict=True)
        prev = 0
        restart: int | None = None
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                first, end = start + prev + 1, start + reader.line_num  # 1-based line numbers
                spans = end > first or "unexpected end of data" in str(exc)
                reason = UNBALANCED_QUOTE if spans else f"malformed quoting: {exc}"
                if width is None:
                    raise DataError(f"cannot parse the header: {reason}", source=source, line=first) from exc
                line.append(first)
                last.append(first)
                errors.append(reason)
                restart = first  # resume at the line after the record's first line
                break
            first, end = start + prev + 1, start + reader.line_num
            prev = reader.line_num
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue  # blank line
            if width is not None and end > first and len(rec) != width:
                line.append(first)
                last.append(first)
                errors.append(UNBALANCED_QUOTE)
                restart = first
                break
            if width is None:
                width = len(rec)
            owner.extend([len(line)] * len(rec))
            values.extend(rec)
            line.append(first)
            last.append(end)
            errors.append(None)
        if restart is None:
            break
        start = restart
    return _records_frame(line, last, errors, values, owner)


def _split_csv_clean(phys: list[str], sep: str) -> pl.DataFrame | None:
    """One pass of the `csv` module over the whole file; None when the recovery loop is needed
    (a parse error, or a record spanning lines whose field count differs from the header's)."""
    reader = csv.reader(_physical(phys, 0), delimiter=sep, strict=True)
    try:
        recs = [(rec, reader.line_num) for rec in reader]
    except csv.Error:
        return None
    kept = [(i, rec, end) for i, (rec, end) in enumerate(recs) if rec and (len(rec) > 1 or rec[0].strip())]
    if not kept:
        return _records_frame([], [], [], [], [])
    width = len(kept[0][1])
    starts = [1] + [end + 1 for _, end in recs[:-1]]
    line = [starts[i] for i, _, _ in kept]
    last = [end for _, _, end in kept]
    if any(e > s and len(rec) != width for s, e, (_, rec, _) in zip(line, last, kept, strict=True)):
        return None
    values = list(itertools.chain.from_iterable(rec for _, rec, _ in kept))
    owner = list(itertools.chain.from_iterable([k] * len(rec) for k, (_, rec, _) in enumerate(kept)))
    return _records_frame(line, last, [None] * len(kept), values, owner)


def _records_frame(
    line: list[int], last: list[int], errors: list[str | None], values: list[str], owner: list[int]
) -> pl.DataFrame:
    """Parts frame from per-record lists and the flat field values with their record index."""
    records = pl.DataFrame(
        {"line": line, "last": last, "error": errors},
        schema={"line": pl.Int64, "last": pl.Int64, "error": pl.String},
    ).with_row_index("_rec")
    flat = pl.DataFrame({"_rec": owner, "f": values}, schema={"_rec": pl.UInt32, "f": pl.String})
    lists = flat.group_by("_rec", maintain_order=True).agg("f")
    out = records.join(lists, on="_rec", how="left", maintain_order="left").drop("_rec")
    return out.with_columns(pl.col("f").list.len().fill_null(0).cast(pl.UInt32).alias("n"))


def no_invalid() -> pl.DataFrame:
    """An empty invalid-row frame (``line, field, reason``)."""
    return pl.DataFrame(schema=INVALID_SCHEMA)


def count_check(
    parts: pl.DataFrame, *, exactly: int | None = None, at_least: int | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(records without an error and with an acceptable field count, invalid-row frame
    ``line, field, reason`` for the rest)."""
    broken = parts.filter(pl.col("error").is_not_null()).select(
        "line", pl.lit(ROW_FIELD).alias("field"), pl.col("error").alias("reason")
    )
    parts = parts.filter(pl.col("error").is_null())
    if exactly is not None:
        ok_cond = pl.col("n") == exactly
        expect = f"expected {exactly} fields"
    elif at_least is not None:
        ok_cond = pl.col("n") >= at_least
        expect = f"expected at least {at_least} fields"
    else:
        return parts, broken
    wrong = parts.filter(~ok_cond).select(
        "line",
        pl.lit(ROW_FIELD).alias("field"),
        pl.format("{}, found {}", pl.lit(expect), pl.col("n")).alias("reason"),
    )
    return parts.filter(ok_cond), pl.concat([broken, wrong]).sort("line")


def header(parts: pl.DataFrame, source: str) -> tuple[list[str], pl.DataFrame]:
    """Column names from the first record (stripped, quotes removed) and the remaining records.

    A header that could not be read (undecodable bytes) is a `DataError`: without it no row can
    be interpreted.
    """
    if parts.height == 0:
        raise DataError("file is empty (no header row)", source=source)
    err = parts["error"][0]
    if err is not None:
        raise DataError(f"cannot read the header: {err}", source=source, line=int(parts["line"][0]))
    names = [str(c).strip().strip('"') for c in parts["f"][0].to_list()]
    return names, parts.slice(1)


def fields_to_frame(parts: pl.DataFrame, names: Sequence[str], wanted: Sequence[str]) -> pl.DataFrame:
    """String columns `wanted` (by header name) out of the field lists, plus ``line``."""
    index = {n: i for i, n in enumerate(names)}
    return parts.select(
        "line",
        *[pl.col("f").list.get(index[w], null_on_oob=True).alias(w) for w in wanted if w in index],
    )
