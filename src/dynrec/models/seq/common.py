"""Shared machinery for the sequence models (SASRec, BERT4Rec, GRU4Rec, Caser).

Training data are pre-tensorised **once per run** (`training_sequences`): every user's time-ordered
training sequence becomes one row of a padded ``[n_rows, max_len + 1]`` LongTensor holding its last
``max_len + 1`` items (optionally plus earlier, sliding windows for long users). An epoch is a
shuffled permutation of the rows cut into slices (`SequenceBatches`); with bucketing, rows of
similar length share a batch and each batch is trimmed to its longest row, so padding is small.
A model reads ``inputs = seq[:, :-1]`` and predicts ``targets = seq[:, 1:]`` at every real position
(`next_item_pairs`), SASRec-style: one sample per sequence, a target at every position — not one
sample per prefix.

Losses over the item catalogue (`catalogue_loss`):

* ``"ce"`` — full-catalogue softmax cross-entropy, computed by `full_ce_loss` in chunks of rows with
  the gradient formed inside the chunk loop ("fused linear + cross-entropy"), so the ``[N, n_items]``
  logits never exist at once: memory is ``O(chunk * n_items)`` and the FLOPs are the same 3 matrix
  products autograd would do.
* ``"sampled"`` — sampled softmax with negatives shared across the batch, drawn uniformly or by
  popularity, with the log-Q correction (Yi et al., RecSys 2019) and accidental hits masked: for
  catalogues too large for the full softmax.
* ``"auto"`` — ``"ce"`` up to `SequenceConfig.sampled_above` items, ``"sampled"`` above
  (`resolve_loss`); a model writes the resolved choice back into its config when it fits.

`biased_ce` is `catalogue_loss` for logits with a per-item bias (GRU4Rec, Caser, the MLP).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from dynrec.data.dataset import IntArray, InteractionData
from dynrec.models.config import NonNegInt, PositiveInt
from dynrec.models.neural import NeuralConfig

__all__ = [
    "SequenceBatches",
    "SequenceConfig",
    "biased_ce",
    "catalogue_loss",
    "full_ce_loss",
    "log_popularity",
    "next_item_pairs",
    "resolve_amp",
    "resolve_loss",
    "sampled_softmax_loss",
    "training_sequences",
]


Amp = Literal["none", "bf16", "auto"]


@dataclass(frozen=True)
class SequenceConfig(NeuralConfig):
    """Options shared by the sequence models (on top of the Trainer's `NeuralConfig`)."""

    max_len: PositiveInt = 200
    """Items of history the model reads (training rows hold ``max_len + 1`` items)."""
    window_stride: NonNegInt = 0
    """0: one training row per user (the last ``max_len + 1`` items). >0: also earlier windows of
    long users, ending every ``window_stride`` items back from the end (sliding windows)."""
    loss: Literal["ce", "sampled", "auto"] = "ce"
    """ce: full-catalogue cross-entropy | sampled: sampled softmax (big catalogues) | auto: ce up to
    `sampled_above` items, sampled above (`resolve_loss`)."""
    sampled_above: PositiveInt = 100_000
    """With ``loss="auto"``: catalogue size (items, padding excluded) above which training uses
    sampled softmax. The full cross-entropy costs ``O(targets x n_items)`` FLOPs per batch (three
    ``[chunk, d] x [d, n_items]`` products) and ``O(chunk x n_items)`` memory for a chunk's logits,
    both growing with the catalogue, while sampled softmax stays ``O(targets x n_negatives)``. Full
    CE is the more accurate loss (every item is a negative: the SASRec+CE result), and up to about
    1e5 items its output layer is affordable: with the default 64-dimensional items, a chunk of at
    least 128 rows (the chunk floor) holds at most ~13M logits (~50 MB float32), and the output
    layer's cost per target stays within a few hundred times the sampled loss's. Beyond that
    the output layer dominates a step and its logits outgrow cache and memory budgets, so the
    sampled loss (log-Q corrected) takes over. Every registered dataset (ml-100k/1m, Amazon) is far
    below it and keeps full CE."""
    n_negatives: PositiveInt = 256
    """Negatives per batch for ``loss="sampled"`` (shared by every position of the batch)."""
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    """uniform | popularity (sampled softmax; log-Q corrected either way)."""
    ce_chunk: NonNegInt = 0
    """Rows per chunk of the full cross-entropy; 0 = sized so a chunk's logits stay ~4 MB (cache-sized)."""
    bucket: bool = True
    """Batch rows of similar length together (less padding) instead of a plain shuffle."""
    amp: Amp = "none"
    """Training precision: none (float32) | bf16 (autocast matrix products to bfloat16; softmax and
    the loss stay float32) | auto (bf16 where the hardware has it: a CPU with AVX512-BF16/AMX or a
    CUDA GPU with bf16, else float32). Scoring is always float32."""


@functools.lru_cache(maxsize=16)
def resolve_amp(amp: str, device: torch.device) -> bool:
    """Whether training on `device` runs in bfloat16 for the config value `amp` (none|bf16|auto).
    Cached: it is asked on every training step."""
    if amp == "none":
        return False
    if amp == "bf16":
        return True
    if amp != "auto":
        raise ValueError(f"amp must be none, bf16 or auto, not {amp!r}")
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


# ---- pre-tensorised training rows -----------------------------------------------------------


def training_sequences(
    data: InteractionData, max_len: int, *, stride: int = 0, left: bool = False, min_len: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded training rows (0 = padding) and their lengths, built with array ops only.

    Each user with at least `min_len` events gives one row: the last ``max_len + 1`` items of its
    sequence. With ``stride > 0`` long users also give earlier windows, ending ``stride``,
    ``2 * stride``, … items before the end (each again ``max_len + 1`` items, at least `min_len`).
    Rows are right-padded (items in columns ``0..len-1``) unless `left`, where the newest item sits in
    the last column. Returns ``(seqs [n_rows, max_len + 1] int64, lengths [n_rows] int64)``.
    """
    width = max_len + 1
    lens = data.lengths()
    starts = data.indptr[:-1]
    users = np.flatnonzero(lens >= min_len)
    ends = data.indptr[1:][users]  # exclusive end of each user's last window (flat positions)
    first = starts[users]
    if stride > 0:
        # number of extra windows: ends e - stride*j with e - stride*j - first >= min_len
        n_win = 1 + np.maximum(0, (lens[users] - min_len) // stride)
        rep = np.repeat(np.arange(len(users)), n_win)
        offs = np.arange(int(n_win.sum())) - np.repeat(np.cumsum(n_win) - n_win, n_win)
        ends = ends[rep] - offs * stride
        first = first[rep]
    w_len = np.minimum(ends - first, width).astype(np.int64)
    w_start = ends - w_len
    n_rows = len(w_len)
    out = np.zeros((n_rows, width), dtype=np.int64)
    total = int(w_len.sum())
    if total:
        rows = np.repeat(np.arange(n_rows), w_len)
        within = np.arange(total) - np.repeat(np.cumsum(w_len) - w_len, w_len)
        src = np.repeat(w_start, w_len) + within
        cols = (np.repeat(width - w_len, w_len) + within) if left else within
        out[rows, cols] = data.items[src]
    return torch.from_numpy(out), torch.from_numpy(w_len)


class SequenceBatches:
    """Epochs over pre-tensorised rows: slices of a shuffled permutation, trimmed to their content.

    With `bucket`, the permutation is cut into groups of ``bucket_batches`` batches and each group is
    sorted by length before slicing (the batch order is shuffled again), so a batch holds rows of
    similar length and is trimmed to its longest one (right-padded rows keep their first columns,
    left-padded rows their last ones). Each batch is ``{"seq": [B, m], "n_tokens": [1]}`` where
    ``n_tokens`` counts the real next-item targets (for throughput reports).
    """

    def __init__(
        self,
        seqs: torch.Tensor,
        lengths: torch.Tensor,
        batch_size: int,
        *,
        bucket: bool = True,
        bucket_batches: int = 32,
        left: bool = False,
    ) -> None:
        self.seqs = seqs
        self.lengths = lengths
        self.batch_size = max(1, batch_size)
        self.bucket = bucket
        self.bucket_batches = max(1, bucket_batches)
        self.left = left

    def __len__(self) -> int:
        return math.ceil(int(self.seqs.shape[0]) / self.batch_size)

    def batch_indices(self, gen: torch.Generator) -> list[torch.Tensor]:
        n = int(self.seqs.shape[0])
        perm = torch.randperm(n, generator=gen)
        if not self.bucket:
            return list(torch.split(perm, self.batch_size))
        group = self.batch_size * self.bucket_batches
        batches: list[torch.Tensor] = []
        for g in torch.split(perm, group):
            order = torch.argsort(self.lengths[g], descending=True, stable=True)
            batches.extend(torch.split(g[order], self.batch_size))
        shuffle = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i] for i in shuffle]

    def __call__(self, gen: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self.batch_indices(gen):
            m = int(self.lengths[idx].max())
            rows = self.seqs[idx]
            seq = rows[:, -m:] if self.left else rows[:, :m]
            n_tok = (self.lengths[idx] - 1).clamp(min=0).sum()
            yield {"seq": seq.contiguous(), "n_tokens": n_tok.reshape(1)}


def next_item_pairs(seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``inputs = seq[:, :-1]``, ``targets = seq[:, 1:]`` and the mask of real targets (``> 0``)."""
    inputs, targets = seq[:, :-1], seq[:, 1:]
    return inputs, targets, targets > 0


def log_popularity(data: InteractionData) -> torch.Tensor:
    """log(1 + training count) per item ([n_items], column 0 = 0): the empty-history fallback."""
    counts = torch.from_numpy(data.item_counts().astype(np.float32))
    out = torch.log1p(counts)
    out[0] = 0.0
    return out


# ---- catalogue losses -----------------------------------------------------------------------


def _chunk_rows(n_items: int, chunk: int) -> int:
    # ~1M logits (4 MB) per chunk: the softmax passes stay in cache (larger chunks spill and are
    # markedly slower on a CPU).
    return chunk if chunk > 0 else max(128, (1 << 20) // max(1, n_items))


class _FusedLinearCE(torch.autograd.Function):
    """mean_i CE(softmax(h_i Wᵀ), t_i) over rows, chunked; gradients formed in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        bf16: bool,
    ) -> torch.Tensor:
        n = int(hidden.shape[0])
        need = bool(ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        mm_dtype = torch.bfloat16 if bf16 else hidden.dtype
        w = weight.detach().to(mm_dtype)
        h_all = hidden.detach()
        grad_h = torch.empty_like(h_all) if need else None
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need else None
        total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        inv_n = 1.0 / max(1, n)
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            h = h_all[a:b].to(mm_dtype)
            t = targets[a:b]
            logits = (h @ w.T).to(total.dtype)  # [c, n_items]
            logits[:, 0] = -torch.inf  # padding is never a target
            # one pass of exp: p = exp(z - max) / sum, lse = max + log(sum)
            zmax = logits.amax(dim=1, keepdim=True)
            z_t = logits.gather(1, t[:, None])
            p = logits.sub_(zmax).exp_()
            ssum = p.sum(dim=1, keepdim=True)
            total += (zmax + ssum.log() - z_t).sum()
            if need:
                assert grad_h is not None and grad_w is not None
                p.mul_(ssum.reciprocal_().mul_(inv_n))  # softmax / N, in place
                p[torch.arange(b - a, device=p.device), t] -= inv_n
                pm = p.to(mm_dtype)
                grad_h[a:b] = (pm @ w).to(grad_h.dtype)
                grad_w += (pm.T @ h).to(acc)
        if need:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if grad_w is not None else None)
        return total * inv_n

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None


def full_ce_loss(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, chunk: int = 0, bf16: bool = False
) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(hidden @ weight.T)`` against `targets` over the whole catalogue.

    hidden [N, d], weight [n_items, d] (row 0 = padding, excluded), targets [N] in ``1..n_items-1``.
    Rows are processed `chunk` at a time (0 = automatic) so memory stays ``O(chunk * n_items)``;
    with `bf16` the products run in bfloat16 (softmax in float32).
    """
    if hidden.shape[0] == 0:
        return (hidden.sum() + weight.sum()) * 0.0
    out = _FusedLinearCE.apply(hidden, weight, targets, _chunk_rows(int(weight.shape[0]), chunk), bf16)  # type: ignore[no-untyped-call]
    assert isinstance(out, torch.Tensor)
    return out


def sampled_softmax_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    n_negatives: int,
    gen: torch.Generator,
    probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax with `n_negatives` negatives shared by all rows, log-Q corrected.

    Negatives are drawn with replacement from `probs` ([n_items] on CPU, 0 at padding) or uniformly
    from ``1..n_items-1``; both the positive and the negative logits get ``- log(K q(item))``, and a
    negative equal to the row's target is masked out.
    """
    n_items = int(weight.shape[0])
    if probs is None:
        neg = torch.randint(1, n_items, (n_negatives,), generator=gen)
        logq_neg = torch.full((n_negatives,), math.log(n_negatives / (n_items - 1)))
        logq_pos = torch.full(targets.shape, math.log(n_negatives / (n_items - 1)))
    else:
        neg = torch.multinomial(probs, n_negatives, replacement=True, generator=gen)
        logq = torch.log(probs.clamp_min(1e-12) * n_negatives)
        logq_neg = logq[neg]
        logq_pos = logq[targets.cpu()]
    dev = hidden.device
    neg, logq_neg, logq_pos = neg.to(dev), logq_neg.to(dev), logq_pos.to(dev)
    pos_logit = (hidden * weight[targets]).sum(-1) - logq_pos  # [N]
    neg_logit = hidden @ weight[neg].T - logq_neg[None, :]  # [N, K]
    neg_logit = neg_logit.masked_fill(neg[None, :] == targets[:, None], -torch.inf)
    logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)
    return nn.functional.cross_entropy(logits, torch.zeros_like(targets))


def resolve_loss(cfg: SequenceConfig, n_items: int) -> Literal["ce", "sampled"]:
    """The loss `cfg.loss` stands for with a catalogue of `n_items` rows (padding row 0 included):
    ``"auto"`` is ``"ce"`` up to ``cfg.sampled_above`` items and ``"sampled"`` above."""
    if cfg.loss != "auto":
        return cfg.loss
    return "sampled" if n_items - 1 > cfg.sampled_above else "ce"


def catalogue_loss(
    cfg: SequenceConfig,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    gen: torch.Generator | None = None,
    probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss `cfg.loss` names, over rows ``hidden [N, d]`` with next items ``targets [N]``
    (``"auto"`` resolved by `resolve_loss` over the rows of `weight`)."""
    bf16 = resolve_amp(cfg.amp, hidden.device)
    loss = resolve_loss(cfg, int(weight.shape[0]))
    if loss == "ce":
        return full_ce_loss(hidden, weight, targets, chunk=cfg.ce_chunk, bf16=bf16)
    if loss == "sampled":
        if gen is None:
            raise ValueError("sampled softmax needs a generator")
        if cfg.negative_sampling == "popularity" and probs is None:
            raise ValueError("popularity negative sampling needs the item probabilities")
        p = probs if cfg.negative_sampling == "popularity" else None
        with torch.autocast(hidden.device.type, dtype=torch.bfloat16, enabled=bf16):
            return sampled_softmax_loss(
                hidden, weight, targets, n_negatives=cfg.n_negatives, gen=gen, probs=p
            )
    raise ValueError(f"unknown loss {cfg.loss!r} (ce, sampled)")


def biased_ce(
    cfg: SequenceConfig,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    gen: torch.Generator | None = None,
    probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """`catalogue_loss` of logits ``hidden @ weight.T + bias`` ([N, D], [V, D], [V]) at `targets` [N]:
    the bias rides as an extra column, ``[hidden, 1] @ [weight, bias].T``."""
    if bias is not None:
        hidden = torch.cat([hidden, hidden.new_ones(hidden.shape[0], 1)], dim=1)
        weight = torch.cat([weight, bias[:, None]], dim=1)
    return catalogue_loss(cfg, hidden, weight, targets, gen=gen, probs=probs)


def sampling_probs(data: InteractionData, power: float = 1.0) -> torch.Tensor:
    """Popularity^power distribution over items (0 at padding) for negative sampling."""
    counts = data.item_counts().astype(np.float64) ** power
    counts[0] = 0.0
    return torch.from_numpy(counts / max(counts.sum(), 1e-12)).float()


def histories_right_padded(
    indptr: IntArray, items: IntArray, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `length` items of each ragged history, right-padded: ([B, length], lengths [B])."""
    lens = np.minimum(np.diff(indptr), length)
    b = len(lens)
    out = np.zeros((b, max(1, length)), dtype=np.int64)
    total = int(lens.sum())
    if total:
        rows = np.repeat(np.arange(b), lens)
        within = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        src = np.repeat(indptr[1:] - lens, lens) + within
        out[rows, within] = items[src]
    return torch.from_numpy(out), torch.from_numpy(lens.astype(np.int64))
