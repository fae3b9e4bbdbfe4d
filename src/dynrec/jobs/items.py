"""Item text for training, new items from their text alone, and the item notes a model directory keeps.

* `attach_item_text` — before `fit`, a model that reads item text (`ItemText`) gets the frozen text
  embedding of every item of its vocabulary: from an item file (``--items FILE``) when one is given,
  else from the registered dataset's own item text (`dynrec.text.dataset_item_texts`). Where the
  text came from (dataset name, or the file's absolute path and sha256), the encoder and its
  dimension are recorded in ``meta["item_text"]``.
* `add_items` — items that have no events yet join a saved model's catalogue from their text
  (``dynrec items add MODEL_DIR --items NEW.csv``): encoded with the encoder the model recorded,
  appended with `ItemText.add_items`, saved so that a failure leaves the old model in place.
  Ids already in the catalogue are refused (nothing is changed), or skipped and listed with
  ``skip_existing``.
* ``item_info.json`` — titles and tags (genres, categories) of the model's items,
  ``{"items": {id: {"title": str | null, "tags": [str]}}}``, written next to every model trained
  on data with item metadata and extended by `add_items`; explanations and interest profiles
  (`dynrec.jobs.explain`) read it.

Encoders are injected through the small `Encoder` protocol (`dynrec.text.TextEncoder` implements
it), so tests and callers can pass their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynrec.data import registry
from dynrec.data.ids import check_item_id
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import ItemText
from dynrec.text import (
    DEFAULT_ENCODER,
    Encoder,
    ItemTexts,
    TextEncoder,
    dataset_item_texts,
    encode_checked,
    item_text_table,
    read_item_texts,
)

__all__ = [
    "ITEM_INFO_FILE",
    "AddedItems",
    "Encoder",
    "ExistingItemsError",
    "ItemInfo",
    "add_items_to_model",
    "attach_item_text",
    "item_info_from_texts",
    "read_item_info",
    "reads_item_text",
    "training_texts",
    "write_item_info",
]

ITEM_INFO_FILE = "item_info.json"

ItemInfo = dict[str, dict[str, Any]]
"""item id -> ``{"title": str | None, "tags": [str]}``."""

SHOWN_ROWS = 5
"""Invalid rows / existing ids named in a message or report."""


# ---- item_info.json ------------------------------------------------------------------------------


def item_info_from_texts(texts: ItemTexts, ids: Sequence[str] | None = None) -> ItemInfo:
    """Titles and tags of `ids` (default: every item with a title or tags) from `texts`."""
    keys = list(ids) if ids is not None else list(dict.fromkeys([*texts.titles, *texts.tags]))
    out: ItemInfo = {}
    for i in keys:
        title, tags = texts.titles.get(i), texts.tags.get(i, [])
        if title is not None or tags:
            out[i] = {"title": title, "tags": [str(t) for t in tags]}
    return out


def read_item_info(model_dir: str | Path) -> ItemInfo:
    """The model directory's ``item_info.json`` ({} when there is none); a damaged file is an error."""
    path = Path(model_dir) / ITEM_INFO_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DynrecError(f"{path}: not valid JSON ({exc})") from None
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, dict):
        raise DynrecError(f"{path}: expected {{'items': {{id: {{'title': ..., 'tags': [...]}}}}}}")
    out: ItemInfo = {}
    for i, rec in items.items():
        if not isinstance(rec, dict):
            raise DynrecError(f"{path}: item {i!r}: expected an object with 'title' and 'tags'")
        title, tags = rec.get("title"), rec.get("tags", [])
        if (title is not None and not isinstance(title, str)) or not isinstance(tags, list):
            raise DynrecError(f"{path}: item {i!r}: 'title' must be a string or null, 'tags' a list")
        out[str(i)] = {"title": title, "tags": [str(t) for t in tags]}
    return out


