"""Text-aware SASRec (``item_text=on``): cold items scored from text, state, save/load, add_items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import ItemText
from dynrec.models.config import RunOptions
from dynrec.models.seq.common import histories_right_padded
from dynrec.models.seq.item_text import TextItemEmbedding
from dynrec.models.seq.sasrec import SASRec, SASRecConfig
from dynrec.online.adapters import adapter_for

OPTS = RunOptions(num_threads=1, device="cpu")
N_CYCLES, CYCLE = 8, 4
COLD_POS = 2  # in every other cycle, the item at this position never occurs in training


def item_index(c: int, p: int) -> int:
    return c * CYCLE + p + 1


def is_cold(c: int, p: int) -> bool:
    return p == COLD_POS and c % 2 == 0


def text_table() -> torch.Tensor:
    """Factorised item text: [cycle one-hot | position one-hot], L2-normalised; row 0 = padding."""
    t = torch.zeros(N_CYCLES * CYCLE + 1, N_CYCLES + CYCLE)
    for c in range(N_CYCLES):
        for p in range(CYCLE):
            t[item_index(c, p), c] = 1.0
            t[item_index(c, p), N_CYCLES + p] = 1.0
    return torch.nn.functional.normalize(t, dim=1)


def walks(n_users: int = 400, seq_len: int = 12, seed: int = 0) -> InteractionData:
    """Each user walks one cycle; cold items are skipped (never in training)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        c, start = int(rng.integers(N_CYCLES)), int(rng.integers(CYCLE))
        walk = [(c, (start + t) % CYCLE) for t in range(seq_len)]
        seq = [item_index(c, p) for c, p in walk if not is_cold(c, p)]
        users += [u + 1] * len(seq)
        items += seq
    uv = Vocabulary(f"u{i}" for i in range(1, n_users + 1))
    iv = Vocabulary(f"i{i}" for i in range(1, N_CYCLES * CYCLE + 1))
    return InteractionData.from_arrays(users, items, user_vocab=uv, item_vocab=iv)


def config(**kw: object) -> SASRecConfig:
    base: dict[str, object] = {
        "embedding_dim": 32,
        "num_heads": 1,
        "ffn_dim": 32,
        "max_len": 8,
        "epochs": 25,
        "batch_size": 32,
        "learning_rate": 5e-3,
        "dropout": 0.0,
        "attn_dropout": 0.0,
        "item_text": "on",
        "id_dropout": 0.5,
        "patience": 50,
    }
    return SASRecConfig.from_dict({**base, **kw})


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return walks()


@pytest.fixture(scope="module")
def text_model(data: InteractionData) -> SASRec:
    m = SASRec(config())
    m.set_item_text(text_table(), "toy")
    return m.fit(data, options=OPTS)


def cold_queries() -> tuple[QueryBatch, np.ndarray]:
    """Histories ending right before a cold item, and the cold item each should be followed by."""
    hists, targets = [], []
    for c in range(0, N_CYCLES, 2):
        hists.append([item_index(c, p) for p in range(COLD_POS)])
        targets.append(item_index(c, COLD_POS))
    return QueryBatch.from_histories(hists), np.array(targets)


def cold_items() -> np.ndarray:
    return np.array([item_index(c, COLD_POS) for c in range(0, N_CYCLES, 2)])


def test_protocol_and_wants_text() -> None:
    assert isinstance(SASRec(), ItemText)
    assert not SASRec().wants_item_text() and SASRec().item_text_encoder() is None
    assert SASRec(config()).item_text_encoder() == "all-MiniLM-L6-v2"


def test_fit_without_text_is_a_clear_error(data: InteractionData) -> None:
    with pytest.raises(DynrecError, match="set_item_text"):
        SASRec(config(epochs=1)).fit(data, options=OPTS)
    m = SASRec(config(epochs=1))
    m.set_item_text(text_table()[:5], "toy")
    with pytest.raises(DynrecError, match="rows"):
        m.fit(data, options=OPTS)


def test_cold_items_ranked_by_text(text_model: SASRec, data: InteractionData) -> None:
    """The cold item that continues each cycle ranks first among the cold items (text alone)."""
    q, targets = cold_queries()
    cold = cold_items()
    s = text_model.score(q)[:, torch.from_numpy(cold)]
    top = cold[s.argmax(1).numpy()]
    assert (top == targets).mean() == 1.0
    # ID-only: the cold items were only ever negatives; their order among themselves is not learned
    idm = SASRec(config(item_text="off")).fit(data, options=OPTS)
    s_id = idm.score(q)[:, torch.from_numpy(cold)]
    assert (cold[s_id.argmax(1).numpy()] == targets).mean() < 1.0


