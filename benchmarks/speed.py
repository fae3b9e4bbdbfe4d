"""Speed: how long loading, evaluating and training take. One subcommand per part.

``data``  — per dataset, in a fresh subprocess (so peak RSS is that dataset's alone): read + validate
            (`registry.load`), prepare (`InteractionData.from_events`) and the leave-one-out split,
            `--runs` times; medians per stage, the cold first run, peak RSS next to the RSS after imports.
``eval``  — full-ranking evaluation of the test users (`dynrec.jobs.evaluate_model`), median of
            `--repeats` runs, users/s.
``train`` — seconds per epoch, tokens/s and achieved GFLOP/s of a neural model next to this machine's
            measured float32 matmul peak. FLOPs are counted (`FlopCounterMode` on one real batch)
            and scaled to the epoch by next-item targets (batches differ in length when rows of
            similar length are bucketed together). Where a step's time goes (`step_breakdown`): a few
            real steps under `torch.profiler`, split into the output layer + loss (the fused
            full-catalogue cross-entropy, forward and gradient), the rest of the network (forward and
            backward), the optimiser (step, clipping, weight average) and data movement.

    python -m benchmarks.speed data --datasets ml-100k,ml-1m
    python -m benchmarks.speed eval --datasets ml-100k --models pop,itemknn
    python -m benchmarks.speed train --datasets ml-1m --models sasrec --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks._common import REPO, put, record


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def data_child(name: str, runs: int, data_dir: str | None) -> dict[str, Any]:
    """Runs in the subprocess. The stages are timed one by one, so this calls them directly."""
    from dynrec.data import registry
    from dynrec.data.dataset import InteractionData
    from dynrec.preprocessing.split import leave_one_out

    base_rss = _rss_mib()
    stages: dict[str, list[float]] = {"load": [], "prepare": [], "split": [], "total": []}
    info: dict[str, Any] = {}
    for _ in range(runs):
        t0 = time.perf_counter()
        events = registry.load(name, data_dir)
        t1 = time.perf_counter()
        data = InteractionData.from_events(events)
        t2 = time.perf_counter()
        leave_one_out(data)
        t3 = time.perf_counter()
        for key, val in (("load", t1 - t0), ("prepare", t2 - t1), ("split", t3 - t2), ("total", t3 - t0)):
            stages[key].append(val)
        info = {"n_events": len(events), "n_users": len(data.user_vocab), "n_items": len(data.item_vocab)}
        del events, data
    return {
        **info,
        **{f"{k}_s": statistics.median(v) for k, v in stages.items()},
        "first_run_s": stages["total"][0],
        "rss_after_imports_mib": round(base_rss, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
    }


def run_data(args: argparse.Namespace) -> None:
    for ds in args.datasets.split(","):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.speed",
            "data-child",
            "--datasets",
            ds,
            "--runs",
            str(args.runs),
        ]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            sys.exit(f"{ds}: benchmark child failed:\n{out.stderr.strip()}")
        metrics = json.loads(out.stdout.strip().splitlines()[-1])
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        put(
            record(
                "speed",
                f"data/{ds}",
                {"kind": "data", "dataset": ds, "runs": args.runs},
                metrics,
                f"python -m benchmarks.speed data --datasets {ds}",
                note=f"load average {load} at start",
            )
        )
        print(ds, metrics, flush=True)


def run_eval(args: argparse.Namespace) -> None:
    from dynrec.jobs import evaluate_model, prepare, train

    for ds in args.datasets.split(","):
        prepared = prepare(ds, data_dir=args.data_dir)
        for name in args.models.split(","):
            model = train(name, prepared)
            med, _ = median_time(lambda m=model, p=prepared: evaluate_model(m, p), args.repeats)
            n = len(prepared.split.test)
            metrics = {"users": n, "median_s": med, "users_per_s": n / med}
            put(
                record(
                    "speed",
                    f"eval/{ds}/{name}",
                    {"kind": "eval", "dataset": ds, "model": name, "repeats": args.repeats},
                    metrics,
                    f"python -m benchmarks.speed eval --datasets {ds} --models {name}",
                )
            )
            print(ds, name, metrics, flush=True)


def sgemm_peak(n: int = 2048, repeats: int = 10) -> float:
    """Median GFLOP/s of an n x n float32 matrix multiply with torch's BLAS."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    med, _ = median_time(lambda: torch.mm(a, b), repeats)
    return 2 * n**3 / med / 1e9


