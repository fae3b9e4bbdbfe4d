"""Vocabulary: external string ids <-> contiguous integer indices (0 is reserved for padding)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from dynrec.errors import UnknownIdError

UnknownPolicy = Literal["error", "skip", "add"]
PAD = 0


class Vocabulary:
    """Maps external ids (strings) to indices 1..n; index 0 is padding / "unknown".

    The vocabulary only grows (`add`); indices of existing ids never change, so embeddings
    trained for them stay valid when new items or users arrive.
    """

    __slots__ = ("_ids", "_index")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self.add(ids)

    def __len__(self) -> int:
        """Number of real ids (excluding padding)."""
        return len(self._ids)

    @property
    def size(self) -> int:
        """Number of rows an embedding table needs: ``len(self) + 1`` (row 0 = padding)."""
        return len(self._ids) + 1

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._ids == other._ids

    def __hash__(self) -> int:
        return hash(tuple(self._ids))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids)"

    @property
    def ids(self) -> Sequence[str]:
        return tuple(self._ids)

    def add(self, ids: Iterable[str]) -> npt.NDArray[np.int64]:
        """Add ids not yet present (in order of first appearance); return the index of every id."""
        out: list[int] = []
        for raw in ids:
            key = str(raw)
            idx = self._index.get(key)
            if idx is None:
                self._ids.append(key)
                idx = len(self._ids)
                self._index[key] = idx
            out.append(idx)
        return np.asarray(out, dtype=np.int64)

    def index(self, external_id: str, policy: UnknownPolicy = "error") -> int:
        """Index of one id. Unknown ids: "error" raises, "skip" returns 0, "add" grows the vocabulary."""
        idx = self._index.get(str(external_id))
        if idx is not None:
            return idx
        if policy == "add":
            return int(self.add([str(external_id)])[0])
        if policy == "skip":
            return PAD
        raise UnknownIdError(f"unknown id {external_id!r} (vocabulary of {len(self)} ids)")

    def lookup(self, ids: Iterable[str], policy: UnknownPolicy = "error") -> npt.NDArray[np.int64]:
        """Indices of many ids; unknown ones follow `policy` ("skip" maps them to 0)."""
        return np.asarray([self.index(i, policy) for i in ids], dtype=np.int64)

    def to_ids(self, indices: Iterable[int] | npt.NDArray[np.integer[Any]]) -> list[str]:
        """External ids of indices (index 0 has no id and raises)."""
        out = []
        for i in np.asarray(indices, dtype=np.int64).ravel().tolist():
            if i <= 0 or i > len(self._ids):
                raise UnknownIdError(f"index {i} is not in the vocabulary (1..{len(self._ids)})")
            out.append(self._ids[i - 1])
        return out

    def to_json(self) -> str:
        return json.dumps(self._ids)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        ids = json.loads(text)
        if not isinstance(ids, list):
            raise ValueError("vocabulary JSON must be a list of ids")
        return cls(str(i) for i in ids)

    @classmethod
    def from_unique(cls, ids: Sequence[str]) -> Vocabulary:
        """Fast path for ids already known to be unique (no per-id membership check)."""
        v = cls()
        v._ids = [str(i) for i in ids]
        v._index = {k: i + 1 for i, k in enumerate(v._ids)}
        if len(v._index) != len(v._ids):
            raise ValueError("ids are not unique")
        return v
