"""Interest-shift detection: known answers on a two-interest space, the calibration's promise, the
state riding along a model's state (init = stepping, persisted, rebuilt, deleted), the lean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynrec.data.events import Event
from dynrec.models.registry import create_model
from dynrec.online.session import OnlineRecommender
from dynrec.online.shift_calibration import calibrate, load_calibration, save_calibration
from dynrec.online.shift_state import ShiftAdapter, build_detector, split_shift_state
from dynrec.online.shifts import (
    DEFAULT_LEAN,
    ShiftCalibration,
    ShiftConfig,
    ShiftDetector,
    ShiftSpace,
    lean_scores,
    run_histories,
)
from dynrec.online.store import InMemoryStore
from tests.conftest import clustered_data

# items 1-4 are interest A (e1), 5-8 interest B (e2), 9-12 interest C (e3); index 0 is padding
A, B, C = [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]


def _space(named: bool = True) -> ShiftSpace:
    v = torch.zeros(13, 3, dtype=torch.float64)
    v[1:5, 0] = v[5:9, 1] = v[9:13, 2] = 1.0
    if named:
        return ShiftSpace(v, v.clone(), ["A", "B", "C"], "item vectors")
    return ShiftSpace(v, None, [f"i{i}" for i in range(13)], "item vectors")


def _cal(k: float = 0.5, h: float = 1.0, **cfg: int) -> ShiftCalibration:
    return ShiftCalibration(k, h, 0.0, 1.0, 0, "item vectors", 0.0, ShiftConfig(**cfg))  # type: ignore[arg-type]


def _run(seq: list[int], space: ShiftSpace | None = None, cal: ShiftCalibration | None = None):
    det = ShiftDetector(space or _space(), cal or _cal())
    state = det.init([np.array([seq[0]])], [np.array([100])])
    flagged = []
    for t, i in enumerate(seq[1:], start=1):
        state, hit = det.step(state, np.array([i]), np.array([100 + t]))
        if bool(hit[0]):
            flagged.append(t)
    return det, state, flagged


def test_a_run_of_new_interest_is_a_shift_flagged_on_its_second_event() -> None:
    # k = 0.5, h = 1: each event of B adds 1 - 0.5 to the statistic; the second reaches h
    seq = [A[i % 4] for i in range(10)] + [B[i % 4] for i in range(6)]
    det, state, flagged = _run(seq)
    assert flagged == [11]
    (shift,) = det.shifts(state)
    assert (shift.event_index, shift.start_index, shift.timestamp) == (11, 10, 111)
    assert shift.from_ == ("A",) and shift.to == ("B",)
    assert shift.score == pytest.approx(1.0)  # orthogonal interests
    # the long-term interest restarted from the run: the rest of B is no shift
    assert int(state["shift.stat"][0, 4]) == 1


@pytest.mark.parametrize("named", [True, False])
def test_a_step_leaves_its_input_state_as_it_was(named: bool) -> None:
    """`step_shifts` returns a new state: the caller's tensors (rows of a batch the cache steps
    in place, or a checkpoint being written) are not touched, also on the event that flags a shift."""
    det = ShiftDetector(_space(named), _cal())
    state = det.init([np.array(A * 3 + B[:1]), np.array(A * 3)], [np.arange(13), np.arange(12)])
    before = {k: v.clone() for k, v in state.items()}
    after, hit = det.step(state, np.array([B[1], A[0]]), np.array([200, 201]))
    assert hit.tolist() == [True, False]
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert int(after["shift.stat"][0, 4]) == 1 and int(before["shift.stat"][0, 4]) == 0


def test_one_stray_event_is_noise_folded_into_the_long_term_interest() -> None:
    seq = [A[i % 4] for i in range(10)] + [B[0]] + [A[i % 4] for i in range(10)]
    det, state, flagged = _run(seq)
    assert flagged == [] and det.shifts(state) == []
    long = state["shift.long"][0]
    # 20 A events and one B event, a running mean (below the memory horizon)
    assert long.tolist() == pytest.approx([20 / 21, 1 / 21, 0.0])


def test_no_shift_during_the_warm_up() -> None:
    seq = [A[0], B[0], B[1], B[2], B[3], B[0], B[1]]
    # a one-event warm-up: the interest is A, and two events of B make a shift
    assert _run(seq, cal=_cal(warmup=1))[2] == [2]
    # a five-event warm-up: the interest is mostly B by then (cos 0.97), nothing to flag
    _, state, flagged = _run(seq, cal=_cal(warmup=5))
    assert flagged == [] and state["shift.long"][0].tolist() == pytest.approx([1 / 7, 6 / 7, 0.0])


def test_shifts_named_by_nearest_items_without_categories_and_log_is_newest_first() -> None:
    seq = [A[i % 4] for i in range(8)] + [B[i % 4] for i in range(8)] + [C[i % 4] for i in range(8)]
    det, state, flagged = _run(seq, space=_space(named=False), cal=_cal(names=2))
    assert flagged == [9, 17]
    newest, oldest = det.shifts(state)
    assert newest.event_index == 17 and oldest.event_index == 9
    assert set(oldest.from_) <= {"i1", "i2", "i3", "i4"} and set(oldest.to) <= {"i5", "i6", "i7", "i8"}
    assert len(oldest.to) == 2


def test_init_over_histories_equals_stepping_each_event() -> None:
    rng = np.random.default_rng(0)
    space = _space()
    cal = _cal(k=0.45, h=0.9, warmup=3, memory=6)
    hists = [rng.integers(1, 13, n) for n in (1, 7, 30, 12, 30)]
    stamps = [np.arange(len(h), dtype=np.int64) * 10 for h in hists]
    batched = run_histories(hists, space, cal, stamps)
    det = ShiftDetector(space, cal)
    for b, (h, ts) in enumerate(zip(hists, stamps, strict=True)):
        state = det.init([h[:1]], [ts[:1]])
        for i, t in zip(h[1:], ts[1:], strict=True):
            state, _ = det.step(state, np.array([i]), np.array([t]))
        for k, v in state.items():
            torch.testing.assert_close(batched[k][b], v[0], rtol=0, atol=1e-12)
    assert int(batched["shift.stat"][:, 4].sum()) > 0  # the random histories do shift


def test_calibration_holds_its_false_alarm_rate_on_users_who_never_shift() -> None:
    """Users each with one fixed interest and 10 % stray events: calibrated on them, the detector
    flags at most the target rate; users who switch interest are caught."""
    rng = np.random.default_rng(1)
    space = _space()

    def user(groups: list[list[int]], n: int) -> np.ndarray:
        out = []
        for g in groups:
            for _ in range(n):
                out.append(int(rng.choice(g)) if rng.random() > 0.1 else int(rng.integers(1, 13)))
        return np.array(out)

    calm = [user([[A, B, C][u % 3]], 60) for u in range(600)]
    cal = calibrate(calm, space, ShiftConfig(false_alarms_per_1000=2.0, bootstrap_chains=500))
    assert cal.same < cal.reference < cal.random and cal.threshold > 0
    test = [user([[A, B, C][u % 3]], 60) for u in range(600)]
    alarms: list[tuple[np.ndarray, int]] = []
    run_histories(test, space, cal, alarms=alarms)
    n_alarms = sum(len(rows) for rows, _ in alarms)
    assert n_alarms / (600 * 60) * 1000 <= 2.0
    movers = [user([A, C], 30) for _ in range(200)]
    caught: list[tuple[np.ndarray, int]] = []
    run_histories(movers, space, cal, alarms=caught)
    hit = {int(r) for rows, t in caught for r in rows if 30 <= t <= 35}
    assert len(hit) >= 180
    # a stricter rate needs more evidence
    strict = calibrate(calm, space, ShiftConfig(false_alarms_per_1000=0.2, bootstrap_chains=500))
    assert strict.threshold > cal.threshold


def test_calibration_round_trips_through_its_file(tmp_path) -> None:
    cal = _cal(warmup=4).with_lean(1.5)
    save_calibration(tmp_path, cal)
    assert load_calibration(tmp_path) == cal
    assert load_calibration(tmp_path / "nowhere") is None


def test_lean_moves_scores_toward_the_new_interest_for_lean_events_only() -> None:
    space = _space()
    cal = _cal(lean_events=4).with_lean(2.0)
    det = ShiftDetector(space, cal)
    state = det.init([np.array(A * 3 + B[:2])], [np.arange(14)])
    assert det.shifts(state)[0].event_index == 13
    flat = torch.zeros(1, 13)
    flat[0, 0] = -torch.inf
    flat[0, 1:] = torch.linspace(1.0, 0.0, 12)  # the model prefers A
    leaned = lean_scores(flat.clone(), state, space, cal)
    assert leaned[0, 5:9].min() > leaned[0, 1:5].max()  # B first right after the shift
    assert leaned[0, 0] == -torch.inf
    for i in B[2:] + B:  # 4 more events of B: the lean has faded out
        state, _ = det.step(state, np.array([i]), np.array([0]))
    assert torch.equal(lean_scores(flat.clone(), state, space, cal), flat)


def test_leaning_names_the_states_whose_scores_the_lean_changes() -> None:
    """What approximate retrieval asks (`ShiftAdapter.dot_rows`): a state right after a shift
    leans (its scores are no dot product), one without a shift or past the lean does not."""
    cal = _cal(lean_events=4).with_lean(2.0)
    det = ShiftDetector(_space(), cal)
    hist = [np.array(A * 3 + B[:2]), np.array(A * 4), np.array(A * 3 + B[:2] + B[2:] + B)]
    state = det.init(hist, [np.arange(len(h)) for h in hist])
    assert det.leaning(state).tolist() == [True, False, False]
    assert ShiftDetector(_space(), _cal(lean_events=4)).leaning(state).tolist() == [False] * 3  # no lean


# ---- riding along a model's state ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mf():
    data = clustered_data(n_users=60, n_items=40, n_groups=4, per_user=10)
    model = create_model("als", config={"embedding_dim": 8, "epochs": 5, "seed": 0})
    model.fit(data)
    return model, data


def _session(model, store, cal: ShiftCalibration) -> OnlineRecommender:
    rec = OnlineRecommender(model, store)
    rec.detect_shifts(cal)
    return rec


def test_the_detector_rides_along_persists_and_is_deleted_with_the_user(mf, make_store) -> None:
    """In every store kind: the stored detector state equals recomputation from the history;
    another client (a restarted process) sees the same shifts; DELETE removes them."""
    model, _ = mf
    ids = model.item_vocab.ids
    cal = _cal(k=0.3, h=0.6)
    first = _session(model, make_store(), cal)
    assert isinstance(first.adapter, ShiftAdapter)
    found = {}
    for t, item in enumerate(ids[:12] + ids[-8:]):
        got = first.observe(Event("u", item, 1000 + t))
        found.update(got)
    history = first.store.history("u")
    q = model.item_vocab.lookup(history.items)
    fresh = first.shift_detector.init([q], [history.timestamps])
    stored = first.store.get_state("u")
    assert stored is not None
    _, det = split_shift_state(stored.tensors)
    for k, v in fresh.items():  # the stored state = recomputation from the history
        torch.testing.assert_close(det[k], v[0], rtol=0, atol=1e-9)
    assert found and first.shifts("u")
    second = _session(model, make_store(), cal)
    assert second.shifts("u") == first.shifts("u")
    assert [s.event_index for s in second.shifts("u")] == [
        s.event_index for s in first.shift_detector.shifts(fresh)
    ]
    assert second.delete_user("u")
    assert second.shifts("u") == [] and second.store.get_state("u") is None


def test_observe_reports_the_shift_its_event_completed(mf) -> None:
    model, _ = mf
    space_cal = _cal(k=0.3, h=0.6)
    rec = _session(model, InMemoryStore(), space_cal)
    # a user alternating between two far-apart sets of items
    vec = rec.shift_detector.space.vectors
    sims = vec[1:] @ vec[1]
    far = (torch.argsort(sims)[:6] + 1).tolist()
    near = (torch.argsort(sims, descending=True)[:10] + 1).tolist()
    items = model.item_vocab.to_ids(near + far)
    completed = []
    for t, item in enumerate(items):
        got = rec.observe(Event("v", item, t))
        if got:
            assert list(got) == ["v"]
            completed.extend(s.event_index for s in got["v"])
    assert completed == [s.event_index for s in reversed(rec.shifts("v"))]
    assert completed and min(completed) >= 10


def test_build_detector_calibrates_on_histories_and_refuses_a_foreign_calibration(mf) -> None:
    model, data = mf
    hists = [data.sequence(u) for u in range(1, len(model.user_vocab) + 1)]
    det = build_detector(model, hists, config=ShiftConfig(bootstrap_chains=200, warmup=3))
    assert det.calibration.n_events > 100 and det.space.kind == "item vectors"
    assert det.calibration.lean == DEFAULT_LEAN["als"] > 0  # ALS leans on a fresh shift by default
    foreign = ShiftCalibration(0.5, 1.0, 0.0, 1.0, 0, "categories")
    with pytest.raises(Exception, match="categories"):
        build_detector(model, hists, calibration=foreign)


CHILD = """
import sys, time
import numpy as np
from dynrec.data.events import Event
from dynrec.models.registry import load_model
from dynrec.online.session import OnlineRecommender
from dynrec.online.shifts import ShiftCalibration, ShiftConfig
from dynrec.online.store import SQLiteStore

