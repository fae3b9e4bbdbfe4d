"""The model interface: `Recommender` (fit, score, recommend, save, load) and `read_model`, which
reads a saved model directory. Its config (`ModelConfig`) and run options (`RunOptions`) live in
`dynrec.models.config`, the file handling and tensor checks in `dynrec.models.files`.

A recommendation is a function of the user's history: every model scores a
`dynrec.data.query.QueryBatch` of time-ordered histories, so real-time updates, cold users,
offline evaluation, streaming replay and serving all share one path. What a model can do beyond
scoring (incremental state, partial fit, item embeddings, explanations) it declares by
implementing the protocols in `dynrec.models.capabilities`.

Config vs state vs run options: the config (`config.json`) says what was trained — values decided
at fit time (e.g. a dropout chosen by dataset size) are written back into it; the learned state is
`model.safetensors`; run options belong to the process and are never saved, so a model trained on
a GPU loads on a CPU-only host. `Recommender.load` validates every file before use and refuses a
damaged or tampered model directory with a `DynrecError` naming the file.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dynrec.data.query import QueryBatch, topk_stable
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError, NotFittedError
from dynrec.models.config import RUN_OPTION_KEYS, ModelConfig, RunOptions
from dynrec.models.files import (
    TensorFileError,
    expect_only,
    read_json,
    read_vocab,
    save_tensors,
    tensor_fingerprint,
)

log = logging.getLogger(__name__)

__all__ = [
    "LEGACY_CONFIG_KEYS",
    "ModelLookup",
    "QueryBatch",
    "Recommender",
    "read_model",
    "use_model_lookup",
]


# ---- the model interface ---------------------------------------------------------------------------

LEGACY_CONFIG_KEYS: frozenset[str] = RUN_OPTION_KEYS
"""Keys that older config.json files kept among the hyper-parameters (now `RunOptions`): ignored."""


class Recommender(ABC):
    """Scores items for users given their histories.

    Contract: ``fit`` learns weights; ``score``/``recommend`` are pure reads (never mutate);
    ``update(events)`` (where supported) is the only mutating call after fit. Scores are a float32
    tensor [B, n_items] where column 0 (padding) is -inf.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.options = RunOptions()
        """How this process runs the model (device, threads, progress, checkpoints; set by `fit`,
        `load` or `create_model`); never saved."""
        self.item_vocab: Vocabulary | None = None
        self.user_vocab: Vocabulary | None = None
        self.meta: dict[str, Any] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.item_vocab is not None

    @property
    def n_items(self) -> int:
        if self.item_vocab is None:
            raise NotFittedError(f"{self.name} is not fitted")
        return self.item_vocab.size

    def fit(self, data: Any, valid: Any = None, *, options: RunOptions | None = None) -> Self:
        """Learn from `data` (InteractionData); `valid` (EvalSet) is used for model selection only.
        `options` (default: the model's `options`) say how to run; values the model decides at fit
        time (e.g. by dataset size) are written back into `config`."""
        if options is not None:
            self.options = options
        torch.manual_seed(self.config.seed)
        self.item_vocab = data.item_vocab
        self.user_vocab = data.user_vocab
        self._fit(data, valid)
        return self

    @abstractmethod
    def _fit(self, data: Any, valid: Any) -> None: ...

    def fit_passes(self) -> int:
        """Passes over the data a fit makes (epochs / sweeps; 1 for one-pass models): the compute
        measure of a refit in replay reports."""
        return 1

    @abstractmethod
    def score(self, batch: QueryBatch) -> torch.Tensor:
        """[B, n_items] float32 scores; column 0 is -inf."""

    def recommend(
        self, batch: QueryBatch, k: int = 10, *, exclude_seen: bool = True, exclude: QueryBatch | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (indices [B, k], scores [B, k]) sorted by descending score, ties by lower index.
        Seen items (the history, or `exclude`) are removed when `exclude_seen`."""
        with torch.no_grad():
            scores = self.score(batch).clone()
            if exclude_seen:
                rows, cols = (exclude or batch).seen_mask_indices()
                scores[rows, cols] = -torch.inf
            scores[:, 0] = -torch.inf
            return topk_stable(scores, k)

    # ---- persistence: safetensors + config.json + vocab ------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Learned state to save (override)."""
        return {}

    def fingerprint(self) -> str:
        """A content fingerprint of the learned state (`tensors`), stable across processes: the
        model version a session tags its cached states with."""
        return tensor_fingerprint(self.name, self.tensors())

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore learned state (override). Called by `load` after config, meta and both
        vocabularies are set; must check every tensor (`expect`, `expect_only`,
        `expect_state_dict`) before use and raise `DynrecError` for anything that does not fit."""
        expect_only(tensors, frozenset())

    def meta_size(self, key: str, vocab: Vocabulary | None) -> int:
        """The size `meta[key]` recorded at fit time (e.g. ``n_items``), checked: an integer in
        ``[1, vocab.size]`` (a vocabulary may grow after fit, never shrink)."""
        v = self.meta.get(key)
        limit = vocab.size if vocab is not None else None
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or (limit is not None and v > limit):
            raise DynrecError(f"meta {key!r} is {v!r}, expected an integer in [1, {limit}]")
        return v

    def save(self, path: str | Path) -> Path:
        if self.item_vocab is None or self.user_vocab is None:
            raise NotFittedError(f"{self.name} is not fitted; nothing to save")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        save_tensors(tensors, out / "model.safetensors")
        (out / "config.json").write_text(
            json.dumps({"model": self.name, "config": self.config.to_dict(), "meta": self.meta}, indent=2)
        )
        (out / "items.json").write_text(self.item_vocab.to_json())
        (out / "users.json").write_text(self.user_vocab.to_json())
        return out

    @classmethod
    def load(cls, path: str | Path, *, options: RunOptions | None = None) -> Recommender:
        """A saved model of any registered kind (`read_model` with the registry's name lookup, which
        the `dynrec.models` package hands to `use_model_lookup` when it is imported: this module
        cannot import the registry, which imports every model module and this one)."""
        lookup = _Wiring.model_lookup
        if lookup is None:  # only if this file were imported outside its package
            raise DynrecError("no model registry is wired in: import dynrec.models.registry first")
        return read_model(path, lookup, options=options)


ModelLookup = Callable[[str], type[Recommender]]
"""A saved model's name -> its class (`dynrec.models.registry.get_model_class`)."""


class _Wiring:
    model_lookup: ModelLookup | None = None


def use_model_lookup(lookup: ModelLookup) -> None:
    """Resolve saved models' names with `lookup` in `Recommender.load` (wired once, by the
    `dynrec.models` package, to the registry's `get_model_class`)."""
    _Wiring.model_lookup = lookup


def read_model(
    path: str | Path, model_class: ModelLookup, *, options: RunOptions | None = None
) -> Recommender:
    """A saved model, every file checked before use (config.json, items.json, users.json,
    model.safetensors against config and vocabularies); anything damaged raises `DynrecError`
    naming the file. `model_class` turns the saved model name into its class (the registry's
    lookup). Keys of older config.json files that are now run options are ignored."""
    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise DynrecError(f"{p} is not a saved dynrec model (no config.json)")
    spec = read_json(cfg_file)
    if not isinstance(spec, dict):
        raise DynrecError(f"{cfg_file}: expected a JSON object with keys 'model' and 'config'")
    name, raw_cfg, meta = spec.get("model"), spec.get("config", {}), spec.get("meta", {})
    if not isinstance(name, str):
        raise DynrecError(f"{cfg_file}: 'model' must be a model name, got {name!r}")
    if not isinstance(raw_cfg, dict):
        raise DynrecError(f"{cfg_file}: 'config' must be an object of options")
    if not isinstance(meta, dict):
        raise DynrecError(f"{cfg_file}: 'meta' must be an object")
    try:
        model_cls = model_class(name)
        legacy = sorted(set(raw_cfg) & LEGACY_CONFIG_KEYS)
        if legacy:
            log.info("%s: ignoring run options %s saved by an older version", cfg_file, legacy)
        config = model_cls.config_class.from_dict({k: v for k, v in raw_cfg.items() if k not in legacy})
    except DynrecError as exc:
        raise DynrecError(f"{cfg_file}: {exc}") from None
    model = model_cls(config)
    model.options = options if options is not None else RunOptions()
    model.meta = dict(meta)
    model.item_vocab = read_vocab(p / "items.json")
    model.user_vocab = read_vocab(p / "users.json")
    weights = p / "model.safetensors"
    try:
        tensors = load_file(str(weights))
    except FileNotFoundError:
        raise DynrecError(f"{weights}: file not found") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DynrecError(f"{weights}: not a readable safetensors file ({exc})") from None
    try:
        model.load_tensors(tensors)
    except TensorFileError as exc:
        raise DynrecError(f"{weights}: {exc}") from None
    except DynrecError as exc:  # e.g. sizes in meta that do not fit the vocabularies
        raise DynrecError(f"{cfg_file}: {exc}") from None
    return model
