"""Shared fixtures: tiny deterministic datasets (no real data unless a test is marked slow)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dynrec.data.dataset import InteractionData
from dynrec.data.vocab import Vocabulary
from dynrec.preprocessing.split import Split, leave_one_out

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DYNREC_DATA_DIR", str((REPO.parent / "shared" / "data").resolve()))


def clustered_data(
    n_users: int = 60, n_items: int = 40, n_groups: int = 4, per_user: int = 12, seed: int = 0
) -> InteractionData:
    """Users in `n_groups` taste groups; each consumes a random walk over its group's items
    (with occasional off-group noise), so both CF and sequence models have something to learn."""
    rng = np.random.default_rng(seed)
    items_per_group = n_items // n_groups
    users, items, ts = [], [], []
    for u in range(n_users):
        g = u % n_groups
        own = np.arange(g * items_per_group, (g + 1) * items_per_group) + 1
        seq = rng.permutation(own)[:per_user]
        if rng.random() < 0.3:
            seq[rng.integers(len(seq))] = rng.integers(1, n_items + 1)
        seq = list(dict.fromkeys(int(i) for i in seq))
        users += [u + 1] * len(seq)
        items += seq
        ts += list(range(1000 * u, 1000 * u + len(seq)))
    uv = Vocabulary(f"u{i}" for i in range(1, n_users + 1))
    iv = Vocabulary(f"i{i}" for i in range(1, n_items + 1))
    return InteractionData.from_arrays(users, items, timestamps=ts, user_vocab=uv, item_vocab=iv)


@pytest.fixture(scope="session")
def tiny_data() -> InteractionData:
    return clustered_data()


@pytest.fixture(scope="session")
def tiny_split(tiny_data: InteractionData) -> Split:
    return leave_one_out(tiny_data)


def data_dir() -> Path:
    return Path(os.environ["DYNREC_DATA_DIR"])
