"""Items as ID embedding + projected language-model text embedding (text-aware sequence models).

`TextItemEmbedding` stands in for a sequence model's ``nn.Embedding`` item table (same call and
``weight`` surface), so the Transformer, its incremental state and the tied output layer use it
unchanged. The vector of item ``i`` is

    v_i = known_i · keep_i · e_i + P(t_i)

with ``e_i`` a learned ID embedding, ``t_i`` the item's frozen, L2-normalised text embedding (from
`dynrec.text`; zeros for items without text) and ``P`` a learned projection (linear, or a two-layer
MLP). ``known_i`` is 1 for items that had training events and 0 for the others (cold items and
items added after training): their ID rows were never trained as positives, so such items are
represented by their text alone. ``keep_i`` is ID-dropout: during training each item's ID part is
dropped with probability ``id_dropout`` (one draw per item per step, shared by the input and the
output side), so the projection must carry the item on its own — what makes the text path useful
for items the model never saw.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["TextItemEmbedding", "TextProjection"]

TextProjection = Literal["linear", "mlp"]


class TextItemEmbedding(nn.Module):
    """``[n_tokens, dim]`` item vectors from ID embeddings plus a projection of ``text [n_tokens, d_text]``.

    Rows past the text table (e.g. BERT4Rec's [MASK] token) have zero text. In eval mode without
    gradients the full table is computed once and reused until the module trains again or grows.
    """

    def __init__(
        self,
        n_tokens: int,
        dim: int,
        text: torch.Tensor,
        *,
        known: torch.Tensor | None = None,
        id_dropout: float = 0.0,
        text_projection: TextProjection = "linear",
    ) -> None:
        super().__init__()
        if text.dim() != 2 or text.shape[0] > n_tokens:
            raise ValueError(f"text table must be [<= {n_tokens}, d], got {tuple(text.shape)}")
        self.dim = dim
        self.id_dropout = float(id_dropout)
        self.text_projection = text_projection
        self.id = nn.Embedding(n_tokens, dim, padding_idx=0)
        full = torch.zeros(n_tokens, text.shape[1], dtype=torch.float32)
        full[: text.shape[0]] = text.float()
        full[0] = 0.0
        self.text: torch.Tensor
        self.register_buffer("text", full)
        k = torch.ones(n_tokens) if known is None else known.float()
        self.known: torch.Tensor
        self.register_buffer("known", k)
        d_text = text.shape[1]
        if text_projection == "mlp":
            self.proj: nn.Module = nn.Sequential(
                nn.Linear(d_text, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
            )
        else:
            self.proj = nn.Linear(d_text, dim)
        self._keep: torch.Tensor | None = None
        self._cache: torch.Tensor | None = None

    @property
    def num_embeddings(self) -> int:
        """Rows of the table (follows the buffers when the vocabulary grows)."""
        return int(self.text.shape[0])

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])

    def train(self, mode: bool = True) -> TextItemEmbedding:
        self._cache = None
        self._keep = None
        super().train(mode)
        return self

    def begin_step(self, gen: torch.Generator | None = None) -> None:
        """Draw this training step's ID-dropout mask (one draw per item, shared by every lookup
        until the next call)."""
        if not self.training or self.id_dropout <= 0.0:
            self._keep = None
            return
        u = torch.rand(self.num_embeddings, generator=gen).to(self.known.device)
        self._keep = (u >= self.id_dropout).to(self.known.dtype)

    def _id_scale(self) -> torch.Tensor:
        return self.known if self._keep is None else self.known * self._keep

    def text_weight(self) -> torch.Tensor:
        """The text-only item vectors ``P(t_i)`` ``[n_tokens, dim]`` (zero for items without text)."""
        text: torch.Tensor = self.proj(self.text)
        return text * (self.text.abs().sum(1, keepdim=True) > 0).to(text.dtype)  # no text -> no bias either

    def _table(self) -> torch.Tensor:
        out: torch.Tensor = self.id.weight * self._id_scale()[:, None] + self.text_weight()
        return out

    @property
    def weight(self) -> torch.Tensor:
        """The full ``[n_tokens, dim]`` table (row 0, padding, is zero)."""
        if self.training or torch.is_grad_enabled():
            return self._table()
        w = self.id.weight
        if self._cache is None or self._cache.device != w.device or self._cache.dtype != w.dtype:
            self._cache = self._table()
        return self._cache

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.numel() * 4 < self.num_embeddings and not self.training:
            scale = self._id_scale()[idx][..., None]
            t = self.text[idx]
            p = self.proj(t) * (t.abs().sum(-1, keepdim=True) > 0).to(t.dtype)
            out: torch.Tensor = self.id(idx) * scale + p
            return out
        return self.weight[idx]

    @torch.no_grad()
    def append(self, text: torch.Tensor) -> None:
        """Append ``text [m, d_text]`` rows as new items (ID part unused: ``known = 0``)."""
        m = int(text.shape[0])
        dev = self.id.weight.device
        w = torch.cat(
            [self.id.weight.detach(), torch.zeros(m, self.dim, device=dev, dtype=self.id.weight.dtype)]
        )
        grown = nn.Embedding(w.shape[0], self.dim, padding_idx=0, device=dev, dtype=w.dtype)
        grown.weight.copy_(w)
        self.id = grown
        self.text = torch.cat([self.text, text.to(dev, torch.float32)])
        self.known = torch.cat([self.known, torch.zeros(m, device=dev, dtype=self.known.dtype)])
        self._cache = None
