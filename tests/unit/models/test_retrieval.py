"""ANN retrieval: exact reference, HNSW/IVF against it, exclusions, the dot-product contract of every
`QueryEmbeddings` model, `retrieve` == `recommend`, persistence and refusal of a stale index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models import registry
from dynrec.models.base import Recommender
from dynrec.models.capabilities import QueryEmbeddings
from dynrec.models.config import RunOptions
from dynrec.models.retrieval import AnnConfig, AnnIndex, exact_search, retrieve
from tests.conftest import clustered_data

pytest.importorskip("faiss")

OPTS = RunOptions(num_threads=1, device="cpu")
EXACT_HNSW = AnnConfig(kind="hnsw", m=16, ef_construction=200, ef_search=400, num_threads=1)


def test_exact_search_known_answer() -> None:
    v = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])  # row 0 padding
    bias = torch.tensor([5.0, 0.0, 0.0, -0.5, 0.0])
    q = torch.tensor([[2.0, 1.0], [0.0, 0.0]])
    idx, sc = exact_search(v, bias, q, 3)
    # query 0: items 1..4 score 2, 1, 2.5, -2 ; query 1: 0, 0, -0.5, 0 (ties by lower index)
    assert idx.tolist() == [[3, 1, 2], [1, 2, 4]]
    torch.testing.assert_close(sc, torch.tensor([[2.5, 2.0, 1.0], [0.0, 0.0, 0.0]]))
    idx, _ = exact_search(v, bias, q, 2, exclude=(torch.tensor([0, 1]), torch.tensor([3, 1])))
    assert idx.tolist() == [[1, 2], [2, 4]]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_index_matches_exact_search_with_exclusions(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 12, generator=g) * 3
    v = centres[torch.randint(0, 8, (400,), generator=g)] + torch.randn(400, 12, generator=g)
    bias = torch.randn(400, generator=g)
    q = torch.randn(30, 12, generator=g)
    rows = torch.arange(30).repeat_interleave(7)
    cols = torch.randint(0, 400, (210,), generator=g)  # includes 0 and duplicates
    cfg = EXACT_HNSW.replace(kind=kind, nlist=8, nprobe=8)  # ivf: every cell scanned = exact
    index = AnnIndex.build(v, bias, cfg)
    got_i, got_s = index.search(q, 10, exclude=(rows, cols))
    want_i, want_s = exact_search(v, bias, q, 10, exclude=(rows, cols))
    assert (got_i == want_i).float().mean() > 0.99  # HNSW with a wide beam on 399 items
    torch.testing.assert_close(got_s, want_s, rtol=1e-5, atol=1e-4)
    excluded = set(zip(rows.tolist(), cols.tolist(), strict=True))
    assert not any((r, int(i)) in excluded for r in range(30) for i in got_i[r])
    assert int(got_i.min()) >= 1  # padding never returned


def test_more_exclusions_than_items_pad_with_minus_inf() -> None:
    v = torch.eye(4)
    index = AnnIndex.build(v, None, EXACT_HNSW)
    idx, sc = index.search(torch.ones(1, 4), 3, exclude=(torch.tensor([0, 0]), torch.tensor([1, 2])))
    assert idx[0, 0].item() == 3 and idx[0, 1:].tolist() == [0, 0]
    assert sc[0, 0].item() == 1.0 and torch.isinf(sc[0, 1:]).all()


def _fit(name: str) -> Recommender:
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=6, seed=3)
    cfg: dict[str, object] = {"embedding_dim": 8}
    if name != "svd":
        cfg["epochs"] = 2
    if name == "sasrec":
        cfg.update(max_len=6, ffn_dim=16, long_term="gate")
    if name == "gru4rec":
        cfg.update(tied=False)
    return registry.create_model(name, config=cfg).fit(data, options=OPTS)


DOT_MODELS = ["als", "bpr", "mf", "svd", "nmf", "gru4rec", "sasrec"]


@pytest.mark.parametrize("name", DOT_MODELS)
def test_score_is_the_dot_product_up_to_a_per_query_constant(name: str) -> None:
    model = _fit(name)
    assert isinstance(model, QueryEmbeddings)
    q = QueryBatch.from_histories([[1, 2, 3], [9, 10], [20, 5, 6, 7, 8, 9, 10, 11]])
    vecs, bias = model.output_embeddings()
    dot = model.query_embeddings(q) @ vecs.T + (0.0 if bias is None else bias[None, :])
    diff = model.score(q)[:, 1 : vecs.shape[0]] - dot[:, 1:]
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["bpr", "sasrec"])
def test_retrieve_equals_recommend(name: str, tmp_path: Path) -> None:
    model = _fit(name)
    q = QueryBatch.from_histories([[1, 2, 3], [], [9, 10, 11, 12], [20, 5]])
    other = QueryBatch.from_histories([[4], [1, 2], [], [3]])
    index = AnnIndex.for_model(model, EXACT_HNSW)
    for kw in ({}, {"exclude": other}, {"exclude_seen": False}):
        want_i, _ = model.recommend(q, 5, **kw)  # type: ignore[arg-type]
        got_i, _ = retrieve(model, q, 5, index, **kw)  # type: ignore[arg-type]
        assert got_i.tolist() == want_i.tolist(), kw
    # persistence: the saved index loads for the same model and is refused for another table
    index.save(tmp_path)
    loaded = AnnIndex.load(tmp_path, model)
    assert retrieve(model, q, 5, loaded)[0].tolist() == model.recommend(q, 5)[0].tolist()
    with pytest.raises(DynrecError, match="another item table"):
        AnnIndex.load(tmp_path, _fit("als"))


def test_models_without_dot_product_are_refused() -> None:
    model = registry.create_model("ease").fit(clustered_data(n_users=10, n_items=8), options=OPTS)
    assert not isinstance(model, QueryEmbeddings)
    with pytest.raises(DynrecError, match="QueryEmbeddings"):
        AnnIndex.for_model(model)


def test_config_is_validated() -> None:
    with pytest.raises(DynrecError, match="ef_search"):
        AnnConfig(ef_search=0)
    with pytest.raises(DynrecError, match="kind"):
        AnnConfig.from_dict({"kind": "lsh"})
    assert AnnConfig().with_overrides({"ef_search": "64"}).ef_search == 64
    assert np.isfinite(AnnConfig().m)


def test_search_without_exclusions_pads_unreachable_results() -> None:
    # IVF with 2 cells, 1 probed: the query [1, 1] reaches only the cell of items 1 and 2
    v = torch.tensor([[0.0, 0.0], [10.0, 0.0], [10.0, 0.1], [-10.0, 0.0], [-10.0, 0.1]])
    index = AnnIndex.build(v, None, AnnConfig(kind="ivf", nlist=2, nprobe=1, num_threads=1))
    idx, sc = index.search(torch.tensor([[1.0, 1.0]]), 3)
    assert idx.tolist() == [[2, 1, 0]]
    assert sc[0, :2].tolist() == pytest.approx([10.1, 10.0]) and torch.isinf(sc[0, 2])
    index.config = index.config.replace(nprobe=2)  # both cells: everything reachable
    assert index.search(torch.tensor([[1.0, 1.0]]), 4)[0].tolist() == [[2, 1, 4, 3]]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_search_without_exclusions_equals_search_with_irrelevant_ones(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(300, 6, generator=g)
    bias = torch.randn(300, generator=g)
    q = torch.randn(9, 6, generator=g)
    index = AnnIndex.build(v, bias, EXACT_HNSW.replace(kind=kind, nlist=4, nprobe=4))
    plain_i, plain_s = index.search(q, 5)
    want_i, _ = exact_search(v, bias, q, 6)
    assert plain_i.tolist() == want_i[:, :5].tolist()  # every cell probed / a wide beam on 299 items
    # padding and items past the table are never candidates (still no exclusion); each query's
    # 6th item is, but excluding it leaves its top-5: the grouped path gives the same answer
    for ex in [
        (torch.tensor([0, 3]), torch.tensor([0, 300])),
        (torch.arange(9), want_i[:, 5]),
    ]:
        other_i, other_s = index.search(q, 5, exclude=ex)
        assert plain_i.tolist() == other_i.tolist()
        torch.testing.assert_close(plain_s, other_s)
