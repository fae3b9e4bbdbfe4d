"""Interest shifts: detection on planted change points, whether the shifts flagged on real data are
real, and the strategy adjustment (the lean) in streaming replay. Records in results/shifts.json.

Three parts (``--part``, default all):

* ``synthetic`` — a `dynrec data synth` log with planted change points (3,000 users, 5,000 items,
  20 groups, 60 events per user on average, switch probability 0.03, 30 % of the users never
  switch; seed 7). The users are split 70 / 30 (seeded): the model trains on the 70 % (each user's
  last event validates), the detector is calibrated on their histories (`calibrate`, default
  `ShiftConfig`) and runs over every held-out user's events from an empty state. A detected shift
  (the event after which it is flagged) matches a true change point ``c`` (the first event drawn
  from the new group) when it lies in ``[c, c + 5]``, one-to-one, earliest first. Precision over
  the detected shifts of the switching users, recall over their change points at ``c >= warmup``
  (before that the detector has no long-term interest to compare with; recall over all of them is
  ``recall_all``), F1, median delay (flag - c) of the matched ones, and false alarms per 1,000
  events of the users who never switch.
* ``real`` — ml-1m and Amazon Beauty, no ground truth. ALS trained on every user's events but the
  last ``N`` (ml-1m: N = 20, the model the strategy part replays; Beauty: N = 1) gives the vectors;
  the detector, calibrated on those training histories, runs over every user's whole history.
  Share of users with >= 1 shift, and per flagged shift the total-variation (TV) and Jensen-Shannon
  (JS, base 2) distance between category distributions (ml-1m: genres; Beauty: its brand and
  category tags; each event spreads its weight evenly over its item's categories) of two windows of
  W events: *change point* = the W before vs the W from where the shift's run of new-interest events
  began; *after the flag* (stricter: none of its events was seen when the shift was flagged) = the W
  before the change point vs the W after the flagged event. The same windows (same gap) at random
  positions of the same users are the baseline; ratio = mean flagged / mean random. W = 10 and 5.
* ``strategy`` — state-mode replay (`dynrec.replay`: full ranking, seen items excluded) with the
  detector riding along the model's state (`ShiftAdapter`), lean 0 (off) and each ``--leans``
  weight. Synthetic: the held-out users from empty; the 10 events ``[c, c + 10)`` from each true
  change point, and the 10 events after each detected shift. ml-1m: each user's last 20 events after
  the rest; the 10 events after each detected shift. HR@10 / NDCG@10 on those events and on every
  replayed event. The lean touches only the 10 events after a detected shift: the runner checks
  that every other event keeps its rank (else it stops with an error).

The trained models and the synthetic log are cached under ``--cache`` (outside the repository).
With the models cached, everything costs about 18 CPU-minutes; SASRec's training (10 epochs) adds
about 4 minutes on 2 free cores.

    python -m benchmarks.shifts                       # everything
    python -m benchmarks.shifts --part real           # one part
    python -m benchmarks.shifts --models bpr --real ''  # another model on the synthetic log
    python -m benchmarks.shifts --quick               # smoke run (about 1 CPU-minute), nothing stored
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import scipy.sparse as sp
import torch

from benchmarks._common import put, record
from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.data.synthetic import SynthConfig, write_synthetic
from dynrec.evaluation import metrics as M
from dynrec.jobs import fit_for_replay, load_replay_data
from dynrec.models.base import Recommender
from dynrec.online.adapters import StateAdapter, adapter_for
from dynrec.online.interests import tag_categories
from dynrec.online.shift_calibration import calibrate
from dynrec.online.shift_state import ShiftAdapter, shift_space
from dynrec.online.shifts import ShiftCalibration, ShiftConfig, ShiftDetector, ShiftSpace, run_histories
from dynrec.replay import ReplayConfig, ReplayData, replay, replay_split

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

TOLERANCE = 5  # a detection within [c, c + TOLERANCE] of a true change point c is a hit
AFTER = 10  # events after a shift on which the strategy is measured
K = 10
SYNTH = SynthConfig(
    n_users=3000,
    n_items=5000,
    n_groups=20,
    events_per_user=60,
    switch_prob=0.03,
    stable_fraction=0.3,
    seed=7,
    oracle=False,
)
SYNTH_QUICK = dataclasses.replace(SYNTH, n_users=500, n_items=800, events_per_user=40)
HELDOUT = 0.3
REAL_LAST_N = {"ml-1m": 20, "amazon-beauty": 1}
STRATEGY_REAL = "ml-1m"
QUICK_USERS = 300
WINDOWS = (10, 5)
RANDOM_DRAWS = 5
MODEL_OVERRIDES = {"sasrec": {"epochs": "10"}}
MODEL_OVERRIDES_QUICK = {"sasrec": {"epochs": "1"}, "als": {"epochs": "3"}, "bpr": {"epochs": "3"}}

log = logging.getLogger("benchmarks.shifts")


# ---- pure measurement helpers (tested in tests/unit/benchmarks/test_shifts.py) --------------------------


def match_shifts(truth: Sequence[int], flagged: Sequence[int], tolerance: int = TOLERANCE) -> list[int]:
    """One-to-one matching of flagged positions to true change points: each change point ``c`` (in
    order) takes the earliest unused flag in ``[c, c + tolerance]``. Returns, per change point, the
    delay (flag - c) or -1 when none matched. Earliest-first is a maximum matching here: every
    change point's interval has the same length."""
    flags = sorted(flagged)
    used = [False] * len(flags)
    out = []
    for c in sorted(truth):
        hit = -1
        for j, f in enumerate(flags):
            if f > c + tolerance:
                break
            if f >= c and not used[j]:
                used[j] = True
                hit = f - c
                break
        out.append(hit)
    return out


