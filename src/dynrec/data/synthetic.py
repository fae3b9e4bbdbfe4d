"""Synthetic event logs with planted interest drift and a known ideal next-item distribution.

Generative story (all seeded from `SynthConfig.seed`):

* ``n_items`` items in ``n_groups`` groups (categories); within a group, item popularity follows
  a Zipf law (``zipf`` exponent) over a random order. A share ``new_item_fraction`` of the items is
  *released* during the time span (unavailable before), so the catalogue grows over time.
* each user has a latent current group. Before each event the user switches to another group
  (uniformly) with probability ``switch_prob`` — interest drift; otherwise stays. A share
  ``stable_fraction`` of the users never switches (the control group for false alarms of shift
  detection). Every switch after a user's first event is a planted change point (`SynthData.shifts`).
* the next item is drawn among the *available, not yet consumed* items: with probability
  ``1 - noise`` from the current group's popularity, else uniformly.
* event times: each user starts at a random time in the first half of the span; their events are
  spread uniformly (sorted) until the end, strictly increasing per user.

The **oracle** knows the user's group *before* the event (not whether they switch now), so its ideal
next-item distribution is ``(1-s)·q_z + s·mean_{g≠z} q_g`` with ``q_g`` the draw distribution for
group g. `oracle.csv` gives, for every event, the 0-based rank of the consumed item under that
distribution (seen and unreleased items excluded, ties by lower item index) — the best any model can
do. Files written by `write_synthetic`: ``events.csv`` (user_id, item_id, timestamp, event_type),
``items.csv`` (item_id, title, genres = the group), ``oracle.csv`` (user_id, timestamp,
oracle_rank), ``shifts.csv`` (user_id, event_index, timestamp, from_group, to_group, stable: the
planted change points; `event_index` is the 0-based position of the first event drawn from the new
group among the user's events in time order; users of the stable group are listed once with
event_index -1) and ``synth.json`` (config + summary, e.g. the oracle's HR@10).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from dynrec.errors import DynrecError

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

__all__ = ["SynthConfig", "SynthData", "generate", "load_oracle", "oracle_ranks_for", "write_synthetic"]

BASE_TIME = 1_600_000_000  # seconds UTC of the span's start
DAY = 86_400


@dataclass(frozen=True)
class SynthConfig:
    n_users: int = 2000
    n_items: int = 1000
    n_groups: int = 20
    events_per_user: int = 60
    """Mean events per user (each user draws uniformly in [0.5, 1.5] x this)."""
    switch_prob: float = 0.05
    """Probability, before each event, that the user's interest moves to another group."""
    noise: float = 0.05
    """Share of events drawn uniformly from all available unseen items."""
    zipf: float = 1.0
    """Exponent of the within-group popularity law."""
    new_item_fraction: float = 0.1
    """Items released during the span (uniformly between 20% and 100% of it)."""
    duration_days: float = 100.0
    stable_fraction: float = 0.0
    """Share of the users (drawn at random) whose interest never switches."""
    seed: int = 0
    oracle: bool = True
    """True: the exact simulation, which also ranks every event under the ideal distribution (time
    and memory grow with users x items). False: the same generative story drawn by rejection
    sampling (time and memory grow with events), without an oracle -- for large logs. The two
    give different random streams for the same seed."""

    def __post_init__(self) -> None:
        if self.n_groups < 2 or self.n_items < self.n_groups:
            raise DynrecError("need at least 2 groups and as many items as groups")
        if not all(0.0 <= p <= 1.0 for p in (self.switch_prob, self.noise, self.stable_fraction)):
            raise DynrecError("switch_prob, noise and stable_fraction must be probabilities")
        if self.events_per_user < 2 or self.n_users < 1:
            raise DynrecError("need >= 1 user and >= 2 events per user")