def write_item_info(model_dir: str | Path, info: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``item_info.json`` into `model_dir` (replaced atomically)."""
    path = Path(model_dir) / ITEM_INFO_FILE
    _write_atomic(path, json.dumps({"items": dict(info)}, ensure_ascii=False, indent=1))
    return path


def _write_atomic(path: Path, text: str) -> None:
    # created like any new file (mode 0666 less the umask), not mkstemp's 0600: the model
    # directory's other files are readable by whoever may read the model
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- training ------------------------------------------------------------------------------------


def _data_dir_of(location: str) -> Path:
    """The data folder a registered dataset was read from (``DATA_DIR/<folder>/<file>``)."""
    return Path(location).parent.parent


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TrainingTexts:
    """The item text a training run can use: the item file's (`file`, when given) and the
    registered dataset's (`dataset`, best effort: None when it has none)."""

    file: ItemTexts | None
    file_path: str | None
    dataset: ItemTexts | None
    dataset_name: str | None

    def info(self, vocab: Vocabulary) -> ItemInfo:
        """Titles and tags of the vocabulary's items (the file's over the dataset's)."""
        info: ItemInfo = {}
        ids = list(vocab.ids)
        for texts in (self.dataset, self.file):
            if texts is not None:
                info.update(item_info_from_texts(texts, ids))
        return info


def training_texts(
    dataset: str,
    location: str,
    items: str | Path | None = None,
    *,
    with_dataset: bool = True,
    strict: bool = False,
) -> TrainingTexts:
    """Item text for a training run on `dataset` (read from `location`): the item file `items`
    when given (its errors are the caller's; with `strict` its first invalid row is one), and with
    `with_dataset` the registered dataset's own text when dynrec has it (best effort: a dataset
    without item metadata gives None)."""
    file_texts = read_item_texts(items, strict=strict) if items is not None else None
    file_path = str(Path(items).resolve()) if items is not None else None
    ds_texts: ItemTexts | None = None
    if with_dataset and dataset in registry.DATASETS:
        try:
            ds_texts = dataset_item_texts(dataset, _data_dir_of(location))
        except (DynrecError, OSError):
            ds_texts = None
    return TrainingTexts(file_texts, file_path, ds_texts, dataset if ds_texts is not None else None)


def attach_item_text(
    model: Recommender,
    vocab: Vocabulary,
    texts: TrainingTexts,
    *,
    encoder: Encoder | None = None,
    progress: bool = False,
) -> dict[str, Any] | None:
    """Give `model` its item text table before `fit` when it reads item text (see the module
    docstring); the record for ``meta["item_text"]``, or None when the model reads no text."""
    if not reads_item_text(model):
        return None
    assert isinstance(model, ItemText)
    chosen = texts.file if texts.file is not None else texts.dataset
    if chosen is None:
        raise DynrecError(
            f"{model.name} reads item text, but the dataset has none in dynrec: give an item file with "
            "--items FILE (CSV/TSV/JSONL with item_id and text columns)"
        )
    enc: Encoder = (
        encoder
        if encoder is not None
        else TextEncoder(model.item_text_encoder() or DEFAULT_ENCODER, progress=progress)
    )
    table = item_text_table(vocab, chosen, enc)
    n_text = int((table.abs().sum(1) > 0).sum())
    if n_text == 0:
        where = texts.file_path or texts.dataset_name
        raise DynrecError(
            f"{where}: no item of the training data has text (item ids must match the events' item ids)"
        )
    model.set_item_text(table, enc.name)
    source: dict[str, Any]
    if texts.file is not None:
        assert texts.file_path is not None
        source = {"file": texts.file_path, "sha256": file_sha256(texts.file_path)}
    else:
        source = {"dataset": texts.dataset_name}
    return {
        "source": source,
        "encoder": enc.name,
        "dim": enc.dim,
        "items_with_text": n_text,
        "n_items": vocab.size - 1,
    }


# ---- adding items ----------------------------------------------------------------------------------


class ExistingItemsError(DynrecError):
    """Items to add are already in the model's catalogue; nothing was added. The message says
    which; each door (CLI option, HTTP field) adds how to skip them instead."""

    def __init__(self, source: str, present: tuple[str, ...]) -> None:
        shown = ", ".join(repr(i) for i in present[:SHOWN_ROWS])
        more = f" and {len(present) - SHOWN_ROWS} more" if len(present) > SHOWN_ROWS else ""
        super().__init__(
            f"{source}: {len(present)} item id(s) already in the model's catalogue ({shown}{more}); "
            "nothing was added"
        )
        self.source = source
        self.present = present


@dataclass(frozen=True)
class AddedItems:
    """What `add_items_to_model` did: the ids appended and the ids skipped (already present)."""

    added: list[str]
    skipped: list[str]


def reads_item_text(model: Recommender) -> bool:
    """Whether `model` (its configuration) reads item text."""
    return isinstance(model, ItemText) and model.wants_item_text()


def _require_item_text(model: Recommender) -> ItemText:
    if not (isinstance(model, ItemText) and model.wants_item_text()):
        raise DynrecError(
            f"model {model.name} reads no item text, so items cannot be added from text; train "
            "content or sasrec --set item_text=on"
        )
    return model


def encoder_for(model: Recommender, encoder: Encoder | None = None, *, progress: bool = False) -> Encoder:
    """The encoder that made `model`'s item text table (the one it recorded), or `encoder`
    checked to be that one (another encoder's vectors live in another space)."""
    m = _require_item_text(model)
    recorded = m.item_text_encoder()
    if recorded is None:
        raise DynrecError(f"model {model.name} records no text encoder: it was saved without item text")
    if encoder is None:
        return TextEncoder(recorded, progress=progress)
    if encoder.name != recorded:
        raise DynrecError(
            f"the model's item text was encoded with {recorded!r}; new items must use the same encoder, "
            f"not {encoder.name!r}"
        )
    dim = (model.meta.get("item_text") or {}).get("dim")
    if isinstance(dim, int) and dim != encoder.dim:
        raise DynrecError(
            f"encoder {encoder.name!r} gives {encoder.dim}-d vectors; the model's table is {dim}-d"
        )
    return encoder


def add_items_to_model(
    model: Recommender, texts: ItemTexts, encoder: Encoder, *, skip_existing: bool = False
) -> AddedItems:
    """Append the items of `texts` to `model` (in memory), encoded with `encoder` (see
    `encoder_for`). Ids already in the catalogue are refused (`ExistingItemsError`, the model is
    not changed) unless `skip_existing`, which leaves them as they are and lists them; an id that
    breaks the id rule (`dynrec.data.ids`) is a `DataError`."""
    m = _require_item_text(model)
    assert model.item_vocab is not None
    ids = list(texts.texts)
    for i in ids:  # the id rule of every door (files are checked row by row when read)
        check_item_id(i, source=texts.source)
    present = [i for i in ids if i in model.item_vocab]
    if present and not skip_existing:
        raise ExistingItemsError(texts.source, tuple(present))
    known = set(present)
    new = [i for i in ids if i not in known]
    if new:
        table = torch.from_numpy(encode_checked(encoder, [texts.texts[i] for i in new]))
        m.add_items(new, table)
        added = model.meta.setdefault("item_text", {}).setdefault("added_items", 0)
        model.meta["item_text"]["added_items"] = int(added) + len(new)
    return AddedItems(new, present)
