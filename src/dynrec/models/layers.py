"""Small `nn.Module` building blocks shared by the neural models.

`Dropout` is `nn.Dropout` with a faster CPU path. PyTorch's CPU dropout draws one Mersenne-Twister
number per element (`bernoulli_`), a large share of a small Transformer's training step on a CPU.
Here one 64-bit draw feeds four elements: the draws are viewed as int16 lanes and an element is
kept when its lane is at or above the threshold, so the keep probability is ``1 - p`` rounded to a
multiple of 1/65,536 (|error| <= 7.7e-6), at a fraction of the cost. The mask is stored as bytes for the backward pass. On other devices (CUDA's dropout is already fused and
fast), in eval mode and at ``p == 0`` it is exactly `F.dropout`. Random numbers come from the
default generator, so `torch.manual_seed` makes it reproducible like `nn.Dropout`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "dropout_mask"]

_I16_MIN = -(1 << 15)
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


def dropout_mask(
    shape: torch.Size | tuple[int, ...], p: float, device: torch.device | None = None
) -> torch.Tensor:
    """A bool keep-mask of `shape`: each element True with probability ``1 - p`` (to 1/65,536)."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(_I64_MIN, _I64_MAX)
    lanes = words.view(torch.int16)[:n].view(shape)
    return lanes >= _I16_MIN + round(p * 65536)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        keep = dropout_mask(x.shape, p, x.device)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


class Dropout(nn.Module):
    """Drop-in `nn.Dropout` (inverted dropout, probability `p`) with a fast CPU training path."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        out = _MaskedScale.apply(x, self.p)  # type: ignore[no-untyped-call]
        assert isinstance(out, torch.Tensor)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"
