"""The entry of a session's hot cache: one user's decoded model state held in this process, with
what it covers, so a request can tell whether the store moved past it (`dynrec.online.session`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynrec.online.adapters import StateBatch

__all__ = ["HotState"]


@dataclass
class HotState:
    """A user's decoded state in this process: the state, the events of the user's store
    generation it covers, the model version, the seen item indices, how many events it is ahead of
    the store's checkpoint, and the generation (`UserStamp`)."""

    state: StateBatch
    n_events: int
    version: str
    seen: set[int]
    dirty: int = 0
    seen_idx: torch.Tensor | None = None
    generation: int = 0

    def seen_index(self) -> torch.Tensor:
        """The seen item indices as a sorted tensor, kept until the seen set grows."""
        if self.seen_idx is None or self.seen_idx.numel() != len(self.seen):
            self.seen_idx = torch.tensor(sorted(self.seen), dtype=torch.int64)
        return self.seen_idx
