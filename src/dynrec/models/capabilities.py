"""What a model can do beyond scoring, as small typed protocols the model implements in its own file.

Everything above the models (online sessions, the replay engine, the service) asks for a protocol
with ``isinstance(model, Protocol)`` — never a concrete model class, a method-name probe or a
private attribute — so a new model gains a behaviour by implementing it, with no edit elsewhere:

* `IncrementalState` — per-user state: ``init_state(histories)``, ``step_state(state, events)``,
  ``score_state(state)``. Invariant (tested for every implementer): a state built by ``init_state``
  plus any number of ``step_state`` calls scores like ``model.score`` on the whole history.
  `RowStep` steps chosen rows of a state in place (no row copies of a large state);
  `StateQueryEmbeddings` gives a state's `QueryEmbeddings` query vector (ANN retrieval from states).
* `PartialFit` — incremental training on new events with vocabulary growth (``partial_fit``).
* `ItemEmbeddings` — one vector per item (similar items, clustering, ANN indexes, text fusion).
* `Explainer` — per recommended item, how much each history event contributed to its score.
* `ItemText` — a frozen language-model embedding per item (content model, text-aware sequence
  models); new items join the catalogue from their text alone (`add_items`).

A *state* is a dict of tensors holding a batch of users (`StateBatch`); `StateLayout` says along
which dimension each tensor is batched, so generic code can select, stack and split rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import IntArray, QueryBatch

__all__ = [
    "Explainer",
    "IncrementalState",
    "ItemEmbeddings",
    "ItemText",
    "PartialFit",
    "QueryEmbeddings",
    "RowStep",
    "StateBatch",
    "StateQueryEmbeddings",
    "StateLayout",
    "UpdateBatch",
    "UpdateConfig",
    "UpdateOutcome",
]

StateBatch = dict[str, torch.Tensor]
"""A batch of per-user states: named tensors, each with a batch dimension (see `StateLayout`)."""


@dataclass(frozen=True)
class StateLayout:
    """How a model's state tensors are batched.

    `kind` names the state for reports ("kv-cache", "hidden", "fold-in", ...); `batch_dims` gives
    the batch dimension of each tensor whose batch dimension is not 0."""

    kind: str
    batch_dims: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class IncrementalState(Protocol):
    """A model whose per-user state advances event by event (O(1) or O(window) per event)."""

    def state_layout(self) -> StateLayout | None:
        """The layout of this model's state, or None when this configuration has none (e.g.
        absolute positions that a sliding window would invalidate): callers then recompute from
        the history."""
        ...

    def init_state(self, batch: QueryBatch) -> StateBatch:
        """States after consuming each query's history (items are valid model indices)."""
        ...

    def step_state(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, *, inplace: bool = False
    ) -> StateBatch:
        """States after each row consumes one more event (``items [B]``, ``timestamps [B]``).
        With ``inplace=False`` `state` is left unchanged; with ``inplace=True`` the model may
        overwrite `state`'s buffers (for callers that own the state and drop the old one)."""
        ...

    def score_state(self, state: StateBatch) -> torch.Tensor:
        """[B, n_items] float32 CPU scores (column 0 = -inf), a fresh tensor."""
        ...


@dataclass(frozen=True)
class UpdateConfig:
    """How an incremental update trains (the run of `PartialFit.partial_fit`)."""

    epochs: int = 1
    """Passes over the update's training sample (neural models)."""
    learning_rate: float = 0.0
    """0 = `lr_scale` x the model's own learning rate."""
    lr_scale: float = 0.3
    """A gentler step than training from scratch: continuing at the full rate with a fresh
    optimiser moves the weights away from their early-stopped optimum."""
    replay_ratio: float = 1.0
    """Old users replayed per user with new events (neural models), against forgetting."""
    max_replay_users: int = 0
    """Cap on replayed users (0 = no cap)."""
    batch_size: int = 0
    """0 = the model's own batch size."""
    seed: int = 0


@dataclass(frozen=True)
class UpdateBatch:
    """One incremental update, in the model's index space.

    `memory` holds every event the model has learned from, this update's included, in vocabularies
    already grown to name the new users/items (the model's own vocabularies are grown too);
    `previous` is the memory before this update. `users`/`items` are the unique indices the new
    events touch. `fresh` is True when the memory was rewritten since the last update (a user was
    forgotten): anything a model derived from earlier memories must be rebuilt from `memory`."""

    memory: InteractionData
    previous: InteractionData
    users: IntArray
    items: IntArray
    old_n_items: int
    old_n_users: int
    config: UpdateConfig
    rng: np.random.Generator
    fresh: bool = False


@dataclass(frozen=True)
class UpdateOutcome:
    """What an update did: `method` (for reports) and `work_events` = events processed x passes
    over them, a device-independent measure of its compute."""

    method: str
    work_events: int


