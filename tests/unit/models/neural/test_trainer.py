"""Trainer machinery: weight averaging (EMA) and resumable checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.vocab import Vocabulary
from dynrec.evaluation.offline import evaluate
from dynrec.models.config import RunOptions
from dynrec.models.neural import CheckpointSelector, TorchRecommender, WeightAverage
from dynrec.models.registry import create_model
from dynrec.models.seq.sasrec import SASRec, SASRecConfig
from dynrec.preprocessing.split import drop_last_events, leave_one_out

OPTS = RunOptions(num_threads=1, device="cpu")


def cfg(**kw: object) -> SASRecConfig:
    base = {
        "embedding_dim": 16,
        "ffn_dim": 32,
        "max_len": 6,
        "batch_size": 32,
        "patience": 50,
        "learning_rate": 5e-3,
        "dropout": 0.2,
        "attn_dropout": 0.2,
    }
    return SASRecConfig.from_dict({**base, **kw})


@pytest.fixture(scope="module")
def data() -> InteractionData:
    """Users walk a chain of items forward (i -> i+1) from random starts: the next item is never
    seen before, so validation NDCG@10 with seen items excluded measures what was learned."""
    rng = np.random.default_rng(0)
    n_items, n_users, walk = 60, 150, 8
    starts = rng.integers(1, n_items - walk + 2, n_users)
    users = np.repeat(np.arange(1, n_users + 1), walk)
    items = (starts[:, None] + np.arange(walk)[None, :]).ravel()
    uv = Vocabulary(f"u{i}" for i in range(1, n_users + 1))
    iv = Vocabulary(f"i{i}" for i in range(1, n_items + 1))
    return InteractionData.from_arrays(users.tolist(), items.tolist(), user_vocab=uv, item_vocab=iv)


def test_weight_average_known_answer() -> None:
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = WeightAverage(lin, decay=0.5)
    expected = 0.0
    for t, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]):
        with torch.no_grad():
            lin.weight.fill_(value)
        ema.update()
        d = min(0.5, (1 + t) / (10 + t))  # warm-up ramp, then the configured decay
        expected = d * expected + (1 - d) * value
        assert float(ema.shadow[0]) == pytest.approx(expected, rel=1e-6)
    ema.swap()
    assert float(lin.weight.detach()) == pytest.approx(expected, rel=1e-6)
    ema.swap()
    assert float(lin.weight.detach()) == 12.0
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(lin, decay=1.0)


def test_ema_model_is_the_validated_average(data: InteractionData) -> None:
    split = leave_one_out(data)
    model = SASRec(cfg(epochs=4, ema_decay=0.9)).fit(split.train, split.valid, options=OPTS)
    # the kept weights are the averaged ones that scored the best validation NDCG@10
    assert evaluate(model, split.valid, ks=(10,), extra=False).metrics["NDCG@10"] == pytest.approx(
        model.meta["valid_ndcg@10"]
    )
    plain = SASRec(cfg(epochs=4, ema_decay=0.0)).fit(split.train, split.valid, options=OPTS)
    diff = [
        float((a - b).abs().max())
        for a, b in zip(model.tensors().values(), plain.tensors().values(), strict=True)
    ]
    assert max(diff) > 0  # same seed and batches: only the averaging differs


def test_ema_without_validation_keeps_the_average(data: InteractionData) -> None:
    split = leave_one_out(data)
    seen: list[torch.Tensor] = []
    model = SASRec(cfg(epochs=2, ema_decay=0.9))
    model.epoch_callbacks.append(lambda rec, m: seen.append(m.tensors()["item_emb.weight"].clone()))
    model.fit(split.train, options=OPTS)
    # the callback saw the averaged weights after the last epoch; the fitted model keeps them
    assert torch.equal(model.tensors()["item_emb.weight"], seen[-1])


def test_checkpoint_selector_known_answer() -> None:
    values = [0.10, 0.20, 0.19, 0.15, 0.21, 0.205, 0.18]
    strict = CheckpointSelector(0.0)
    assert [strict.observe(v, 0.02) for v in values] == [True, True, False, False, True, False, False]
    assert (strict.best, strict.kept, strict.bad) == (0.21, 0.21, 2)
    within = CheckpointSelector(1.0)  # keep the latest epoch >= best - 1 * 0.02
    assert [within.observe(v, 0.02) for v in values] == [True, True, True, False, True, True, False]
    # patience counts from the last new best either way (0.205 was kept but is not better)
    assert (within.best, within.kept, within.bad) == (0.21, 0.205, 2)
    # the tolerance uses the standard error of the best value, not of the epoch being judged
    sel = CheckpointSelector(1.0)
    assert sel.observe(0.20, 0.05) and sel.observe(0.16, 0.0) and not sel.observe(0.149, 0.0)


def test_select_within_se_keeps_the_latest_epoch_within_noise(data: InteractionData) -> None:
    split = leave_one_out(data)
    strict = SASRec(cfg(epochs=10, learning_rate=0.1, select_within_se=0.0)).fit(
        split.train, split.valid, options=OPTS
    )
    vals = [r["valid_ndcg"] for r in strict.meta["train_log"]]
    assert strict.meta["best_epoch"] == int(np.argmax(vals)) + 1 < 10, vals  # first of the best
    assert strict.meta["valid_ndcg@10"] == strict.meta["best_valid_ndcg@10"] == max(vals)
    # a tolerance wider than any difference keeps the last epoch (same seed: same training run)
    last = SASRec(cfg(epochs=10, learning_rate=0.1, select_within_se=1e9)).fit(
        split.train, split.valid, options=OPTS
    )
    assert [r["valid_ndcg"] for r in last.meta["train_log"]] == vals
    assert last.meta["best_epoch"] == 10 and last.meta["valid_ndcg@10"] == vals[-1]
    assert last.meta["best_valid_ndcg@10"] == max(vals)
    assert evaluate(last, split.valid, ks=(10,), extra=False).metrics["NDCG@10"] == pytest.approx(vals[-1])


RESUME_CASES = {
    "sasrec": {"attn_dropout": 0.2, "ema_decay": 0.0},
    "sasrec-sampled": {"attn_dropout": 0.2, "loss": "sampled", "n_negatives": 8},
    "sasrec-ema": {"attn_dropout": 0.2, "ema_decay": 0.9},
    "bert4rec": {},
    "gru4rec": {},
    "caser": {},
    "mlp": {},
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_equals_uninterrupted(data: InteractionData, tmp_path: Path, case: str) -> None:
    """Stopping after 2 epochs and resuming from the checkpoint gives the same model as 4 epochs in
    one go: weights, optimiser, schedule, the Trainer's and the model's own random generators and
    the dropout generator all come back."""
    name = case.split("-")[0]
    small = {"embedding_dim": 16, "batch_size": 32, "learning_rate": 5e-3, "patience": 50}
    if name in ("sasrec", "bert4rec", "gru4rec", "caser"):
        small["max_len"] = 6
    conf = {**small, **RESUME_CASES[case]}
    split = leave_one_out(data)
    full = create_model(name, config={**conf, "epochs": 4}).fit(split.train, split.valid, options=OPTS)
    ck = OPTS.replace(checkpoint_dir=str(tmp_path / "ck"))
    create_model(name, config={**conf, "epochs": 2}).fit(split.train, split.valid, options=ck)
    resumed = create_model(name, config={**conf, "epochs": 4})
    resumed.fit(split.train, split.valid, options=ck)
    assert resumed.meta["epochs_run"] == 4
    assert full.meta["best_epoch"] > 2, full.meta["train_log"]  # kept weights trained after the resume
    assert isinstance(full, TorchRecommender) and isinstance(resumed, TorchRecommender)
    for (k, a), b in zip(full.tensors().items(), resumed.tensors().values(), strict=True):
        assert torch.equal(a, b), k
    assert [r["valid_ndcg"] for r in resumed.meta["train_log"]] == [
        r["valid_ndcg"] for r in full.meta["train_log"]
    ]


def test_valid_gap_trains_without_each_users_last_event(data: InteractionData) -> None:
    split = leave_one_out(data)
    gapped = SASRec(cfg(epochs=2, valid_gap=1)).fit(split.train, split.valid, options=OPTS)
    by_hand = SASRec(cfg(epochs=2)).fit(drop_last_events(split.train, 1), split.valid, options=OPTS)
    plain = SASRec(cfg(epochs=2)).fit(split.train, split.valid, options=OPTS)
    for (k, a), b in zip(gapped.tensors().items(), by_hand.tensors().values(), strict=True):
        if k == "log_pop":  # cold-user popularity counts every training event, gap or not
            assert torch.equal(a, plain.tensors()[k])
        else:
            assert torch.equal(a, b), k
    assert not torch.equal(plain.tensors()["item_emb.weight"], gapped.tensors()["item_emb.weight"])
    # without a validation set there is nothing to protect: all events are used
    no_valid = SASRec(cfg(epochs=2, valid_gap=1)).fit(split.train, options=OPTS)
    assert torch.equal(
        no_valid.tensors()["item_emb.weight"],
        SASRec(cfg(epochs=2)).fit(split.train, options=OPTS).tensors()["item_emb.weight"],
    )
