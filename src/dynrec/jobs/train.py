"""Offline jobs: dataset -> split -> train -> evaluate -> save, and evaluation of a saved model.

A saved model remembers its dataset and split (``meta``), so `evaluate_saved` rebuilds exactly the
split it was trained on and no model is ever evaluated on events it trained on.
"""

from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.errors import DynrecError
from dynrec.evaluation.offline import EvalResult, evaluate, user_popularity
from dynrec.models.base import Recommender
from dynrec.models.registry import create_model
from dynrec.preprocessing.split import Split, SplitKind, make_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    name: str
    data: InteractionData
    split: Split


def prepare(
    dataset: str,
    *,
    split: SplitKind = "loo",
    data_dir: str | Path | None = None,
    strict: bool = False,
    quantile: float = 0.8,
) -> Prepared:
    events = registry.load(dataset, data_dir, strict=strict)
    data = InteractionData.from_events(events)
    kwargs: dict[str, Any] = {"quantile": quantile} if split == "time" else {}
    try:
        sp = make_split(data, split, **kwargs)
    except ValueError as exc:
        raise DynrecError(f"{dataset}: {exc}") from exc
    return Prepared(str(dataset), data, sp)


def load_config_file(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """A TOML file: optional ``model = "sasrec"`` and a ``[config]`` table (or top-level keys)."""
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    model = doc.pop("model", None)
    cfg = doc.get("config", doc)
    return model, dict(cfg)


def train(
    model_name: str,
    prepared: Prepared,
    *,
    overrides: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    out: str | Path | None = None,
) -> Recommender:
    model = create_model(model_name, overrides, config)
    t0 = time.perf_counter()
    model.fit(prepared.split.train, prepared.split.valid)
    model.meta.update(
        {
            "dataset": prepared.name,
            "split": prepared.split.kind,
            "split_cut": prepared.split.cut,
            "fit_seconds": time.perf_counter() - t0,
        }
    )
    if out is not None:
        model.save(out)
    return model


def evaluate_model(
    model: Recommender,
    prepared: Prepared,
    *,
    ks: tuple[int, ...] = (10,),
    exclude_seen: bool = True,
    on: str = "test",
    progress: bool = False,
) -> EvalResult:
    if model.item_vocab is not None and model.item_vocab != prepared.data.item_vocab:
        raise DynrecError(
            "the model's item vocabulary differs from this dataset's: evaluate it on the dataset it was trained on"
        )
    es = prepared.split.test if on == "test" else prepared.split.valid
    return evaluate(
        model,
        es,
        ks=ks,
        exclude_seen=exclude_seen,
        item_popularity=user_popularity(prepared.split.train),
        progress=progress,
    )


def evaluate_saved(
    path: str | Path,
    *,
    dataset: str | None = None,
    split: SplitKind | None = None,
    data_dir: str | Path | None = None,
    ks: tuple[int, ...] = (10,),
    exclude_seen: bool = True,
    progress: bool = False,
) -> tuple[Recommender, EvalResult]:
    model = Recommender.load(path)
    ds = dataset or model.meta.get("dataset")
    if ds is None:
        raise DynrecError(f"{path}: the model does not record its dataset; pass --dataset")
    trained_split = model.meta.get("split")
    if split is not None and trained_split is not None and split != trained_split:
        raise DynrecError(
            f"{path} was trained with split {trained_split!r}; evaluating it on {split!r} would test on training events"
        )
    prepared = prepare(ds, split=split or trained_split or "loo", data_dir=data_dir)
    return model, evaluate_model(model, prepared, ks=ks, exclude_seen=exclude_seen, progress=progress)
