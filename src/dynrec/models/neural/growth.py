"""Warm-start learning for Torch models: grow the item/user tables to a larger vocabulary
(new rows initialised from co-occurring items) and continue training from the current weights.

Growth walks ``model.net``: every ``nn.Embedding`` / ``nn.Linear`` output / parameter / buffer whose
leading dimension equals the old item count gets rows for the new items, initialised to the mean of
the rows of the items they co-occur with (same users), or the global mean when they co-occur with
nothing yet; user tables (names containing "user") grow with the global mean.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.vocab import Vocabulary
from dynrec.errors import NotFittedError
from dynrec.models.capabilities import UpdateBatch, UpdateConfig
from dynrec.models.config import RunOptions
from dynrec.models.neural.config import NeuralConfig
from dynrec.models.neural.trainer import Trainable, Trainer

__all__ = ["Growable", "grow_torch_model", "neighbour_init", "train_continue", "warm_start"]


class Growable(Trainable, Protocol):
    """What warm-start learning needs of a model beyond `Trainable` (every `TorchRecommender` is
    one): a settable config (an update trains with its own), run options, its item vocabulary, and
    the per-run `prepare` / `release_training_data` hooks."""

    config: NeuralConfig  # settable here (read-only in Trainable)
    options: RunOptions
    item_vocab: Vocabulary | None

    def prepare(self, data: InteractionData) -> None: ...

    def release_training_data(self) -> None: ...


def warm_start(model: Growable, update: UpdateBatch) -> int:
    """Grow the model to the update's vocabularies, then train `update.config.epochs` passes over
    the sequences of the users with new events (their old events come along as context and
    targets) mixed with a replay sample of ``replay_ratio`` x as many other users (against
    forgetting). Returns the events trained on per pass."""
    mem, cfg = update.memory, update.config
    if mem.n_items > update.old_n_items or mem.n_users > update.old_n_users:
        init = neighbour_init(mem, update.old_n_items)
        grow_torch_model(model, mem.n_items, mem.n_users, init)
    touched = update.users
    others = np.setdiff1d(np.flatnonzero(mem.lengths() > 1), touched)
    n_rep = int(round(cfg.replay_ratio * len(touched)))
    if cfg.max_replay_users:
        n_rep = min(n_rep, cfg.max_replay_users)
    n_rep = min(n_rep, len(others))
    replay = update.rng.choice(others, n_rep, replace=False) if n_rep else np.zeros(0, np.int64)
    keep_users = np.zeros(mem.n_users, dtype=bool)
    keep_users[touched] = True
    keep_users[replay] = True
    sub = mem.select(keep_users[mem.users])
    train_continue(model, sub, cfg)
    return sub.n_events


def train_continue(model: Growable, data: InteractionData, cfg: UpdateConfig) -> None:
    """A few epochs of the model's own loss on `data`, from the current weights, no validation."""
    mc = model.config
    tc = dataclasses.replace(
        mc,
        epochs=max(1, cfg.epochs),
        learning_rate=cfg.learning_rate or cfg.lr_scale * mc.learning_rate,
        batch_size=cfg.batch_size or mc.batch_size,
        warmup_steps=0,
        schedule="constant",
        ema_decay=0.0,  # an update is a few steps: a fresh weight average would lag behind them
        seed=mc.seed + 7919 * (1 + int(model.meta.get("n_updates", 0))),
    )
    saved: dict[str, Any] = {
        k: model.meta[k]
        for k in (
            "train_log",
            "epochs_run",
            "train_seconds",
            "valid_ndcg@10",
            "best_valid_ndcg@10",
            "best_epoch",
            "seconds_to_best",
        )
        if k in model.meta
    }
    orig_config = model.config
    model.config = tc
    try:
        # the update's own random draws (dropout's come from torch's global generator): seeded
        # by the update, so an update is reproducible, and the caller's generator left as it was
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(tc.seed)
            model.prepare(data)
            Trainer(tc, model.options.replace(checkpoint_dir="", progress=False)).fit(model, data, None)
    finally:
        model.config = orig_config
        model.release_training_data()  # training tensors of this update only
    model.meta.update(saved)
    model.meta["n_updates"] = int(model.meta.get("n_updates", 0)) + 1


