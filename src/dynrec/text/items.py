"""Item text: what a text encoder reads about each item, per registered dataset or from a file.

`ItemTexts` holds, per external item id, the text to encode plus a title and tags (genres,
categories) for explanations and interest profiles. Sources:

- ``ml-100k``: title and genres from ``u.item``;
- ``ml-1m`` / ``ml-1m-full``: title and genres from ``movies.dat`` plus the DBpedia abstract
  (``dbpedia_abstracts.json``, keyed by MovieLens ids; ``ml-1m`` ids are mapped through the same
  ``sas_to_original_items.txt`` as its item metadata);
- Amazon (``amazon-beauty``, ``amazon-sports``): brand and category names of each item, see
  `dynrec.text.attributes`;
- any CSV/TSV/JSONL/Parquet file with an ``item_id`` column and text columns (`read_item_texts`),
  validated like event files: every bad row is reported with its line and field.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from dynrec.data import registry
from dynrec.data.events import ROW_FIELD, InvalidRow, ValidationReport
from dynrec.data.ids import EMPTY, id_problem_expr
from dynrec.data.io.text import (
    INVALID_SCHEMA,
    count_check,
    fields_to_frame,
    header,
    read_text,
    split_csv,
    text_lines,
)
from dynrec.errors import DataError, DatasetNotFoundError
from dynrec.text.attributes import amazon_attribute_texts

log = logging.getLogger(__name__)

TextFormat = Literal["csv", "tsv", "jsonl", "parquet"]
ID_COLUMN = "item_id"
TITLE_COLUMNS = ("title", "name")
TAG_COLUMNS = ("genres", "tags", "categories")
# columns whose values go into the text as they are; other columns are written "<Column>: value"
PLAIN_COLUMNS = (*TITLE_COLUMNS, "text", "description", "abstract", "summary", "overview", "plot")
EMPTY_TEXT = "empty text"
MISSING_ID = "missing item id"


@dataclass(frozen=True)
class ItemTexts:
    """Per-item text (``texts``: what is encoded), ``titles`` and ``tags`` (genres / categories),
    keyed by external item id; `report` lists the rows rejected while reading."""

    texts: dict[str, str]
    titles: dict[str, str] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)
    source: str = "<memory>"
    report: ValidationReport = field(default_factory=ValidationReport)

    def __len__(self) -> int:
        return len(self.texts)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.texts

    def subset(self, ids: Iterable[str]) -> ItemTexts:
        """Only the items in `ids` that have text (in the order of `ids`)."""
        keep = [i for i in dict.fromkeys(ids) if i in self.texts]
        return ItemTexts(
            {i: self.texts[i] for i in keep},
            {i: self.titles[i] for i in keep if i in self.titles},
            {i: self.tags[i] for i in keep if i in self.tags},
            self.source,
            self.report,
        )

    def merged(self, other: ItemTexts) -> ItemTexts:
        """Items of both; where both describe an item, `other`'s text, title and tags win."""
        return ItemTexts(
            {**self.texts, **other.texts},
            {**self.titles, **other.titles},
            {**self.tags, **other.tags},
            f"{self.source}+{other.source}",
            self.report.merge(other.report),
        )

    def mean_length(self) -> float:
        """Mean text length in characters (0 when empty)."""
        return sum(map(len, self.texts.values())) / len(self.texts) if self.texts else 0.0


def _sentence(parts: Sequence[pl.Expr]) -> pl.Expr:
    """Non-null parts, trailing periods and blanks stripped, joined into ``"a. b. c."`` (null if none)."""
    pieces = pl.concat_list([p.cast(pl.String).str.strip_chars().str.strip_chars_end(". ") for p in parts])
    pieces = pieces.list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
    return pl.when(pieces.list.len() > 0).then(pieces.list.join(". ") + ".").otherwise(None)


def _labelled_tags(col: str, label: str) -> pl.Expr:
    """``"<label>: a, b"`` from a list column (null when the list is empty)."""
    joined = pl.col(col).list.join(", ")
    return pl.when(pl.col(col).list.len() > 0).then(pl.lit(f"{label}: ") + joined).otherwise(None)


def _from_frame(frame: pl.DataFrame, source: str, report: ValidationReport | None = None) -> ItemTexts:
    """`ItemTexts` from ``item_id, text, title, tags`` (rows with a null text are left out)."""
    frame = frame.filter(pl.col("text").is_not_null())
    ids = frame["item_id"].to_list()
    titled = frame.filter(pl.col("title").is_not_null())
    tagged = frame.filter(pl.col("tags").list.len() > 0)
    return ItemTexts(
        dict(zip(ids, frame["text"].to_list(), strict=True)),
        dict(zip(titled["item_id"].to_list(), titled["title"].to_list(), strict=True)),
        dict(zip(tagged["item_id"].to_list(), tagged["tags"].to_list(), strict=True)),
        source,
        report or ValidationReport(n_valid=frame.height),
    )


