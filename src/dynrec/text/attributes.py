"""Names of the S3-Rec Amazon item attributes (brand and categories), recovered from P5's datamaps.

S3-Rec's ``<Name>_item2attributes.json`` maps each item id (the ids of its sequence file) to
attribute ids, but S3-Rec did not publish the attribute names. P5's ``datamaps.json`` has names
(``id2attribute``) and counts (``attributeid2num``) from the same preprocessing over the same
items and item ids, yet numbers the attributes differently. Both number attributes in order of
first appearance while walking the same item metadata; S3-Rec kept only attributes seen at least
a minimum number of times (and, for some categories, kept top-level category names P5 drops). So
S3-Rec's attributes, in id order, are P5's attributes in id order with some left out and a few
added, and a matched pair has the same count.

`align_by_counts` recovers that correspondence from the two count sequences: it walks both in id
order, pairs equal counts, and after a disagreement re-synchronises at the nearest point where
several consecutive counts agree. Attributes it cannot pair stay unnamed (they are left out of the
item's text). On Beauty every attribute pairs (637 of 637, each with an identical count).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from dynrec.errors import DataError

RESYNC_RUN = 4  # consecutive equal counts that mark the two sequences as aligned again
RESYNC_WINDOW = 64  # how far (in attributes skipped on both sides together) to look for that run


def align_by_counts(
    a: Sequence[int], b: Sequence[int], *, run: int = RESYNC_RUN, window: int = RESYNC_WINDOW
) -> dict[int, int]:
    """Monotone pairing ``{index in a: index in b}`` of positions with equal counts.

    Equal counts pair while the sequences are in step (from the start, or after a verified run);
    at a disagreement the smallest skip ``(da, db)`` after which `run` consecutive counts agree
    is taken. Stops when no such skip exists within `window`.
    """
    out: dict[int, int] = {}
    i = j = 0
    in_step = True
    n, m = len(a), len(b)
    while i < n and j < m:
        if a[i] == b[j] and (in_step or a[i : i + run] == b[j : j + run]):
            out[i] = j
            i, j, in_step = i + 1, j + 1, True
            continue
        skip = next(
            (
                (di, total - di)
                for total in range(1, window)
                for di in range(total + 1)
                if i + di + run <= n
                and j + total - di + run <= m
                and a[i + di : i + di + run] == b[j + total - di : j + total - di + run]
            ),
            None,
        )
        if skip is None:
            break
        i, j, in_step = i + skip[0], j + skip[1], False
    return out


def _int_lists(data: Any, source: str) -> dict[str, list[int]]:
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(x, int) for x in v) for v in data.values()
    ):
        raise DataError("expected a JSON object {item id: [attribute id, ...]}", source=source)
    return {str(k): v for k, v in data.items()}


def attribute_names(
    item_attributes: Mapping[str, Sequence[int]], datamaps: Any, source: str
) -> dict[int, str]:
    """``{S3-Rec attribute id: name}`` for the attributes that pair with a P5 attribute by count."""
    if not isinstance(datamaps, dict) or not {"id2attribute", "attributeid2num"} <= datamaps.keys():
        raise DataError("expected P5 datamaps with 'id2attribute' and 'attributeid2num'", source=source)
    counts = Counter(a for attrs in item_attributes.values() for a in attrs)
    if not counts:
        return {}
    ours = list(range(1, max(counts) + 1))
    p5_num = {int(k): int(v) for k, v in datamaps["attributeid2num"].items()}
    floor = min(counts.values())  # S3-Rec's minimum count: rarer P5 attributes were dropped
    theirs = [k for k in sorted(p5_num) if p5_num[k] >= floor]
    pairs = align_by_counts([counts[a] for a in ours], [p5_num[k] for k in theirs])
    names = {int(k): str(v).strip() for k, v in datamaps["id2attribute"].items()}
    out = {ours[i]: names.get(theirs[j], "") for i, j in pairs.items()}
    return {k: v for k, v in out.items() if v}


def amazon_attribute_texts(item_attributes: Any, datamaps: Any, source: str) -> pl.DataFrame:
    """``item_id, tags`` (attribute names in the item's order, unnamed ones left out)."""
    items = _int_lists(item_attributes, source)
    names = attribute_names(items, datamaps, source)
    frame = pl.DataFrame(
        {"item_id": list(items), "_attr": list(items.values())},
        schema={"item_id": pl.String, "_attr": pl.List(pl.Int64)},
    )
    lookup = pl.DataFrame(
        {"_attr": list(names), "_name": list(names.values())}, schema={"_attr": pl.Int64, "_name": pl.String}
    )
    long = frame.with_row_index("_i").explode("_attr").with_row_index("_k")
    long = long.join(lookup, on="_attr", how="left").sort("_k")
    tags = (
        long.group_by("_i", maintain_order=True)
        .agg(
            pl.col("item_id").first(), pl.col("_name").drop_nulls().unique(maintain_order=True).alias("tags")
        )
        .drop("_i")
    )
    return tags
