"""Trainer for the neural models: optimiser, warm-up + schedule, clipping, early stopping on the
*validation* NDCG@10, best-checkpoint restore, resumable checkpoints, progress bar, and
data-parallel training across torchrun processes (`dynrec.models.neural.distributed`).

The Trainer owns the device, optimiser and checkpoint selection of a `Trainable` — what it needs of a
model, which every `dynrec.models.neural.base.TorchRecommender` is (the Trainer does not import the
model base: the base imports the Trainer); the test set never reaches it.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from dynrec.data.dataset import InteractionData
from dynrec.evaluation.metrics import ndcg_standard_error
from dynrec.evaluation.offline import Scorer, evaluate
from dynrec.models.config import RunOptions
from dynrec.models.files import save_tensors
from dynrec.models.neural.config import NeuralConfig
from dynrec.models.neural.distributed import (
    SINGLE,
    Dist,
    all_reduce_mean,
    backend_for,
    broadcast_module,
    broadcast_object,
    current,
    gather_objects,
    split_batch,
)
from dynrec.models.neural.optim import WeightAverage, lr_factor, make_optimizer

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    seconds: float
    """Training time of this epoch (batches only)."""
    valid_ndcg: float | None
    tokens: int
    elapsed: float = 0.0
    """Wall time since the run started, after this epoch and its validation (callbacks excluded)."""


class Trainable(Scorer, Protocol):
    """What the Trainer needs of a model (every `TorchRecommender` is one): its config, module,
    device and meta (the training log is written there), batches and loss, its own random
    generators (saved in checkpoints), epoch callbacks, and `score` for validation."""

    @property
    def config(self) -> NeuralConfig: ...

    @property
    def net(self) -> nn.Module | None: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def meta(self) -> dict[str, Any]: ...

    @property
    def epoch_callbacks(self) -> Sequence[Callable[[EpochRecord, Any], None]]:
        """Each called after every epoch with the record and the model (`EpochCallback`)."""
        ...

    def train_batches(self, data: InteractionData, gen: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of CPU tensor batches (shuffled with `gen`)."""
        ...

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> int:
        """How many terms `loss` averages over for this batch (weights ranks' shares)."""
        ...

    def generators(self) -> dict[str, torch.Generator]: ...


@dataclass
class CheckpointSelector:
    """Which validated epoch to keep, and the patience count (`NeuralConfig.select_within_se`).

    `observe(value, se)` for each validation in order returns whether that epoch becomes the kept
    checkpoint: a new best always does; with ``within_se = s > 0`` so does any epoch whose value is
    at least ``best - s * se_best`` (se_best = standard error of the best value). `bad` counts the
    validations since the last new best, so when to stop does not depend on `within_se`: the run is
    exactly as long as with strict selection, only the kept epoch may be a later one.
    """

    within_se: float = 0.0
    best: float = -1.0
    best_se: float = 0.0
    kept: float = -1.0
    bad: int = 0

    def observe(self, value: float, se: float) -> bool:
        improved = value > self.best
        if improved:
            self.best, self.best_se, self.bad = value, se, 0
        else:
            self.bad += 1
        if improved or (self.within_se > 0 and value >= self.best - self.within_se * self.best_se):
            self.kept = value
            return True
        return False


class _LossModule(nn.Module):
    """The model's loss as a module's forward, so DistributedDataParallel sees the training step
    (its gradient hooks sit on `net`'s parameters; `model.loss` runs `net`)."""

    def __init__(self, model: Trainable) -> None:
        super().__init__()
        assert model.net is not None
        self.net = model.net
        self._loss = model.loss

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._loss(batch)


