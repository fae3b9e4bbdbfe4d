"""Transformer building blocks shared by the sequence models (SASRec, BERT4Rec): their common
options (`TransformerConfig`), rotary position tables, a pre-LayerNorm block whose projection and
output halves can be called separately (for the incremental key/value cache), and
`SeqTransformer`, the embedding + blocks + final norm stack with causal / sliding-window /
bidirectional attention, built from a `TransformerConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dynrec.errors import DynrecError
from dynrec.models.config import Fraction, NonNegInt, PositiveFloat, PositiveInt
from dynrec.models.layers import Dropout
from dynrec.models.seq.common import SequenceConfig
from dynrec.models.seq.item_text import TextItemEmbedding

Positional = Literal["rope", "absolute", "none"]
LongTerm = Literal["none", "gate"]


@dataclass(frozen=True)
class TransformerConfig(SequenceConfig):
    """Options of the Transformer stack (`SeqTransformer`), shared by SASRec and BERT4Rec; each
    model's config extends it (and may change a default)."""

    embedding_dim: PositiveInt = 64
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 2
    ffn_dim: NonNegInt = 256
    """Hidden size of the feed-forward sub-layer; 0 = ``embedding_dim`` (original SASRec)."""
    dropout: Fraction | None = 0.2
    """Dropout on the embeddings, inside the feed-forward sub-layer and on each residual branch.
    None (a model that resolves it from the data) must be resolved before the net is built."""
    attn_dropout: Fraction | None = 0.2
    """Dropout on attention weights (None: resolved by the model before the net is built)."""
    positional: Positional = "rope"
    """rope (relative rotary embeddings; SASRec's incremental key/value-cache state needs it) |
    absolute (learned) | none."""
    rope_base: PositiveFloat = 10000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        dim, heads = self.embedding_dim, self.num_heads
        self.require(dim % heads == 0, "num_heads", f"must divide embedding_dim={dim}")
        if self.positional == "rope":
            self.require(
                (dim // heads) % 2 == 0, "num_heads", "with rope, embedding_dim / num_heads must be even"
            )


# ---- building blocks ------------------------------------------------------------------------


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[..., head_dim // 2]`` for integer `positions` (angles in float64, so large
    absolute positions in a long-lived state keep their precision)."""
    half = head_dim // 2
    inv = base ** (-torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    ang = positions.to(torch.float64)[..., None] * inv
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs ``(x_i, x_{i+hd/2})`` of ``x [B, H, L, hd]`` by the angles in cos/sin
    (broadcast to ``[B or 1, 1, L, hd/2]``)."""
    # q/k arrive as strided views of the fused qkv projection; elementwise ops on a contiguous copy
    # are ~4x faster on CPU (30 -> 7 ms for [256, 2, 200, 32]) and give bitwise the same values
    x = x.contiguous()
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def resolved_dropouts(config: TransformerConfig) -> tuple[float, float]:
    """(dropout, attn_dropout) of `config`, which a net needs resolved (not None)."""
    if config.dropout is None or config.attn_dropout is None:
        raise DynrecError(
            f"{type(config).__name__}: dropout and attn_dropout must be resolved before the net is built"
        )
    return config.dropout, config.attn_dropout


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + Attn(LN(x)), then x + FFN(LN(x)), sized by `config`
    (``embedding_dim``, ``num_heads``, ``ffn_dim``, the dropouts)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        dim, ffn_dim = config.embedding_dim, config.ffn_dim or config.embedding_dim
        dropout, attn_dropout = resolved_dropouts(config)
        self.num_heads = config.num_heads
        self.head_dim = dim // config.num_heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ffn_dim)
        self.ff2 = nn.Linear(ffn_dim, dim)
        self.drop = Dropout(dropout)
        self.attn_dropout = attn_dropout
        self.attn_drop = Dropout(attn_dropout)

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values ``[B, H, L, hd]`` for ``x [B, L, d]`` (rotated when `rope`)."""
        b, n, d = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def project_last(
        self, x: torch.Tensor, nq: int, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like `project`, but queries only for the last `nq` positions (rope tables ``[1, 1, L, h]``)."""
        b, n, d = x.shape
        hd, heads = self.head_dim, self.num_heads
        z = self.ln1(x)
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(z[:, n - nq :], w[:d], bias[:d]).view(b, nq, heads, hd).transpose(1, 2)
        kv = F.linear(z, w[d:], bias[d:]).view(b, n, 2, heads, hd).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        if rope is not None:
            cos, sin = rope
            q = apply_rope(q, cos[..., n - nq :, :], sin[..., n - nq :, :])
            k = apply_rope(k, cos, sin)
        return q, k, v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual output projection of ``attn [B, H, L, hd]`` and the feed-forward sub-layer."""
        b, _, n, _ = attn.shape
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, n, -1)))
        out: torch.Tensor = x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x))))))
        return out

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        causal: bool,
    ) -> torch.Tensor:
        q, k, v = self.project(x, rope)
        p = self.attn_dropout if self.training else 0.0
        if p > 0.0 and x.device.type == "cpu":
            a = self.dropout_attention(q, k, v, mask, causal)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        return self.finish(x, a)

    def dropout_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
    ) -> torch.Tensor:
        """``dropout(softmax(q kᵀ / √hd + mask)) v`` as explicit products: on CPU, SDPA with
        dropout falls back to a slow path (per-element `bernoulli_`); this is the same function
        with the fast `Dropout`."""
        s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        n, m = s.shape[-2], s.shape[-1]
        if causal:
            mask = torch.ones(n, m, dtype=torch.bool, device=s.device).tril()
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        out: torch.Tensor = self.attn_drop(torch.softmax(s, dim=-1)) @ v
        return out


class SeqTransformer(nn.Module):
    """Item embeddings + Transformer blocks + final LayerNorm (shared by SASRec and BERT4Rec).

    Built from `config` (a `TransformerConfig` whose dropouts are resolved) and what the config
    does not hold: `item_emb`, the item table (``nn.Embedding`` or `TextItemEmbedding`, padding row
    0), whose rows are the items ``0..n_items-1`` plus any extra tokens (BERT4Rec's [MASK]) — scores
    use its first `n_items` rows (tied output layer) — and `long_term`, SASRec's fusion of the
    short-term state with the mean embedding of the whole history. The caller builds `item_emb`
    just before this (its random initialisation comes first, as it always has).
    """

    def __init__(
        self,
        config: TransformerConfig,
        item_emb: nn.Embedding | TextItemEmbedding,
        n_items: int,
        *,
        long_term: LongTerm = "none",
    ) -> None:
        super().__init__()
        dropout, _ = resolved_dropouts(config)
        dim = config.embedding_dim
        self.config = config
        self.n_items = n_items
        self.item_emb = item_emb
        self.pos_emb = nn.Embedding(config.max_len + 1, dim) if config.positional == "absolute" else None
        self.emb_drop = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(dim)
        if long_term == "gate":
            self.lt_proj: nn.Linear | None = nn.Linear(dim, dim)
            self.lt_gate: nn.Linear | None = nn.Linear(2 * dim, dim)
        else:
            self.lt_proj = self.lt_gate = None
        self.log_pop: torch.Tensor
        self.register_buffer("log_pop", torch.zeros(n_items))
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def block_list(self) -> list[Block]:
        return [b for b in self.blocks if isinstance(b, Block)]

    @property
    def head_dim(self) -> int:
        return self.config.embedding_dim // self.config.num_heads

    @property
    def item_weight(self) -> torch.Tensor:
        """Output item vectors ``[n_items, d]`` (tied with the input embeddings)."""
        return self.item_emb.weight[: self.n_items]

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotary tables for positions ``[L]`` or ``[B, L]``, shaped to broadcast over heads."""
        if self.config.positional != "rope":
            return None
        cos, sin = rope_tables(positions, self.head_dim, self.config.rope_base)
        if cos.dim() == 2:  # [L, h] -> [1, 1, L, h]
            return cos[None, None], sin[None, None]
        return cos[:, None], sin[:, None]  # [B, L, h] -> [B, 1, L, h]

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        """Input vectors ``[B, L, d]`` for right-padded ``items [B, L]`` (positions from column 0)."""
        x: torch.Tensor = self.item_emb(items)
        if self.pos_emb is not None:
            n = items.shape[1]
            x = x + self.pos_emb(torch.arange(n, device=items.device).clamp(max=self.config.max_len))[None]
        out: torch.Tensor = self.emb_drop(x)
        return out

    def encode(self, items: torch.Tensor, *, causal: bool = True, window: int | None = None) -> torch.Tensor:
        """Hidden states ``[B, L, d]`` for right-padded ``items [B, L]``.

        causal: each position attends to itself and earlier ones, within `window` positions when
        given (a band mask); bidirectional: every real position attends to every real position.
        """
        b, n = items.shape
        x = self.embed(items)
        rope = self.rope(torch.arange(n, device=items.device))
        mask: torch.Tensor | None = None
        is_causal = False
        if causal:
            if window is None or n <= window:
                is_causal = True  # right padding: real queries never see padding keys
            else:
                i = torch.arange(n, device=items.device)
                d = i[:, None] - i[None, :]
                mask = (d >= 0) & (d < window)
        else:
            mask = (items > 0)[:, None, None, :] | torch.eye(n, dtype=torch.bool, device=items.device)
        for blk in self.block_list():
            x = blk(x, rope, mask, is_causal)
        return self.ln_f(x)  # type: ignore[no-any-return]

    def fuse(self, h: torch.Tensor, lt_mean: torch.Tensor | None) -> torch.Tensor:
        """Short-term state `h` fused with the long-term mean embedding (``long_term="gate"``)."""
        if self.lt_proj is None or self.lt_gate is None or lt_mean is None:
            return h
        lt = self.lt_proj(lt_mean)
        g = torch.sigmoid(self.lt_gate(torch.cat([h, lt], dim=-1)))
        out: torch.Tensor = g * h + (1.0 - g) * lt
        return out

    def prefix_mean(self, items: torch.Tensor) -> torch.Tensor:
        """Causal mean of the raw item embeddings up to each position of ``items [B, L]``."""
        e: torch.Tensor = self.item_emb(items)
        cnt = (items > 0).cumsum(1).clamp(min=1).unsqueeze(-1).to(e.dtype)
        return e.cumsum(1) / cnt