def test_cold_rows_are_text_only(text_model: SASRec, data: InteractionData) -> None:
    net = text_model._net()  # test-only look inside the module
    emb = net.item_emb
    assert isinstance(emb, TextItemEmbedding)
    cold = torch.from_numpy(cold_items())
    counts = torch.from_numpy(data.item_counts())
    torch.testing.assert_close(emb.known, (counts > 0).float())
    with torch.no_grad():
        torch.testing.assert_close(emb.weight[cold], emb.proj(emb.text[cold]))
        # a small lookup takes the direct path: same vectors as the cached table
        torch.testing.assert_close(emb(cold), emb.weight[cold])


def test_state_equals_recompute(text_model: SASRec) -> None:
    hists = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [5], []]
    adapter = adapter_for(text_model)
    st = text_model.init_state(QueryBatch.from_histories([h[:1] for h in hists]))
    for t in range(1, 11):
        mask = np.array([len(h) > t for h in hists])
        items = np.array([h[t] if len(h) > t else 1 for h in hists])
        st = adapter.step_where(st, items, np.zeros(len(hists), np.int64), mask)
    torch.testing.assert_close(
        text_model.score_state(st), text_model.score(QueryBatch.from_histories(hists)), rtol=1e-4, atol=1e-4
    )


def test_save_load_and_add_items(text_model: SASRec, tmp_path: Path) -> None:
    q, _ = cold_queries()
    text_model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, SASRec)
    torch.testing.assert_close(loaded.score(q), text_model.score(q))
    # a new item whose text says "cycle 1, position 1": recommendable at once, after item (1, 0)
    new = torch.zeros(1, N_CYCLES + CYCLE)
    new[0, 1] = new[0, N_CYCLES + 1] = 1.0
    new = torch.nn.functional.normalize(new, dim=1)
    n_before = loaded.n_items
    loaded.add_items(["brand-new"], new)
    assert loaded.n_items == n_before + 1 and loaded.item_vocab is not None
    j = loaded.item_vocab.index("brand-new")
    hist = QueryBatch.from_histories([[item_index(1, 0)]])
    s = loaded.score(hist)
    assert s.shape[1] == n_before + 1 and torch.isfinite(s[0, j])
    # it outranks every item of the other cycles
    others = [item_index(c, p) for c in range(N_CYCLES) if c != 1 for p in range(CYCLE)]
    assert float(s[0, j]) > float(s[0, others].max())
    with pytest.raises(DynrecError, match="already"):
        loaded.add_items(["brand-new"], new)
    with pytest.raises(DynrecError, match="must be"):
        loaded.add_items(["other"], torch.zeros(1, 3))
    loaded.save(tmp_path / "m2")
    again = Recommender.load(tmp_path / "m2")
    torch.testing.assert_close(again.score(hist), s)
    # state path sees the new item too
    st = again.init_state(hist)
    torch.testing.assert_close(again.score_state(st), s, rtol=1e-4, atol=1e-4)


def test_id_only_sasrec_refuses_add_items(data: InteractionData) -> None:
    m = SASRec(config(item_text="off", epochs=1)).fit(data, options=OPTS)
    with pytest.raises(DynrecError, match="item_text=on"):
        m.add_items(["x"], torch.zeros(1, 4))


def test_text_only_loss_trains_the_text_path(data: InteractionData) -> None:
    """With a text-only output loss the projection alone ranks the next item of a cycle first."""
    m = SASRec(config(text_loss_weight=1.0, epochs=10))
    m.set_item_text(text_table(), "toy")
    m.fit(data, options=OPTS)
    net = m._net()  # test-only look inside the module
    emb = net.item_emb
    assert isinstance(emb, TextItemEmbedding)
    hists = QueryBatch.from_histories([[item_index(c, 0)] for c in range(1, N_CYCLES, 2)])
    hist, lens = histories_right_padded(hists.indptr, hists.items, net.context_len())
    with torch.no_grad():
        s = net.user_states(hist[:, :1], lens) @ emb.text_weight()[: m.n_items].T
    s[:, 0] = -torch.inf
    want = torch.tensor([item_index(c, 1) for c in range(1, N_CYCLES, 2)])
    assert (s.argmax(1) == want).float().mean() >= 0.75