# --------------------------------------------------------------------------------------------
# registered datasets


def dataset_item_texts(name: str, data_dir: str | Path | None = None) -> ItemTexts:
    """Item text of registered dataset `name`, keyed by the dataset's item ids (the ids its event
    file is read with). `DatasetNotFoundError` when the files are missing or the dataset has no
    item text dynrec can build (then pass an item file, see `read_item_texts`)."""
    spec = registry.spec(name)
    if spec.item_files:
        return _movielens_texts(name, data_dir)
    if spec.item_attributes is not None and spec.attribute_names is not None:
        return _attribute_texts(name, spec.item_attributes, spec.attribute_names, data_dir)
    raise DatasetNotFoundError(
        f"dataset {name!r} has no item text in dynrec; pass an item file (CSV/TSV/JSONL with item_id "
        "and text columns) instead"
    )


def _movielens_texts(name: str, data_dir: str | Path | None) -> ItemTexts:
    meta = registry.load_items(name, data_dir)
    frame = meta.frame.select("item_id", "title", pl.col("genres").alias("tags"))
    abstract = pl.lit(None, dtype=pl.String)
    source = meta.source
    spec = registry.spec(name)
    if spec.item_abstracts is not None:
        path = registry.find_file(name, spec.item_abstracts, data_dir)
        if path is None:
            log.warning("%s: %s not found; item text is title and genres only", name, spec.item_abstracts)
        else:
            abstracts = _read_abstracts(path)
            mapping = registry.item_id_map(name, data_dir)
            if mapping is not None:  # dataset id -> MovieLens id, so abstracts follow the same ids
                keyed = pl.DataFrame(
                    {"item_id": list(mapping), "_orig": list(mapping.values())},
                    schema={"item_id": pl.String, "_orig": pl.String},
                )
                abstracts = keyed.join(abstracts, on="_orig", how="inner").drop("_orig")
            else:
                abstracts = abstracts.rename({"_orig": "item_id"})
            frame = frame.join(abstracts, on="item_id", how="left", maintain_order="left")
            abstract = pl.col("abstract")
            source = f"{source}+{path}"
    frame = frame.with_columns(
        _sentence([pl.col("title"), _labelled_tags("tags", "Genres"), abstract]).alias("text")
    )
    return _from_frame(frame, source)


def _read_abstracts(path: Path) -> pl.DataFrame:
    """``_orig, abstract`` from a JSON object ``{item id: abstract}`` (blank abstracts dropped)."""
    data = _load_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DataError("expected a JSON object {item id: abstract text}", source=str(path))
    frame = pl.DataFrame(
        {"_orig": [str(k).strip() for k in data], "abstract": list(data.values())},
        schema={"_orig": pl.String, "abstract": pl.String},
    )
    return frame.filter(pl.col("abstract").str.strip_chars() != "").unique("_orig", keep="first")


def _load_json(path: Path) -> Any:
    src = read_text(path, strict=True)
    try:
        return json.loads(src.text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON: {exc.msg} (column {exc.colno})", source=str(path), line=exc.lineno
        ) from exc


def _attribute_texts(name: str, attributes: str, names: str, data_dir: str | Path | None) -> ItemTexts:
    attr_path = registry.find_file(name, attributes, data_dir)
    names_path = registry.find_file(name, names, data_dir)
    if attr_path is None or names_path is None:
        missing = attributes if attr_path is None else names
        extra = (
            " The S3-Rec attribute file holds only attribute ids; their names come from P5's "
            "datamaps.json, which is not published for every dataset."
            if attr_path is not None
            else ""
        )
        raise DatasetNotFoundError(
            f"item text of {name!r} needs {missing}, not found in "
            f"{', '.join(str(d / registry.spec(name).folder) for d in registry.search_dirs(data_dir))}."
            f"{extra} Pass an item file (CSV/TSV/JSONL with item_id and text columns) instead."
        )
    per_item = amazon_attribute_texts(_load_json(attr_path), _load_json(names_path), str(attr_path))
    frame = per_item.with_columns(
        pl.when(pl.col("tags").list.len() > 1)
        .then(pl.col("tags").list.first() + ": " + pl.col("tags").list.last())
        .otherwise(pl.col("tags").list.first())
        .alias("title"),
        _sentence([_labelled_tags("tags", "Brand and categories")]).alias("text"),
    )
    return _from_frame(frame, f"{attr_path}+{names_path}")


