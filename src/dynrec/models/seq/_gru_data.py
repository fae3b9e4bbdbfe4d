"""Training-data helpers for gru4rec, caser and mlp (pre-tensorised once per run).

* `build_windows`: every user's training sequence cut into windows of `max_len` inputs with the
  next item as target at *every* position (SASRec style: one sample per window, not per prefix),
  right-padded into [N, max_len] tensors. Windows are aligned to the end of each sequence, so the
  newest window is full and only the oldest one may be short.
* `bucketed_batches`: shuffled batches whose rows have similar lengths (little padding), cut to the
  batch's longest row — index gathers only, no per-sample Python.
* `linear_cross_entropy`: full-catalogue softmax cross-entropy of ``h @ W.T + b`` computed in chunks
  of rows with the gradient formed in the forward pass, so the [N, n_items] logits never all exist.
* `gap_bucket`: time since the previous event, log2-bucketised (0 = unknown / first event).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dynrec.data.dataset import IntArray, InteractionData


def gap_bucket(gaps: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Bucket of each time gap (seconds, int64): 0 for a negative gap (= unknown / first event),
    else ``1 + floor(log2(1 + gap))`` capped at ``n_buckets - 1``."""
    g = gaps.to(torch.float64)
    b = 1 + torch.floor(torch.log2(1.0 + g.clamp(min=0.0))).to(torch.int64)
    b = b.clamp(max=n_buckets - 1)
    return torch.where(gaps < 0, torch.zeros_like(b), b)


def flat_gaps(indptr: IntArray, timestamps: IntArray) -> IntArray:
    """Gap to the previous event of the same row for every flat event; -1 for a row's first."""
    gaps = np.empty_like(timestamps)
    if timestamps.size:
        gaps[0] = -1
        gaps[1:] = timestamps[1:] - timestamps[:-1]
        starts = indptr[:-1][np.diff(indptr) > 0]
        gaps[starts] = -1
    return gaps


@dataclass(frozen=True)
class SeqWindows:
    """N right-padded training windows (0 = padding)."""

    inputs: torch.Tensor  # [N, L] item ids
    targets: torch.Tensor  # [N, L] next item at each position
    lengths: torch.Tensor  # [N] real positions
    users: torch.Tensor  # [N] user index
    gaps: torch.Tensor | None  # [N, L] raw time gap (s) of each input event, -1 = unknown

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


def build_windows(
    data: InteractionData, max_len: int, *, all_windows: bool = True, with_gaps: bool = False
) -> SeqWindows:
    """Cut each user's sequence into windows of `max_len` (input, next-item target) pairs.

    A user with n events has n-1 targets (positions 1..n-1); windows are taken from the end in
    steps of `max_len`, so every target appears in exactly one window. With ``all_windows=False``
    only the newest window per user is kept.
    """
    lens = data.lengths()
    n_targets = np.maximum(lens - 1, 0)
    n_win = -(-n_targets // max_len)  # ceil
    if not all_windows:
        n_win = np.minimum(n_win, 1)
    users = np.repeat(np.arange(len(lens), dtype=np.int64), n_win)
    k = np.arange(int(n_win.sum()), dtype=np.int64) - np.repeat(np.cumsum(n_win) - n_win, n_win)
    end = lens[users] - k * max_len  # exclusive end of target positions (within the user)
    start = np.maximum(1, end - max_len)
    wlen = end - start
    first_input = data.indptr[users] + start - 1  # flat position of the first input
    total = int(wlen.sum())
    rows = np.repeat(np.arange(len(users), dtype=np.int64), wlen)
    cols = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(wlen) - wlen, wlen)
    src = np.repeat(first_input, wlen) + cols
    inputs = np.zeros((len(users), max_len), dtype=np.int64)
    targets = np.zeros((len(users), max_len), dtype=np.int64)
    inputs[rows, cols] = data.items[src]
    targets[rows, cols] = data.items[src + 1]
    gaps_t: torch.Tensor | None = None
    if with_gaps:
        g = flat_gaps(data.indptr, data.timestamps)
        gaps = np.full((len(users), max_len), -1, dtype=np.int64)
        gaps[rows, cols] = g[src]
        gaps_t = torch.from_numpy(gaps)
    return SeqWindows(
        torch.from_numpy(inputs),
        torch.from_numpy(targets),
        torch.from_numpy(wlen.astype(np.int64)),
        torch.from_numpy(users),
        gaps_t,
    )


