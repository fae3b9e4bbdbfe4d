"""Approximate retrieval and reduced precision wired into recommend, evaluate and serve: an index
that returns the exact top-k gives the exact answers and metrics, a target the index cannot return
is a miss, models without a dot-product score are refused, int8 scoring copies score and are
never saved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dynrec import jobs
from dynrec.cli.main import app as cli
from dynrec.errors import DynrecError
from dynrec.evaluation.offline import target_ranks
from dynrec.jobs.evaluate import evaluate_retrieved
from dynrec.jobs.recommend import recommend_for
from dynrec.jobs.train import save_model
from dynrec.models.base import Recommender
from dynrec.models.capabilities import QueryEmbeddings
from dynrec.models.config import RunOptions
from dynrec.models.neural.quantize import is_quantized, quantize
from dynrec.models.retrieval import AnnConfig, AnnIndex
from dynrec.service import ServiceSettings, create_app
from dynrec.service.runtime import Runtime
from tests.conftest import clustered_data
from tests.unit.service.test_app import _write_csv

pytest.importorskip("faiss")

EXACT = AnnConfig(kind="hnsw", m=16, ef_construction=200, ef_search=400, num_threads=1)
"""A beam wider than the catalogue: HNSW returns the exact top-k."""
HISTORIES = [["i1", "i2", "i3"], ["i17", "i18"], ["i9", "i30", "i11", "i12", "i10"], ["i25"]]
SASREC = {
    "embedding_dim": 16,
    "max_len": 6,
    "ffn_dim": 32,
    "epochs": 2,
    "dropout": 0.0,
    "num_threads": 1,
    "device": "cpu",
}
runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sasrec (dot-product scores, neural) and pop (neither), trained by the jobs layer on an event
    file so they record their provenance (evaluate rebuilds their split)."""
    root = tmp_path_factory.mktemp("ann-models")
    data = clustered_data(n_users=40, n_items=32, n_groups=4, per_user=8, seed=2)
    prepared = jobs.prepare(str(_write_csv(data, root / "events.csv")))
    jobs.train("sasrec", prepared, config=SASREC, out=root / "sasrec")
    jobs.train("pop", prepared, out=root / "pop")
    jobs.train("als", prepared, config={"embedding_dim": 8, "num_threads": 1}, out=root / "als")
    return {"sasrec": root / "sasrec", "pop": root / "pop", "als": root / "als"}


def _cli(*args: str) -> dict[str, object]:
    r = runner.invoke(cli, list(args))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert isinstance(out, dict)
    return out


# ---- recommend ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [EXACT, EXACT.replace(kind="ivf", nlist=4, nprobe=4)], ids=["hnsw", "ivf"])
def test_recommend_through_an_exact_index_equals_exact_top_k(saved: dict[str, Path], cfg: AnnConfig) -> None:
    # ivf with every cell scanned is exact too
    index = AnnIndex.for_model(Recommender.load(saved["sasrec"]), cfg)
    for hist in HISTORIES:
        exact = recommend_for(saved["sasrec"], history=hist, k=10)
        approx = recommend_for(saved["sasrec"], history=hist, k=10, ann=cfg)
        prebuilt = recommend_for(saved["sasrec"], history=hist, k=10, ann=index)
        assert exact.retrieval == "exact" and approx.retrieval == prebuilt.retrieval == f"ann:{cfg.kind}"
        assert approx.items == prebuilt.items == exact.items
        assert not set(hist) & set(approx.items)  # seen items excluded
        np.testing.assert_allclose(approx.scores, exact.scores, rtol=1e-5, atol=1e-5)
    user = recommend_for(saved["sasrec"], user="u3", k=5, ann=cfg)
    assert user.items == recommend_for(saved["sasrec"], user="u3", k=5).items


def test_cli_recommend_ann(saved: dict[str, Path]) -> None:
    d = str(saved["sasrec"])
    got = _cli(
        "recommend",
        d,
        "--history",
        "i1,i2",
        "--k",
        "6",
        "--ann",
        "hnsw",
        "--ann-set",
        "ef_search=400",
        "--json",
    )
    want = recommend_for(saved["sasrec"], history=["i1", "i2"], k=6)
    assert got["retrieval"] == "hnsw" and got["items"] == want.items
    bad = runner.invoke(cli, ["recommend", d, "--history", "i1", "--ann", "hnsw", "--ann-set", "efsearch=4"])
    assert bad.exit_code == 1 and "AnnConfig has no option(s) ['efsearch']" in bad.output
    bad = runner.invoke(cli, ["recommend", d, "--history", "i1", "--ann", "lsh"])
    assert bad.exit_code == 1 and "--ann must be 'hnsw' or 'ivf'" in bad.output