# --------------------------------------------------------------------------------------------
# item text files


def detect_text_format(path: Path) -> TextFormat:
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".parquet", "parquet"),
    ):
        if name.endswith(ext):
            return fmt  # type: ignore[return-value]
    raise DataError("unknown item text file format; use .csv, .tsv, .jsonl or .parquet", source=str(path))


def read_item_texts(
    path: str | Path, *, text_columns: Sequence[str] | None = None, strict: bool = False
) -> ItemTexts:
    """Item text from a CSV/TSV/JSONL/Parquet file with an ``item_id`` column.

    The text of an item joins its `text_columns` (default: every column but ``item_id``) into one
    sentence-like string: title/description-like columns as they are, ``genres``/``tags``/
    ``categories`` (``|``- or ``,``-separated, or JSON lists) as ``"Genres: a, b"``, others as
    ``"<Column>: value"``. ``title`` and the first tag column also fill `ItemTexts.titles`/`tags`.
    Rows with a missing id, an id that breaks the id rule (`dynrec.data.ids`: leading/trailing
    whitespace, over 512 characters, a comma or newline), no text, a repeated id (the first valid
    row wins), broken quoting, bad JSON or bytes that are not UTF-8 are reported with line and
    field and skipped — or, under `strict`, the first of them (by line) raises `DataError`. A file
    without any valid row is a `DataError`.
    """
    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise DataError("file not found", source=src)
    fmt = detect_text_format(p)
    if fmt in ("csv", "tsv"):
        text = read_text(p)
        parts = split_csv(text, "," if fmt == "csv" else "\t")
        names, rows = header(parts, src)
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise DataError("column name appears twice in the header", source=src, line=1, field=dup)
        ok, extra = count_check(rows, exactly=len(names))
        table = fields_to_frame(ok, names, names)
    elif fmt == "jsonl":
        table, extra = _read_jsonl(p)
    else:
        try:
            raw = pl.read_parquet(p)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise DataError(f"cannot read Parquet file: {exc}", source=src) from exc
        table = _as_strings(raw).with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))
        extra = pl.DataFrame(schema=INVALID_SCHEMA)
    out = _validated_texts(table, extra, src, text_columns)
    if strict:
        out.report.raise_if_invalid()
    return out


def _as_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """Every column as strings: lists joined with ``|``, structs as JSON."""
    cols = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.List | pl.Array):
            cols.append(pl.col(name).cast(pl.List(pl.String)).list.join("|"))
        elif isinstance(dtype, pl.Struct):
            cols.append(pl.col(name).struct.json_encode())
        else:
            cols.append(pl.col(name).cast(pl.String))
    return frame.select(cols)


def _json_value(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, list):
        return "|".join(str(x) for x in v if x is not None)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, bool | int | float):
        return str(v)
    return json.dumps(v)


