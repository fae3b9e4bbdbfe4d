"""Readers: files and DataFrames -> validated `EventLog` (events) or `ItemMetadata` (items).

`text` turns bytes into records (gzip, decoding, line splitting, CSV quoting, header handling),
`events` reads behaviour events, `items` reads item metadata. The public names are re-exported
here, so ``from dynrec.data.io import read_events`` keeps working.
"""

from __future__ import annotations

from dynrec.data.io.events import (
    COLUMN_KEYS,
    DUPLICATE_KEYS,
    ColumnMap,
    Duplicates,
    Format,
    apply_duplicates,
    detect_format,
    from_dataframe,
    parse_columns,
    read_events,
)
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
