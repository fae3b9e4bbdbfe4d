"""The model registry: model name -> "module:Class", imported lazily (nothing decided at import).

Adding a model is one file plus one line here. An entry whose module fails to import is an error,
never silently dropped (a test imports every entry).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from dynrec.errors import DynrecError
from dynrec.models.base import Recommender, read_model
from dynrec.models.config import RunOptions, split_overrides

MODELS: dict[str, str] = {
    "pop": "dynrec.models.popularity:MostPopular",
    "content": "dynrec.models.content:ContentModel",
    "itemknn": "dynrec.models.knn:ItemKNN",
    "userknn": "dynrec.models.knn:UserKNN",
    "mf": "dynrec.models.mf.mf:MatrixFactorization",
    "als": "dynrec.models.mf.als:ALS",
    "bpr": "dynrec.models.mf.bpr:BPR",
    "svd": "dynrec.models.mf.svd:PureSVD",
    "nmf": "dynrec.models.mf.nmf:NMF",
    "ease": "dynrec.models.mf.ease:EASE",
    "mlp": "dynrec.models.mlp:MLPRecommender",
    "gru4rec": "dynrec.models.seq.gru4rec:GRU4Rec",
    "caser": "dynrec.models.seq.caser:Caser",
    "sasrec": "dynrec.models.seq.sasrec:SASRec",
    "bert4rec": "dynrec.models.seq.bert4rec:BERT4Rec",
}


def available_models() -> list[str]:
    """Every registered model name (each entry must import: a broken module is an error)."""
    return list(MODELS)


def get_model_class(name: str) -> type[Recommender]:
    key = name.lower()
    if key not in MODELS:
        raise DynrecError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    mod, cls = MODELS[key].split(":")
    obj = getattr(importlib.import_module(mod), cls)
    if not (isinstance(obj, type) and issubclass(obj, Recommender)):
        raise DynrecError(f"registry entry {name!r} = {MODELS[key]!r} is not a Recommender subclass")
    return obj


def create_model(
    name: str,
    overrides: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    options: RunOptions | None = None,
) -> Recommender:
    """A model from settings: `config` typed values (e.g. a TOML table), then `overrides`
    (``--set`` strings). Run-option keys among either (device, num_threads, progress,
    checkpoint_dir) go to the model's `options` (over `options`), never into its config."""
    cls = get_model_class(name)
    file_cfg, opts = split_overrides(config, options)
    set_cfg, opts = split_overrides(overrides, opts)
    cfg = cls.config_class.from_dict(file_cfg)
    if set_cfg:
        cfg = cfg.with_overrides(set_cfg)
    model = cls(cfg)
    model.options = opts
    return model


def load_model(path: str | Path, *, options: RunOptions | None = None) -> Recommender:
    """A saved model directory (safetensors + config.json + vocabularies), any registered kind:
    the saved name is looked up here, the files are read and checked by `read_model`."""
    return read_model(path, get_model_class, options=options)
