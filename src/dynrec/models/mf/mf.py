"""Explicit-rating matrix factorisation (the article's MF), trained with MSE by SGD or Adam.

Prediction ``r̂_ui = μ + b_u + b_i + p_u·q_i``; loss = mean squared error on the training ratings
(`InteractionData.values`) + L2 (`reg`) on the parameters of each mini-batch, optimised by the
shared `Trainer` with `optimizer` = "adam" (default), "adamw" or "sgd" — vectorised mini-batches of
(user, item, rating) tensors, no per-rating Python.

Pure rating regression ranks poorly for top-N recommendation (an obscure film with two 5-star
ratings outranks everything), so by default each observed rating also brings `negatives` uniformly
drawn unobserved items with target 0 and weight `negative_weight` (Cremonesi et al. 2010: treat the
missing entries as zeros). ``negatives=0`` gives the textbook explicit-rating model.

**Online step (MISSION.md, corrected).** For ``R ≈ U Vᵀ`` (U ∈ ℝ^{m×k}, V ∈ ℝ^{n×k}) the gradient
step is ``U_t = U_{t-1} + α ((M ⊙ (R_t − U_{t-1} Vᵀ)) V − λ U_{t-1})`` — `gradient_step`, a pure
function; rows whose mask row is empty (users without new events) are left untouched.

**Fold-in.** Queries carry no ratings (`QueryBatch.weights` are event weights, not ratings), so a
history event's rating is taken as the item's mean training rating unless `fold_in` is given
`ratings`. The user's (bias, vector) is the minimiser of the training objective restricted to that
user with item parameters fixed — history events weight 1, every other item target 0 with the
expected negative-sampling weight — i.e. the fixed point of `gradient_step`; `user_vectors`
solves it in closed form (batched), and `fold_in_step` applies the corrected gradient step itself
(e.g. to update a cached user vector when new events arrive).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.config import NonNegFloat, NonNegInt, PositiveFloat, PositiveInt
from dynrec.models.explain import leave_one_out
from dynrec.models.mf._common import finish_scores, gram_per_query, history_events
from dynrec.models.neural import NeuralConfig, TorchRecommender
from dynrec.models.neural.base import Optimizer


def gradient_step(
    U: torch.Tensor,  # noqa: N803 - the article's notation
    V: torch.Tensor,  # noqa: N803
    R: torch.Tensor,  # noqa: N803
    alpha: float | torch.Tensor,
    reg: float | torch.Tensor = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One corrected MF gradient step ``U + α ((M ⊙ (R − U Vᵀ)) V − reg · U)``.

    U [m, k] user factors, V [n, k] item factors, R [m, n] observed values (new events), M [m, n]
    mask/weights of the observed entries (None = every entry observed); `alpha` and `reg` are scalars
    or per-row [m, 1] tensors.
    With a mask, rows without any observed entry (users with no new events) are returned unchanged.
    Returns a new tensor; the inputs are not modified."""
    resid = R - U @ V.T  # [m, n]
    if mask is not None:
        resid = resid * mask
    out = U + alpha * (resid @ V - reg * U)
    if mask is not None:
        active = (mask != 0).any(dim=1, keepdim=True)  # [m, 1]
        out = torch.where(active, out, U)
    return out


@dataclass(frozen=True)
class MFConfig(NeuralConfig):
    embedding_dim: PositiveInt = 64
    epochs: PositiveInt = 40
    batch_size: PositiveInt = 16384
    learning_rate: PositiveFloat = 1e-2
    optimizer: Optimizer = "adam"
    """adam | adamw | sgd (the Trainer's SGD has momentum 0.9; it needs its own learning_rate)."""
    grad_clip: NonNegFloat = 0.0
    patience: PositiveInt = 3
    eval_every: PositiveInt = 2
    reg: NonNegFloat = 1e-3
    """L2 penalty on the user/item factors and biases of each example."""
    negatives: NonNegInt = 4
    """Unobserved items drawn per observed rating with target 0 (0 = pure rating regression)."""
    negative_weight: NonNegFloat = 1.0
    """Loss weight of a sampled unobserved item relative to an observed rating."""


