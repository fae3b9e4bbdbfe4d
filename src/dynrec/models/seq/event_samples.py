"""Training samples built from flat event positions, for gru4rec, caser and mlp, on top of `seq.common`.

* `position_rows`: `common.training_sequences` applied to *flat event positions* (+1, 0 = padding)
  instead of item ids, so one set of rows can gather items, time gaps or anything else per event.
* `flat_gaps` / `gap_bucket`: time since the previous event of the same user, log2-bucketised
  (bucket 0 = unknown / first event) — GRU4Rec's time-gap input.
* `first_event_lookup`: which rows start at a user's first event (the models also learn to score an
  empty history from them: the first item is a target of the empty state).
* `next_event_windows`: for every training event, the `window` items before it (left-padded) — the
  per-event samples Caser trains on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from dynrec.data.dataset import IntArray, InteractionData
from dynrec.models.seq.common import training_sequences


def gap_bucket(gaps: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Bucket of each time gap (seconds, int64): 0 for a negative gap (= unknown / first event),
    else ``1 + floor(log2(1 + gap))`` capped at ``n_buckets - 1``."""
    g = gaps.to(torch.float64).clamp(min=0.0)
    b = (1 + torch.floor(torch.log2(1.0 + g))).to(torch.int64).clamp(max=n_buckets - 1)
    return torch.where(gaps < 0, torch.zeros_like(b), b)


def flat_gaps(indptr: IntArray, timestamps: IntArray) -> IntArray:
    """Gap to the previous event of the same row for every flat event; -1 for a row's first."""
    gaps = np.empty_like(np.asarray(timestamps, dtype=np.int64))
    if gaps.size:
        gaps[0] = -1
        gaps[1:] = timestamps[1:] - timestamps[:-1]
        starts = indptr[:-1][np.diff(indptr) > 0]
        gaps[starts] = -1
    return gaps


def position_rows(data: InteractionData, max_len: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`training_sequences` rows holding flat event position + 1 (0 = padding), right-padded:
    ([n_rows, max_len + 1], lengths [n_rows])."""
    pos = dataclasses.replace(data, items=np.arange(1, data.n_events + 1, dtype=np.int64))
    return training_sequences(pos, max_len, stride=stride)


def padded_lookup(values: IntArray, pad: int) -> torch.Tensor:
    """``[pad, *values]`` as a tensor, to gather by `position_rows` entries."""
    return torch.from_numpy(np.concatenate([np.array([pad], dtype=np.int64), values.astype(np.int64)]))


def first_event_lookup(data: InteractionData) -> torch.Tensor:
    """[1 + n_events] bool, indexed by flat position + 1: is that event its user's first?"""
    first = np.zeros(data.n_events + 1, dtype=bool)
    first[1:] = np.arange(data.n_events) == data.indptr[data.users]
    return torch.from_numpy(first)


def next_event_windows(data: InteractionData, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every event as a sample: the `window` items before it (left-padded, newest last; all padding
    for a user's first event) [N, window], its user [N] and the item itself [N]."""
    pos = np.arange(data.n_events, dtype=np.int64)
    start = data.indptr[data.users]
    offs = np.arange(-window, 0, dtype=np.int64)[None, :]  # [1, W]
    src = pos[:, None] + offs  # [N, W]
    valid = src >= start[:, None]
    hist = np.where(valid, data.items[np.clip(src, 0, None)], 0)
    return (
        torch.from_numpy(np.ascontiguousarray(hist, dtype=np.int64)),
        torch.from_numpy(data.users[pos].astype(np.int64)),
        torch.from_numpy(data.items[pos].astype(np.int64)),
    )
