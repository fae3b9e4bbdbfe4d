"""Planted-cycle fixture for the sequence-model tests: items form disjoint cycles a -> b -> c -> a
and each user walks one cycle from a random start, so the next item is fully determined by the last
one (targets repeat earlier items: evaluate with ``exclude_seen=False``)."""

from __future__ import annotations

import numpy as np

from dynrec.data.dataset import InteractionData
from dynrec.data.vocab import Vocabulary


def planted_cycles(
    n_users: int = 200,
    n_cycles: int = 10,
    cycle_len: int = 3,
    min_len: int = 8,
    max_len: int = 20,
    seed: int = 0,
) -> InteractionData:
    rng = np.random.default_rng(seed)
    lens = rng.integers(min_len, max_len + 1, n_users)
    cyc = rng.integers(0, n_cycles, n_users)
    start = rng.integers(0, cycle_len, n_users)
    users = np.repeat(np.arange(1, n_users + 1), lens)
    t = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)  # step within the walk
    items = np.repeat(cyc, lens) * cycle_len + (np.repeat(start, lens) + t) % cycle_len + 1
    ts = 1_000_000 + np.cumsum(rng.integers(1, 600, t.shape))  # increasing, random gaps
    uv = Vocabulary(f"u{i}" for i in range(1, n_users + 1))
    iv = Vocabulary(f"i{i}" for i in range(1, n_cycles * cycle_len + 1))
    return InteractionData.from_arrays(users, items, timestamps=ts, user_vocab=uv, item_vocab=iv)
