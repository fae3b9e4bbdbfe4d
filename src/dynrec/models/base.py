"""Core model interfaces: `ModelConfig` (frozen hyper-parameters) and `Recommender`.

A recommendation is a function of the user's history: every model scores a
`dynrec.data.query.QueryBatch` of time-ordered histories, so real-time updates, cold users,
offline evaluation, streaming replay and serving all share one path. What a model can do beyond
scoring (incremental state, partial fit, item embeddings, explanations) it declares by
implementing the protocols in `dynrec.models.capabilities`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors.torch import load_file, save_file

from dynrec.data.query import QueryBatch, topk_stable
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError, NotFittedError

log = logging.getLogger(__name__)

__all__ = ["ModelConfig", "QueryBatch", "Recommender"]


@dataclass(frozen=True)
class ModelConfig:
    """Base of every model's frozen config dataclass (the project-wide hyper-parameter names)."""

    seed: int = 42

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(names)
        if unknown:
            raise DynrecError(f"{cls.__name__} has no option(s) {sorted(unknown)}; options: {sorted(names)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, list):
                v = tuple(v)
            kw[k] = v
        return cls(**kw)

    def with_overrides(self, overrides: dict[str, str]) -> Self:
        """Apply ``key=value`` strings (from ``--set``), parsed to each field's type."""
        names = {f.name: f for f in dataclasses.fields(self)}
        kw: dict[str, Any] = {}
        for k, raw in overrides.items():
            if k not in names:
                raise DynrecError(f"{type(self).__name__} has no option {k!r}; options: {sorted(names)}")
            ann = str(names[k].type)
            base = ann.split("|")[0].strip()
            if ann.endswith("| None") and base in ("int", "float"):
                # an optional number (None = decided at fit time, e.g. by dataset size)
                none = raw.lower() in ("none", "null", "auto")
                kw[k] = None if none else _parse_like(0 if base == "int" else 0.0, raw, k)
            else:
                kw[k] = _parse_like(getattr(self, k), raw, k)
        return dataclasses.replace(self, **kw)


def _parse_like(current: Any, raw: str, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if current is None:
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                return raw
        if isinstance(current, tuple):
            return tuple(type(current[0])(x) if current else x for x in raw.split(","))
        return raw
    except ValueError as exc:
        raise DynrecError(f"option {key}={raw!r}: expected a {type(current).__name__}") from exc


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

    def fit(self, data: Any, valid: Any = None) -> Self:
        """Learn from `data` (InteractionData); `valid` (EvalSet) is used for model selection only."""
        torch.manual_seed(self.config.seed)
        self.item_vocab = data.item_vocab
        self.user_vocab = data.user_vocab
        self._fit(data, valid)
        return self

    @abstractmethod
    def _fit(self, data: Any, valid: Any) -> None: ...

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

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:  # noqa: B027 - default: no state
        """Restore learned state (override)."""

    def save(self, path: str | Path) -> Path:
        if self.item_vocab is None or self.user_vocab is None:
            raise NotFittedError(f"{self.name} is not fitted; nothing to save")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        save_file(tensors, str(out / "model.safetensors"))
        (out / "config.json").write_text(
            json.dumps({"model": self.name, "config": self.config.to_dict(), "meta": self.meta}, indent=2)
        )
        (out / "items.json").write_text(self.item_vocab.to_json())
        (out / "users.json").write_text(self.user_vocab.to_json())
        return out

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        p = Path(path)
        cfg_file = p / "config.json"
        if not cfg_file.exists():
            raise DynrecError(f"{p} is not a saved dynrec model (no config.json)")
        from dynrec.models.registry import get_model_class  # the registry imports model modules

        spec = json.loads(cfg_file.read_text())
        model_cls = get_model_class(spec["model"])
        model = model_cls(model_cls.config_class.from_dict(spec["config"]))
        model.meta = dict(spec.get("meta", {}))
        model.item_vocab = Vocabulary.from_json((p / "items.json").read_text())
        model.user_vocab = Vocabulary.from_json((p / "users.json").read_text())
        model.load_tensors(load_file(str(p / "model.safetensors")))
        return model