class MFNet(nn.Module):
    """``r̂_ui = μ + b_u + b_i + p_u·q_i`` (rows gathered with `index_select`: fast on CPU).

    Built from its `config` (``embedding_dim``; factors drawn from ``seed``) and the vocabulary
    sizes `n_users`, `n_items`."""

    mu: torch.Tensor
    item_rating: torch.Tensor

    def __init__(self, config: MFConfig, n_users: int, n_items: int) -> None:
        super().__init__()
        dim, gen = config.embedding_dim, torch.Generator().manual_seed(config.seed)
        self.user = nn.Parameter(torch.randn(n_users, dim, generator=gen) * 0.01)  # [U, k]
        self.item = nn.Parameter(torch.randn(n_items, dim, generator=gen) * 0.01)  # [I, k]
        self.user_bias = nn.Parameter(torch.zeros(n_users))  # [U]
        self.item_bias = nn.Parameter(torch.zeros(n_items))  # [I]
        self.register_buffer("mu", torch.zeros(()))  # global offset (mean training target)
        self.register_buffer("item_rating", torch.zeros(n_items))  # [I] mean observed rating

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions [B], squared L2 norm of the batch's parameters [B])."""
        p, q = self.user.index_select(0, users), self.item.index_select(0, items)  # [B, k]
        bu, bi = self.user_bias.index_select(0, users), self.item_bias.index_select(0, items)  # [B]
        pred = self.mu + bu + bi + (p * q).sum(-1)
        sq = p.pow(2).sum(-1) + q.pow(2).sum(-1) + bu.pow(2) + bi.pow(2)
        return pred, sq