@runtime_checkable
class PartialFit(Protocol):
    """A model that learns from new events without a refit from scratch."""

    def partial_fit(self, update: UpdateBatch) -> UpdateOutcome:
        """Continue learning from `update` (new users/items included); mutates the model."""
        ...


@runtime_checkable
class ItemEmbeddings(Protocol):
    """A model with one vector per item."""

    def item_embeddings(self) -> torch.Tensor:
        """[n_items, d] float32 CPU item vectors (row 0 = padding)."""
        ...


@runtime_checkable
class Explainer(Protocol):
    """A model that can attribute a recommended item's score to the history events."""

    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Contributions [nnz, k] of each history event (rows aligned with ``batch.items``) to the
        score of each of its query's `items` ([B, k] item indices): for query b, rows
        ``indptr[b]:indptr[b+1]``. Models with additive scores return exact contributions (they
        sum to the item's score, up to a per-query constant); others an attribution."""
        ...


@runtime_checkable
class ItemText(Protocol):
    """A model that reads one frozen text embedding per item (from `dynrec.text`).

    The jobs layer encodes the items' text and hands the table to the model before `fit`
    (`set_item_text`); the table is saved with the model (safetensors), so a saved model scores
    without the encoder. `add_items` appends items that had no events: they are scored from their
    text alone, at once, without retraining."""

    def wants_item_text(self) -> bool:
        """Whether this configuration reads item text (then `set_item_text` must come before `fit`)."""
        ...

    def set_item_text(self, table: torch.Tensor, encoder: str) -> None:
        """``table [n_items, d_text]`` float32, row i = item index i of the vocabulary the model
        is fitted on (row 0 = padding and items without text: zeros); `encoder` names the text
        model that made it (recorded, so `add_items` callers encode new items the same way)."""
        ...

    def item_text_encoder(self) -> str | None:
        """The encoder recorded by `set_item_text` (None when the model reads no text)."""
        ...

    def add_items(self, ids: Sequence[str], table: torch.Tensor) -> None:
        """Append items `ids` (external ids not yet in the item vocabulary) with their text
        embeddings ``[len(ids), d_text]``: the vocabulary and every per-item tensor grow, and the
        new items are recommendable at once (scored from their text alone)."""
        ...


@runtime_checkable
class QueryEmbeddings(Protocol):
    """A model whose score is a dot product: one vector per query against one vector (and an
    optional bias) per item, so an approximate nearest-neighbour index can stand in for the full
    catalogue scan (`dynrec.models.retrieval`).

    Contract (tested for every implementer): for a query with a non-empty history and every item
    ``i >= 1`` of the output table, ``score(batch)[b, i] = q[b] · vectors[i] + bias[i] + c[b]``
    where ``c[b]`` is a per-query constant (it does not change the ranking). Queries with an empty
    history may be scored otherwise by `score` (e.g. by popularity); retrieval scores them with
    `score`. Items beyond the table's rows (added after fit) are not retrieved."""

    def query_embeddings(self, batch: QueryBatch) -> torch.Tensor:
        """[B, d] float32 CPU query vectors of the histories in `batch`."""
        ...

    def output_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(vectors [n, d] float32 CPU, bias [n] float32 CPU or None): the item side of the dot
        product (row 0 = padding; n <= n_items). Not always `ItemEmbeddings.item_embeddings` (a
        model with separate input and output item tables returns the output one here)."""
        ...


@runtime_checkable
class RowStep(Protocol):
    """An `IncrementalState` model that advances chosen rows of a batch of states in place: the
    callers that own a large batch (the replay engine, a session's batched ingest) then copy no
    state rows per event."""

    def step_state_rows_(
        self, state: StateBatch, rows: IntArray, items: IntArray, timestamps: IntArray
    ) -> None:
        """Rows `rows` (distinct) of `state` each consume one more event (``items [R]``,
        ``timestamps [R]``), in place: afterwards `state` equals ``step_state`` applied to those
        rows, the other rows unchanged."""
        ...


@runtime_checkable
class StateQueryEmbeddings(Protocol):
    """An `IncrementalState` model that is also `QueryEmbeddings`: a state gives the query vector,
    so an approximate index can serve users from their live states.

    Contract (tested for every implementer): for a state built from a non-empty history (by
    ``init_state`` and any number of ``step_state`` calls), ``state_query_embeddings(state)``
    equals ``query_embeddings`` of that history, so ``score_state`` ranks the items of the output
    table as ``q · vectors[i] + bias[i]``."""

    def state_query_embeddings(self, state: StateBatch) -> torch.Tensor:
        """[B, d] float32 CPU query vectors of the states."""
        ...
