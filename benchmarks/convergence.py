"""Time to quality: how long a training configuration takes until the checkpoint it keeps reaches a
test NDCG@10 target, for several configurations side by side in one run.

Each variant trains in its own process pinned to its own core with one torch thread, all at the
same time, so they share the machine's conditions. After every epoch where the kept checkpoint
changes (validation decides, as in a normal run), the kept model's test NDCG@10 is computed (full
ranking, seen items excluded); that evaluation is not counted in the training clock. A variant's
``s_to_target`` is the training time (batches + validation) until the kept checkpoint first reaches
the target, ``epochs_to_target`` the epoch it happened at. ``--stop-at-target NAME`` ends that
variant's training once its kept checkpoint reaches the target (its record then says
``stopped_at_target`` and its "final" metrics are the kept checkpoint's at that epoch); use it for a
configuration whose full-run final quality is already known and only its time to the target is
wanted.

Variants: ``previous`` is the configuration that was SASRec's default before the time-to-quality
work (pinned here explicitly), ``default`` is today's default, and ``NAME:key=value,...`` adds any
other overrides.

    python -m benchmarks.convergence --dataset ml-1m --variant previous --variant default
    python -m benchmarks.convergence --dataset ml-1m --variant default --variant b64:batch_size=64

Records go to results/convergence.json, one per (dataset, model, variant, seed); the epoch-by-epoch
curves are stored in the record. ``--log-dir`` keeps each child's JSON-lines epoch log for watching
a long run; when such a run is cut short (the machine's time runs out), the same command with
``--from-logs`` records every variant from its log, final quality read at the last logged epoch
(``cut_at_epoch``).
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

from benchmarks._common import REPO, RESULTS, Record, load, put, record

PREVIOUS: dict[str, dict[str, str]] = {
    "sasrec": {
        "batch_size": "128",
        "learning_rate": "0.001",
        "warmup_steps": "0",
        "schedule": "constant",
        "epochs": "200",
        "patience": "20",
        "ema_decay": "0.995",
        "select_within_se": "1.0",
    }
}
"""The configuration each model trained with by default before the time-to-quality work."""


def parse_variant(spec: str, model: str) -> tuple[str, dict[str, str]]:
    """``previous`` | ``default`` | ``NAME:key=value,key=value`` -> (name, overrides)."""
    if spec == "previous":
        if model not in PREVIOUS:
            raise SystemExit(f"no pinned previous configuration for {model!r}")
        return spec, dict(PREVIOUS[model])
    if spec == "default":
        return spec, {}
    name, _, rest = spec.partition(":")
    pairs = [p.split("=", 1) for p in rest.split(",") if p]
    if not name or any(len(p) != 2 for p in pairs):
        raise SystemExit(f"bad variant {spec!r}: previous | default | NAME:key=value,key=value")
    return name, {k: v for k, v in pairs}


def child(args: argparse.Namespace) -> None:
    """One variant: pin to its core, train with a per-epoch probe, write the curve to `args.out`."""
    import torch

    from dynrec import jobs
    from dynrec.models.config import RunOptions
    from dynrec.models.neural import TorchRecommender
    from dynrec.models.neural.trainer import EpochRecord
    from dynrec.models.registry import create_model

    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[args.core % len(cpus)]})
    torch.set_num_threads(1)
    prepared = jobs.prepare(args.dataset, data_dir=args.data_dir)
    overrides = json.loads(args.overrides)
    if args.seed is not None:
        overrides["seed"] = str(args.seed)
    model = create_model(args.model, overrides, None, RunOptions(num_threads=1, device="cpu"))
    if not isinstance(model, TorchRecommender):
        raise SystemExit(f"{args.model} is not a neural model: no epochs to follow")
    curve: list[dict[str, Any]] = []
    state: dict[str, Any] = {"kept_epoch": None, "kept_test": None, "hit": None}

    class TargetReached(Exception):
        """Raised by the probe to end training once the kept checkpoint reaches the target."""

    log = open(args.log, "a") if args.log else None  # noqa: SIM115 - closed below

    def probe(rec: EpochRecord, m: TorchRecommender) -> None:
        if m.meta.get("best_epoch") == rec.epoch:  # this epoch became the kept checkpoint
            state["kept_epoch"] = rec.epoch
            state["kept_test"] = jobs.evaluate_model(m, prepared).metrics["NDCG@10"]
            if state["hit"] is None and state["kept_test"] >= args.target:
                state["hit"] = (rec.epoch, rec.elapsed)
        row = {
            "epoch": rec.epoch,
            "elapsed": rec.elapsed,
            "seconds": rec.seconds,
            "loss": rec.loss,
            "valid_ndcg": rec.valid_ndcg,
            "kept_epoch": state["kept_epoch"],
            "kept_test_ndcg": state["kept_test"],
        }
        curve.append(row)
        if log is not None:
            log.write(json.dumps({"variant": args.name, **row}) + "\n")
            log.flush()
        if args.stop and state["hit"] is not None:
            raise TargetReached

    model.epoch_callbacks.append(probe)
    stopped = False
    try:
        model.fit(prepared.split.train, prepared.split.valid)
    except TargetReached:
        stopped = True
    if log is not None:
        log.close()
    hit = state["hit"]
    if stopped:  # the model is mid-run; the kept checkpoint's test metrics were taken by the probe
        test = {"NDCG@10": state["kept_test"], "HR@10": None}
    else:
        test = jobs.evaluate_model(model, prepared).metrics
        if args.save:
            jobs.save_model(model, args.save)
    out = {
        "config": model.config.to_dict(),
        "curve": curve,
        "stopped_at_target": stopped,
        "final_NDCG@10": test["NDCG@10"],
        "final_HR@10": test["HR@10"],
        "epochs_run": len(curve) if stopped else model.meta.get("epochs_run"),
        "kept_epoch": state["kept_epoch"] if stopped else model.meta.get("best_epoch"),
        "train_s": curve[-1]["elapsed"] if stopped else model.meta.get("train_seconds"),
        "s_per_epoch": _median_seconds(curve),
        "epochs_to_target": hit[0] if hit else None,
        "s_to_target": hit[1] if hit else None,
    }
    Path(args.out).write_text(json.dumps(out))


def plot(dataset: str, model: str, target: float) -> Path | None:
    """results/convergence_<dataset>_<model>.png: the kept checkpoint's test NDCG@10 against training
    minutes for every stored variant of (dataset, model), the target as a line."""
    recs: list[Record] = [
        r for r in load("convergence") if r["params"]["dataset"] == dataset and r["params"]["model"] == model
    ]
    if not recs:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in sorted(recs, key=lambda r: str(r["key"])):
        pts = [(c["elapsed"] / 60, c["kept_test_ndcg"]) for c in r["metrics"]["curve"] if c["kept_test_ndcg"]]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=f"{r['params']['variant']} (seed {r['params']['seed']})")
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_xlabel("training minutes (one core, one thread)")
    ax.set_ylabel("test NDCG@10 of the kept checkpoint")
    ax.set_title(f"{model} on {dataset}: time to quality")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"convergence_{dataset}_{model}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def record_cut_run(args: argparse.Namespace, variants: list[tuple[str, dict[str, str]]]) -> None:
    """Records for the variants of a run that ended before its children did (e.g. a machine's time
    ran out), from each variant's JSON-lines epoch log: the curve, the epoch and training time at
    which the kept checkpoint first reached the target, and the kept checkpoint's test NDCG@10 at
    the last logged epoch (``cut_at_epoch``; not a finished run's final model)."""
    from dynrec.models.registry import create_model

    if not args.log_dir:
        raise SystemExit("--from-logs reads the epoch logs of --log-dir")
    done: list[tuple[str, dict[str, str], Any, dict[str, Any]]] = []
    for name, overrides in variants:
        log = Path(args.log_dir) / f"{args.dataset}-{args.model}-{name}.jsonl"
        curve = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if not curve:
            raise SystemExit(f"{log}: no epoch logged")
        for row in curve:
            row.pop("variant", None)
        hit = next((r for r in curve if (r["kept_test_ndcg"] or 0.0) >= args.target), None)
        ov = dict(overrides, **({"seed": str(args.seed)} if args.seed is not None else {}))
        seed = create_model(args.model, ov).config.to_dict().get("seed")
        metrics = {
            "curve": curve,
            "cut_at_epoch": curve[-1]["epoch"],
            "stopped_at_target": hit is not None and name in args.stop_at_target,
            "final_NDCG@10": curve[-1]["kept_test_ndcg"],
            "epochs_run": curve[-1]["epoch"],
            "kept_epoch": curve[-1]["kept_epoch"],
            "train_s": curve[-1]["elapsed"],
            "s_per_epoch": _median_seconds(curve),
            "variants_side_by_side": len(variants),
        }
        if hit is not None:
            metrics["epochs_to_target"] = hit["epoch"]
            metrics["s_to_target"] = hit["elapsed"]
        done.append((name, overrides, seed, metrics))
    base = next((m for n, _, _, m in done if n == "previous"), None)
    for name, overrides, seed, metrics in done:
        cut = metrics["cut_at_epoch"]
        how = (
            f"stopped at the target at epoch {cut}" if metrics["stopped_at_target"] else f"cut at epoch {cut}"
        )
        _put_variant(
            args, name, overrides, seed, {}, metrics, f"{NOTE}; recorded from the epoch logs ({how})", base
        )
    print(f"wrote {plot(args.dataset, args.model, args.target)}")


NOTE = "one process per variant, each pinned to its own core with one torch thread"


def _median_seconds(curve: list[dict[str, Any]]) -> float | None:
    """The upper median of the epochs' training seconds (None for an empty curve)."""
    return sorted(r["seconds"] for r in curve)[len(curve) // 2] if curve else None


def _put_variant(
    args: argparse.Namespace,
    name: str,
    overrides: dict[str, str],
    seed: Any,
    config: dict[str, Any],
    metrics: dict[str, Any],
    note: str,
    previous: dict[str, Any] | None,
) -> None:
    """Store one variant's record (key dataset/model/variant/seed) and print its summary; with the
    `previous` variant's metrics, the record also gets its speed-up to the target against it."""
    if (
        previous is not None
        and name != "previous"
        and previous.get("s_to_target")
        and metrics.get("s_to_target")
    ):
        metrics["speedup_to_target_vs_previous"] = previous["s_to_target"] / metrics["s_to_target"]
    params = {
        "dataset": args.dataset,
        "model": args.model,
        "variant": name,
        "overrides": overrides,
        "seed": seed,
        "target": args.target,
        "config": config,
    }
    key = f"{args.dataset}/{args.model}/{name}/seed={seed}"
    put(record("convergence", key, params, metrics, _command(args), note=note))
    print(json.dumps({"variant": name, **{k: v for k, v in metrics.items() if k != "curve"}}), flush=True)


def _command(args: argparse.Namespace) -> str:
    return (
        f"python -m benchmarks.convergence --dataset {args.dataset} --model {args.model}"
        + "".join(f" --variant '{v}'" for v in args.variant or ["previous", "default"])
        + f" --target {args.target}"
        + "".join(f" --stop-at-target {v}" for v in args.stop_at_target)
        + (f" --seed {args.seed}" if args.seed is not None else "")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--model", default="sasrec")
    ap.add_argument(
        "--variant", action="append", default=[], help="previous | default | NAME:key=value,... (repeat)"
    )
    ap.add_argument("--target", type=float, default=0.182, help="test NDCG@10 to reach")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--log-dir", default=None, help="keep each variant's JSON-lines epoch log here")
    ap.add_argument("--first-core", type=int, default=0, help="pin the first variant to this core")
    ap.add_argument("--save-dir", default=None, help="save each variant's final model under DIR/NAME")
    ap.add_argument(
        "--stop-at-target",
        action="append",
        default=[],
        metavar="NAME",
        help="end this variant once its kept checkpoint reaches the target (repeat)",
    )
    ap.add_argument(
        "--from-logs",
        action="store_true",
        help="record the variants of a run that was cut short from their --log-dir epoch logs",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--save", default="", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="", help=argparse.SUPPRESS)
    ap.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--log", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    variants = [parse_variant(s, args.model) for s in args.variant or ["previous", "default"]]
    unknown = set(args.stop_at_target) - {name for name, _ in variants}
    if unknown:
        raise SystemExit(f"--stop-at-target names no variant of this run: {sorted(unknown)}")
    if args.from_logs:
        record_cut_run(args, variants)
        return
    tmp = Path(tempfile.mkdtemp(prefix="dynrec-convergence-"))
    procs = []
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    for core, (name, overrides) in enumerate(variants):
        cmd = [sys.executable, "-m", "benchmarks.convergence", "--child", "--dataset", args.dataset]
        cmd += ["--model", args.model, "--name", name, "--core", str(core + args.first_core)]
        cmd += ["--target", str(args.target)]
        if name in args.stop_at_target:
            cmd += ["--stop"]
        cmd += ["--overrides", json.dumps(overrides), "--out", str(tmp / f"{name}.json")]
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        if args.save_dir:
            cmd += ["--save", str(Path(args.save_dir) / f"{args.dataset}-{args.model}-{name}")]
        if args.log_dir:
            Path(args.log_dir).mkdir(parents=True, exist_ok=True)
            cmd += ["--log", str(Path(args.log_dir) / f"{args.dataset}-{args.model}-{name}.jsonl")]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs.append((name, overrides, subprocess.Popen(cmd, cwd=REPO, env=env)))
    results: dict[str, dict[str, Any]] = {}
    for name, _, p in procs:
        if p.wait() != 0:
            raise SystemExit(f"variant {name} failed (exit {p.returncode})")
        results[name] = json.loads((tmp / f"{name}.json").read_text())
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    base = results.get("previous")
    for name, overrides, _ in procs:
        r = results[name]
        seed = r["config"].get("seed")
        metrics = {k: v for k, v in r.items() if k != "config" and v is not None}
        metrics["variants_side_by_side"] = len(procs)
        metrics["loadavg"] = [round(load0, 2), round(load1, 2)]
        metrics["wall_s"] = wall
        _put_variant(args, name, overrides, seed, r["config"], metrics, NOTE, base)
    print(f"wrote {plot(args.dataset, args.model, args.target)}")


if __name__ == "__main__":
    main()