class MatrixFactorization(TorchRecommender):
    name = "mf"
    config_class = MFConfig
    config: MFConfig

    def __init__(self, config: MFConfig | None = None) -> None:
        super().__init__(config)
        self._obs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ---- TorchRecommender hooks ------------------------------------------------------------
    def release_training_data(self) -> None:
        self._obs = None  # the pre-tensorised training rows are not model state

    def build_net(self, data: InteractionData) -> nn.Module:
        self.meta["n_users"], self.meta["n_items"] = data.n_users, data.n_items
        net = self.build_net_from_meta()
        ratings = data.values.astype(np.float64)
        counts = np.bincount(data.items, minlength=data.n_items)
        sums = np.bincount(data.items, weights=ratings, minlength=data.n_items)
        glob = float(ratings.mean()) if ratings.size else 1.0
        item_rating = np.where(counts > 0, sums / np.maximum(counts, 1), glob)
        neg = self.config.negatives * self.config.negative_weight
        with torch.no_grad():
            assert isinstance(net, MFNet)
            net.mu.fill_(glob / (1.0 + neg))  # weighted mean target incl. the zero negatives
            net.item_rating.copy_(torch.from_numpy(item_rating.astype(np.float32)))
        return net

    def build_net_from_meta(self) -> nn.Module:
        return MFNet(self.config, int(self.meta["n_users"]), int(self.meta["n_items"]))

    def prepare(self, data: InteractionData) -> None:
        self._obs = (
            torch.from_numpy(data.users.astype(np.int64)),
            torch.from_numpy(data.items.astype(np.int64)),
            torch.from_numpy(data.values.astype(np.float32)),
        )

    def train_batches(self, data: InteractionData, gen: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        if self._obs is None:
            self.prepare(data)
        assert self._obs is not None
        users, items, ratings = self._obs
        cfg = self.config
        n = users.shape[0]
        if cfg.negatives > 0:  # uniform unobserved items with target 0 (rarely a positive: harmless)
            nn_ = n * cfg.negatives
            neg_users = users.repeat(cfg.negatives)
            neg_items = torch.randint(1, data.n_items, (nn_,), generator=gen)
            users = torch.cat([users, neg_users])
            items = torch.cat([items, neg_items])
            targets = torch.cat([ratings, torch.zeros(nn_)])
            weights = torch.cat([torch.ones(n), torch.full((nn_,), cfg.negative_weight)])
        else:
            targets, weights = ratings, torch.ones(n)
        perm = torch.randperm(users.shape[0], generator=gen)
        for a in range(0, perm.shape[0], cfg.batch_size):
            idx = perm[a : a + cfg.batch_size]
            yield {"users": users[idx], "items": items[idx], "targets": targets[idx], "weights": weights[idx]}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred, sq = self._net()(batch["users"], batch["items"])
        err = batch["weights"] * (batch["targets"] - pred).pow(2)
        out: torch.Tensor = err.mean() + self.config.reg * sq.mean()
        return out

    def score_net(self, batch: QueryBatch) -> torch.Tensor:
        net = self._net()
        x = self.fold_in(batch)  # [B, 1 + k] (user bias, user vector)
        q, bi = self.item_vectors(), net.item_bias.detach().cpu().float()
        return float(net.mu) + x[:, :1] + bi[None, :] + x[:, 1:] @ q.T

    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Leave-one-out attribution (the fold-in solves a least-squares problem whose weights and
        ridge depend on the history length): each of the last 50 events contributes the score
        drop when it alone is removed from the history."""
        return leave_one_out(self.score, batch, items)

    def score(self, batch: QueryBatch) -> torch.Tensor:
        return finish_scores(super().score(batch), self.n_items)

    # ---- factors and fold-in ---------------------------------------------------------------
    def _net(self) -> MFNet:
        if not isinstance(self.net, MFNet):
            raise NotFittedError("mf is not fitted")
        return self.net

    def item_embeddings(self) -> torch.Tensor:
        return self.item_vectors().detach().float().cpu()

    def item_vectors(self) -> torch.Tensor:
        """[n_items, k] item factors Q, float32 (the fold-in solves in float32/float64 also in a
        bf16 scoring copy)."""
        return self._net().item.detach().cpu().float()

    def item_bias(self) -> torch.Tensor:
        """[n_items] μ + b_i (scores = user_vectors @ Qᵀ + item_bias + the user's own bias)."""
        net = self._net()
        return float(net.mu) + net.item_bias.detach().cpu().float()

    # ---- QueryEmbeddings: scores are a dot product (for ANN retrieval) -----------------------
    def query_embeddings(self, batch: QueryBatch) -> torch.Tensor:
        """[B, k] folded-in user vectors (the user's own bias is a per-query constant)."""
        with torch.no_grad():
            return self.user_vectors(batch).float()

    def output_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.item_embeddings(), self.item_bias().detach().float()

    def user_vectors(self, batch: QueryBatch, ratings: np.ndarray | None = None) -> torch.Tensor:
        """[B, k] folded-in user factors p_u (see `fold_in`)."""
        return self.fold_in(batch, ratings)[:, 1:]

    def _fold_in_problem(
        self, batch: QueryBatch, ratings: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, rating, aug item factors Ṽ=[1, Q] [n, 1+k], per-query negative weight [B],
        per-query ridge [B]) of each query's fold-in least-squares problem."""
        net = self._net()
        cfg = self.config
        n_items = net.item.shape[0]
        rows, cols, _ = history_events(batch, n_items)
        if ratings is None:
            r = net.item_rating.detach().cpu().float()[cols]
        else:
            r = torch.as_tensor(np.asarray(ratings, dtype=np.float32))
            keep = (torch.from_numpy(np.asarray(batch.items, dtype=np.int64)) > 0) & (
                torch.from_numpy(np.asarray(batch.items, dtype=np.int64)) < n_items
            )
            r = r[keep]
        v_aug = torch.cat([torch.ones(n_items, 1), self.item_vectors()], dim=1)
        v_aug[0] = 0.0
        length = torch.bincount(rows, minlength=len(batch)).to(torch.float32)
        w_neg = cfg.negative_weight * cfg.negatives * length / max(1, n_items - 1)  # [B]
        ridge = cfg.reg * length * (1 + cfg.negatives)  # [B]: reg per example x examples per user
        return rows, cols, r, v_aug, w_neg, ridge

    def _fold_in_system(
        self, batch: QueryBatch, ratings: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normal equations (A [B, 1+k, 1+k], rhs [B, 1+k]) of each query's fold-in problem."""
        rows, cols, r, v, w_neg, ridge = self._fold_in_problem(batch, ratings)
        base = self._item_offset()
        k1 = v.shape[1]
        y0 = -base  # residual target of an unobserved item
        # A = w ṼᵀṼ + Σ_h (1 − w) ṽ ṽᵀ + λ I ;  rhs = w (Ṽᵀ y0 − Σ_h y0_i ṽ_i) + Σ_h (r_i − base_i) ṽ_i
        a = (
            gram_per_query(rows, cols, (1.0 - w_neg)[rows], v, len(batch))
            + w_neg[:, None, None] * (v.T @ v)[None]
        )
        a = a + (ridge + 1e-6)[:, None, None] * torch.eye(k1)[None]
        rhs = w_neg[:, None] * (v.T @ y0)[None, :]
        ev = (r - base[cols]) - w_neg[rows] * y0[cols]
        rhs = rhs.index_add(0, rows, v[cols] * ev[:, None])
        return a, rhs

    def _item_offset(self) -> torch.Tensor:
        """[n_items] μ + b_j (0 for padding)."""
        net = self._net()
        base = (net.mu.detach().cpu() + net.item_bias.detach().cpu()).float()  # a new tensor
        base[0] = 0.0
        return base

    def fold_in(self, batch: QueryBatch, ratings: np.ndarray | None = None) -> torch.Tensor:
        """[B, 1 + k] (user bias, user vector) minimising, with item parameters fixed,
        ``Σ_{i∈h} (r_i − μ − b_i − b_u − p·q_i)² + w Σ_{j∉h} (0 − μ − b_j − b_u − p·q_j)² + λ_u ||(b_u, p)||²``
        where w and λ_u are the expected negative-sampling weight and L2 of this user in training.
        `ratings` ([nnz], aligned with ``batch.items``) default to each item's mean training rating.
        An empty history gets zeros (the scores fall back to μ + b_i)."""
        a, rhs = self._fold_in_system(batch, ratings)
        x = torch.linalg.solve(a.to(torch.float64), rhs.to(torch.float64)).to(torch.float32)
        out: torch.Tensor = x * (torch.from_numpy(batch.lengths) > 0)[:, None]
        return out

    def fold_in_step(
        self,
        x: torch.Tensor,
        batch: QueryBatch,
        *,
        alpha: float | None = None,
        steps: int = 1,
        ratings: np.ndarray | None = None,
    ) -> torch.Tensor:
        """`steps` corrected gradient steps (`gradient_step`) on the fold-in objective of `fold_in`,
        from the [B, 1 + k] (bias, vector) rows `x`; returns the new rows (queries without events are
        unchanged). `alpha` defaults to a safe per-query step 1 / (largest curvature); iterated, the
        steps converge to `fold_in`."""
        rows, cols, r, v, w_neg, ridge = self._fold_in_problem(batch, ratings)
        base = self._item_offset()
        b, n = len(batch), v.shape[0]
        target = (-base)[None, :].repeat(b, 1)  # [B, n] residual targets
        mask = w_neg[:, None].repeat(1, n)  # [B, n] weights
        target[rows, cols] = r - base[cols]
        mask[rows, cols] = 1.0
        mask[:, 0] = 0.0
        mask = mask * (torch.from_numpy(batch.lengths) > 0)[:, None]  # no events: no update
        step: float | torch.Tensor
        if alpha is None:
            a, _ = self._fold_in_system(batch, ratings)
            step = 1.0 / torch.linalg.eigvalsh(a.to(torch.float64))[:, -1:].to(torch.float32)  # [B, 1]
        else:
            step = alpha
        for _ in range(steps):
            x = gradient_step(x, v, target, step, ridge[:, None], mask)
        return x