model = load_model(sys.argv[1])
rec = OnlineRecommender(model, SQLiteStore(sys.argv[2]))
rec.detect_shifts(ShiftCalibration(0.3, 0.6, 0.0, 1.0, 0, "item vectors", 0.0, ShiftConfig()))
ids = model.item_vocab.ids
for t in range(10_000):
    rec.observe(Event("k", ids[(t // 7) % len(ids)], t))
    print(t, flush=True)
"""


def test_the_detector_state_survives_kill_9(mf, tmp_path) -> None:
    """A process observing events (write-through) is killed with SIGKILL mid-stream: the store's
    detector state equals recomputation from the stored history, and a new process goes on."""
    import signal
    import subprocess
    import sys

    model, _ = mf
    model.save(tmp_path / "m")
    db = tmp_path / "state.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "m"), str(db)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for _ in range(60):  # let it observe a while, then kill it without warning
        proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    from dynrec.online.store import SQLiteStore

    cal = _cal(k=0.3, h=0.6)
    after = _session(model, SQLiteStore(db), cal)
    history = after.store.history("k")
    assert len(history) >= 60
    stored = after.store.get_state("k")
    assert stored is not None
    fresh = after.shift_detector.init([model.item_vocab.lookup(history.items)], [history.timestamps])
    _, det = split_shift_state(stored.tensors)
    if int(stored.n_events) == len(history):  # the kill may fall between append and state write
        for k, v in fresh.items():
            torch.testing.assert_close(det[k], v[0], rtol=0, atol=1e-9)
    assert [s.event_index for s in after.shifts("k")] == [
        s.event_index for s in after.shift_detector.shifts(fresh)
    ]
    assert after.shifts("k")  # the stream changes item every 7 events: there are shifts to keep


def test_calibration_ends_when_nobody_ever_strays() -> None:
    """Every user stays in one interest, no stray event: no threshold alarms, and the search for
    the smallest one still ends (at a small positive threshold)."""
    space = _space()
    calm = [np.array([[A, B, C][u % 3][t % 4] for t in range(40)]) for u in range(90)]
    cal = calibrate(calm, space, ShiftConfig(bootstrap_chains=100))
    assert 0.0 < cal.threshold <= 0.01
