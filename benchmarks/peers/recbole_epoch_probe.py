#!/usr/bin/env python
"""Estimate a RecBole model's epoch time from a few training batches.

For runs too slow to finish even one epoch here (RecBole SASRec on ml-1m: ~1M
training prefixes), this builds exactly the dataset, split, model and
optimizer that shared/peers/recbole_run.py builds (it imports that script's
``build_config_dict``), times the first ``--batches`` training steps
(data loading + forward + backward + optimizer step), optionally times one
full-sort validation pass, and writes a JSON record with the extrapolated
training-epoch time.  No metrics: the model is not trained.

Run inside the peer venv, from a scratch directory (RecBole writes ./log):

    python benchmarks/peers/recbole_epoch_probe.py --model SASRec --dataset ml-1m \\
        --data-path ~/.cache/dynrec-peers/data --batches 40 --eval --out probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

SHARED_PEERS = os.environ.get("SHARED_PEERS", "/work/shared/peers")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-path", required=True)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--warmup", type=int, default=3, help="batches excluded from the rate")
    p.add_argument("--eval", action="store_true", help="also time one full-sort validation pass")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    sys.path.insert(0, SHARED_PEERS)
    import recbole_run  # noqa: PLC0415  (sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, threads)
    import torch  # noqa: PLC0415
    from recbole.config import Config  # noqa: PLC0415
    from recbole.data import create_dataset, data_preparation  # noqa: PLC0415
    from recbole.utils import get_model, get_trainer, init_logger, init_seed  # noqa: PLC0415

    run_args = argparse.Namespace(
        model=args.model, epochs=50, stopping_step=10, batch_size=256, lr=0.001, set=None
    )
    cfg = recbole_run.build_config_dict(run_args)
    cfg["data_path"] = os.path.abspath(os.path.expanduser(args.data_path))
    t0 = time.time()
    config = Config(model=args.model, dataset=args.dataset, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(2)
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    prep_s = time.time() - t0

    n_batches = len(train_data)
    model.train()
    stamps = []
    cpu0 = time.process_time()
    w0 = time.time()
    for i, inter in enumerate(train_data):
        trainer.optimizer.zero_grad()
        loss = model.calculate_loss(inter)
        loss.backward()
        trainer.optimizer.step()
        stamps.append((time.time(), time.process_time()))
        if i + 1 >= args.batches:
            break
    w = [s[0] for s in stamps]
    c = [s[1] for s in stamps]
    k = min(args.warmup, len(w) - 2)
    wall_per_batch = (w[-1] - w[k]) / (len(w) - 1 - k)
    cpu_per_batch = (c[-1] - c[k]) / (len(c) - 1 - k)
    rec: dict[str, object] = {
        "model": args.model,
        "dataset": args.dataset,
        "train_rows": len(train_data.dataset),
        "batch_size": config["train_batch_size"],
        "batches_per_epoch": n_batches,
        "batches_timed": len(w) - 1 - k,
        "warmup_batches": k + 1,
        "first_batches_wall_s": w[-1] - w0,
        "first_batches_cpu_s": c[-1] - cpu0,
        "wall_s_per_batch": wall_per_batch,
        "cpu_s_per_batch": cpu_per_batch,
        "est_train_epoch_wall_s": wall_per_batch * n_batches,
        "est_train_epoch_cpu_s": cpu_per_batch * n_batches,
        "prep_wall_s": prep_s,
        "loadavg_at_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
    }
    if args.eval:
        model.eval()
        we, ce = time.time(), time.process_time()
        trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
        rec["valid_pass_wall_s"] = time.time() - we
        rec["valid_pass_cpu_s"] = time.process_time() - ce
    rec["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec["config_overrides"] = cfg
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1, default=str)
    print(json.dumps({k: v for k, v in rec.items() if k != "config_overrides"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
