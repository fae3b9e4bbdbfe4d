"""ItemMetadata: a table of item side information keyed by external item id.

Columns: ``item_id`` (str, unique), ``title`` (str or null), ``genres`` (list[str], possibly empty),
plus any further source columns kept as strings (e.g. ``release_date``, ``imdb_url``). It is what
content features and explanations read: `genre_matrix` gives a multi-hot item x genre matrix in a
`Vocabulary`'s index order, `aligned` the whole table in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from dynrec.data.events import ValidationReport
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DataError

ITEM_COLUMNS = ("item_id", "title", "genres")


@dataclass(frozen=True)
class ItemMetadata:
    """Item side information (one row per item id) plus the report of rows rejected while reading."""

    frame: pl.DataFrame
    source: str = "<memory>"
    report: ValidationReport = field(default_factory=ValidationReport)

    def __post_init__(self) -> None:
        missing = [c for c in ITEM_COLUMNS if c not in self.frame.columns]
        if missing:
            raise DataError(f"item frame lacks columns {missing}", source=self.source)
        if self.frame["item_id"].is_duplicated().any():
            raise DataError("item ids are not unique", source=self.source, field="item_id")

    def __len__(self) -> int:
        return self.frame.height

    def __contains__(self, item_id: object) -> bool:
        return bool(self.frame["item_id"].is_in([str(item_id)]).any())

    @property
    def extra_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in ITEM_COLUMNS]

    def _row(self, item_id: str) -> dict[str, object] | None:
        hit = self.frame.filter(pl.col("item_id") == str(item_id))
        return hit.row(0, named=True) if hit.height else None

    def title(self, item_id: str) -> str | None:
        """Title of one item (None when unknown or absent)."""
        row = self._row(item_id)
        return None if row is None or row["title"] is None else str(row["title"])

    def genres(self, item_id: str) -> list[str]:
        """Genres of one item ([] when unknown)."""
        row = self._row(item_id)
        vals = row["genres"] if row is not None else None
        return [str(g) for g in vals] if isinstance(vals, list) else []

    def genre_names(self) -> list[str]:
        """All genres, sorted."""
        return sorted(self.frame["genres"].explode().drop_nulls().unique().to_list())

    def aligned(self, vocab: Vocabulary) -> pl.DataFrame:
        """The table in `vocab` index order: row i describes index i (row 0 = padding, all null;
        vocabulary items without metadata have null title and empty genres)."""
        keys = pl.DataFrame({"item_id": [None, *vocab.ids]}, schema={"item_id": pl.String})
        out = keys.join(self.frame, on="item_id", how="left", maintain_order="left")
        return out.with_columns(pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String))))

    def genre_matrix(self, vocab: Vocabulary) -> tuple[sp.csr_matrix, list[str]]:
        """Multi-hot ``[vocab.size, n_genres]`` float32 matrix (row 0 = padding) and genre names."""
        names = self.genre_names()
        table = self.aligned(vocab).with_row_index("_i").select("_i", "genres").explode("genres")
        table = table.drop_nulls("genres")
        col_of = pl.DataFrame({"genres": names, "_j": np.arange(len(names), dtype=np.int64)})
        pairs = table.join(col_of, on="genres", how="inner")
        rows = pairs["_i"].to_numpy().astype(np.int64)
        cols = pairs["_j"].to_numpy().astype(np.int64)
        m = sp.csr_matrix(
            (np.ones(rows.shape[0], dtype=np.float32), (rows, cols)),
            shape=(vocab.size, len(names)),
            dtype=np.float32,
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        return m, names

    def rekey(self, mapping: Mapping[str, str]) -> ItemMetadata:
        """Re-key by a map *new id -> current id* (e.g. SASRec ml-1m ids -> MovieLens ids); items
        without a new id are dropped, new ids without metadata are absent."""
        table = pl.DataFrame(
            {"_new": list(mapping), "item_id": [str(v) for v in mapping.values()]},
            schema={"_new": pl.String, "item_id": pl.String},
        )
        out = table.join(self.frame, on="item_id", how="inner", maintain_order="left")
        out = out.drop("item_id").rename({"_new": "item_id"}).select(self.frame.columns)
        return ItemMetadata(
            out.unique("item_id", keep="first", maintain_order=True), self.source, self.report
        )