def detection_scores(delays: Sequence[int], n_flagged: int, n_unscored_matched: int = 0) -> dict[str, float]:
    """Precision / recall / F1 from the per-change-point delays (-1 = missed) and the number of
    flags; flags matched to change points left out of the recall (`n_unscored_matched`) count as
    neither true nor false positives."""
    tp = sum(1 for d in delays if d >= 0)
    fn = len(delays) - tp
    fp = n_flagged - tp - n_unscored_matched
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": p,
        "recall": r,
        "F1": 2 * p * r / (p + r) if p + r else 0.0,
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
    }


def tv_js(p: FloatArray, q: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Total-variation and Jensen-Shannon (base 2) distances between distributions along the last
    axis (both in [0, 1])."""
    tv = 0.5 * np.abs(p - q).sum(-1)
    m = 0.5 * (p + q)

    def kl(a: FloatArray) -> FloatArray:
        ratio = np.divide(a, m, out=np.ones_like(a), where=a > 0)
        return np.asarray((a * np.log2(ratio)).sum(-1))

    return tv, np.sqrt(np.maximum(0.0, 0.5 * kl(p) + 0.5 * kl(q)))


def window_marks(starts: IntArray, ends: IntArray, n: int) -> npt.NDArray[np.bool_]:
    """A bool mask over ``n`` positions, true inside any ``[start, end)``."""
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, np.clip(starts, 0, n), 1)
    np.add.at(diff, np.clip(ends, 0, n), -1)
    return np.cumsum(diff[:-1]) > 0


# ---- detection over many histories --------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    row: int  # which history
    at: int  # position (in the history given) of the event after which the shift was flagged
    start: int  # position where the shift's run of new-interest events began


def detect(histories: Sequence[IntArray], space: ShiftSpace, cal: ShiftCalibration) -> list[Flag]:
    """Every shift flagged over each history (item indices > 0, time order), from empty states."""
    runs: list[tuple[IntArray, IntArray, int]] = []
    run_histories(histories, space, cal, runs=runs)
    return [Flag(int(r), t, int(s)) for rows, starts, t in runs for r, s in zip(rows, starts, strict=True)]


def user_rows(data: InteractionData, users: IntArray) -> list[IntArray]:
    return [data.items[data.indptr[u] : data.indptr[u + 1]] for u in users]


def known(seqs: Sequence[IntArray], n_model: int) -> tuple[list[IntArray], list[IntArray]]:
    """The items the model knows of each sequence, and their positions in it (unknown ones are
    skipped, as the online state skips them)."""
    pos = [np.flatnonzero((s > 0) & (s < n_model)).astype(np.int64) for s in seqs]
    return [s[p] for s, p in zip(seqs, pos, strict=True)], pos


def calibrated(
    model: Recommender, train: InteractionData, cfg: ShiftConfig
) -> tuple[ShiftSpace, ShiftCalibration]:
    space = shift_space(model)
    hists = user_rows(train, np.arange(1, train.n_users, dtype=np.int64))
    return space, calibrate(hists, space, cfg)


@dataclass(frozen=True)
class Detection:
    """The detector (calibrated on the model's training histories) run over `users`' whole
    histories in ``data`` from empty states: their items, the model's known ones and positions,
    and every flag."""

    users: IntArray
    seqs: list[IntArray]
    kseqs: list[IntArray]
    kpos: list[IntArray]
    flags: list[Flag]
    space: ShiftSpace
    cal: ShiftCalibration
    calibrate_s: float
    detect_s: float

    def raw_flags(self) -> dict[int, list[int]]:
        """Row -> positions (in the row's whole history) of the events after which shifts were flagged."""
        out: dict[int, list[int]] = {}
        for f in self.flags:
            out.setdefault(f.row, []).append(int(self.kpos[f.row][f.at]))
        return out


def run_detection(
    model: Recommender, train: InteractionData, data: InteractionData, users: IntArray, cfg: ShiftConfig
) -> Detection:
    t0 = time.perf_counter()
    space, cal = calibrated(model, train, cfg)
    t_cal = time.perf_counter() - t0
    seqs = user_rows(data, users)
    kseqs, kpos = known(seqs, model.n_items)
    t0 = time.perf_counter()
    flags = detect(kseqs, space, cal)
    return Detection(users, seqs, kseqs, kpos, flags, space, cal, t_cal, time.perf_counter() - t0)


# ---- data and models --------------------------------------------------------------------------------


def digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def synth_folder(cache: Path, cfg: SynthConfig) -> Path:
    folder = cache / f"synth-{digest(dataclasses.asdict(cfg))}"
    if not (folder / "shifts.csv").exists():
        write_synthetic(folder, cfg)
    return folder


def heldout_split(
    data: InteractionData, fraction: float, seed: int, name: str
) -> tuple[ReplayData, IntArray]:
    """A replay in which a random `fraction` of the users is the stream (their events from the
    first, in time order) and the others' events are the pre-cut part: the held-out users'
    timestamps move past every other event (the same offset for all, so their order is kept) and
    the cut falls between. Returns the replay and the held-out users (indices of ``rd.data``)."""
    rng = np.random.default_rng(seed)
    users = np.arange(1, data.n_users, dtype=np.int64)
    held = np.zeros(data.n_users, dtype=bool)
    held[rng.choice(users, int(round(fraction * len(users))), replace=False)] = True
    t0, t1 = int(data.timestamps.min()), int(data.timestamps.max())
    ts = np.where(held[data.users], data.timestamps + (t1 - t0 + 1), data.timestamps)
    rd = replay_split(dataclasses.replace(data, timestamps=ts), cut=t1 + 1, name=name)
    rd = dataclasses.replace(rd, protocol=f"heldout{fraction:g}-seed{seed}")
    ids = rd.data.user_vocab.ids
    held_ids = set(data.user_vocab.to_ids(np.flatnonzero(held)))
    out = np.array([i + 1 for i, u in enumerate(ids) if u in held_ids], dtype=np.int64)
    return rd, out


def trained(
    name: str, rd: ReplayData, cache: Path, overrides: dict[str, str], refit: bool
) -> tuple[Recommender, float]:
    """`name` fitted on the replay's pre-cut events (cached); returns it and its fit seconds."""
    folder = cache / f"{rd.name}-{rd.protocol}-{name}-{digest(overrides)}"
    if refit or not (folder / "config.json").exists():
        t0 = time.perf_counter()
        model = fit_for_replay(name, rd, overrides=overrides)
        model.save(folder)
        log.info("%s on %s: trained in %.0f s", name, rd.name, time.perf_counter() - t0)
    model = Recommender.load(folder)
    return model, float(model.meta.get("fit_seconds", 0.0))


@dataclass
class Synth:
    folder: Path
    cfg: SynthConfig
    rd: ReplayData
    heldout: IntArray
    truth: dict[str, list[int]]  # user id -> change points
    stable: set[str]


def load_synth(cache: Path, cfg: SynthConfig, seed: int) -> Synth:
    folder = synth_folder(cache, cfg)
    events = registry.load(folder / "events.csv")
    data = InteractionData.from_events(events, event_weights=events.event_weights)
    rd, held = heldout_split(data, HELDOUT, seed, folder.name)
    sh = pl.read_csv(folder / "shifts.csv")
    truth: dict[str, list[int]] = {}
    for u, e in zip(sh["user_id"].cast(pl.String), sh["event_index"], strict=True):
        if e >= 0:
            truth.setdefault(u, []).append(int(e))
    stable = set(sh.filter(pl.col("stable"))["user_id"].cast(pl.String).to_list())
    return Synth(folder, cfg, rd, held, truth, stable)


def real_replay(dataset: str, last_n: int, max_users: int) -> ReplayData:
    """Each user's last `last_n` events after the rest (`max_users` > 0: the first users only)."""
    if not max_users:
        return load_replay_data(dataset, last_n=last_n)
    events = registry.load(dataset)
    data = InteractionData.from_events(events, event_weights=events.event_weights)
    return replay_split(data.select(data.users <= max_users), last_n=last_n, name=f"{dataset}-{max_users}")


# ---- part 1: synthetic detection -------------------------------------------------------------------


def synthetic_detection(s: Synth, d: Detection, cfg: ShiftConfig) -> dict[str, Any]:
    raw = d.raw_flags()
    kseqs, seqs, cal = d.kseqs, d.seqs, d.cal
    ids = s.rd.data.user_vocab.to_ids(s.heldout)
    delays: list[int] = []
    delays_all: list[int] = []
    n_flag = n_unscored = 0
    stable_alarms = stable_events = 0
    for r, u in enumerate(ids):
        got = raw.get(r, [])
        if u in s.stable:
            stable_alarms += len(got)
            stable_events += len(kseqs[r])
            continue
        truth = sorted(s.truth.get(u, []))
        per = match_shifts(truth, got)
        delays_all += per
        delays += [x for c, x in zip(truth, per, strict=True) if c >= cfg.warmup]
        n_unscored += sum(1 for c, x in zip(truth, per, strict=True) if c < cfg.warmup and x >= 0)
        n_flag += len(got)
    out = detection_scores(delays, n_flag, n_unscored)
    hit = [x for x in delays if x >= 0]
    out.update(
        {
            "recall_all": float(np.mean([x >= 0 for x in delays_all])) if delays_all else 0.0,
            "median_delay": float(np.median(hit)) if hit else float("nan"),
            "mean_delay": float(np.mean(hit)) if hit else float("nan"),
            "false_alarms_per_1000_stable": 1000.0 * stable_alarms / max(1, stable_events),
            "stable_alarms": float(stable_alarms),
            "stable_events": float(stable_events),
            "n_change_points": float(len(delays)),
            "n_change_points_all": float(len(delays_all)),
            "n_flagged": float(n_flag),
            "heldout_users": float(len(s.heldout)),
            "heldout_events": float(sum(len(k) for k in kseqs)),
            "unknown_items_skipped": float(sum(len(a) - len(k) for a, k in zip(seqs, kseqs, strict=True))),
            "calibration": {k: v for k, v in cal.to_json().items() if k != "config"},
            "calibrate_s": d.calibrate_s,
            "detect_s": d.detect_s,
        }
    )
    return out


# ---- part 2: real data ---------------------------------------------------------------------------


def category_matrix(dataset: str, data: InteractionData) -> tuple[FloatArray, int]:
    """Dense rows summing to 1 (or empty) over ``data``'s items: ml-1m genres, Beauty brand and
    category tags."""
    if registry.spec(dataset).item_files:
        m, names = registry.load_items(dataset).genre_matrix(data.item_vocab)
    else:
        from dynrec.text.items import dataset_item_texts

        tags = dataset_item_texts(dataset).tags
        cats = tag_categories(data.item_vocab, {i: {"tags": t} for i, t in tags.items()})
        m, names = cats.matrix, cats.names
    dense = np.asarray(sp.csr_matrix(m, dtype=np.float64).todense())
    sums = dense.sum(1, keepdims=True)
    return np.divide(dense, sums, out=np.zeros_like(dense), where=sums > 0), len(names)


def window_distributions(flat: IntArray, starts: IntArray, width: int, cats: FloatArray) -> FloatArray:
    """[N, C] category distribution of each window ``flat[s : s + width]`` (each event spreads its
    weight evenly over its item's categories; a row of zeros where no event has a category)."""
    out = np.zeros((len(starts), cats.shape[1]))
    for a in range(0, len(starts), 1024):
        out[a : a + 1024] = cats[flat[starts[a : a + 1024, None] + np.arange(width)]].sum(1)
    tot = out.sum(1, keepdims=True)
    return np.divide(out, tot, out=np.zeros_like(out), where=tot > 0)


def separation(
    seqs: Sequence[IntArray],
    kpos: Sequence[IntArray],
    flags: Sequence[Flag],
    cats: FloatArray,
    width: int,
    rng: np.random.Generator,
) -> dict[str, float]:
    """TV / JS between category distributions around flagged shifts vs random positions (module
    docstring); pairs with a window whose events have no category at all are left out."""
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    off = np.concatenate([[0], np.cumsum(lens)[:-1]])
    flat = np.concatenate(seqs) if len(seqs) else np.zeros(0, np.int64)
    out: dict[str, float] = {}
    for kind in ("cp", "flag"):
        # window starts (flat) per pair: a flagged shift's own (owner 0), then its random draws
        before, after, owner = [], [], []
        for f in flags:
            pos = kpos[f.row]
            s, x, n = int(pos[f.start]), int(pos[f.at]), int(lens[f.row])
            gap = 0 if kind == "cp" else x + 1 - s
            lo, hi = width, n - width - gap  # split points p: [p - w, p) and [p + gap, p + gap + w)
            if not lo <= s <= hi:
                continue
            for j, p in enumerate([s, *rng.integers(lo, hi + 1, RANDOM_DRAWS).tolist()]):
                before.append(off[f.row] + p - width)
                after.append(off[f.row] + p + gap)
                owner.append(j)
        b = window_distributions(flat, np.array(before, np.int64), width, cats)
        a = window_distributions(flat, np.array(after, np.int64), width, cats)
        ok = (b.sum(1) > 0) & (a.sum(1) > 0)
        tv, js = tv_js(b, a)
        own = np.array(owner, dtype=np.int64)
        group = np.cumsum(own == 0) - 1  # which flagged shift each row belongs to
        good = np.zeros(int(group.max(initial=-1)) + 1, dtype=bool)
        good[group[(own == 0) & ok]] = True
        flagged = (own == 0) & ok
        randoms = (own > 0) & ok & good[group] if len(group) else own > 0
        out[f"{kind}_n"] = float(flagged.sum())
        for name, d in (("tv", tv), ("js", js)):
            fm = float(d[flagged].mean()) if flagged.any() else float("nan")
            rm = float(d[randoms].mean()) if randoms.any() else float("nan")
            out[f"{kind}_{name}"] = fm
            out[f"{kind}_{name}_random"] = rm
            out[f"{kind}_{name}_ratio"] = fm / rm if rm > 0 else float("nan")
    return out


def real_detection(
    dataset: str, data: InteractionData, d: Detection, cfg: ShiftConfig, seed: int
) -> dict[str, Any]:
    flags, seqs, kseqs, kpos, users = d.flags, d.seqs, d.kseqs, d.kpos, d.users
    per_user = np.bincount([f.row for f in flags], minlength=len(users))
    n_known = np.array([len(k) for k in kseqs])
    long_enough = n_known > cfg.warmup
    cats, n_cats = category_matrix(dataset, data)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {
        "n_users": float(len(users)),
        "n_events": float(n_known.sum()),
        "unknown_items_skipped": float(sum(len(s) - len(k) for s, k in zip(seqs, kseqs, strict=True))),
        "n_shifts": float(len(flags)),
        "share_users_with_shift": float((per_user > 0).mean()),
        "share_users_with_shift_past_warmup": float((per_user[long_enough] > 0).mean()),
        "shifts_per_1000_events": 1000.0 * len(flags) / max(1, int(n_known.sum())),
        "median_events_per_user": float(np.median(n_known)),
        "n_categories": float(n_cats),
        "items_with_categories": float((np.asarray(cats.sum(1)).ravel() > 0).mean()),
        "calibration": {k: v for k, v in d.cal.to_json().items() if k != "config"},
        "calibrate_s": d.calibrate_s,
        "detect_s": d.detect_s,
    }
    for w in WINDOWS:
        out[f"window_{w}"] = separation(seqs, kpos, flags, cats, w, rng)
    return out


# ---- part 3: strategy --------------------------------------------------------------------------------


def detected_windows(data: InteractionData, d: Detection) -> npt.NDArray[np.bool_]:
    """Positions of ``data`` among the `AFTER` events following a detected shift — exactly the
    events the lean can touch: those predicted after 0..AFTER-1 known events since the flag."""
    starts, ends = [], []
    for f in d.flags:
        base = int(data.indptr[d.users[f.row]])
        pos = d.kpos[f.row]
        starts.append(base + int(pos[f.at]) + 1)
        last = f.at + AFTER
        ends.append(base + (int(pos[last]) + 1 if last < len(pos) else len(d.seqs[f.row])))
    return window_marks(np.array(starts, np.int64), np.array(ends, np.int64), data.n_events)


def true_windows(s: Synth) -> npt.NDArray[np.bool_]:
    """Positions of ``s.rd.data`` in ``[c, c + AFTER)`` of a held-out user's true change point c."""
    ids = s.rd.data.user_vocab.to_ids(s.heldout)
    starts, ends = [], []
    for u, ix in zip(ids, s.heldout, strict=True):
        base, n = int(s.rd.data.indptr[ix]), int(s.rd.data.indptr[ix + 1] - s.rd.data.indptr[ix])
        for c in s.truth.get(u, []):
            starts.append(base + c)
            ends.append(base + min(n, c + AFTER))
    return window_marks(np.array(starts, np.int64), np.array(ends, np.int64), s.rd.data.n_events)


def _hits(ranks: FloatArray) -> dict[str, float]:
    return {f"HR@{K}": M.hit_rate(ranks, K), f"NDCG@{K}": M.ndcg(ranks, K), "n": float(ranks.size)}


def strategy(
    rd: ReplayData,
    model: Recommender,
    space: ShiftSpace,
    cal: ShiftCalibration,
    leans: Sequence[float],
    windows: dict[str, npt.NDArray[np.bool_]],
) -> dict[str, Any]:
    """Replays with lean 0 and each of `leans`; per lean, HR/NDCG overall and on each window set,
    and their change against lean 0."""
    touched = windows["detected"][rd.stream]
    base_ranks: FloatArray | None = None
    out: dict[str, Any] = {"n_replayed": float(len(rd))}
    for lean in (0.0, *leans):
        det = ShiftDetector(space, cal.with_lean(lean))

        def factory(m: Recommender, det: ShiftDetector = det) -> StateAdapter:
            return ShiftAdapter(adapter_for(m), det)

        t0 = time.perf_counter()
        res = replay(model, rd, ReplayConfig(mode="state", k=K), adapter_factory=factory)
        row: dict[str, Any] = {"overall": _hits(res.ranks), "seconds": time.perf_counter() - t0}
        for name, mark in windows.items():
            row[f"after_{name}"] = _hits(res.ranks[mark[rd.stream]])
        if base_ranks is None:
            base_ranks = res.ranks
        else:
            moved = res.ranks != base_ranks
            if bool((moved & ~touched).any()):
                raise AssertionError(
                    f"lean {lean}: {int((moved & ~touched).sum())} events outside the post-shift windows "
                    "changed rank (the replay's detector and the offline detection disagree)"
                )
            row["events_changed"] = float(moved.sum())
            b = out["lean_0"]
            for part in ("overall", *(f"after_{n}" for n in windows)):
                for metric in (f"HR@{K}", f"NDCG@{K}"):
                    ref = b[part][metric]
                    row[part][f"{metric}_change"] = row[part][metric] / ref - 1.0 if ref else float("nan")
                sel = slice(None) if part == "overall" else windows[part[6:]][rd.stream]
                diff = (res.ranks[sel] < K).astype(float) - (base_ranks[sel] < K).astype(float)
                row[part][f"HR@{K}_diff_se"] = (
                    float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
                )
        out[f"lean_{lean:g}"] = row
        log.info(
            "lean %g: overall NDCG@10 %.4f, %s",
            lean,
            row["overall"][f"NDCG@{K}"],
            ", ".join(f"after {n} HR@10 {row[f'after_{n}'][f'HR@{K}']:.4f}" for n in windows),
        )
    return out


# ---- runner ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--part", default="synthetic,real,strategy", help="comma list of synthetic, real, strategy"
    )
    ap.add_argument("--models", default="als,sasrec", help="models of the synthetic parts")
    ap.add_argument("--real", default="ml-1m,amazon-beauty", help="datasets of the real part")
    ap.add_argument("--leans", default="0.5,1,2,4", help="lean weights compared with 0 (off)")
    ap.add_argument("--false-alarms", type=float, default=ShiftConfig().false_alarms_per_1000)
    ap.add_argument("--seed", type=int, default=0, help="user split, random positions")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dynrec-shift-models")
    ap.add_argument("--refit", action="store_true", help="ignore cached trained models")
    ap.add_argument(
        "--quick", action="store_true", help="small data, short trainings; prints, stores nothing"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parts = set(args.part.split(","))
    if not parts <= {"synthetic", "real", "strategy"}:
        ap.error(f"unknown part in {args.part!r}")
    leans = [float(x) for x in args.leans.split(",") if x]
    cfg = ShiftConfig(false_alarms_per_1000=args.false_alarms)
    overrides = MODEL_OVERRIDES_QUICK if args.quick else MODEL_OVERRIDES
    device = f"cpu x{torch.get_num_threads()}"
    common = {"false_alarms_per_1000": cfg.false_alarms_per_1000, "warmup": cfg.warmup, "memory": cfg.memory}
    strat = {"leans": leans, "after": AFTER, "lean_events": cfg.lean_events}
    fa_flag = (
        f" --false-alarms {args.false_alarms:g}"
        if args.false_alarms != ShiftConfig().false_alarms_per_1000
        else ""
    )

    def store(key: str, params: dict[str, Any], metrics: dict[str, Any], command: str) -> None:
        """One record; a non-default false-alarm target keys it apart from the main ones."""
        rec = record(
            "shifts",
            key + (f" (false_alarms_per_1000={args.false_alarms:g})" if fa_flag else ""),
            params,
            metrics,
            command + fa_flag + (" --quick" if args.quick else ""),
            device=device,
        )
        if args.quick:
            print(json.dumps(rec["metrics"], indent=1, default=float), flush=True)
        else:
            put(rec)

    models = [m for m in args.models.split(",") if m]
    if parts & {"synthetic", "strategy"} and models:
        scfg = SYNTH_QUICK if args.quick else SYNTH
        s = load_synth(args.cache, scfg, args.seed)
        synth_params = {
            "synth": {k: v for k, v in dataclasses.asdict(scfg).items() if k != "oracle"},
            "heldout_fraction": HELDOUT,
            "seed": args.seed,
        }
        for name in models:
            ov = overrides.get(name, {})
            model, fit_s = trained(name, s.rd, args.cache, ov, args.refit)
            d = run_detection(model, s.rd.train, s.rd.data, s.heldout, cfg)
            params = {"dataset": "synth", "model": name, "overrides": ov, **synth_params, **common}
            if "synthetic" in parts:
                m = {**synthetic_detection(s, d, cfg), "fit_s": fit_s}
                log.info(
                    "%s detection: P %.3f R %.3f F1 %.3f, median delay %s, %.2f false alarms / 1000 stable",
                    *(name, m["precision"], m["recall"], m["F1"], m["median_delay"]),
                    m["false_alarms_per_1000_stable"],
                )
                cmd = f"python -m benchmarks.shifts --part synthetic --models {name}"
                store(
                    f"synth/{name}/detection", {**params, "part": "synthetic", "tolerance": TOLERANCE}, m, cmd
                )
            if "strategy" in parts:
                marks = {"true": true_windows(s), "detected": detected_windows(s.rd.data, d)}
                m = strategy(s.rd, model, d.space, d.cal, leans, marks)
                cmd = f"python -m benchmarks.shifts --part strategy --models {name} --real '' --leans {args.leans}"
                store(f"synth/{name}/strategy", {**params, "part": "strategy", **strat}, m, cmd)
    for dataset in [d for d in args.real.split(",") if d]:
        do_real, do_strategy = "real" in parts, "strategy" in parts and dataset == STRATEGY_REAL
        if not (do_real or do_strategy):
            continue
        last_n = REAL_LAST_N.get(dataset, 1)
        rd = real_replay(dataset, last_n, QUICK_USERS if args.quick else 0)
        model, fit_s = trained("als", rd, args.cache, overrides.get("als", {}), args.refit)
        users = np.flatnonzero(rd.data.lengths() > 0).astype(np.int64)
        d = run_detection(model, rd.train, rd.data, users, cfg)
        params = {
            "dataset": dataset,
            "model": "als",
            "overrides": overrides.get("als", {}),
            "protocol": rd.protocol,
            "last_n": last_n,
            **common,
        }
        if do_real:
            m = {**real_detection(dataset, rd.data, d, cfg, args.seed), "fit_s": fit_s}
            w = m[f"window_{WINDOWS[0]}"]
            log.info(
                "%s: %.1f%% of users with a shift; TV ratio %.2f (change point), %.2f (after the flag)",
                *(dataset, 100 * m["share_users_with_shift"], w["cp_tv_ratio"], w["flag_tv_ratio"]),
            )
            extra = {"windows": list(WINDOWS), "random_draws": RANDOM_DRAWS, "seed": args.seed}
            cmd = f"python -m benchmarks.shifts --part real --real {dataset}"
            store(f"{dataset}/als/real", {**params, "part": "real", **extra}, m, cmd)
        if do_strategy:
            m = strategy(rd, model, d.space, d.cal, leans, {"detected": detected_windows(rd.data, d)})
            cmd = f"python -m benchmarks.shifts --part strategy --models '' --real {dataset} --leans {args.leans}"
            store(f"{dataset}/als/strategy", {**params, "part": "strategy", **strat}, m, cmd)
    if not args.quick:
        print("python -m benchmarks.pages  # to render the page")


if __name__ == "__main__":
    main()