def bucketed_batches(
    lengths: torch.Tensor, batch_size: int, gen: torch.Generator, *, group: int = 32
) -> list[torch.Tensor]:
    """Shuffled index batches; within groups of `group` batches rows are sorted by length
    (descending), so each batch is length-sorted and has little padding. Batch order is shuffled."""
    n = int(lengths.shape[0])
    perm = torch.randperm(n, generator=gen)
    span = batch_size * group
    batches: list[torch.Tensor] = []
    for a in range(0, n, span):
        idx = perm[a : a + span]
        idx = idx[torch.sort(lengths[idx], descending=True, stable=True).indices]
        batches.extend(idx.split(batch_size))
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def window_batch(w: SeqWindows, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gather rows `idx` (length-sorted, descending) cut to their longest row."""
    lens = w.lengths[idx]
    lmax = max(1, int(lens.max()))
    out = {
        "inputs": w.inputs[idx, :lmax],
        "targets": w.targets[idx, :lmax],
        "lengths": lens,
        "users": w.users[idx],
        "n_tokens": lens.sum().reshape(1),
    }
    if w.gaps is not None:
        out["gaps"] = w.gaps[idx, :lmax]
    return out


class _LinearCE(torch.autograd.Function):
    """mean_i CE(h_i @ w.T + b, t_i) with the gradient formed chunk by chunk in forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        targets: torch.Tensor,
        chunk: int,
        mask_padding: bool,
    ) -> torch.Tensor:
        n = h.shape[0]
        need = ctx.needs_input_grad
        grad_h = torch.empty_like(h) if need[0] else None
        grad_w = torch.zeros_like(w) if need[1] else None
        grad_b = torch.zeros_like(b) if (b is not None and need[2]) else None
        loss = torch.zeros((), dtype=torch.float64, device=h.device)
        rows_all = torch.arange(min(chunk, n), device=h.device)
        for a in range(0, n, chunk):
            hc = h[a : a + chunk]
            tc = targets[a : a + chunk]
            logits = hc @ w.T  # [c, V]
            if b is not None:
                logits += b
            if mask_padding:
                logits[:, 0] = -torch.inf
            lse = torch.logsumexp(logits, dim=1)
            rows = rows_all[: hc.shape[0]]
            loss += (lse - logits[rows, tc]).sum(dtype=torch.float64)
            p = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            p[rows, tc] -= 1.0  # d(sum CE)/d logits
            if grad_h is not None:
                torch.mm(p, w, out=grad_h[a : a + chunk])
            if grad_w is not None:
                grad_w.addmm_(p.T, hc)
            if grad_b is not None:
                grad_b += p.sum(0)
        ctx.save_for_backward(
            *(t if t is not None else torch.empty(0) for t in (grad_h, grad_w, grad_b))
        )
        ctx.flags = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.n = max(1, n)
        return (loss / max(1, n)).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        gh, gw, gb = ctx.saved_tensors
        s = g / ctx.n
        fh, fw, fb = ctx.flags
        return (gh * s if fh else None, gw * s if fw else None, gb * s if fb else None, None, None, None)


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    chunk: int = 4096,
    mask_padding: bool = True,
) -> torch.Tensor:
    """Mean full-catalogue cross-entropy of logits ``h @ weight.T + bias`` ([N, D] x [V, D]) against
    `targets` [N]; column 0 (padding) is excluded from the softmax when `mask_padding`. Memory is
    O(chunk * V) instead of O(N * V)."""
    if h.shape[0] == 0:
        return h.sum() * 0.0 + weight.sum() * 0.0
    out: torch.Tensor = _LinearCE.apply(h, weight, bias, targets, chunk, mask_padding)  # type: ignore[no-untyped-call]
    return out
