"""Core model interfaces: `QueryBatch` (users' histories), `Recommender`, the model registry.

A recommendation is a function of the user's history: every model scores a `QueryBatch` of
time-ordered histories (item indices, timestamps, weights), so real-time updates, cold users,
offline evaluation, streaming replay and serving all share one path.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file, save_file

from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError, NotFittedError

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class QueryBatch:
    """B queries: query b's history is ``items[indptr[b]:indptr[b+1]]`` (oldest first).

    `users` holds the known user index (0 = unknown/anonymous); models that keep per-user
    parameters may use it, but every model must score from the history alone when it is 0.
    """

    users: IntArray  # [B]
    indptr: IntArray  # [B + 1]
    items: IntArray  # [nnz]
    timestamps: IntArray | None = None  # [nnz]
    weights: npt.NDArray[np.float32] | None = None  # [nnz]

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def lengths(self) -> IntArray:
        return np.diff(self.indptr)

    @classmethod
    def from_histories(
        cls,
        histories: Sequence[Sequence[int]],
        users: Sequence[int] | None = None,
        timestamps: Sequence[Sequence[int]] | None = None,
    ) -> QueryBatch:
        lens = np.array([len(h) for h in histories], dtype=np.int64)
        indptr = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        items = np.array([i for h in histories for i in h], dtype=np.int64)
        ts = None if timestamps is None else np.array([t for h in timestamps for t in h], dtype=np.int64)
        u = np.zeros(len(histories), np.int64) if users is None else np.asarray(users, dtype=np.int64)
        return cls(u, indptr, items, ts, None)

    def slice(self, start: int, stop: int) -> QueryBatch:
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        return QueryBatch(
            self.users[start:stop],
            self.indptr[start : stop + 1] - a,
            self.items[a:b],
            None if self.timestamps is None else self.timestamps[a:b],
            None if self.weights is None else self.weights[a:b],
        )

    def take(self, idx: IntArray) -> QueryBatch:
        idx = np.asarray(idx, dtype=np.int64)
        starts, lens = self.indptr[idx], self.lengths[idx]
        indptr = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        flat = np.repeat(starts - indptr[:-1], lens) + np.arange(int(indptr[-1]), dtype=np.int64)
        return QueryBatch(
            self.users[idx],
            indptr,
            self.items[flat],
            None if self.timestamps is None else self.timestamps[flat],
            None if self.weights is None else self.weights[flat],
        )

    def known_users(self, n_users: int) -> torch.Tensor:
        """[B] user indices as a LongTensor, with users a model has no row for (index outside
        1..n_users-1, e.g. added to the vocabulary after training) mapped to 0 = unknown."""
        users = torch.from_numpy(np.asarray(self.users, dtype=np.int64))
        return torch.where((users < 0) | (users >= n_users), 0, users)

    def row_ids(self) -> IntArray:
        """Query index of every history event ([nnz])."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def padded(self, max_len: int, *, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The last `max_len` items of each history as a [B, L] LongTensor (0 = padding) and the
        matching [B, L] timestamps (0 where padded). Left padding keeps the newest item at column L-1."""
        b = len(self)
        lens = np.minimum(self.lengths, max_len)
        out = np.zeros((b, max_len), dtype=np.int64)
        tout = np.zeros((b, max_len), dtype=np.int64)
        total = int(lens.sum())
        if total:
            rows = np.repeat(np.arange(b), lens)
            offs = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)  # 0..len-1 within row
            src = np.repeat(self.indptr[1:] - lens, lens) + offs
            cols = (np.repeat(max_len - lens, lens) + offs) if left else offs
            out[rows, cols] = self.items[src]
            if self.timestamps is not None:
                tout[rows, cols] = self.timestamps[src]
        return torch.from_numpy(out), torch.from_numpy(tout)

    def seen_mask_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) index pairs of every history item, for scatter-masking seen items."""
        return torch.from_numpy(self.row_ids()), torch.from_numpy(self.items)


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
        spec = json.loads(cfg_file.read_text())
        model_cls = get_model_class(spec["model"])
        model = model_cls(model_cls.config_class.from_dict(spec["config"]))
        model.meta = dict(spec.get("meta", {}))
        model.item_vocab = Vocabulary.from_json((p / "items.json").read_text())
        model.user_vocab = Vocabulary.from_json((p / "users.json").read_text())
        model.load_tensors(load_file(str(p / "model.safetensors")))
        return model


def topk_stable(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by descending score with ties broken by lower item index (deterministic)."""
    k = min(k, scores.shape[1])
    # stable descending sort on a chunk would cost O(N log N); topk then re-sort the tie groups.
    vals, idx = torch.topk(scores, k, dim=1)
    kth = vals[:, -1:]
    n_at_least = (scores >= kth).sum(1)
    if bool((n_at_least > k).any()):  # ties cross the k boundary: resolve by index
        order = torch.sort(scores, dim=1, descending=True, stable=True)
        return order.indices[:, :k], order.values[:, :k]
    # ties within the top-k: sort by (-score, index)
    key_idx, perm = torch.sort(idx, dim=1)
    key_vals = torch.gather(vals, 1, perm)
    order2 = torch.sort(key_vals, dim=1, descending=True, stable=True).indices
    return torch.gather(key_idx, 1, order2), torch.gather(key_vals, 1, order2)


# ---- registry: model name -> "module:Class" (imported lazily; nothing decided at import) -------
MODELS: dict[str, str] = {
    "pop": "dynrec.models.popularity:MostPopular",
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
    """Registered names whose module imports (models land incrementally)."""
    out = []
    for name in MODELS:
        try:
            get_model_class(name)
        except (ImportError, AttributeError):
            continue
        out.append(name)
    return out


def get_model_class(name: str) -> type[Recommender]:
    key = name.lower()
    if key not in MODELS:
        raise DynrecError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    mod, cls = MODELS[key].split(":")
    obj = getattr(importlib.import_module(mod), cls)
    assert isinstance(obj, type) and issubclass(obj, Recommender)
    return obj


def create_model(
    name: str, overrides: dict[str, str] | None = None, config: dict[str, Any] | None = None
) -> Recommender:
    cls = get_model_class(name)
    cfg = cls.config_class.from_dict(config or {})
    if overrides:
        cfg = cfg.with_overrides(overrides)
    return cls(cfg)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads() -> None:
    """Use the machine's cores (respecting an explicit OMP_NUM_THREADS)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
