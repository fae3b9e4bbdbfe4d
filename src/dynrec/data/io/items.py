"""Item metadata readers: files and DataFrames -> `ItemMetadata` keyed by external item id.

Formats: MovieLens ``u.item`` and ``movies.dat`` (both Latin-1), RecBole ``.item``, and
CSV/TSV/JSONL/Parquet with an `ItemColumns` mapping. Text goes through `dynrec.data.io.text`
(gzip, decoding, CSV quoting), so broken rows are reported the same way as for events: with their
line and reason; ``strict=True`` raises `DataError` at the first one.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from dynrec.data.events import ROW_FIELD, InvalidRow, ValidationReport
from dynrec.data.io.text import (
    INVALID_SCHEMA,
    count_check,
    fields_to_frame,
    header,
    no_invalid,
    read_text,
    split_csv,
    split_plain,
    text_lines,
)
from dynrec.data.items import ItemMetadata
from dynrec.errors import DataError

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class ItemColumns:
    """Source columns of an item table; `genres` may be a list column or a `genre_sep`-joined string."""

    item: str = "item_id"
    title: str | None = "title"
    genres: str | None = "genres"
    genre_sep: str = "|"


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
    extra = no_invalid()
    if fmt == "ml-100k-item":
        parts = split_plain(read_text(p, enc, strict=strict), "|")
        ok, extra = count_check(parts, exactly=5 + len(ML100K_GENRES))
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
        parts = split_plain(read_text(p, enc, strict=strict), "::")
        ok, extra = count_check(parts, exactly=3)
        frame = ok.select(
            "line",
            pl.col("f").list.get(0).alias("item_id"),
            pl.col("f").list.get(1).alias("title"),
            _split_genres(pl.col("f").list.get(2), "|").alias("genres"),
        )
    elif fmt == "recbole-item":
        parts = split_plain(read_text(p, enc, strict=strict), "\t")
        names, rows = header(parts, src)
        types = {n.split(":", 1)[0]: (n.split(":", 1)[1] if ":" in n else "token") for n in names}
        names = list(types)
        ok, extra = count_check(rows, exactly=len(names))
        table = fields_to_frame(ok, names, names)
        title = next((c for c in ("title", "movie_title", "name", "item_name") if c in names), None)
        genre = next((c for c in ("genres", "genre", "class", "categories", "category") if c in names), None)
        sep = " " if genre is not None and types[genre] == "token_seq" else "|"
        frame = _item_frame(table, ItemColumns(item="item_id", title=title, genres=genre, genre_sep=sep), src)
    else:
        cols = columns or ItemColumns()
        if fmt in ("csv", "tsv"):
            text = read_text(p, enc, strict=strict)
            parts = split_csv(text, ",") if fmt == "csv" else split_plain(text, "\t")
            names, rows = header(parts, src)
            ok, extra = count_check(rows, exactly=len(names))
            table = fields_to_frame(ok, names, names)
        elif fmt == "jsonl":
            text = read_text(p, enc, strict=strict)
            lines = text_lines(text.text)
            extra = pl.DataFrame(
                [(ln, ROW_FIELD, r) for ln, r in sorted(text.bad_lines.items())],
                schema=INVALID_SCHEMA,
                orient="row",
            )
            lines = lines.filter(~pl.col("line").is_in(list(text.bad_lines)))
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
    out = _finish_items(_item_frame(frame, columns or ItemColumns(), source), source, no_invalid())
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
