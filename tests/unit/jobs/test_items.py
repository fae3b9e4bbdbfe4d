"""Item text through the jobs layer: training reads an item file (or refuses clearly), records where
the text came from and writes item_info.json; `add_items` grows a saved model's catalogue from text
alone (refusing or skipping ids it has, reporting bad rows, never leaving a half-written model).

A toy `ItemText` model and a toy encoder live here (the service tests reuse them): the model
scores a history by the mean of its items' text vectors dotted with every item's text vector, so a
new item whose text matches the history's is recommended at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from typer.testing import CliRunner

from dynrec import jobs
from dynrec.cli.main import app
from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.jobs.catalogue import add_items
from dynrec.jobs.items import ITEM_INFO_FILE, read_item_info
from dynrec.jobs.recommend import recommend_for
from dynrec.models import registry
from dynrec.models.base import Recommender
from dynrec.models.capabilities import ItemText
from dynrec.models.config import ModelConfig
from dynrec.models.files import expect, expect_only
from dynrec.text import read_item_texts
from tests.conftest import clustered_data

WORDS = ("space", "love", "war", "funny")


class ToyEncoder:
    """Counts of four words (+0.1 each), L2-normalised: texts about the same word are close."""

    name = "toy-enc"
    dim = len(WORDS)

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        v = np.array([[t.lower().split().count(w) + 0.1 for w in WORDS] for t in texts], np.float32)
        out: npt.NDArray[np.float32] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


@dataclass(frozen=True)
class ToyTextConfig(ModelConfig):
    text_encoder: str = "toy-enc"


class ToyText(Recommender):
    """score(h)[j] = mean_{i in h} T_i · T_j with T the item text table (exact explanations)."""

    name = "toytext"
    config_class = ToyTextConfig
    config: ToyTextConfig

    def __init__(self, config: ToyTextConfig | None = None) -> None:
        super().__init__(config)
        self.table: torch.Tensor | None = None

    def _t(self) -> torch.Tensor:
        assert self.table is not None
        return self.table

    # ItemText
    def wants_item_text(self) -> bool:
        return True

    def set_item_text(self, table: torch.Tensor, encoder: str) -> None:
        self.table = table.float()
        self.meta["text_encoder"] = encoder

    def item_text_encoder(self) -> str | None:
        got = self.meta.get("text_encoder", self.config.text_encoder)
        return str(got) if got is not None else None

    def add_items(self, ids: Sequence[str], table: torch.Tensor) -> None:
        assert self.item_vocab is not None
        self.item_vocab = Vocabulary([*self.item_vocab.ids, *ids])
        self.table = torch.cat([self._t(), table.float()])

    # Recommender
    def _fit(self, data: InteractionData, valid: object) -> None:
        if self.table is None or self.table.shape[0] != data.n_items:
            raise DynrecError("set_item_text must come before fit")

    def score(self, batch: QueryBatch) -> torch.Tensor:
        rows = torch.from_numpy(batch.row_ids())
        u = torch.zeros(len(batch), self._t().shape[1])
        u.index_add_(0, rows, self._t()[torch.from_numpy(batch.items)])
        u /= torch.from_numpy(np.maximum(batch.lengths, 1)).float()[:, None]
        out = u @ self._t().T
        out[:, 0] = -torch.inf
        return out

    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        rows = torch.from_numpy(batch.row_ids())
        h = self._t()[torch.from_numpy(batch.items)]  # [nnz, d]
        targets = self._t()[items[rows]]  # [nnz, k, d]
        n = torch.from_numpy(batch.lengths).float()[rows]
        return (targets @ h[:, :, None])[:, :, 0] / n[:, None]

    def item_embeddings(self) -> torch.Tensor:
        return self._t().clone()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"item_text": self._t()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expect_only(tensors, {"item_text"})
        self.table = expect(tensors, "item_text", (self.n_items, None), torch.float32)


@pytest.fixture
def toy_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.MODELS, "toytext", f"{__name__}:ToyText")


def write_events(root: Path) -> Path:
    """12 users over items i1..i12 in two taste groups (i1-i6, i7-i12)."""
    data = clustered_data(n_users=12, n_items=12, n_groups=2, per_user=5, seed=3)
    users = data.user_vocab.to_ids(data.users)
    items = data.item_vocab.to_ids(data.items)
    rows = [f"{u},{i},{int(t)}" for u, i, t in zip(users, items, data.timestamps.tolist(), strict=True)]
    path = root / "events.csv"
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return path


def item_text(j: int) -> str:
    return f"a space story {j}" if j <= 6 else f"a love story {j}"


def write_items(root: Path) -> Path:
    path = root / "items.csv"
    lines = [f"i{j},Film {j},{'scifi' if j <= 6 else 'romance'},{item_text(j)}" for j in range(1, 13)]
    path.write_text("item_id,title,tags,text\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture
def trained_toy(toy_text: None, tmp_path: Path) -> tuple[Path, ToyEncoder]:
    prepared = jobs.prepare(str(write_events(tmp_path)))
    enc = ToyEncoder()
    jobs.train("toytext", prepared, out=tmp_path / "m", items=write_items(tmp_path), encoder=enc)
    return tmp_path / "m", enc


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


# ---- training ---------------------------------------------------------------------------------------


def test_train_reads_the_item_file_and_records_where_the_text_came_from(
    trained_toy: tuple[Path, ToyEncoder], tmp_path: Path
) -> None:
    out, enc = trained_toy
    model = Recommender.load(out)
    assert isinstance(model, ToyText) and isinstance(model, ItemText)
    items = tmp_path / "items.csv"
    assert model.meta["item_text"] == {
        "source": {"file": str(items.resolve()), "sha256": hashlib.sha256(items.read_bytes()).hexdigest()},
        "encoder": "toy-enc",
        "dim": 4,
        "items_with_text": 12,
        "n_items": 12,
    }
    assert model.item_text_encoder() == "toy-enc"
    assert model.item_vocab is not None
    # row i = the encoding of item index i's text, row 0 zeros; one batched encode call
    assert len(enc.calls) == 1 and len(enc.calls[0]) == 12
    i5 = model.item_vocab.index("i5")
    text5 = read_item_texts(items).texts["i5"]
    assert text5 in enc.calls[0]
    torch.testing.assert_close(model._t()[i5], torch.from_numpy(ToyEncoder().encode([text5])[0]))
    assert float(model._t()[0].abs().sum()) == 0.0
    info = read_item_info(out)
    assert info["i3"] == {"title": "Film 3", "tags": ["scifi"]}
    assert info["i9"] == {"title": "Film 9", "tags": ["romance"]}


def test_a_text_model_without_text_is_refused_naming_the_option(toy_text: None, tmp_path: Path) -> None:
    prepared = jobs.prepare(str(write_events(tmp_path)))
    with pytest.raises(DynrecError, match="--items FILE"):
        jobs.train("toytext", prepared, encoder=ToyEncoder())
    # items whose ids match none of the events' items: refused too
    other = tmp_path / "other.csv"
    other.write_text("item_id,text\nzzz,a space story\n")
    with pytest.raises(DynrecError, match="no item of the training data has text"):
        jobs.train("toytext", prepared, items=other, encoder=ToyEncoder())


def test_item_info_for_any_model_best_effort(tmp_path: Path) -> None:
    prepared = jobs.prepare(str(write_events(tmp_path)))
    jobs.train("pop", prepared, out=tmp_path / "pop-items", items=write_items(tmp_path))
    assert read_item_info(tmp_path / "pop-items")["i1"] == {"title": "Film 1", "tags": ["scifi"]}
    assert "item_text" not in Recommender.load(tmp_path / "pop-items").meta  # pop reads no text
    jobs.train("pop", prepared, out=tmp_path / "pop-plain")  # an event file: no metadata, no file
    assert not (tmp_path / "pop-plain" / ITEM_INFO_FILE).exists()
    assert read_item_info(tmp_path / "pop-plain") == {}


# ---- adding items -----------------------------------------------------------------------------------


def test_added_items_are_recommendable_at_once(trained_toy: tuple[Path, ToyEncoder], tmp_path: Path) -> None:
    out, enc = trained_toy
    new = tmp_path / "new.csv"
    new.write_text("item_id,title,tags,text\nx1,Rocket,scifi,space space space\nx2,Heart,romance,love love\n")
    report = add_items(out, new, encoder=enc)
    assert report.added == ("x1", "x2") and report.skipped == () and report.n_items == 14
    assert report.invalid_rows == 0 and report.encoder == "toy-enc"
    model = Recommender.load(out)
    assert model.item_vocab is not None and tuple(model.item_vocab.ids[-2:]) == ("x1", "x2")
    assert model.meta["item_text"]["added_items"] == 2
    assert read_item_info(out)["x1"] == {"title": "Rocket", "tags": ["scifi"]}
    # a space history: the other space items (same text vector: score 1), then the new space item
    recs = recommend_for(out, history=["i1", "i2"], k=5)
    assert set(recs.items[:4]) == {"i3", "i4", "i5", "i6"} and recs.items[4] == "x1"
    v = ToyEncoder().encode([read_item_texts(new).texts["x1"], "space"])
    assert recs.scores[4] == pytest.approx(float(v[0] @ v[1]))
    # a history of a new item alone works: the love items come first
    assert set(recommend_for(out, history=["x2"], k=6).items) == {f"i{j}" for j in range(7, 13)}


def test_ids_already_present_are_refused_or_skipped(
    trained_toy: tuple[Path, ToyEncoder], tmp_path: Path
) -> None:
    out, enc = trained_toy
    new = tmp_path / "new.csv"
    new.write_text("item_id,text\nx1,space\n")
    add_items(out, new, encoder=enc)
    before = _digest(out)
    again = tmp_path / "again.csv"
    again.write_text("item_id,text\nx1,love\ni3,war\nx3,funny\n")
    with pytest.raises(DynrecError, match=r"2 item id\(s\) already in the model's catalogue \('x1', 'i3'\)"):
        add_items(out, again, encoder=enc)
    assert _digest(out) == before  # nothing changed
    report = add_items(out, again, encoder=enc, skip_existing=True)
    assert report.added == ("x3",) and report.skipped == ("x1", "i3")
    model = Recommender.load(out)
    assert isinstance(model, ToyText) and model.item_vocab is not None
    x1 = model.item_vocab.index("x1")
    kept = ToyEncoder().encode([read_item_texts(new).texts["x1"]])[0]  # the first text, not "love"
    torch.testing.assert_close(model._t()[x1], torch.from_numpy(kept))


def test_bad_rows_are_reported_with_line_and_field(
    trained_toy: tuple[Path, ToyEncoder], tmp_path: Path
) -> None:
    out, enc = trained_toy
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,text\nx1,space\n,love\nx3,\n")
    report = add_items(out, bad, encoder=enc)
    assert report.added == ("x1",) and report.invalid_rows == 2
    assert "bad.csv:3" in report.invalid[0] and "item_id" in report.invalid[0]
    assert "bad.csv:4" in report.invalid[1] and "text" in report.invalid[1]
    with pytest.raises(DynrecError, match="bad.csv:line 3 field .item_id."):
        add_items(out, bad, encoder=enc, strict=True)


def test_models_without_item_text_and_other_encoders_are_refused(
    trained_toy: tuple[Path, ToyEncoder], tmp_path: Path
) -> None:
    out, _ = trained_toy
    new = tmp_path / "new.csv"
    new.write_text("item_id,text\nx1,space\n")
    prepared = jobs.prepare(str(tmp_path / "events.csv"))
    jobs.train("pop", prepared, out=tmp_path / "pop")
    with pytest.raises(
        DynrecError, match="model pop reads no item text.*train content or sasrec --set item_text=on"
    ):
        add_items(tmp_path / "pop", new, encoder=ToyEncoder())

    class Other(ToyEncoder):
        name = "other-enc"

    with pytest.raises(DynrecError, match="encoded with 'toy-enc'"):
        add_items(out, new, encoder=Other())


def test_a_failed_save_leaves_the_old_model(
    trained_toy: tuple[Path, ToyEncoder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, enc = trained_toy
    before = _digest(out)
    real_save = Recommender.save

    def half_save(self: Recommender, path: str | Path) -> Path:
        real_save(self, path)
        (Path(path) / "model.safetensors").write_bytes(b"torn")
        raise OSError("disk full")

    monkeypatch.setattr(Recommender, "save", half_save)
    new = tmp_path / "new.csv"
    new.write_text("item_id,text\nx1,space\n")
    with pytest.raises(OSError, match="disk full"):
        add_items(out, new, encoder=enc)
    assert _digest(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.saving-")]  # temp folder removed


# ---- CLI ----------------------------------------------------------------------------------------------


def test_cli_recommend_explain_and_profile(trained_toy: tuple[Path, ToyEncoder]) -> None:
    out, _ = trained_toy
    runner = CliRunner()
    res = runner.invoke(
        app, ["recommend", str(out), "--history", "i1,i2,i1", "--k", "2", "--explain", "--json"]
    )
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["explanation_unavailable"] is None and len(got["because"]) == 2
    for score, why in zip(got["scores"], got["because"], strict=True):
        assert {b["item"] for b in why} <= {"i1", "i2"} and why[0]["title"] in ("Film 1", "Film 2")
        assert sum(b["weight"] for b in why) == pytest.approx(score, rel=1e-5)  # additive: exact
    assert got["titles"][0] is not None
    text = runner.invoke(app, ["recommend", str(out), "--history", "i1", "--k", "1", "--explain"])
    assert text.exit_code == 0 and "because: Film 1" in text.stdout
    prof = runner.invoke(app, ["profile", str(out), "--history", "i1,i2,i7", "--short-window", "1", "--json"])
    assert prof.exit_code == 0, prof.output
    p = json.loads(prof.stdout)
    assert p["long_term"]["tags"] == [["scifi", pytest.approx(2 / 3)], ["romance", pytest.approx(1 / 3)]]
    assert p["short_term"]["tags"] == [["romance", 1.0]] and p["short_term"]["items"] == ["Film 7"]
    assert p["shift"] == [["romance", pytest.approx(2 / 3)]]
    plain = runner.invoke(app, ["profile", str(out), "--history", "i1"])
    assert plain.exit_code == 0 and "scifi 100%" in plain.stdout
