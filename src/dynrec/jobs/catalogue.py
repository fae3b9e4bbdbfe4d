"""`dynrec items add`: items join a saved model from their text alone.

On a *served* model root (a store is given, or the root holds the service's default store,
``ROOT/events.db``) the new catalogue is published as a new model version through the store
(`dynrec.jobs.model_root.publish`): every serving process follows it within a second and later
additions (``POST /v1/items``, another ``items add``) build on it. A model directory that was
never served is saved in place, each file replaced atomically (`dynrec.jobs.model_root.save_model_dir`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynrec.errors import DynrecError
from dynrec.jobs.items import (
    SHOWN_ROWS,
    AddedItems,
    add_items_to_model,
    encoder_for,
    item_info_from_texts,
    read_item_info,
    reads_item_text,
)
from dynrec.jobs.model_root import Built, open_version, publish, save_model_dir, version_path
from dynrec.jobs.shifts import saved_calibration
from dynrec.models.base import Recommender
from dynrec.online.store import open_store
from dynrec.online.store.versions import VersionRecord
from dynrec.text import Encoder, read_item_texts

__all__ = ["SERVED_STORE", "AddItemsResult", "add_items", "served_store_url"]

SERVED_STORE = "events.db"
"""The store `dynrec serve ROOT` opens by default (``sqlite:///ROOT/events.db``)."""


@dataclass(frozen=True)
class AddItemsResult:
    """What `add_items` did: the model and its directory, the ids added and those skipped (already
    in the catalogue), the catalogue size now, the invalid rows of the file (their count and the
    first `SHOWN_ROWS`, as text), the encoder, and on a served root the model version now current."""

    model: str
    model_dir: str
    added: tuple[str, ...]
    skipped: tuple[str, ...]
    n_items: int
    invalid_rows: int
    invalid: tuple[str, ...]
    encoder: str
    model_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "model_dir": self.model_dir,
            "added": list(self.added),
            "skipped": list(self.skipped),
            "n_items": self.n_items,
            "invalid_rows": self.invalid_rows,
            "invalid": list(self.invalid),
            "encoder": self.encoder,
        }
        if self.model_version is not None:
            out["model_version"] = self.model_version
        return out


def served_store_url(model_dir: str | Path, store_url: str | None) -> str | None:
    """The store a served root publishes through: `store_url`, else the service's default store
    when the root holds one, else None (the root was never served)."""
    if store_url:
        return store_url if "://" in store_url else f"sqlite:///{Path(store_url).resolve()}"
    default = Path(model_dir) / SERVED_STORE
    return f"sqlite:///{default.resolve()}" if default.is_file() else None


def add_items(
    model_dir: str | Path,
    items_file: str | Path,
    *,
    encoder: Encoder | None = None,
    strict: bool = False,
    skip_existing: bool = False,
    progress: bool = False,
    store_url: str | None = None,
) -> AddItemsResult:
    """Add the items of `items_file` (CSV/TSV/JSONL: item_id + text columns, read by
    `dynrec.text.read_item_texts`; invalid rows are skipped and reported with line and field, or
    fail at once with `strict`) to the model at `model_dir` from their text alone — published as
    a new version on a served root (see the module docstring), else saved in place. Ids already in
    the catalogue: see `add_items_to_model`.

    Returns what was done (`AddItemsResult`)."""
    texts = read_item_texts(items_file, strict=strict)
    rep = texts.report
    if len(texts) == 0:
        why = f"; first: {rep.invalid[0]}" if rep.invalid else ""
        raise DynrecError(f"{items_file}: no valid item rows ({rep.n_invalid} invalid{why})")
    url = served_store_url(model_dir, store_url)
    version: str | None = None
    encoders: list[Encoder] = []
    results: list[tuple[Recommender, AddedItems]] = []
    if url is None:
        model = Recommender.load(model_dir)
        enc = encoder_for(model, encoder, progress=progress)
        done = add_items_to_model(model, texts, enc, skip_existing=skip_existing)
        if done.added:
            info = read_item_info(model_dir)
            info.update(item_info_from_texts(texts, done.added))
            save_model_dir(model, model_dir, info, saved_calibration(model_dir))  # same constants
        results.append((model, done))
        encoders.append(enc)
    else:
        store = open_store(url)
        try:

            def build(parent: VersionRecord) -> Built | None:
                model = open_version(model_dir, parent)
                if not reads_item_text(model):
                    raise DynrecError(f"{model.name} reads no item text: items cannot be added from text")
                enc = encoders[0] if encoders else encoder_for(model, encoder, progress=progress)
                encoders[:1] = [enc]
                done = add_items_to_model(model, texts, enc, skip_existing=skip_existing)
                results.append((model, done))
                if not done.added:
                    return None
                info = read_item_info(version_path(model_dir, parent))
                info.update(item_info_from_texts(texts, done.added))
                return Built(
                    model,
                    info,
                    "items",
                    note=f"{len(done.added)} item(s) added by `dynrec items add`",
                    shifts=saved_calibration(version_path(model_dir, parent)),
                )

            rec, _ = publish(store, model_dir, build)
            version = rec.id
        finally:
            store.close()
    model, done = results[-1]
    return AddItemsResult(
        model=model.name,
        model_dir=str(model_dir),
        added=tuple(done.added),
        skipped=tuple(done.skipped),
        n_items=model.n_items - 1,
        invalid_rows=rep.n_invalid,
        invalid=tuple(str(r) for r in rep.invalid[:SHOWN_ROWS]),
        encoder=encoders[-1].name,
        model_version=version,
    )