def _read_jsonl(p: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(string table with ``line``, invalid rows) of a JSON-lines file: Polars when every line
    parses, else line by line so each broken line is reported."""
    text = read_text(p)
    lines = text_lines(text.text)
    if not text.bad_lines:
        try:
            frame = pl.read_ndjson(io.StringIO("\n".join(lines["text"].to_list())), infer_schema_length=None)
            if frame.height == lines.height:
                return _as_strings(frame).with_columns(lines["line"]), pl.DataFrame(schema=INVALID_SCHEMA)
        except (pl.exceptions.PolarsError, ValueError):
            pass
    bad: list[tuple[int, str, str]] = [(ln, ROW_FIELD, r) for ln, r in sorted(text.bad_lines.items())]
    objs: list[tuple[int, dict[str, Any]]] = []
    for line, raw in lines.filter(~pl.col("line").is_in(list(text.bad_lines))).iter_rows():
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            bad.append((line, ROW_FIELD, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            bad.append((line, ROW_FIELD, "not a JSON object"))
            continue
        objs.append((line, obj))
    columns = list(dict.fromkeys(k for _, o in objs for k in o))
    table = pl.DataFrame(
        {"line": [ln for ln, _ in objs], **{c: [_json_value(o.get(c)) for _, o in objs] for c in columns}},
        schema={"line": pl.Int64, **dict.fromkeys(columns, pl.String)},
    )
    return table, pl.DataFrame(bad, schema=INVALID_SCHEMA, orient="row")


def _split_tags(col: str) -> pl.Expr:
    """``|``-separated when the value has a ``|``, else ``,``-separated; blanks dropped."""
    c = pl.col(col)
    parts = pl.when(c.str.contains("|", literal=True)).then(c.str.split("|")).otherwise(c.str.split(","))
    return (
        parts.list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter(pl.element() != ""))
        .fill_null(pl.lit([], dtype=pl.List(pl.String)))
    )


def _validated_texts(
    table: pl.DataFrame, extra: pl.DataFrame, source: str, text_columns: Sequence[str] | None
) -> ItemTexts:
    if ID_COLUMN not in table.columns:
        raise DataError(
            f"column {ID_COLUMN!r} not found (columns: {[c for c in table.columns if c != 'line']})",
            source=source,
            field=ID_COLUMN,
        )
    available = [c for c in table.columns if c not in ("line", ID_COLUMN)]
    cols = list(text_columns) if text_columns is not None else available
    for c in cols:
        if c not in available:
            raise DataError(f"text column {c!r} not found (columns: {available})", source=source, field=c)
    if not cols:
        raise DataError("no text columns (only item_id)", source=source)
    # ids are checked as they are, never stripped
    table = table.with_columns(id_problem_expr(ID_COLUMN, "item").alias("_id_problem"))
    id_problem = pl.col("_id_problem")
    table = table.with_columns(
        pl.when(~pl.col(ID_COLUMN).is_null() & ~id_problem.eq_missing(pl.lit(EMPTY)))
        .then(pl.col(ID_COLUMN))
        .alias(ID_COLUMN),
        *(
            pl.when(pl.col(c).str.strip_chars() != "").then(pl.col(c).str.strip_chars()).alias(c)
            for c in available
        ),
    )
    tag_col = next((c for c in TAG_COLUMNS if c in available), None)
    tag_lists = {c: f"_tags_{c}" for c in cols if c in TAG_COLUMNS}
    if tag_col is not None:
        tag_lists.setdefault(tag_col, f"_tags_{tag_col}")
    table = table.with_columns(_split_tags(c).alias(alias) for c, alias in tag_lists.items())
    pieces = [
        _labelled_tags(tag_lists[c], c.capitalize())
        if c in TAG_COLUMNS
        else pl.col(c)
        if c in PLAIN_COLUMNS
        else pl.lit(f"{c.replace('_', ' ').capitalize()}: ") + pl.col(c)
        for c in cols
    ]
    title_col = next((c for c in TITLE_COLUMNS if c in available), None)
    table = table.with_columns(
        _sentence(pieces).alias("text"),
        (pl.col(title_col) if title_col else pl.lit(None, dtype=pl.String)).alias("title"),
        (pl.col(tag_lists[tag_col]) if tag_col else pl.lit([], dtype=pl.List(pl.String))).alias("tags"),
    )
    text_field = cols[0] if len(cols) == 1 else "/".join(cols)
    table = table.with_columns(
        pl.when(pl.col(ID_COLUMN).is_null())
        .then(pl.lit(f"{ID_COLUMN}\t{MISSING_ID}"))
        .when(id_problem.is_not_null())
        .then(pl.lit(f"{ID_COLUMN}\titem id ") + id_problem)
        .when(pl.col("text").is_null())
        .then(pl.lit(f"{text_field}\t{EMPTY_TEXT}"))
        .alias("_why")
    )
    ok = pl.col("_why").is_null()
    first_line = pl.col("line").filter(ok).first().over(ID_COLUMN)
    table = table.with_columns(
        pl.when(ok & (pl.col("line") != first_line))
        .then(pl.format("{}\tduplicate item id (first at line {})", pl.lit(ID_COLUMN), first_line))
        .otherwise(pl.col("_why"))
        .alias("_why")
    )
    bad = table.filter(pl.col("_why").is_not_null()).select(
        "line",
        pl.col("_why").str.split_exact("\t", 1).struct.rename_fields(["field", "reason"]).alias("_w"),
    )
    bad = bad.unnest("_w").select(pl.col("line").cast(pl.Int64), "field", "reason")
    invalid = pl.concat([bad, extra.select(pl.col(c).cast(t) for c, t in INVALID_SCHEMA.items())]).sort(
        "line"
    )
    rows = tuple(InvalidRow(source, int(ln), str(f), str(r)) for ln, f, r in invalid.iter_rows())
    good = table.filter(pl.col("_why").is_null()).select(
        pl.col(ID_COLUMN).alias("item_id"), "text", "title", "tags"
    )
    report = ValidationReport(n_valid=good.height, invalid=rows)
    if good.height == 0:
        first = (
            f"; first problem: line {rows[0].line} field {rows[0].field!r}: {rows[0].reason}" if rows else ""
        )
        raise DataError(f"no valid item text rows{first}", source=source)
    if rows:
        log.warning("%s: %s", source, report.summary())
    return _from_frame(good, source, report)
