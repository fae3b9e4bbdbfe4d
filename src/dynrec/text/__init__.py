"""Item text and text embeddings: what items say about themselves, as vectors.

`dataset_item_texts` / `read_item_texts` give an `ItemTexts` (text, titles, tags per item id);
`TextEncoder` turns texts into cached, L2-normalised sentence embeddings with a local
sentence-transformers model; `item_text_table` lays them out in a vocabulary's index order for
models. Importing this package does not import sentence-transformers (it loads on first encode).
"""

from __future__ import annotations

from dynrec.text.encoder import (
    DEFAULT_ENCODER,
    Encoder,
    EncodeStats,
    TextEncoder,
    TextEncoderUnavailable,
    encode_checked,
    item_text_table,
)
from dynrec.text.items import ItemTexts, dataset_item_texts, read_item_texts

__all__ = [
    "DEFAULT_ENCODER",
    "EncodeStats",
    "Encoder",
    "ItemTexts",
    "TextEncoder",
    "TextEncoderUnavailable",
    "dataset_item_texts",
    "encode_checked",
    "item_text_table",
    "read_item_texts",
]