def test_models_without_dot_product_scores_are_refused(saved: dict[str, Path]) -> None:
    assert not isinstance(Recommender.load(saved["pop"]), QueryEmbeddings)
    with pytest.raises(DynrecError, match="'pop' does not score by a dot product.*drop --ann"):
        recommend_for(saved["pop"], history=["i1"], ann=EXACT)
    with pytest.raises(DynrecError, match="'pop' does not score by a dot product"):
        jobs.evaluate_saved(saved["pop"], ann=EXACT)
    r = runner.invoke(cli, ["recommend", str(saved["pop"]), "--history", "i1", "--ann", "hnsw"])
    assert r.exit_code == 1 and "QueryEmbeddings" in r.output


# ---- evaluate -------------------------------------------------------------------------------------


def test_evaluate_through_an_exact_index_equals_exact_metrics(saved: dict[str, Path]) -> None:
    exact = jobs.evaluate_saved(saved["sasrec"], ks=(5, 10)).result
    approx_ev = jobs.evaluate_saved(saved["sasrec"], ks=(5, 10), ann=EXACT)
    assert exact.metrics == jobs.evaluate_saved(saved["sasrec"], ks=(5, 10)).to_json()
    assert approx_ev.to_json() == {**approx_ev.metrics, "retrieval": "hnsw"}
    approx = approx_ev.result
    for key in ("HR@5", "HR@10", "NDCG@10", "MRR@10", "Coverage@10", "Novelty@10", "n_queries"):
        assert approx.metrics[key] == pytest.approx(exact.metrics[key], abs=1e-9), key
    # ranks inside the top 10 are the exact ones; the rest were not retrieved
    np.testing.assert_array_equal(approx.ranks, np.where(exact.ranks < 10, exact.ranks, np.inf))
    got = _cli("evaluate", str(saved["sasrec"]), "--ann", "hnsw", "--ann-set", "ef_search=400", "--json")
    assert got["retrieval"] == "hnsw" and got["HR@10"] == pytest.approx(exact.metrics["HR@10"])
    assert "retrieval" not in _cli("evaluate", str(saved["sasrec"]), "--json")


def test_a_target_the_index_cannot_return_is_a_miss(saved: dict[str, Path]) -> None:
    """An index over items 1..15 only: targets 16..32 are misses, the others keep their exact rank
    among items 1..15 (seen excluded) when it is within the top 10."""
    model = Recommender.load(saved["sasrec"])
    assert isinstance(model, QueryEmbeddings)
    prepared = jobs.prepare(str(saved["sasrec"].parent / "events.csv"))
    es = prepared.split.test
    vectors, bias = model.output_embeddings()
    m = 16
    index = AnnIndex.build(vectors[:m], None if bias is None else bias[:m], EXACT)
    res = evaluate_retrieved(model, es, index, ks=(10,), chunk_size=7)
    scores = model.score(es.queries).float()
    scores[:, m:] = -torch.inf
    rows, cols = es.queries.seen_mask_indices()
    scores[rows, cols] = -torch.inf
    scores[:, 0] = -torch.inf
    ranks = target_ranks(scores, torch.from_numpy(es.targets.astype(np.int64))).numpy()
    want = np.where(ranks < 10, ranks, np.inf)
    assert (es.targets >= m).any() and np.isinf(res.ranks[es.targets >= m]).all()
    np.testing.assert_array_equal(res.ranks, want)
    assert res.metrics["HR@10"] == pytest.approx(float(np.isfinite(want).mean()))


# ---- precision ------------------------------------------------------------------------------------


def test_int8_recommend_and_evaluate_and_save_refused(saved: dict[str, Path], tmp_path: Path) -> None:
    opts = RunOptions(precision="int8")
    model = Recommender.load(saved["sasrec"])
    q8 = quantize(model, "int8")
    for hist in HISTORIES:
        got = recommend_for(saved["sasrec"], history=hist, k=5, options=opts)
        q = jobs.history_batch(model, hist)
        idx, _ = q8.recommend(q, 5)
        assert got.precision == "int8" and got.items == model.item_vocab.to_ids(idx[0].numpy())  # type: ignore[union-attr]
    both = recommend_for(saved["sasrec"], history=HISTORIES[0], k=5, options=opts, ann=EXACT)
    assert both.precision == "int8" and both.retrieval == "ann:hnsw"
    ev = jobs.evaluate_saved(saved["sasrec"], options=opts)
    assert is_quantized(ev.model) and ev.precision == "int8" and 0.0 <= ev.metrics["HR@10"] <= 1.0
    assert (
        _cli("recommend", str(saved["sasrec"]), "--history", "i1,i2", "--set", "precision=int8", "--json")[
            "precision"
        ]
        == "int8"
    )
    with pytest.raises(DynrecError, match="refusing to save 'sasrec': it is a int8 scoring copy"):
        save_model(q8, tmp_path / "q8")
    assert not (tmp_path / "q8").exists()
    with pytest.raises(DynrecError, match="'pop' is not a neural model"):
        recommend_for(saved["pop"], history=["i1"], options=opts)


