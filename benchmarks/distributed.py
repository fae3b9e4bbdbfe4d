"""Distributed (DDP) training throughput: training events/s of one process against N processes
started by torchrun, each process pinned to its own core with one torch thread.

Every run trains the same model on the same split's training part with the same global batch
(each rank takes 1/N of every batch); validation is off so only training is timed. events/s =
next-item targets trained per second over the epochs after the first (the first warms up).

    python -m benchmarks.distributed --dataset ml-100k --model sasrec --nprocs 1,2 --epochs 4

Records go to the speed store (``kind: distributed``), one per process count, with the speed-up
over one process and the machine's load average around the run (a shared machine lowers both).
``cpu_bound_speedup_vs_1`` compares CPU seconds per epoch instead (one process against the busiest
rank): the speed-up N free cores would give when the all-reduce costs no waiting, which bounds the
wall-clock speed-up from above when other work competes for the cores.
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

from benchmarks._common import REPO, put, record


def worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): pin to a core, train, rank 0 writes the epoch log."""
    import torch

    from dynrec import jobs
    from dynrec.models.config import RunOptions
    from dynrec.models.neural.distributed import env_dist, shutdown
    from dynrec.models.registry import create_model

    d = env_dist()
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[d.local_rank % len(cpus)]})
    torch.set_num_threads(1)
    prepared = jobs.prepare(args.dataset)
    overrides = dict(s.split("=", 1) for s in args.set)
    model = create_model(
        args.model, overrides, {"epochs": args.epochs}, RunOptions(num_threads=1, device="cpu")
    )
    cpu0 = time.process_time()
    model.fit(prepared.split.train)  # no validation: training time only
    cpu = time.process_time() - cpu0
    Path(f"{args.out}.cpu{d.rank}").write_text(str(cpu))  # this rank's CPU seconds in fit
    shutdown()
    if d.is_main:
        log = model.meta["train_log"]
        Path(args.out).write_text(json.dumps({"train_log": log, "config": model.config.to_dict()}))


def loadavg() -> float:
    return os.getloadavg()[0]


def run(args: argparse.Namespace, nproc: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "log.json"
        inner = ["-m", "benchmarks.distributed", "worker", "--dataset", args.dataset, "--model", args.model]
        inner += ["--epochs", str(args.epochs), "--out", str(out)]
        inner += [x for s in args.set for x in ("--set", s)]
        if nproc == 1:
            cmd = [sys.executable, *inner]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(nproc),
            ]
            cmd += inner
        env = dict(os.environ, OMP_NUM_THREADS="1")
        load0, t0 = loadavg(), time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
        wall = time.perf_counter() - t0
        result = json.loads(out.read_text())
        cpu = [float(Path(f"{out}.cpu{r}").read_text()) for r in range(nproc)]
    log = result["train_log"]
    timed = log[1:] if len(log) > 1 else log
    tokens = sum(h["tokens"] for h in timed)
    seconds = sum(h["seconds"] for h in timed)
    return {
        "events_per_s": tokens / seconds,
        "s_per_epoch": seconds / len(timed),
        "events_per_epoch": timed[0]["tokens"],
        "last_loss": log[-1]["loss"],
        "wall_s": wall,
        "cpu_s_per_epoch_max_rank": max(cpu) / len(log),
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
        "batch_size": result["config"].get("batch_size"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    for p in (ap, w):
        p.add_argument("--dataset", default="ml-100k")
        p.add_argument("--model", default="sasrec")
        p.add_argument("--epochs", type=int, default=4)
        p.add_argument("--set", action="append", default=[], help="model option key=value (repeatable)")
    w.add_argument("--out", required=True)
    ap.add_argument("--nprocs", default="1,2", help="process counts, comma-separated")
    ap.add_argument("--note", default="", help="stored with the records (e.g. what else ran on the machine)")
    args = ap.parse_args()
    if args.cmd == "worker":
        worker(args)
        return
    counts = [int(n) for n in args.nprocs.split(",")]
    results = {n: run(args, n) for n in counts}
    base = results.get(1, {}).get("events_per_s")
    command = "python -m benchmarks.distributed " + " ".join(sys.argv[1:])
    base_cpu = results.get(1, {}).get("cpu_s_per_epoch_max_rank")
    for n, m in results.items():
        m["speedup_vs_1"] = m["events_per_s"] / base if base else None
        # what N dedicated cores would give if no rank ever waited for a core: the busiest rank's
        # CPU time per epoch against one process's (waits in the all-reduce are not CPU time)
        m["cpu_bound_speedup_vs_1"] = base_cpu / m["cpu_s_per_epoch_max_rank"] if base_cpu else None
        params = {
            "kind": "distributed",
            "dataset": args.dataset,
            "model": args.model,
            "nproc": n,
            "epochs": args.epochs,
            "threads_per_process": 1,
            "backend": "gloo",
            "overrides": dict(s.split("=", 1) for s in args.set),
        }
        key = f"distributed/{args.dataset}/{args.model}/nproc={n}"
        put(record("speed", key, params, m, command, note=args.note))
        print(
            f"nproc={n}: {m['events_per_s']:,.0f} events/s ({m['s_per_epoch']:.1f} s/epoch), "
            f"speed-up {m['speedup_vs_1'] or float('nan'):.2f}x, load {m['loadavg_before']:.1f}->{m['loadavg_after']:.1f}"
        )


if __name__ == "__main__":
    main()
