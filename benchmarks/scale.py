"""Scale: what 1M, 3M and 10M events cost — generate, load + prepare, train, evaluate, recommend, replay.

Data: `dynrec.data.synthetic` (power-law popularity within item groups, drifting interests) with
``oracle=False`` (its sampled simulator, whose cost grows with events), ``--events-per-user`` events
per user on average, so a size of N events has N / events-per-user users, over a fixed catalogue of
``--items`` items. Each size is generated once into ``--cache`` (never into the repository) and reused.

Every stage runs in a fresh child process, so its peak RSS (``ru_maxrss`` of that child, from
`os.wait4`) is its own; its CPU seconds (user + system) are reported beside the wall time, since on
a shared machine the wall time mostly says how busy the machine was. Each record names the CPU and
the 1-minute load average before and after the stage. Stages:

``generate`` — `write_synthetic` (events.csv, items.csv, synth.json).
``prepare``  — `dynrec.jobs.prepare` on the events file: read the CSV, validate, drop exact
               duplicates, build the vocabularies, leave-one-out split, content hash.
``model``    — prepare, then ALS (implicit, ``--als-epochs`` sweeps: a real model whose cost is
               linear in events, so events/s is comparable across sizes); full-catalogue evaluation
               of ``--eval-users`` sampled test users (HR/NDCG@10, exact ranking over every item);
               single-user recommendation latency (median over ``--latency-queries`` users, top-10,
               seen items excluded).
``replay``   — a temporal cut at ``--replay-quantile`` of event time, ALS fitted on the pre-cut
               events, then a state-mode replay of the rest (every event: recommend from the user's
               current state, then reveal it): events/s including building the users' states, with
               the engine's state budget bounding memory.
``live``     — the live path with and without an approximate index, side by side in one process on
               the replay stage's cut and model: the state-mode replay exact and through each of
               ``--ann-kinds`` (``kind[:key=value...]`` with `AnnConfig` options; the index built
               once per model, its build time reported apart); and, for ``--fresh-users`` users of the stream whose pre-cut
               history is in an in-memory store, one new event -> a fresh top-10
               (`OnlineRecommender.observe` then ``recommend``, seen items excluded), timed per
               retrieval on the same events; recall@10 of each index's lists against the exact
               lists of the same states.

One record per size and stage in results/scale.json, and results/scale_cost.png (cost vs events).

    python -m benchmarks.scale --sizes 1000000,3000000,10000000
    python -m benchmarks.scale --sizes 20000 --items 2000   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, RESULTS, load, put, record

STAGES = ("generate", "prepare", "model", "replay", "live")
MIB = 1 << 20


# ---- the parent: one child process per size and stage ---------------------------------------------


def folder_for(cache: Path, n_events: int, args: argparse.Namespace) -> Path:
    return cache / f"synth-{n_events}-i{args.items}-e{args.events_per_user}-s{args.seed}"


def run_child(stage: str, folder: Path, n_events: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one stage in a fresh interpreter; its own metrics plus wall, CPU and peak RSS."""
    argv = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--child",
        stage,
        "--folder",
        str(folder),
        "--sizes",
        str(n_events),
        *child_flags(args),
    ]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout is not None else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {stage} at {n_events:,} events failed (exit {status}); output:\n{out}")
    metrics: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    metrics.update(
        {
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss * 1024 / MIB,  # ru_maxrss is in KiB on Linux
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg()[0],
        }
    )
    return metrics


def child_flags(args: argparse.Namespace) -> list[str]:
    return [
        f"--items={args.items}",
        f"--events-per-user={args.events_per_user}",
        f"--seed={args.seed}",
        f"--als-epochs={args.als_epochs}",
        f"--eval-users={args.eval_users}",
        f"--latency-queries={args.latency_queries}",
        f"--replay-quantile={args.replay_quantile}",
        f"--ann-kinds={args.ann_kinds}",
        f"--fresh-users={args.fresh_users}",
    ]


def command(n_events: int, stage: str, args: argparse.Namespace) -> str:
    defaults = parser().parse_args([])
    extra = "".join(
        f" {flag.split('=')[0]} {flag.split('=')[1]}"
        for flag, default in zip(child_flags(args), child_flags(defaults), strict=True)
        if flag != default
    )
    return f"python -m benchmarks.scale --sizes {n_events} --stages {stage}{extra}"


