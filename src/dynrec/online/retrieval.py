"""Top-k from live per-user states, exact or through an approximate index.

The exact path scores every item from the states (`StateAdapter.score`), masks the excluded
items and takes the top k. With an `AnnIndex` over the model's output item table
(`dynrec.models.retrieval`), a state whose scores are a dot product (`StateAdapter.query_embeddings`,
e.g. ALS's folded-in user vector ``A⁻¹b``) is answered by the index instead, with the same
exclusions; the other rows stay exact: the adapter says which rows its scores rank by the dot
product alone (`StateAdapter.dot_rows`: not a row the interest-shift lean is changing), and a row
whose query vector is zero (no known item in the history) is ranked by the model's own tie order.
Each row says which retrieval served it (``"exact"`` or ``"ann:<kind>"``).

Used by the online session (a stored user's recommendations in the service, whatever process
stepped the state: an HTTP ingest or ``dynrec consume``) and by the replay engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from dynrec.data.query import topk_stable
from dynrec.models.retrieval import AnnIndex
from dynrec.online.adapters import StateAdapter, StateBatch

__all__ = ["StateTopK", "state_top_k"]

EXACT = "exact"


@dataclass(frozen=True)
class StateTopK:
    """[B, k] item indices and scores (best first; unfilled slots: item 0, score -inf) and which
    retrieval served each row."""

    items: torch.Tensor
    scores: torch.Tensor
    served: tuple[str, ...]


def state_top_k(
    adapter: StateAdapter,
    state: StateBatch,
    k: int,
    *,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    index: AnnIndex | None = None,
) -> StateTopK:
    """The top `k` of each state row (see the module docstring). `exclude`: (row, item) index
    pairs never returned (seen items); `index`: the approximate index (None = exact)."""
    b = adapter.size(state)
    k = max(0, min(int(k), adapter.n_items - 1))
    ann = np.zeros(b, dtype=bool)
    q = None
    if index is not None and b and k:
        q = adapter.query_embeddings(state)
        if q is not None:
            ann = adapter.dot_rows(state) & (q != 0).any(dim=1).numpy()
    items = torch.zeros(b, k, dtype=torch.int64)
    scores = torch.full((b, k), -torch.inf, dtype=torch.float32)
    if ann.any():
        assert index is not None and q is not None
        rows = np.flatnonzero(ann)
        got_i, got_s = index.search(q[torch.from_numpy(rows)], k, exclude=_rows_of(exclude, rows, b))
        items[torch.from_numpy(rows)] = got_i
        scores[torch.from_numpy(rows)] = got_s
    if not ann.all():
        rows = np.flatnonzero(~ann)
        sub = state if rows.size == b else adapter.select(state, rows)
        s = adapter.score(sub)
        sel = _rows_of(exclude, rows, b)
        if sel is not None and sel[0].numel():
            s[sel[0], sel[1]] = -torch.inf
        s[:, 0] = -torch.inf
        top, vals = topk_stable(s, k)
        items[torch.from_numpy(rows)] = top
        scores[torch.from_numpy(rows)] = vals
    kind = EXACT if index is None else f"ann:{index.config.kind}"
    return StateTopK(items, scores, tuple(kind if a else EXACT for a in ann.tolist()))


def _rows_of(
    exclude: tuple[torch.Tensor, torch.Tensor] | None, rows: npt.NDArray[np.int64], b: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The pairs of `exclude` on `rows`, renumbered 0..len(rows)-1."""
    if exclude is None:
        return None
    if rows.size == b:
        return exclude
    new = torch.full((b,), -1, dtype=torch.int64)
    new[torch.from_numpy(rows)] = torch.arange(rows.size)
    r = new[exclude[0]]
    keep = r >= 0
    return r[keep], exclude[1][keep]