def neighbour_init(mem: InteractionData, old_items: int) -> sp.csr_matrix:
    """[n_new, old_items] row-normalised co-occurrence of each new item with the old items (rows
    with no co-occurrence are empty → the caller uses the global mean)."""
    x = mem.csr(binary=True).tocsc()
    new = x[:, old_items:]
    old = x[:, 1:old_items]
    co = (new.T @ old).tocsr().astype(np.float32)
    sums = np.asarray(co.sum(axis=1)).ravel()
    inv = np.where(sums > 0, 1.0 / np.maximum(sums, 1e-12), 0.0).astype(np.float32)
    co = sp.diags(inv) @ co
    # column j of `co` is old item j + 1; pad a zero column for item 0
    return sp.hstack([sp.csr_matrix((co.shape[0], 1), dtype=np.float32), co]).tocsr()


def _grow_rows(t: torch.Tensor, n_new_total: int, init: sp.csr_matrix | None) -> torch.Tensor:
    """`t` [old, ...] extended to [n_new_total, ...]: new rows = init @ old rows, or the mean."""
    old = t.shape[0]
    extra = n_new_total - old
    flat = t.detach().reshape(old, -1).float()
    mean = flat[1:].mean(0, keepdim=True) if old > 1 else flat.mean(0, keepdim=True)
    rows = mean.repeat(extra, 1)
    if init is not None and init.shape[0] == extra:
        nb = torch.from_numpy(np.asarray(init @ flat.cpu().numpy(), dtype=np.float32)).to(flat.device)
        has = torch.from_numpy(np.asarray(init.sum(axis=1)).ravel() > 0).to(flat.device)
        rows[has] = nb[has]
    out = torch.cat([flat, rows], 0).reshape(n_new_total, *t.shape[1:]).to(t.dtype)
    return out.to(t.device)


def grow_torch_model(
    model: Growable, n_items: int, n_users: int, init: sp.csr_matrix | None = None
) -> list[str]:
    """Grow every item-indexed table of ``model.net`` to `n_items` rows (and user-indexed tables,
    i.e. named "user…", to `n_users`); returns the grown parameter names."""
    net: nn.Module | None = model.net
    if net is None:
        raise NotFittedError(f"{model.name} is not fitted")
    old_items = int(model.meta.get("n_items", 0)) or _guess_items(model)
    old_users = int(model.meta.get("n_users", 0))
    grown: list[str] = []

    def target(name: str, lead: int) -> tuple[int, sp.csr_matrix | None] | None:
        if lead == old_items and n_items > old_items and "user" not in name.lower():
            return n_items, init
        if old_users and lead == old_users and n_users > old_users and "user" in name.lower():
            return n_users, None
        return None

    with torch.no_grad():
        for mname, mod in net.named_modules():
            if isinstance(mod, nn.Embedding):
                t = target(mname, mod.num_embeddings)
                if t is not None:
                    mod.weight = nn.Parameter(_grow_rows(mod.weight, t[0], t[1]))
                    mod.num_embeddings = t[0]
                    grown.append(f"{mname}.weight")
                continue
            if isinstance(mod, nn.Linear):
                t = target(mname, mod.out_features)
                if t is not None:
                    mod.weight = nn.Parameter(_grow_rows(mod.weight, t[0], t[1]))
                    if mod.bias is not None:
                        mod.bias = nn.Parameter(_grow_rows(mod.bias, t[0], t[1]))
                    mod.out_features = t[0]
                    grown.append(f"{mname}.weight")
                continue
            for pname, p in list(mod.named_parameters(recurse=False)):
                if p.dim() >= 1:
                    t = target(f"{mname}.{pname}", p.shape[0])
                    if t is not None:
                        setattr(mod, pname, nn.Parameter(_grow_rows(p, t[0], t[1])))
                        grown.append(f"{mname}.{pname}")
            for bname, b in list(mod.named_buffers(recurse=False)):
                if b is not None and b.dim() >= 1:
                    t = target(f"{mname}.{bname}", b.shape[0])
                    if t is not None:
                        mod.register_buffer(bname, _grow_rows(b, t[0], t[1]))
                        grown.append(f"{mname}.{bname}")
            for attr, old, new in (("n_items", old_items, n_items), ("n_users", old_users, n_users)):
                if isinstance(getattr(mod, attr, None), int) and getattr(mod, attr) == old and new > old:
                    setattr(mod, attr, new)
    model.meta["n_items"] = max(n_items, old_items)
    if old_users:
        model.meta["n_users"] = max(n_users, old_users)
    return grown


def _guess_items(model: Growable) -> int:
    return int(model.item_vocab.size) if model.item_vocab is not None else 0
