"""Matrix-factorisation family: the corrected MISSION.md update, a checkerboard every model solves,
fold-in of a training user's history against the trained/reference vectors, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.data.vocab import Vocabulary
from dynrec.models.base import Recommender
from dynrec.models.config import RunOptions
from dynrec.models.mf.als import ALS, ALSConfig
from dynrec.models.mf.mf import MatrixFactorization, MFConfig, gradient_step
from dynrec.models.mf.nmf import NMF, NMFConfig
from dynrec.models.mf.svd import PureSVD, SVDConfig
from dynrec.models.registry import create_model
from dynrec.preprocessing.split import leave_one_out

OPTS = RunOptions(num_threads=1, device="cpu")

# ---- the corrected dynamic-MF update (MISSION.md) -------------------------------------------------


def test_gradient_step_hand_computed_2x2() -> None:
    # U = I, V = [[1, 1], [0, 1]], R = [[2, 1], [1, 0]], α = 0.5:
    # R − U Vᵀ = [[1, 1], [0, −1]];  (R − U Vᵀ) V = [[1, 2], [0, −1]];  U_t = U + 0.5 · that.
    u = torch.eye(2, dtype=torch.float64)
    v = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    r = torch.tensor([[2.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    out = gradient_step(u, v, r, 0.5)
    torch.testing.assert_close(out, torch.tensor([[1.5, 1.0], [0.0, 0.5]], dtype=torch.float64))
    # L2: − α·λ·U
    out = gradient_step(u, v, r, 0.5, reg=0.1)
    torch.testing.assert_close(out, torch.tensor([[1.45, 1.0], [0.0, 0.45]], dtype=torch.float64))
    # only rows with new events move; masked entries do not count
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    out = gradient_step(u, v, r, 0.5, reg=0.1, mask=mask)
    torch.testing.assert_close(out, torch.tensor([[1.45, 0.5], [0.0, 1.0]], dtype=torch.float64))
    assert torch.equal(u, torch.eye(2, dtype=torch.float64))  # pure: inputs untouched


def test_gradient_step_reproduces_the_worked_example() -> None:
    """The article's worked example with the corrected update U_t = U + α (R − U Vᵀ) V, reg = 0."""
    r = torch.tensor([[1, 2, 0, 0], [0, 1, 2, 0], [1, 0, 0, 2], [0, 1, 1, 0]], dtype=torch.float64)
    u = torch.tensor([[1.0, 0.5], [2.0, 1.0], [3.0, 0.0], [4.0, -1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.5]], dtype=torch.float64)
    expected = torch.tensor(
        [[1.025, 0.4875], [1.65, 0.575], [2.175, 0.2], [3.2, -0.875]], dtype=torch.float64
    )
    torch.testing.assert_close(gradient_step(u, v, r, 0.1, reg=0.0), expected, rtol=0, atol=1e-12)


# ---- a checkerboard: two user groups x two item groups ---------------------------------------------