@dataclass(frozen=True)
class SynthData:
    events: pl.DataFrame  # user_id, item_id, timestamp, event_type (global time order)
    items: pl.DataFrame  # item_id, title, genres (list[str])
    oracle: pl.DataFrame | None  # user_id, timestamp, oracle_rank (None: `SynthConfig.oracle` off)
    config: SynthConfig
    shifts: pl.DataFrame  # user_id, event_index, timestamp, from_group, to_group, stable

    def summary(self, k: int = 10) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_events": int(self.events.height),
            "n_users": int(self.events["user_id"].n_unique()),
            "n_items": int(self.events["item_id"].n_unique()),
            "n_shifts": int(self.shifts.filter(pl.col("event_index") >= 0).height),
            "n_stable_users": int(self.shifts["stable"].sum()),
        }
        if self.oracle is not None:
            r = self.oracle["oracle_rank"].to_numpy().astype(np.float64)
            out[f"oracle_HR@{k}"] = float(np.mean(r < k))
            out[f"oracle_NDCG@{k}"] = float(
                np.mean(np.where(r < k, 1.0 / np.log2(np.minimum(r, k) + 2.0), 0.0))
            )
        return out


def generate(config: SynthConfig | None = None) -> SynthData:
    """Simulate the log (vectorised over users; one step per event index). See `SynthConfig.oracle`
    for the two simulators."""
    cfg = config or SynthConfig()
    rng = np.random.default_rng(cfg.seed)
    n_u, n_i, n_g = cfg.n_users, cfg.n_items, cfg.n_groups
    group = rng.permutation(np.arange(n_i) % n_g)  # item -> group
    pop = np.zeros(n_i)
    for g in range(n_g):
        members = rng.permutation(np.flatnonzero(group == g))
        pop[members] = 1.0 / np.power(np.arange(1, len(members) + 1), cfg.zipf)
        pop[members] /= pop[members].sum()
    span = cfg.duration_days * DAY
    release = np.zeros(n_i)
    n_new = int(round(cfg.new_item_fraction * n_i))
    if n_new:
        release[rng.choice(n_i, n_new, replace=False)] = rng.uniform(0.2 * span, span, n_new)
    lens = rng.integers(max(2, cfg.events_per_user // 2), int(cfg.events_per_user * 1.5) + 1, n_u)
    start = rng.uniform(0.0, 0.5 * span, n_u)
    t_max = int(lens.max())
    # per-user sorted event times, strictly increasing (whole seconds)
    frac = np.sort(rng.uniform(0.0, 1.0, (n_u, t_max)), axis=1)
    times = np.floor(frac * (span - start)[:, None] + start[:, None]).astype(np.int64)
    times += np.arange(t_max, dtype=np.int64)[None, :]  # strictly increasing per user
    del frac
    # a separate stream, so that logs without stable users are the same as before the option
    stable = np.random.default_rng([cfg.seed, 1]).random(n_u) < cfg.stable_fraction
    sim = _simulate_exact if cfg.oracle else _simulate_sampled
    users, items, ts, ranks, groups = sim(cfg, rng, group, pop, release, lens, times, stable)
    ts = ts + BASE_TIME
    order = np.lexsort((users, ts))
    ids = pl.DataFrame({"u": users[order] + 1, "t": ts[order]})
    ids = ids.select(pl.format("u{}", "u").alias("user_id"), pl.col("t").alias("timestamp"))
    events = pl.DataFrame(
        {
            "user_id": ids["user_id"],
            "item_id": pl.DataFrame({"i": items[order] + 1}).select(pl.format("i{}", "i"))[:, 0],
            "timestamp": ids["timestamp"],
        }
    ).with_columns(pl.lit("click").alias("event_type"))
    oracle = None if ranks is None else ids.with_columns(pl.Series("oracle_rank", ranks[order]))
    shifts = _change_points(users, ts, groups, stable)
    item_df = pl.DataFrame(
        {
            "i": np.arange(1, n_i + 1, dtype=np.int64),
            "g": group.astype(np.int64),
            "r": release.astype(np.int64),
        }
    ).select(
        pl.format("i{}", "i").alias("item_id"),
        pl.format("item {} (group {})", "i", "g").alias("title"),
        pl.concat_list(pl.format("group-{}", "g")).alias("genres"),
        (pl.col("r") + BASE_TIME).alias("release_time"),
    )
    return SynthData(events, item_df, oracle, cfg, shifts)


def _change_points(
    users: IntArray, ts: IntArray, groups: IntArray, stable: npt.NDArray[np.bool_]
) -> pl.DataFrame:
    """Every event whose latent group differs from the user's previous event's (a planted change
    point), plus one row (event_index -1) per user of the stable group."""
    order = np.lexsort((ts, users))  # by user, then time
    u, t, g = users[order], ts[order], groups[order]
    first = np.r_[True, u[1:] != u[:-1]]
    start = np.flatnonzero(first)
    index = np.arange(u.size) - np.repeat(start, np.diff(np.r_[start, u.size]))
    moved = ~first & (g != np.r_[g[:1], g[:-1]])
    rows = pl.DataFrame(
        {
            "user_id": [f"u{x + 1}" for x in u[moved]],
            "event_index": index[moved].astype(np.int64),
            "timestamp": t[moved].astype(np.int64),
            "from_group": [f"group-{x}" for x in g[np.flatnonzero(moved) - 1]],
            "to_group": [f"group-{x}" for x in g[moved]],
            "stable": np.zeros(int(moved.sum()), dtype=bool),
        },
        schema={
            "user_id": pl.String,
            "event_index": pl.Int64,
            "timestamp": pl.Int64,
            "from_group": pl.String,
            "to_group": pl.String,
            "stable": pl.Boolean,
        },
    )
    calm = np.flatnonzero(stable)
    calm = calm[np.isin(calm, u)]
    controls = pl.DataFrame(
        {
            "user_id": [f"u{x + 1}" for x in calm],
            "event_index": np.full(calm.size, -1, dtype=np.int64),
            "timestamp": np.full(calm.size, -1, dtype=np.int64),
            "from_group": [None] * calm.size,
            "to_group": [None] * calm.size,
            "stable": np.ones(calm.size, dtype=bool),
        },
        schema=rows.schema,
    )
    return pl.concat([rows, controls]).sort(["user_id", "event_index"])


# users, items, times, oracle ranks, the latent group each event was drawn from
_Sim = tuple[IntArray, IntArray, IntArray, IntArray | None, IntArray]


def _simulate_exact(
    cfg: SynthConfig,
    rng: np.random.Generator,
    group: IntArray,
    pop: FloatArray,
    release: FloatArray,
    lens: IntArray,
    times: IntArray,
    stable: npt.NDArray[np.bool_],
) -> _Sim:
    """Dense simulation over [active users, items] per step, with the oracle rank of every event."""
    n_u, n_i, n_g = cfg.n_users, cfg.n_items, cfg.n_groups
    t_max = times.shape[1]
    onehot = np.zeros((n_i, n_g))
    onehot[np.arange(n_i), group] = 1.0
    pop_by_group = onehot * pop[:, None]  # [I, G]
    z = rng.integers(0, n_g, n_u)
    seen = np.zeros((n_u, n_i), dtype=bool)
    out_u: list[IntArray] = []
    out_i: list[IntArray] = []
    out_t: list[IntArray] = []
    out_r: list[IntArray] = []
    out_g: list[IntArray] = []
    s, eps = cfg.switch_prob, cfg.noise
    for t in range(t_max):
        act = np.flatnonzero(lens > t)
        if act.size == 0:
            break
        now = times[act, t].astype(np.float64)
        avail = (release[None, :] <= now[:, None]) & ~seen[act]  # [A, I]
        n_avail = avail.sum(1)
        ok = n_avail > 0
        act, now, avail, n_avail = act[ok], now[ok], avail[ok], n_avail[ok]
        a = act.size
        z_prev = z[act]
        # group normalisers over available unseen items: Z[a, g]
        zg = avail.astype(np.float64) @ pop_by_group  # [A, G]
        unif = avail / n_avail[:, None]  # [A, I]
        p_item = np.where(avail, pop[None, :], 0.0)
        # draw distribution of group g for row a:  (1-eps) * pop_i/Z[a,g] * [grp(i)=g] + eps * unif
        inv_z = np.where(zg > 0, 1.0 / np.maximum(zg, 1e-300), 0.0)  # [A, G]
        own = p_item * inv_z[np.arange(a)[:, None], group[None, :]]  # [A, I] pop_i / Z[a, grp(i)]
        # oracle: (1-s) q_{z_prev} + s * mean_{g != z_prev} q_g   (renormalised where groups are empty)
        in_z = group[None, :] == z_prev[:, None]
        ideal = (1 - s) * ((1 - eps) * own * in_z + eps * unif) + s * (
            (1 - eps) * own * ~in_z / (n_g - 1) + eps * unif
        )
        ideal = np.where(avail, ideal, -np.inf)
        # the event: switch, then draw from q_{z_new}
        switch = (rng.random(a) < s) & ~stable[act]
        shift = rng.integers(1, n_g, a)
        z_new = np.where(switch, (z_prev + shift) % n_g, z_prev)
        z[act] = z_new
        q = (1 - eps) * own * (group[None, :] == z_new[:, None]) + eps * unif
        q = np.where(avail, q, 0.0)
        empty = q.sum(1) <= 0
        q[empty] = unif[empty]
        q /= q.sum(1, keepdims=True)
        cdf = np.cumsum(q, axis=1)
        u = rng.random(a)[:, None] * cdf[:, -1:]
        item = np.minimum((cdf < u).sum(1), n_i - 1)
        item = np.where(avail[np.arange(a), item], item, np.argmax(avail, axis=1))
        seen[act, item] = True
        # oracle rank of the consumed item (ties by lower index)
        p_t = ideal[np.arange(a), item][:, None]
        idx = np.arange(n_i)[None, :]
        rank = (ideal > p_t).sum(1) + ((ideal == p_t) & (idx < item[:, None])).sum(1)
        out_u.append(act.astype(np.int64))
        out_i.append(item.astype(np.int64))
        out_t.append(times[act, t])
        out_r.append(rank.astype(np.int64))
        out_g.append(z_new.astype(np.int64))
    return (
        np.concatenate(out_u),
        np.concatenate(out_i),
        np.concatenate(out_t),
        np.concatenate(out_r),
        np.concatenate(out_g),
    )


MAX_TRIES = 32
"""Rejection rounds of the sampled simulator before the few rows left are drawn densely."""
DENSE_ROWS = 256
"""Rows per block of the dense fallback ([rows, items] masks)."""


def _simulate_sampled(
    cfg: SynthConfig,
    rng: np.random.Generator,
    group: IntArray,
    pop: FloatArray,
    release: FloatArray,
    lens: IntArray,
    times: IntArray,
    stable: npt.NDArray[np.bool_],
) -> _Sim:
    """The same story as `_simulate_exact`, drawn without [users, items] arrays.

    Per step every active user first switches group (probability ``switch_prob``), then picks the
    component of the draw (uniform with probability ``noise``, else its group's popularity) and
    draws from it, redrawing items that are not yet released or already consumed. Rejection from
    a distribution restricted to the acceptable items is exact for that restriction; rows still
    rejected after `MAX_TRIES` rounds (a nearly exhausted group) are drawn from dense masks, where
    an empty group falls back to uniform as in the exact simulator, and a user with nothing left
    to consume skips the event. Cost grows with events x steps, not with users x items.
    """
    n_u, n_i, n_g = cfg.n_users, cfg.n_items, cfg.n_groups
    t_max = times.shape[1]
    by_group = np.argsort(group, kind="stable")  # items ordered by group
    bounds = np.searchsorted(group[by_group], np.arange(n_g + 1))
    # key[j] = g + cumulative popularity within g (each group's mass is 1): one sorted array for
    # inverse-CDF draws of every group at once
    key = np.empty(n_i)
    for g in range(n_g):
        a, b = bounds[g], bounds[g + 1]
        key[a:b] = g + np.cumsum(pop[by_group[a:b]])
        key[b - 1] = g + 1.0
    hist = np.full((n_u, t_max), -1, dtype=np.int32)  # items consumed so far, per user
    z = rng.integers(0, n_g, n_u)
    s, eps = cfg.switch_prob, cfg.noise
    out_u: list[IntArray] = []
    out_i: list[IntArray] = []
    out_t: list[IntArray] = []
    out_g: list[IntArray] = []
    for t in range(t_max):
        act = np.flatnonzero(lens > t)
        if act.size == 0:
            break
        a = act.size
        now = times[act, t].astype(np.float64)
        switch = (rng.random(a) < s) & ~stable[act]
        shift = rng.integers(1, n_g, a)
        zt = np.where(switch, (z[act] + shift) % n_g, z[act])
        z[act] = zt
        noisy = rng.random(a) < eps
        item = np.full(a, -1, dtype=np.int64)
        todo = np.arange(a)
        for _ in range(MAX_TRIES):
            if todo.size == 0:
                break
            u = rng.random(todo.size)
            pos = np.searchsorted(key, zt[todo] + u, side="right")
            pos = np.clip(pos, bounds[zt[todo]], bounds[zt[todo] + 1] - 1)
            draw = np.where(noisy[todo], rng.integers(0, n_i, todo.size), by_group[pos])
            fine = (release[draw] <= now[todo]) & ~(hist[act[todo], :t] == draw[:, None]).any(1)
            item[todo[fine]] = draw[fine]
            todo = todo[~fine]
        for lo in range(0, todo.size, DENSE_ROWS):
            rows = todo[lo : lo + DENSE_ROWS]
            item[rows] = _dense_draw(
                rng, hist[act[rows], :t], now[rows], zt[rows], noisy[rows], group, pop, release
            )
        kept = item >= 0
        hist[act[kept], t] = item[kept]
        out_u.append(act[kept].astype(np.int64))
        out_i.append(item[kept])
        out_t.append(times[act[kept], t])
        out_g.append(zt[kept].astype(np.int64))
    return np.concatenate(out_u), np.concatenate(out_i), np.concatenate(out_t), None, np.concatenate(out_g)


def _dense_draw(
    rng: np.random.Generator,
    hist: npt.NDArray[np.int32],
    now: FloatArray,
    zt: IntArray,
    noisy: npt.NDArray[np.bool_],
    group: IntArray,
    pop: FloatArray,
    release: FloatArray,
) -> IntArray:
    """Exact draws for a few rows: -1 where the user has no released, unconsumed item left."""
    r, n_i = hist.shape[0], group.shape[0]
    avail = release[None, :] <= now[:, None]  # [r, I]
    rr, cc = np.nonzero(hist >= 0)
    avail[rr, hist[rr, cc]] = False
    w = np.where(avail & (group[None, :] == zt[:, None]), pop[None, :], 0.0)
    uniform = noisy | (w.sum(1) <= 0)
    w[uniform] = avail[uniform]
    cdf = np.cumsum(w, axis=1)
    u = rng.random(r) * cdf[:, -1]
    item = np.minimum((cdf <= u[:, None]).sum(1), n_i - 1)
    return np.where(cdf[:, -1] > 0, item, -1).astype(np.int64)


def write_synthetic(out: str | Path, config: SynthConfig | None = None) -> dict[str, Any]:
    """Generate and write ``events.csv``, ``items.csv``, ``oracle.csv``, ``shifts.csv`` and
    ``synth.json`` under `out`."""
    d = generate(config)
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    d.events.write_csv(p / "events.csv")
    d.items.with_columns(pl.col("genres").list.join("|")).write_csv(p / "items.csv")
    if d.oracle is not None:
        d.oracle.write_csv(p / "oracle.csv")
    d.shifts.write_csv(p / "shifts.csv")
    summary = {"config": dataclasses.asdict(d.config), **d.summary()}
    (p / "synth.json").write_text(json.dumps(summary, indent=2))
    log.info("synthetic data in %s: %s", p, summary)
    return summary


def load_oracle(path: str | Path) -> pl.DataFrame:
    """``oracle.csv`` (or a folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "oracle.csv"
    if not p.exists():
        raise DynrecError(f"no oracle file at {p}")
    return pl.read_csv(
        p, schema_overrides={"user_id": pl.String, "timestamp": pl.Int64, "oracle_rank": pl.Int64}
    )


def oracle_ranks_for(
    oracle: pl.DataFrame, user_ids: list[str], timestamps: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Oracle rank of each (user, timestamp) event (inf where the oracle has no entry)."""
    q = pl.DataFrame({"user_id": user_ids, "timestamp": np.asarray(timestamps, dtype=np.int64)})
    j = q.join(oracle, on=["user_id", "timestamp"], how="left", maintain_order="left")
    return j["oracle_rank"].cast(pl.Float64).fill_null(float("inf")).to_numpy()
