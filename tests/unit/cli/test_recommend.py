"""`dynrec recommend` names its items (issue 25 item 4): a ``rank, item, title, score`` table when
the model has titles, and ``"titles"`` (parallel to ``"items"``) added to ``--json`` beside the
keys it always had."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynrec import jobs
from dynrec.cli.main import app
from tests.conftest import clustered_data

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """itemknn trained with titles (``Film N``; item 3 has none) and without."""
    root = tmp_path_factory.mktemp("titles")
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=8, seed=4)
    users = data.user_vocab.to_ids(data.users)
    items = data.item_vocab.to_ids(data.items)
    rows = [f"{u},{i},{int(t)}" for u, i, t in zip(users, items, data.timestamps.tolist(), strict=True)]
    (root / "events.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    titles = "".join(f"i{i},Film {i}\n" for i in range(1, 25) if i != 3)
    (root / "items.csv").write_text("item_id,title\n" + titles)
    prepared = jobs.prepare(str(root / "events.csv"))
    jobs.train("itemknn", prepared, out=root / "titled", items=root / "items.csv")
    jobs.train("itemknn", prepared, out=root / "plain")
    return root / "titled", root / "plain"


def run(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r.stdout


def test_human_output_is_an_aligned_table_with_titles(models: tuple[Path, Path]) -> None:
    titled, _ = models
    want = jobs.recommend_for(titled, history=["i1", "i2"], k=4)
    lines = run("recommend", str(titled), "--history", "i1,i2", "--k", "4").splitlines()
    scores = [f"{s:.4f}" for s in want.scores]
    iw = max(len("item"), *(len(i) for i in want.items))
    names = [f"Film {i[1:]}" if i != "i3" else "-" for i in want.items]
    tw = max(len("title"), *(len(t) for t in names))
    sw = max(len("score"), *(len(s) for s in scores))
    assert lines[0] == f"rank  {'item':<{iw}}  {'title':<{tw}}  {'score':>{sw}}"
    assert lines[1] == f"----  {'-' * iw}  {'-' * tw}  {'-' * sw}"
    assert lines[2:] == [
        f"{r:>4}  {i:<{iw}}  {t:<{tw}}  {s:>{sw}}"
        for r, (i, t, s) in enumerate(zip(want.items, names, scores, strict=True), 1)
    ]
    assert len({len(ln) for ln in lines}) == 1  # the score column ends every line at one place


def test_json_adds_titles_beside_the_existing_keys(models: tuple[Path, Path]) -> None:
    titled, plain = models
    got = json.loads(run("recommend", str(titled), "--history", "i1,i2", "--k", "24", "--json"))
    assert list(got) == ["user", "items", "scores", "model", "fallback", "titles"]
    assert got["titles"] == [None if i == "i3" else f"Film {i[1:]}" for i in got["items"]]
    assert "i3" in got["items"]  # the one without a title is null
    bare = json.loads(run("recommend", str(plain), "--history", "i1,i2", "--k", "24", "--json"))
    assert list(bare) == ["user", "items", "scores", "model", "fallback"]
    assert (bare["items"], bare["scores"]) == (got["items"], got["scores"])


def test_without_titles_the_table_has_no_title_column(models: tuple[Path, Path]) -> None:
    _, plain = models
    lines = run("recommend", str(plain), "--user", "u1", "--k", "2").splitlines()
    assert lines[0].split() == ["rank", "item", "score"]
    want = jobs.recommend_for(plain, user="u1", k=2)
    assert [ln.split() for ln in lines[2:]] == [
        [str(r), i, f"{s:.4f}"] for r, (i, s) in enumerate(zip(want.items, want.scores, strict=True), 1)
    ]


def test_the_popular_fallback_has_titles_too(models: tuple[Path, Path]) -> None:
    titled, _ = models
    out = run("recommend", str(titled), "--history", "", "--k", "3")
    assert out.startswith("(empty history: the popular fallback")
    got = json.loads(run("recommend", str(titled), "--history", "", "--k", "3", "--json"))
    assert got["fallback"] == "popular"
    assert got["titles"] == [None if i == "i3" else f"Film {i[1:]}" for i in got["items"]]
    for item, score in zip(got["items"], got["scores"], strict=True):
        assert f"{score:.4f}" in out and item in out