def step_breakdown(model: Any, batches: list[Any], steps: int = 4) -> dict[str, float]:
    """Shares of a training step's wall time (see the module docstring), over `steps` batches
    after one warm-up step, in the Trainer's order: loss, backward, clip, optimiser, average."""
    import torch
    from torch import nn
    from torch.profiler import ProfilerActivity, profile, record_function

    net = model.net
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    avg = [p.detach().clone() for p in net.parameters()]

    def step(batch: dict[str, Any]) -> None:
        with record_function("phase:loss"):
            loss = model.loss(batch)
        with record_function("phase:backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("phase:optimizer"):
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for a, p in zip(avg, net.parameters(), strict=True):
                    a.lerp_(p.detach(), 0.005)

    net.train()
    step(batches[0])
    chosen = batches[1 : steps + 1] or batches[:1]
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in chosen:
            step(b)
    wall = time.perf_counter() - t0
    tot = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()}
    ce = tot.get("_FusedLinearCE", 0.0)
    loss_s, bwd_s, opt_s = (tot.get(f"phase:{k}", 0.0) for k in ("loss", "backward", "optimizer"))
    prof_s = loss_s + bwd_s + opt_s
    scale = wall / prof_s if prof_s > 0 else 1.0  # profiler totals -> this run's wall time
    return {
        "step_s": wall / len(chosen),
        "share_output_ce": ce / prof_s if prof_s else 0.0,
        "share_network": (loss_s - ce + bwd_s) / prof_s if prof_s else 0.0,
        "share_optimizer": opt_s / prof_s if prof_s else 0.0,
        "profiler_overhead": scale,
    }


def run_train(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dynrec.jobs import prepare
    from dynrec.models.neural import TorchRecommender, set_threads
    from dynrec.models.registry import create_model

    set_threads(0)
    peak = sgemm_peak()
    for ds in args.datasets.split(","):
        train_data = prepare(ds, data_dir=args.data_dir).split.train
        for name in args.models.split(","):
            model = create_model(name, {"epochs": str(args.epochs), "progress": "false", "patience": "1000"})
            assert isinstance(model, TorchRecommender), f"{name} is not a neural model"
            # FLOPs of one training step on the model's own first batch; the epoch's batches are equal-shaped
            model.item_vocab, model.user_vocab = train_data.item_vocab, train_data.user_vocab
            model.meta.update(n_items=train_data.n_items, n_users=train_data.n_users)
            model.net = model.build_net(train_data)
            model.prepare(train_data)
            batches = list(model.train_batches(train_data, torch.Generator().manual_seed(0)))
            tokens = sum(int(b["n_tokens"].sum()) if "n_tokens" in b else 0 for b in batches)
            with FlopCounterMode(display=False) as fc:
                model.loss(batches[0]).backward()  # type: ignore[no-untyped-call]
            first = int(batches[0]["n_tokens"].sum()) if "n_tokens" in batches[0] else 0
            scale = tokens / first if first and tokens else len(batches)
            flops_epoch = fc.get_total_flops() * scale
            breakdown = step_breakdown(model, batches)
            model.fit(train_data, None)
            epoch_s = statistics.median([h["seconds"] for h in model.meta["train_log"]])
            metrics = {
                "s_per_epoch": epoch_s,
                "tokens_per_s": tokens / epoch_s,
                "GFLOP_per_epoch": flops_epoch / 1e9,
                "achieved_GFLOP_s": flops_epoch / epoch_s / 1e9,
                "peak_GFLOP_s": peak,
                "pct_of_peak": 100 * flops_epoch / epoch_s / 1e9 / peak,
                **breakdown,
            }
            put(
                record(
                    "speed",
                    f"train/{ds}/{name}",
                    {"kind": "train", "dataset": ds, "model": name, "epochs": args.epochs},
                    metrics,
                    f"python -m benchmarks.speed train --datasets {ds} --models {name}",
                    note=f"batch {getattr(model.config, 'batch_size', '-')}, amp {getattr(model.config, 'amp', 'none')}, "
                    f"{torch.get_num_threads()} threads",
                )
            )
            print(ds, name, metrics, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["data", "eval", "train", "data-child"])
    ap.add_argument("--datasets", default="ml-100k,ml-1m")
    ap.add_argument("--models", default=None, help="eval: pop,itemknn,userknn; train: sasrec,gru4rec")
    ap.add_argument("--runs", type=int, default=5, help="data: runs per dataset")
    ap.add_argument("--repeats", type=int, default=5, help="eval: repeats per model")
    ap.add_argument("--epochs", type=int, default=2, help="train: epochs to time")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.part == "data-child":
        print(json.dumps(data_child(args.datasets, args.runs, args.data_dir)))
    elif args.part == "data":
        run_data(args)
    elif args.part == "eval":
        args.models = args.models or "pop,itemknn,userknn"
        run_eval(args)
    else:
        args.models = args.models or "sasrec,gru4rec"
        run_train(args)


if __name__ == "__main__":
    main()
