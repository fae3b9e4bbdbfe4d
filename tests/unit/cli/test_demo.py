"""`make demo`'s terminal part (issue 25 item 5): one progress line per model, an aligned result
table, and a user whose interests visibly change — events from a category absent from their history,
shares before/after as percentages, recommendations before/after by title."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from dynrec import jobs
from dynrec.cli import demo
from dynrec.models.base import Recommender
from dynrec.online import OnlineRecommender
from tests.conftest import clustered_data

GROUPS = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[jobs.Prepared, Recommender, Path]:
    """itemknn on 4 taste groups of 20 items; item titles ``Film N`` and one genre ``GroupG`` each."""
    root = tmp_path_factory.mktemp("demo")
    data = clustered_data(n_users=60, n_items=80, n_groups=GROUPS, per_user=18, seed=2)
    users = data.user_vocab.to_ids(data.users)
    items = data.item_vocab.to_ids(data.items)
    rows = [f"{u},{i},{int(t)}" for u, i, t in zip(users, items, data.timestamps.tolist(), strict=True)]
    (root / "events.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    (root / "items.csv").write_text(
        "item_id,title,genres\n" + "".join(f"i{i},Film {i},Group{(i - 1) // 20}\n" for i in range(1, 81))
    )
    prepared = jobs.prepare(str(root / "events.csv"))
    model = jobs.train("itemknn", prepared, out=root / "model", items=root / "items.csv")
    return prepared, model, root / "model"


def group(item: str) -> str:
    return f"Group{(int(item[1:]) - 1) // 20}"


def test_newcomer_gets_the_most_popular_items_of_a_category_absent_from_their_history(
    trained: tuple[jobs.Prepared, Recommender, Path],
) -> None:
    prepared, model, model_dir = trained
    online = OnlineRecommender(model, item_info=jobs.read_item_info(model_dir))
    who = demo.pick_newcomer(model, prepared, online.categories())
    assert who.category is not None and len(who.history) >= 15
    assert who.category not in {group(i) for i in who.history}
    # the five most trained-on items of that category the user never had (ties: lower index first)
    train = prepared.split.train
    counts = Counter(train.item_vocab.to_ids(train.items))
    pool = [i for i in model.item_vocab.ids if group(i) == who.category and i not in who.history]
    order = {i: n for n, i in enumerate(model.item_vocab.ids)}
    want = sorted(pool, key=lambda i: (-counts[i], order[i]))[: demo.NEW_EVENTS]
    assert who.new_items == want


def test_share_and_recommendation_tables_are_aligned_percentages() -> None:
    table = demo.share_table([("Drama", 0.4), ("Comedy", 0.35), ("War", 0.25)], [("Horror", 0.5)], "Horror")
    assert table.splitlines() == [
        "  interest   before    after",
        "  --------------------------",
        "  Drama       40.0%     0.0%",
        "  Comedy      35.0%     0.0%",
        "  War         25.0%     0.0%",
        "  Horror       0.0%    50.0%  <- new",
    ]
    recs = demo.rec_table(["A", "Bb"], ["C" * 45, "D"], width=10)
    assert recs.splitlines() == [
        "  rank  before  after",
        "  --------------------------",
        "     1  A       CCCCCCCCC…",
        "     2  Bb      D",
    ]


def test_show_real_time_prints_a_visible_change(
    trained: tuple[jobs.Prepared, Recommender, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    prepared, model, model_dir = trained
    online = OnlineRecommender(model, item_info=jobs.read_item_info(model_dir))
    who = demo.pick_newcomer(model, prepared, online.categories())
    demo.show_real_time(model, prepared, model_dir)
    out = capsys.readouterr().out
    assert f"user {who.user}, {len(who.history)} past events" in out
    assert f"new events ({who.category}, absent from their history):" in out
    for item in who.new_items:
        assert f"\n    Film {item[1:]}\n" in out
    # every item has one genre: 5 of the last 10 events are the new one's
    assert re.search(rf"\n  {who.category} +0\.0% +50\.0%  <- new\n", out), out
    assert "  rank  before" in out and "\n     1  Film " in out
    assert "Serving" not in out and "('" not in out and not re.search(r"\d\.\d{5,}", out)


def test_run_prints_one_progress_line_per_model_and_an_aligned_table(
    trained: tuple[jobs.Prepared, Recommender, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prepared, _, model_dir = trained
    monkeypatch.chdir(Path(prepared.location).parent)
    demo.run("events.csv", ("pop", "itemknn"), tmp_path / "runs", {})
    lines = capsys.readouterr().out.splitlines()
    done = [ln for ln in lines if "trained and evaluated in" in ln]
    assert [ln.split(" trained")[0] for ln in done] == ["[1/2] pop       ", "[2/2] itemknn   "]
    assert all(re.fullmatch(r"\[\d/2\] \w+ +trained and evaluated in +\d+\.\d s", ln) for ln in done)
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 4 and len({len(ln) for ln in table}) == 1
    assert (tmp_path / "runs" / "events.csv-itemknn").is_dir()


def test_show_real_time_names_the_detected_shift(
    trained: tuple[jobs.Prepared, Recommender, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepared, _, model_dir = trained
    items = model_dir.parent / "items.csv"
    model = jobs.train("gru4rec", prepared, overrides={"epochs": "3"}, out=tmp_path / "gru", items=items)
    assert (tmp_path / "gru" / "shifts.json").is_file()  # calibrated when saved
    who = demo.pick_newcomer(
        model, prepared, OnlineRecommender(model, item_info=jobs.read_item_info(model_dir)).categories()
    )
    demo.show_real_time(model, prepared, tmp_path / "gru")
    out = capsys.readouterr().out
    shifted = re.findall(r"\n  after new event (\d): interests shifted: (.+) -> (.+)\n", out)
    assert len(shifted) == 1, out
    _, before, after = shifted[0]
    assert after == who.category and who.category not in before
    assert set(before.split(", ")) <= {group(i) for i in who.history}


def test_path_hint_says_how_to_put_dynrec_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make runs the demo with .venv/bin/python, dynrec not on PATH: the demo's last words say how."""
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text("")
    (bin_dir / "dynrec").write_text("")
    monkeypatch.chdir(tmp_path)
    model = Path("runs/ml-100k-gru4rec")
    hint = demo.path_hint(bin_dir, None, model)
    assert "`source .venv/bin/activate` puts dynrec on PATH" in hint
    assert "`dynrec recommend runs/ml-100k-gru4rec --user 42`" in hint
    # another environment's dynrec first on PATH is not this one
    assert "source .venv/bin/activate" in demo.path_hint(bin_dir, "/usr/local/bin/dynrec", model)
    # already on PATH: no activation line
    on_path = demo.path_hint(bin_dir, str(bin_dir / "dynrec"), model)
    assert "source" not in on_path and "dynrec recommend runs/ml-100k-gru4rec" in on_path
    # an installation without an activate script names the folder to add
    (bin_dir / "activate").unlink()
    assert f"add {bin_dir} to PATH" in demo.path_hint(bin_dir, None, model)
