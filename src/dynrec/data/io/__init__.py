"""Readers: files and DataFrames -> validated `EventLog` (events) or `ItemMetadata` (items).

`text` turns bytes into records (gzip, decoding, line splitting, CSV quoting, header handling),
`events` reads behaviour events (`formats` detects a file's format, `readers` holds one reader per
format, `columns` maps and validates columns, `duplicates` applies the duplicate policy), `items`
reads item metadata. The public names are re-exported here, so ``from dynrec.data.io import read_events`` keeps working.
"""

from __future__ import annotations

from dynrec.data.io.columns import COLUMN_KEYS, ColumnMap, parse_columns
from dynrec.data.io.duplicates import DUPLICATE_KEYS, Duplicates, apply_duplicates
from dynrec.data.io.events import from_dataframe, read_events
from dynrec.data.io.formats import Format, detect_format
from dynrec.data.io.items import (
    ML100K_GENRES,
    ItemColumns,
    ItemFormat,
    detect_item_format,
    items_from_dataframe,
    read_items,
)
from dynrec.data.io.text import Text, read_bytes, read_text

__all__ = [
    "COLUMN_KEYS",
    "DUPLICATE_KEYS",
    "ML100K_GENRES",
    "ColumnMap",
    "Duplicates",
    "Format",
    "ItemColumns",
    "ItemFormat",
    "Text",
    "apply_duplicates",
    "detect_format",
    "detect_item_format",
    "from_dataframe",
    "items_from_dataframe",
    "parse_columns",
    "read_bytes",
    "read_events",
    "read_items",
    "read_text",
]