def _rng_states(model: Trainable) -> dict[str, torch.Tensor]:
    """This process's dropout generator(s) and the model's own generators."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out | {f"model.{k}": g.get_state() for k, g in model.generators().items()}


def _set_rng_states(model: Trainable, states: dict[str, torch.Tensor]) -> None:
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    for k, g in model.generators().items():
        if f"model.{k}" in states:
            g.set_state(states[f"model.{k}"])


RANK_SEED_STRIDE = 1_000_003
"""Rank r > 0 reseeds its dropout and model generators with seed + r * this, so ranks draw
different dropout masks and negatives (rank 0 keeps the single-process streams)."""


def _unused_parameters(model: Trainable, batch: dict[str, torch.Tensor]) -> bool:
    """Whether a training step leaves some trainable parameter without a gradient (DDP then has
    to look for them every step). One probe step whose gradients and random draws are undone."""
    net = model.net
    assert net is not None
    saved = _rng_states(model)
    try:
        model.loss(batch).backward()  # type: ignore[no-untyped-call]
        unused = any(p.grad is None for p in net.parameters() if p.requires_grad)
    finally:
        net.zero_grad(set_to_none=True)
        _set_rng_states(model, saved)
    return unused


def _wrap_ddp(model: Trainable, d: Dist, data: InteractionData) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    first = next(iter(model.train_batches(data, torch.Generator().manual_seed(0))), None)
    unused = False
    if first is not None:
        part, _ = split_batch(first, d.rank, d.world)
        part = {k: v.to(model.device) for k, v in part.items()}
        unused = bool(max(gather_objects(_unused_parameters(model, part))))
    ids = [model.device.index] if model.device.type == "cuda" else None
    # buffers are built from the data identically on every rank: no per-step broadcast
    no_sync: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    ddp = DistributedDataParallel(
        _LossModule(model), device_ids=ids, find_unused_parameters=unused, **no_sync
    )
    if d.rank > 0:
        torch.manual_seed(model.config.seed + RANK_SEED_STRIDE * d.rank)
        for g in model.generators().values():
            g.manual_seed(g.initial_seed() + RANK_SEED_STRIDE * d.rank)
    log.info("rank %d/%d: DDP (find_unused_parameters=%s)", d.rank, d.world, unused)
    return ddp


class Trainer:
    """Fits a `Trainable` (a `TorchRecommender`). Under torchrun (a joined process group, see
    `dynrec.models.neural.distributed`) it trains data-parallel: each global batch is split across
    ranks, gradients are averaged by DDP, rank 0 validates, selects and checkpoints, and every rank
    ends with rank 0's selected weights."""

    def __init__(self, config: NeuralConfig, options: RunOptions | None = None) -> None:
        self.config = config
        self.options = options if options is not None else RunOptions()

    def fit(self, model: Trainable, data: InteractionData, valid: Any = None) -> list[EpochRecord]:
        cfg = self.config
        net = model.net
        assert net is not None
        d = current()
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = make_optimizer(cfg, [p for p in net.parameters() if p.requires_grad])
        steps_per_epoch = max(1, sum(1 for _ in model.train_batches(data, torch.Generator().manual_seed(0))))
        total = steps_per_epoch * cfg.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total, cfg.warmup_steps, cfg.schedule)
        )
        step_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor] = model.loss
        if d.active:
            step_fn = _wrap_ddp(model, d, data)
        vset = valid
        if valid is not None and cfg.valid_max_queries and len(valid) > cfg.valid_max_queries:
            rng = np.random.default_rng(cfg.seed)
            vset = valid.subset(np.sort(rng.choice(len(valid), cfg.valid_max_queries, replace=False)))
        validating = vset is not None and len(vset) > 0
        history: list[EpochRecord] = []
        best_state: dict[str, torch.Tensor] | None = None
        start_epoch = 0
        sel = CheckpointSelector(cfg.select_within_se)
        ema = WeightAverage(net, cfg.ema_decay) if cfg.ema_decay > 0 else None
        ckpt = Path(self.options.checkpoint_dir) if self.options.checkpoint_dir else None
        if ckpt is not None and (ckpt / "trainer.json").exists():
            start_epoch, history, best_state = _load_checkpoint(ckpt, model, opt, sched, gen, sel, d)
            if ema is not None and (ckpt / "ema.safetensors").exists():
                ema.load(load_file(str(ckpt / "ema.safetensors")))
            elif ema is not None:  # the checkpoint was written without averaging
                log.warning("%s has no weight average: ema_decay starts from the resumed weights", ckpt)
            log.info("resumed from %s at epoch %d (best valid NDCG@10 %.4f)", ckpt, start_epoch, sel.best)
        t_start = time.perf_counter()
        t_excluded = 0.0  # time spent in epoch callbacks
        bar = tqdm(
            range(start_epoch, cfg.epochs),
            desc=f"train {model.name}",
            disable=not (self.options.progress and d.is_main),
            unit="ep",
        )
        for epoch in bar:
            net.train()
            t0 = time.perf_counter()
            total_loss, n_batches, tokens = 0.0, 0, 0
            for batch in model.train_batches(data, gen):
                tokens += int(batch["n_tokens"].sum()) if "n_tokens" in batch else 0
                weight = 1.0
                if d.active:  # this rank's share; weighted so the ranks' mean is the batch's loss
                    part, empty = split_batch(batch, d.rank, d.world)
                    weight = (
                        0.0 if empty else d.world * model.loss_terms(part) / max(1, model.loss_terms(batch))
                    )
                    batch = part
                batch = {k: v.to(model.device, non_blocking=True) for k, v in batch.items()}
                loss = step_fn(batch) * weight if d.active else step_fn(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update()
                total_loss += float(loss.detach())
                n_batches += 1
            if d.active:
                total_loss = all_reduce_mean([total_loss], model.device)[0]
            rec = EpochRecord(
                epoch + 1, total_loss / max(1, n_batches), time.perf_counter() - t0, None, tokens
            )
            if ema is not None:
                ema.swap()  # validation, callbacks and the best state see the averaged weights
            if d.is_main and validating and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                res = evaluate(model, vset, ks=(10,), extra=False)
                rec.valid_ndcg = res.metrics["NDCG@10"]
                if sel.observe(rec.valid_ndcg, ndcg_standard_error(res.ranks, 10)):
                    best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                    model.meta["best_epoch"] = epoch + 1
                    model.meta["seconds_to_best"] = time.perf_counter() - t_start - t_excluded
            rec.elapsed = time.perf_counter() - t_start - t_excluded
            if model.epoch_callbacks and d.is_main:
                t_cb = time.perf_counter()
                for cb in model.epoch_callbacks:
                    cb(rec, model)
                net.train()
                t_excluded += time.perf_counter() - t_cb
            if ema is not None:
                ema.swap()
            stop = validating and sel.bad >= cfg.patience
            if d.active:  # every rank stops at rank 0's decision and records its validation
                rec.valid_ndcg, stop = broadcast_object((rec.valid_ndcg, stop))
            history.append(rec)
            bar.set_postfix(
                loss=f"{rec.loss:.4f}",
                val_ndcg10=f"{rec.valid_ndcg:.4f}" if rec.valid_ndcg is not None else "-",
            )
            log.info(
                "epoch %d loss %.4f valid NDCG@10 %s (%.1fs)",
                rec.epoch,
                rec.loss,
                rec.valid_ndcg,
                rec.seconds,
            )
            if ckpt is not None:
                rngs = gather_objects(_rng_states(model)) if d.active else []
                if d.is_main:
                    if ema is not None:  # before trainer.json, which marks the checkpoint complete
                        ckpt.mkdir(parents=True, exist_ok=True)
                        save_tensors(ema.state(), ckpt / "ema.safetensors")
                    _save_checkpoint(ckpt, model, opt, sched, gen, epoch + 1, sel, history, best_state, rngs)
            if stop:
                break
        bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        elif ema is not None:  # no validation: the fitted model is the average
            ema.swap()
        model.meta["valid_ndcg@10"] = sel.kept if sel.kept >= 0 else None  # the kept checkpoint's
        model.meta["best_valid_ndcg@10"] = sel.best if sel.best >= 0 else None
        model.meta["epochs_run"] = len(history)
        model.meta["train_seconds"] = time.perf_counter() - t_start - t_excluded
        model.meta["train_log"] = [vars(h) for h in history]
        if d.active:  # every rank returns rank 0's selected model
            broadcast_module(net)
            keys = ("valid_ndcg@10", "best_valid_ndcg@10", "best_epoch", "seconds_to_best", "train_seconds")
            main_meta = broadcast_object({k: model.meta[k] for k in keys if k in model.meta})
            model.meta.update(main_meta)
            model.meta["distributed"] = {"world_size": d.world, "backend": backend_for(model.device)}
        net.eval()
        return history


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _save_checkpoint(
    d: Path,
    model: Trainable,
    opt: torch.optim.Optimizer,
    sched: Any,
    gen: torch.Generator,
    epoch: int,
    sel: CheckpointSelector,
    history: list[EpochRecord],
    best_state: dict[str, torch.Tensor] | None,
    rank_rngs: list[dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write a checkpoint (`rank_rngs`: every rank's random states, in rank order, in a
    distributed run; rank r > 0 reads its own back as ``rank{r}.*``)."""
    net = model.net
    assert net is not None
    d.mkdir(parents=True, exist_ok=True)
    save_tensors(
        {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, d / "last.safetensors"
    )
    if best_state is not None:
        save_tensors(best_state, d / "best.safetensors")
    ot, ometa = _flatten_optimizer(opt)
    save_tensors(ot, d / "optimizer.safetensors")
    rng = {"rng": gen.get_state()} | _rng_states(model)  # torch: dropout's generator
    for r, states in enumerate(rank_rngs or []):
        if r > 0:
            rng |= {f"rank{r}.{k}": v for k, v in states.items()}
    save_tensors(rng, d / "rng.safetensors")
    state = {
        "epoch": epoch,
        "best": sel.best,
        "bad": sel.bad,
        "selection": {"best_se": sel.best_se, "kept": sel.kept},
        "history": [vars(h) for h in history],
        "optimizer": ometa,
        "scheduler": sched.state_dict() | {"lr_lambdas": None},
        "world_size": max(1, len(rank_rngs or [])),
    }
    tmp = d / "trainer.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(d / "trainer.json")


def _load_checkpoint(
    d: Path,
    model: Trainable,
    opt: torch.optim.Optimizer,
    sched: Any,
    gen: torch.Generator,
    sel: CheckpointSelector,
    rank: Dist = SINGLE,
) -> tuple[int, list[EpochRecord], dict[str, torch.Tensor] | None]:
    """Restore a checkpoint into the given objects (and `sel`); returns (epoch, history, best state).
    Every rank of a distributed run reads the same files (rank 0 wrote them); rank r > 0 takes its
    own random states when the checkpoint has them (same world size), else keeps its fresh ones."""
    net = model.net
    assert net is not None
    state = json.loads((d / "trainer.json").read_text())
    net.load_state_dict(load_file(str(d / "last.safetensors")))
    ot = load_file(str(d / "optimizer.safetensors"))
    ometa = state["optimizer"]
    opt_state: dict[int, dict[str, Any]] = {}
    for key, v in ot.items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    for key, v in ometa["scalars"].items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": ometa["param_groups"]})
    sch = dict(state["scheduler"])
    sch.pop("lr_lambdas", None)
    sched.last_epoch = sch.get("last_epoch", sched.last_epoch)
    sched._step_count = sch.get("_step_count", 1)  # noqa: SLF001
    rng = load_file(str(d / "rng.safetensors"))
    gen.set_state(rng["rng"])
    if rank.rank == 0:
        _set_rng_states(model, rng)
    else:
        prefix = f"rank{rank.rank}."
        own = {k[len(prefix) :]: v for k, v in rng.items() if k.startswith(prefix)}
        if own and int(state.get("world_size", 1)) == rank.world:
            _set_rng_states(model, own)
        else:
            log.warning(
                "%s was written by a run of another size: rank %d keeps fresh random states", d, rank.rank
            )
    best_state = load_file(str(d / "best.safetensors")) if (d / "best.safetensors").exists() else None
    history = [EpochRecord(**h) for h in state["history"]]
    sel.best, sel.bad = float(state["best"]), int(state["bad"])
    extra = state.get("selection", {})  # absent in checkpoints written before select_within_se
    sel.best_se, sel.kept = float(extra.get("best_se", 0.0)), float(extra.get("kept", sel.best))
    return int(state["epoch"]), history, best_state