def params(n_events: int, stage: str, args: argparse.Namespace) -> dict[str, Any]:
    p: dict[str, Any] = {
        "events": n_events,
        "users": n_events // args.events_per_user,
        "items": args.items,
        "events_per_user": args.events_per_user,
        "seed": args.seed,
        "stage": stage,
        "nice": os.nice(0),
    }
    if stage in ("model", "replay"):
        p.update({"model": "als", "als_epochs": args.als_epochs})
    if stage == "model":
        p.update({"eval_users": args.eval_users, "latency_queries": args.latency_queries})
    if stage in ("replay", "live"):
        p.update({"replay_quantile": args.replay_quantile, "replay_mode": "state"})
    if stage == "live":
        p.update({"ann_kinds": args.ann_kinds, "fresh_users": args.fresh_users, "k": 10})
    return p


def main() -> None:
    args = parser().parse_args()
    if args.child:
        sizes = [int(s) for s in args.sizes.split(",")]
        print(json.dumps(CHILD[args.child](Path(args.folder), sizes[0], args)), flush=True)
        return
    cache = args.cache
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; choose from {STAGES}")
    for n in (int(s) for s in args.sizes.split(",")):
        folder = folder_for(cache, n, args)
        if not (folder / "synth.json").exists() or "generate" in stages:
            m = run_child("generate", folder, n, args)
            put(
                record("scale", f"{n}/generate", params(n, "generate", args), m, command(n, "generate", args))
            )
            print(f"{n:>12,} generate  {m['wall_s']:8.1f}s wall {m['cpu_s']:7.1f}s cpu "
                  f"{m['peak_rss_mib']:7.0f} MiB  load {m['load_avg_before']:.1f}", flush=True)  # fmt: skip
        for stage in (s for s in stages if s != "generate"):
            m = run_child(stage, folder, n, args)
            put(record("scale", f"{n}/{stage}", params(n, stage, args), m, command(n, stage, args)))
            print(f"{n:>12,} {stage:9s} {m['wall_s']:8.1f}s wall {m['cpu_s']:7.1f}s cpu "
                  f"{m['peak_rss_mib']:7.0f} MiB  load {m['load_avg_before']:.1f}", flush=True)  # fmt: skip
    plot(load("scale"), args.plot)
    print("python -m benchmarks.pages  # to render the page")


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Wall and CPU seconds (log-log, with a linear-growth guide through each stage's smallest
    size) and peak RSS against events, one line per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_stage: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for r in records:
        by_stage.setdefault(r["params"]["stage"], []).append((int(r["params"]["events"]), r["metrics"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for stage in STAGES[:4]:  # the cost stages (live compares retrievals: its own table)
        pts = sorted(by_stage.get(stage, []), key=lambda x: x[0])
        if not pts:
            continue
        xs = [x for x, _ in pts]
        for ax, key in zip(axes, ("wall_s", "cpu_s", "peak_rss_mib"), strict=True):
            (line,) = ax.plot(xs, [m[key] for _, m in pts], marker="o", label=stage)
            if key != "peak_rss_mib" and len(xs) > 1:
                x0, y0 = xs[0], pts[0][1][key]
                ax.plot(xs, [y0 * x / x0 for x in xs], ls=":", color=line.get_color(), alpha=0.6)
    titles = ("wall seconds (dotted: linear growth)", "CPU seconds, user + system", "peak RSS, MiB")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    cpu = next((str(r["machine"]["cpu"]) for r in records), "")
    fig.suptitle(f"dynrec cost vs events (synthetic; {cpu}; each stage a fresh process)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--sizes", default="1000000,3000000,10000000", help="events per size, comma-separated")
    ap.add_argument("--stages", default=",".join(s for s in STAGES if s != "generate"),
                    help="generate (forced regeneration), prepare, model, replay")  # fmt: skip
    ap.add_argument("--items", type=int, default=200_000, help="catalogue size")
    ap.add_argument("--events-per-user", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--als-epochs", type=int, default=3)
    ap.add_argument("--eval-users", type=int, default=2000)
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--replay-quantile", type=float, default=0.995)
    ap.add_argument("--ann-kinds", default="hnsw,ivf,ivf:nprobe=128",
                    help="live stage: the indexes beside exact, kind[:key=value...] each")  # fmt: skip
    ap.add_argument("--fresh-users", type=int, default=300, help="live stage: users timed event -> top-10")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dynrec-scale")
    ap.add_argument("--plot", type=Path, default=RESULTS / "scale_cost.png")
    ap.add_argument("--child", choices=STAGES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default="", help=argparse.SUPPRESS)
    return ap


# ---- the children: one stage each, metrics as one JSON line -------------------------------------


def _rss_mib() -> float:
    """Current RSS of this process (after imports: the baseline the stage's peak is read against)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MIB
    return float("nan")


def child_generate(folder: Path, n_events: int, args: argparse.Namespace) -> dict[str, Any]:
    from dynrec.data.synthetic import SynthConfig, write_synthetic

    cfg = SynthConfig(
        n_users=max(1, n_events // args.events_per_user),
        n_items=args.items,
        events_per_user=args.events_per_user,
        seed=args.seed,
        oracle=False,
    )
    base = _rss_mib()
    summary = write_synthetic(folder, cfg)
    return {
        "rss_after_imports_mib": base,
        "n_events": summary["n_events"],
        "n_users": summary["n_users"],
        "n_items_seen": summary["n_items"],
        "events_csv_mib": (folder / "events.csv").stat().st_size / MIB,
    }


def child_prepare(folder: Path, n_events: int, args: argparse.Namespace) -> dict[str, Any]:
    from dynrec.jobs import prepare

    base = _rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    prepared = prepare(str(folder / "events.csv"))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    d, sp = prepared.data, prepared.split
    return {
        "rss_after_imports_mib": base,
        "prepare_s": seconds,
        "prepare_cpu_s": cpu,  # all threads of this process, imports excluded
        "events_per_s": d.n_events / seconds,
        "n_events": d.n_events,
        "n_users": len(d.user_vocab),
        "n_items": len(d.item_vocab),
        "n_train": sp.train.n_events,
        "n_test": len(sp.test),
        "invalid_rows": prepared.report.n_invalid,
    }


def child_model(folder: Path, n_events: int, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from dynrec.evaluation.offline import evaluate
    from dynrec.jobs import prepare
    from dynrec.models.registry import create_model

    base = _rss_mib()
    t0 = time.perf_counter()
    prepared = prepare(str(folder / "events.csv"))
    prepare_s = time.perf_counter() - t0
    sp = prepared.split
    model = create_model("als", {"epochs": str(args.als_epochs)})
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(sp.train)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    rng = np.random.default_rng(args.seed)
    n_eval = min(args.eval_users, len(sp.test))
    sample = np.sort(rng.choice(len(sp.test), n_eval, replace=False)).astype(np.int64)
    es = sp.test.subset(sample)
    t0 = time.perf_counter()
    res = evaluate(model, es, ks=(10,), extra=False)
    eval_s = time.perf_counter() - t0
    lat = []
    with torch.no_grad():
        for q in range(min(args.latency_queries, len(es))):
            one = es.queries.slice(q, q + 1)
            t1 = time.perf_counter()
            model.recommend(one, k=10)
            lat.append(time.perf_counter() - t1)
    return {
        "rss_after_imports_mib": base,
        "prepare_s": prepare_s,
        "n_train": sp.train.n_events,
        "n_items": model.n_items - 1,
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,
        "train_events_per_s": sp.train.n_events * args.als_epochs / fit_s,
        "eval_users": n_eval,
        "eval_s": eval_s,
        "eval_users_per_s": n_eval / eval_s,
        "HR@10": float(res.metrics["HR@10"]),
        "NDCG@10": float(res.metrics["NDCG@10"]),
        "recommend_ms_median": float(np.median(lat)) * 1000 if lat else float("nan"),
        "recommend_ms_p90": float(np.quantile(lat, 0.9)) * 1000 if lat else float("nan"),
        "torch_threads": torch.get_num_threads(),
    }


def child_replay(folder: Path, n_events: int, args: argparse.Namespace) -> dict[str, Any]:
    from dynrec.jobs import fit_for_replay, load_replay_data
    from dynrec.replay import ReplayConfig, replay

    base = _rss_mib()
    t0 = time.perf_counter()
    rd = load_replay_data(str(folder / "events.csv"), quantile=args.replay_quantile)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = fit_for_replay("als", rd, overrides={"epochs": str(args.als_epochs)})
    fit_s = time.perf_counter() - t0
    cfg = ReplayConfig(mode="state")
    res = replay(model, rd, cfg)
    out = res.to_json()
    return {
        "rss_after_imports_mib": base,
        "load_s": load_s,
        "fit_s": fit_s,
        "n_users_data": len(rd.data.user_vocab),
        "n_users_stream": int(out["n_users"]),
        "n_stream": len(rd),
        "n_pre_cut": rd.train.n_events,
        "state_budget_mb": cfg.state_budget_mb,
        "replay_s": float(out["seconds"]),
        "state_init_s": float(out["state_init_seconds"]),
        "events_per_s": float(out["events_per_s"]),
        "HR@10": float(out["HR@10"]),
        "NDCG@10": float(out["NDCG@10"]),
    }


def child_live(folder: Path, n_events: int, args: argparse.Namespace) -> dict[str, Any]:
    from dynrec.jobs import fit_for_replay, load_replay_data
    from dynrec.models.retrieval import AnnIndex
    from dynrec.replay import ReplayConfig, replay

    base = _rss_mib()
    rd = load_replay_data(str(folder / "events.csv"), quantile=args.replay_quantile)
    model = fit_for_replay("als", rd, overrides={"epochs": str(args.als_epochs)})
    kinds = [k for k in args.ann_kinds.split(",") if k]
    out: dict[str, Any] = {"rss_after_imports_mib": base, "n_stream": len(rd), "n_items": model.n_items - 1}
    indexes: dict[str, AnnIndex | None] = {"exact": None}
    for kind in kinds:  # one thread, as a serving process runs (`serving_threads`)
        t0 = time.perf_counter()
        indexes[kind] = AnnIndex.for_model(model, ann_config(kind).replace(num_threads=1))
        out[f"{kind}_index_build_s"] = time.perf_counter() - t0
    out.update(_fresh(model, rd, indexes, args))
    # the replay: each retrieval on the same model and stream, every thread (the engine builds its
    # own index; its build time is reported apart from the replay's wall time)
    for name in indexes:
        cfg = ReplayConfig(mode="state", ann=None if name == "exact" else ann_config(name))
        res = replay(model, rd, cfg)
        build = float(res.timing.get("index_build_seconds", 0.0))
        wall = float(res.timing["seconds"]) - build
        out[f"{name}_replay"] = {
            "events_per_s": len(rd) / wall,
            "events_per_s_with_build": len(rd) / float(res.timing["seconds"]),
            "seconds": wall,
            "state_init_s": float(res.timing["state_init_seconds"]),
            "index_build_s": build,
            "ann_share": float(res.timing.get("ann_share", 0.0)),
            "HR@10": float(res.metrics["HR@10"]),
            "NDCG@10": float(res.metrics["NDCG@10"]),
        }
    return out


def ann_config(spec: str) -> Any:
    """The `AnnConfig` of ``kind[:key=value...]`` (e.g. ``ivf:nprobe=128``)."""
    from dynrec.models.retrieval import AnnConfig

    kind, *sets = spec.split(":")
    return AnnConfig(kind=kind).with_overrides(dict(x.split("=", 1) for x in sets))  # type: ignore[arg-type]


def _fresh(model: Any, rd: Any, indexes: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Event -> fresh top-10 per retrieval on one torch thread, as `dynrec serve` runs: users with
    a pre-cut history and a stream event, the same users and events for every retrieval; recall@10
    of each list against the exact list of the same state."""
    import numpy as np
    import torch

    from dynrec.data.events import Event
    from dynrec.online.session import OnlineRecommender
    from dynrec.online.store import InMemoryStore

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = rd.data
    users_s = rd.stream_users
    first = np.unique(users_s, return_index=True)[1]
    cand = users_s[np.sort(first)]
    cand = cand[rd.pre_end[cand] > d.indptr[cand]]
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(cand, min(args.fresh_users, len(cand)), replace=False))
    uid, iid = d.user_vocab.ids, d.item_vocab.ids
    hist = {int(u): [Event(uid[u - 1], iid[d.items[p] - 1], int(d.timestamps[p])) for p in range(d.indptr[u], rd.pre_end[u])] for u in pick}  # fmt: skip
    nxt = {int(u): Event(uid[u - 1], iid[d.items[rd.pre_end[u]] - 1], int(d.timestamps[rd.pre_end[u]])) for u in pick}  # fmt: skip
    out: dict[str, Any] = {}
    lists: dict[str, list[list[str]]] = {}
    for name, index in indexes.items():
        online = OnlineRecommender(model, InMemoryStore(), index=index)
        for u in pick.tolist():  # the pre-cut history stored, its state built and cached
            online.observe(hist[u])
            online.recommend(uid[u - 1], 10)
        both, rec, got = [], [], []
        for u in pick.tolist():
            t0 = time.perf_counter()
            online.observe(nxt[u])
            t1 = time.perf_counter()
            r = online.recommend(uid[u - 1], 10)
            t2 = time.perf_counter()
            both.append((t2 - t0) * 1e3)
            rec.append((t2 - t1) * 1e3)
            got.append(r.items)
        lists[name] = got
        hits = [len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(got, lists["exact"], strict=True)]
        out[f"{name}_fresh"] = {
            "p50_ms": float(np.median(both)),
            "p90_ms": float(np.quantile(both, 0.9)),
            "recommend_p50_ms": float(np.median(rec)),
            "users": len(both),
            "recall@10": float(np.mean(hits)),
        }
    torch.set_num_threads(threads)
    return out


CHILD = {
    "generate": child_generate,
    "prepare": child_prepare,
    "model": child_model,
    "replay": child_replay,
    "live": child_live,
}


if __name__ == "__main__":
    main()
