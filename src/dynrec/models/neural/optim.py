"""The Trainer's optimisation pieces: the optimiser a `NeuralConfig` names (`make_optimizer`), the
learning-rate factor of its warm-up + schedule (`lr_factor`) and an exponential moving average of
the weights (`WeightAverage`, ``ema_decay``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dynrec.models.neural.config import NeuralConfig

__all__ = ["WeightAverage", "lr_factor", "make_optimizer"]


def make_optimizer(cfg: NeuralConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser `cfg` names (adam, adamw, sgd) over `params`."""
    opt = cfg.optimizer.lower()
    if opt == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if opt == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if opt == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adam, adamw, sgd)")


class WeightAverage:
    """EMA of a module's floating-point parameters; `swap()` exchanges it with the live weights."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), not {decay}")
        self.decay = decay
        self.params = [p for p in net.parameters() if p.requires_grad and p.is_floating_point()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)
        self.steps += 1

    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to restore)."""
        for p, s in zip(self.params, self.shadow, strict=True):
            p.data, s.data = s.data, p.data

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"p{i}": s.detach().cpu().contiguous() for i, s in enumerate(self.shadow)}
        out["steps"] = torch.tensor(self.steps)
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for i, s in enumerate(self.shadow):
            s.copy_(state[f"p{i}"])
        self.steps = int(state["steps"])


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning-rate multiplier at `step` of `total`: linear warm-up, then constant, cosine or linear decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown schedule {schedule!r} (constant, cosine, linear)")