def checkerboard(n_users: int = 40, group_items: int = 8, seed: int = 0) -> InteractionData:
    """Users 1..n/2 consume every item of group A (1..g), the others every item of group B, each in
    a random order (so leave-one-out withholds a different in-group item per user)."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(1, n_users + 1):
        group = 0 if u <= n_users // 2 else 1
        own = rng.permutation(np.arange(group * group_items, (group + 1) * group_items) + 1)
        users += [u] * group_items
        items += own.tolist()
        ts += list(range(group_items))
    uv = Vocabulary(f"u{i}" for i in range(1, n_users + 1))
    iv = Vocabulary(f"i{i}" for i in range(1, 2 * group_items + 1))
    return InteractionData.from_arrays(users, items, timestamps=ts, user_vocab=uv, item_vocab=iv)


CHECKERBOARD_CONFIGS: dict[str, dict[str, Any]] = {
    "mf": {"embedding_dim": 4, "epochs": 30, "batch_size": 64, "learning_rate": 0.02},
    "als": {"embedding_dim": 4, "epochs": 10},
    "bpr": {"embedding_dim": 4, "epochs": 30, "batch_size": 64, "learning_rate": 0.02},
    "svd": {"embedding_dim": 2},
    "nmf": {"embedding_dim": 2, "epochs": 50},
    "ease": {"reg": 1.0},
}


@pytest.fixture(scope="module")
def board() -> InteractionData:
    return checkerboard()


@pytest.fixture(scope="module", params=sorted(CHECKERBOARD_CONFIGS))
def board_model(request: pytest.FixtureRequest, board: InteractionData) -> Recommender:
    split = leave_one_out(board)
    return create_model(request.param, config=CHECKERBOARD_CONFIGS[request.param]).fit(
        split.train, split.valid, options=OPTS
    )


def test_checkerboard_withheld_item_ranks_first(board_model: Recommender, board: InteractionData) -> None:
    split = leave_one_out(board)
    q = split.test.queries
    idx, _ = board_model.recommend(q, k=1)
    assert np.array_equal(idx[:, 0].numpy(), split.test.targets), board_model.name
    # without excluding seen items, every in-group item still scores above every out-group item
    s = board_model.score(q)
    g = board.item_vocab.size // 2  # items 1..g | g+1..2g
    in_a = torch.from_numpy(q.users <= 20)
    group_a, group_b = s[:, 1 : g + 1], s[:, g + 1 :]
    own_min = torch.where(in_a, group_a.min(1).values, group_b.min(1).values)
    other_max = torch.where(in_a, group_b.max(1).values, group_a.max(1).values)
    assert bool((own_min > other_max).all()), board_model.name


def test_checkerboard_new_user_from_history(board_model: Recommender) -> None:
    """A user never seen in training (users = 0) with three group-B items gets group-B items."""
    q = QueryBatch.from_histories([[9, 10, 11]], users=[0])
    idx, _ = board_model.recommend(q, k=3)
    assert set(idx[0].tolist()) <= set(range(9, 17)), board_model.name


def test_save_load_identical_scores(board_model: Recommender, board: InteractionData, tmp_path: Path) -> None:
    q = leave_one_out(board).test.queries
    board_model.save(tmp_path / board_model.name)
    loaded = Recommender.load(tmp_path / board_model.name)
    assert torch.equal(loaded.score(q), board_model.score(q))


# ---- fold-in of a training user's history ---------------------------------------------------------


def random_implicit(
    n_users: int = 80, n_items: int = 50, density: float = 0.15, seed: int = 3
) -> InteractionData:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    u, i = np.nonzero(mask)
    ratings = rng.integers(1, 6, size=u.shape[0])
    uv = Vocabulary(f"u{x}" for x in range(1, n_users + 1))
    iv = Vocabulary(f"i{x}" for x in range(1, n_items + 1))
    return InteractionData.from_arrays(u + 1, i + 1, values=ratings, user_vocab=uv, item_vocab=iv)


def training_histories(data: InteractionData) -> QueryBatch:
    users = np.arange(1, data.n_users, dtype=np.int64)
    return QueryBatch(
        users,
        data.indptr[1:] - data.indptr[1],
        data.items.copy(),
        data.timestamps.copy(),
        data.weights.copy(),
    )


def test_svd_fold_in_is_exact_rank_k_reconstruction() -> None:
    data = random_implicit()
    model = PureSVD(SVDConfig(embedding_dim=5)).fit(data, options=OPTS)
    x = data.csr(binary=True).toarray().astype(np.float64)
    uu, ss, vt = np.linalg.svd(x, full_matrices=False)
    xk = (uu[:, :5] * ss[:5]) @ vt[:5]  # best rank-5 approximation
    scores = model.score(training_histories(data)).numpy().astype(np.float64)
    np.testing.assert_allclose(scores[:, 1:], xk[1:, 1:], atol=1e-4)


def test_als_fold_in_matches_implicit_recalculate_user() -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    data = random_implicit()
    cfg = ALSConfig(embedding_dim=6, reg=0.1, alpha=2.0, epochs=20, use_cg=False)
    model = ALS(cfg).fit(data, options=OPTS)
    batch = training_histories(data)
    mine = model.user_vectors(batch).numpy()
    # implicit's own fold-in (Cholesky on the same normal equations) with the trained item factors
    ref = AlternatingLeastSquares(factors=6, regularization=0.1, alpha=1.0, num_threads=1)
    ref.item_factors = model.item_vectors().numpy().copy()
    conf = data.csr()[1:]
    conf.data = (1.0 + 2.0 * conf.data).astype(np.float32)
    theirs = ref.recalculate_user(np.arange(conf.shape[0]), sp.csr_matrix(conf))
    np.testing.assert_allclose(mine, theirs, rtol=1e-3, atol=1e-4)
    # and close to the vectors implicit trained (solved one half-sweep earlier)
    assert model.user_factors is not None
    trained = model.user_factors.numpy()[1:]
    cos = (mine * trained).sum(1) / (np.linalg.norm(mine, axis=1) * np.linalg.norm(trained, axis=1))
    assert cos.min() > 0.99


def test_nmf_fold_in_close_to_trained_vectors() -> None:
    data = random_implicit()
    model = NMF(NMFConfig(embedding_dim=4, epochs=300, fold_in_steps=300, reg=0.01)).fit(data, options=OPTS)
    batch = training_histories(data)
    folded = model.user_vectors(batch)
    assert bool((folded >= 0).all())
    assert model.user_factors is not None
    h = model.item_vectors()
    fold_scores = (folded @ h.T)[:, 1:]
    trained_scores = (model.user_factors[1:] @ h.T)[:, 1:]
    rel = (fold_scores - trained_scores).norm() / trained_scores.norm()
    assert float(rel) < 0.05


def test_mf_fold_in_close_to_trained_and_gradient_steps_converge() -> None:
    data = random_implicit()
    cfg = MFConfig(embedding_dim=4, epochs=60, batch_size=256, learning_rate=0.02, reg=0.05, negatives=0)  # type: ignore[arg-type]
    model = MatrixFactorization(cfg).fit(data, options=OPTS)
    batch = training_histories(data)
    ratings = data.values
    x = model.fold_in(batch, ratings)  # [B, 1 + k] with the users' true ratings
    net = model.net
    assert isinstance(net, torch.nn.Module)
    trained = torch.cat([net.user_bias[1:, None], net.user[1:]], 1).detach()  # type: ignore[index]
    q = torch.cat([torch.ones(data.n_items, 1), model.item_vectors()], 1)[1:]
    corr = np.corrcoef((x @ q.T).ravel().numpy(), (trained @ q.T).ravel().numpy())[0, 1]
    assert corr > 0.9
    # the corrected online update, iterated from zero, converges to the closed-form fold-in
    x0 = torch.zeros_like(x)
    it = model.fold_in_step(x0, batch, steps=3000, ratings=ratings)
    torch.testing.assert_close(it, x, rtol=1e-3, atol=1e-3)
    # one step only moves users that have events
    empty = QueryBatch.from_histories([[], [1, 2]])
    start = torch.ones(2, x.shape[1])
    moved = model.fold_in_step(start, empty, alpha=0.01)
    assert torch.equal(moved[0], start[0]) and not torch.equal(moved[1], start[1])


def test_user_vectors_times_item_vectors_give_the_scores(board: InteractionData) -> None:
    split = leave_one_out(board)
    q = split.test.queries.slice(0, 6)
    for name in ("als", "svd", "nmf"):
        m = create_model(name, config=CHECKERBOARD_CONFIGS[name]).fit(split.train, options=OPTS)
        s = m.user_vectors(q) @ m.item_vectors().T  # type: ignore[attr-defined]
        torch.testing.assert_close(s[:, 1:], m.score(q)[:, 1:])
    bpr = create_model("bpr", config=CHECKERBOARD_CONFIGS["bpr"]).fit(split.train, options=OPTS)
    s = bpr.user_vectors(q) @ bpr.item_vectors().T + bpr.item_bias()[None, :]  # type: ignore[attr-defined]
    torch.testing.assert_close(s[:, 1:], bpr.score(q)[:, 1:], rtol=1e-4, atol=1e-4)
    mf = create_model("mf", config=CHECKERBOARD_CONFIGS["mf"]).fit(split.train, options=OPTS)
    x = mf.fold_in(q)  # type: ignore[attr-defined]  # (user bias, user vector)
    s = x[:, :1] + x[:, 1:] @ mf.item_vectors().T + mf.item_bias()[None, :]  # type: ignore[attr-defined]
    torch.testing.assert_close(s[:, 1:], mf.score(q)[:, 1:], rtol=1e-4, atol=1e-4)