# ---- serve ----------------------------------------------------------------------------------------


def test_service_settings_accept_ann_and_precision() -> None:
    s = ServiceSettings(model_dir="m", ann="ivf", ann_options=("nprobe=8", "nlist=4"), precision="int8")
    assert ServiceSettings.from_env(s.to_env()) == s
    assert s.ann_config() == AnnConfig(kind="ivf", nprobe=8, nlist=4)
    assert ServiceSettings(model_dir="m").ann_config() is None
    for bad, msg in [
        ({"ann": "lsh"}, "ann must be 'hnsw' or 'ivf'"),
        ({"ann_options": ("m=8",)}, "ann_options need ann"),
        ({"ann": "hnsw", "ann_options": ("m=0",)}, "option m=0 is not allowed"),
        ({"precision": "int4"}, "precision='int4' is not allowed"),
    ]:
        with pytest.raises(DynrecError, match=msg):
            ServiceSettings(model_dir="m", **bad)  # type: ignore[arg-type]


def test_service_sessions_through_the_index_and_int8(saved: dict[str, Path], tmp_path: Path) -> None:
    settings = ServiceSettings(
        model_dir=str(saved["sasrec"]),
        store_url="memory://",
        ann="hnsw",
        ann_options=("ef_search=400", "num_threads=1"),
        precision="int8",
    )
    with TestClient(create_app(settings)) as c:
        rt = c.app.state.runtime  # type: ignore[attr-defined]
        assert isinstance(rt, Runtime)
        h = rt.holder
        assert h.index is not None and is_quantized(h.scoring) and not is_quantized(h.model)
        for hist in HISTORIES:
            r = c.post("/v1/recommendations", json={"history": hist, "k": 5}).json()
            want = recommend_for(saved["sasrec"], history=hist, k=5, options=RunOptions(precision="int8"))
            assert [x["item_id"] for x in r["items"]] == want.items
        rt.reload(str(saved["sasrec"]))  # a new holder: index and scoring copy rebuilt
        assert rt.holder is not h and rt.holder.index is not None and rt.holder.index is not h.index
    with pytest.raises(DynrecError, match="'pop' does not score by a dot product"):
        create_app(ServiceSettings(model_dir=str(saved["pop"]), store_url="memory://", ann="hnsw"))


def test_stored_users_through_an_exact_index_get_the_exact_answer(saved: dict[str, Path]) -> None:
    """ALS states (a query vector each) served through a one-cell IVF index (a flat scan: exact)
    give the exact path's items, before and after new events; the answer names its retrieval."""
    base = {"model_dir": str(saved["als"]), "store_url": "memory://"}
    ann = {"ann": "ivf", "ann_options": ("nlist=1", "nprobe=1", "num_threads=1")}
    with (
        TestClient(create_app(ServiceSettings(**base))) as c_exact,  # type: ignore[arg-type]
        TestClient(create_app(ServiceSettings(**base, **ann))) as c_ann,  # type: ignore[arg-type]
    ):
        exact, approx = (c.app.state.runtime for c in (c_exact, c_ann))  # type: ignore[attr-defined]
        assert isinstance(exact, Runtime) and isinstance(approx, Runtime)
        users = [f"s{b}" for b in range(len(HISTORIES))]
        hist = [
            {"user_id": u, "item_id": i, "timestamp": 1000 + t}
            for u, h in zip(users, HISTORIES, strict=True)
            for t, i in enumerate(h)
        ]
        for c in (c_exact, c_ann):
            assert c.post("/v1/events", json={"events": hist}).status_code == 200
        assert approx.holder.online.index is approx.holder.index is not None
        for step in range(2):
            for u in users:
                want, got = exact.recommend_now(u, 6), approx.recommend_now(u, 6)
                assert got.items == want.items and (want.retrieval, got.retrieval) == ("exact", "ann:ivf")
                np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-4)
                seen = set(exact.store.history(u).items)
                assert not seen & set(got.items)  # seen items excluded, as on the exact path
                r = c_ann.get(f"/v1/users/{u}/recommendations", params={"k": 6}).json()
                assert [x["item_id"] for x in r["items"]] == want.items and r["retrieval"] == "ann:ivf"
                r = c_exact.get(f"/v1/users/{u}/recommendations", params={"k": 6}).json()
                assert r["retrieval"] == "exact"
                if step == 0:  # the user takes their top item: both paths move on from it
                    ev = {"events": [{"user_id": u, "item_id": want.items[0], "timestamp": 10**9}]}
                    for c in (c_exact, c_ann):
                        assert c.post("/v1/events", json=ev).status_code == 200
        assert approx.recommend_now("nobody-yet", 3).retrieval == "popular"
        assert c_ann.get("/v1/users/nobody-yet/recommendations").json()["retrieval"] == "popular"
