#!/usr/bin/env python
"""Run one RecBole 1.2.1 model on ml-100k under a leave-one-out / time-ordered /
full-ranking protocol and write a JSON record (metrics, best epoch, per-epoch
timings, CPU time, peak RSS, exact config).

Usage (inside the venv made by peers/setup.sh, run from a scratch directory,
because RecBole writes ./log, ./log_tensorboard and checkpoints to the cwd):

    /usr/bin/time -v python recbole_run.py --model SASRec --out SASRec.json

Protocol (same for every model so numbers are comparable):
  eval_args: split {'LS': 'valid_and_test'}, order TO, group_by user, mode full
  metrics Recall/MRR/NDCG/Hit @10, valid_metric NDCG@10, seed 2020
"""

import argparse
import json
import os
import resource
import sys
import time
from logging import getLogger

# torch>=2.6 defaults torch.load(weights_only=True); RecBole 1.2.1 pickles its
# Config object into the checkpoint, so reloading the best model would fail.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import (  # noqa: E402
    get_model,
    get_trainer,
    init_logger,
    init_seed,
)

SEQUENTIAL = {"SASRec", "GRU4Rec", "BERT4Rec"}


def build_config_dict(args):
    cfg = {
        # environment
        "use_gpu": False,
        "seed": 2020,
        "reproducibility": True,
        "show_progress": False,
        "checkpoint_dir": os.path.abspath("saved"),
        "state": "INFO",
        # data: no filtering; every interaction is an implicit positive
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 50,
        # protocol
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "group_by": "user",
            "mode": "full",
        },
        "metrics": ["Recall", "MRR", "NDCG", "Hit"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "eval_batch_size": 4096,
        # training
        "epochs": args.epochs,
        "stopping_step": args.stopping_step,
        "train_batch_size": args.batch_size,
        "learning_rate": args.lr,
    }
    if args.model in SEQUENTIAL:
        cfg["loss_type"] = "CE"
        cfg["train_neg_sample_args"] = None
    if args.model in ("SASRec", "BERT4Rec"):
        cfg.update({"hidden_size": 64, "n_layers": 2, "n_heads": 2})
    for kv in args.set or []:
        k, v = kv.split("=", 1)
        cfg[k] = json.loads(v)
    return cfg


def rusage_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--stopping-step", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--set", action="append", help="extra config, key=<json>")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="wall seconds for fit(); training stops after the last epoch "
        "that is predicted to finish inside the budget",
    )
    p.add_argument(
        "--dataset",
        default="ml-100k",
        help="RecBole dataset name; its atomic files are DATA_PATH/NAME/NAME.inter",
    )
    p.add_argument(
        "--data-path",
        default=None,
        help="folder holding NAME/NAME.inter (default: RecBole's bundled ml-100k)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--dump-split", help="write the train/valid/test split as npz")
    args = p.parse_args()

    t0, c0 = time.time(), rusage_cpu()
    cfg_dict = build_config_dict(args)
    if args.data_path:
        cfg_dict["data_path"] = os.path.abspath(args.data_path)
    config = Config(model=args.model, dataset=args.dataset, config_dict=cfg_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(2)  # init_seed/logger must not override this
    logger = getLogger()
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    t_prep, c_prep = time.time() - t0, rusage_cpu() - c0

    if args.dump_split:
        dump_split(args.dump_split, dataset, train_data, valid_data, test_data)

    # per-epoch timing hooks
    epoch_log = []
    orig_train_epoch = trainer._train_epoch
    orig_valid_epoch = trainer._valid_epoch

    def timed_train_epoch(*a, **kw):
        w, c = time.time(), time.process_time()
        out = orig_train_epoch(*a, **kw)
        epoch_log.append(
            {
                "train_wall_s": time.time() - w,
                "train_cpu_s": time.process_time() - c,
                "loss": float(sum(out)) if isinstance(out, tuple) else float(out),
            }
        )
        return out

    def timed_valid_epoch(*a, **kw):
        w, c = time.time(), time.process_time()
        score, result = orig_valid_epoch(*a, **kw)
        epoch_log[-1].update(
            {
                "valid_wall_s": time.time() - w,
                "valid_cpu_s": time.process_time() - c,
                "valid_score": float(score),
                "valid": {k: float(v) for k, v in result.items()},
            }
        )
        return score, result

    trainer._train_epoch = timed_train_epoch
    trainer._valid_epoch = timed_valid_epoch

    class BudgetStop(Exception):
        pass

    def budget_callback(epoch_idx, valid_score):
        # called by RecBole after the epoch's validation (and checkpointing)
        if args.time_budget is None:
            return
        last = epoch_log[-1]
        next_epoch = last["train_wall_s"] + last.get("valid_wall_s", 0.0)
        if time.time() - t1 + next_epoch > args.time_budget:
            raise BudgetStop()

    t1, c1 = time.time(), rusage_cpu()
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=budget_callback)
        stopped_by = "max_epochs" if len(epoch_log) >= trainer.epochs else "early_stopping"
    except BudgetStop:
        stopped_by = "time_budget"
        logger.info("stopped by time budget after epoch %d", len(epoch_log) - 1)
    best_valid_result = trainer.best_valid_result
    t_fit, c_fit = time.time() - t1, rusage_cpu() - c1

    t2, c2 = time.time(), rusage_cpu()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    t_test, c_test = time.time() - t2, rusage_cpu() - c2

    scores = [e.get("valid_score", -np.inf) for e in epoch_log]
    best_epoch = int(np.argmax(scores)) if scores else None  # first max == RecBole's update rule
    train_walls = [e["train_wall_s"] for e in epoch_log]
    valid_walls = [e["valid_wall_s"] for e in epoch_log if "valid_wall_s" in e]

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    record = {
        "model": args.model,
        "recbole_version": __import__("recbole").__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dataset_stats": {
            "users_incl_pad": int(dataset.user_num),
            "items_incl_pad": int(dataset.item_num),
            "inters": int(dataset.inter_num),
            "avg_actions_per_user": float(dataset.avg_actions_of_users),
            "avg_actions_per_item": float(dataset.avg_actions_of_items),
            "sparsity": float(dataset.sparsity),
            "train_rows": len(train_data.dataset),
            "valid_rows": len(valid_data.dataset),
            "test_rows": len(test_data.dataset),
        },
        "test": {k: float(v) for k, v in test_result.items()},
        "best_valid": {k: float(v) for k, v in (best_valid_result or {}).items()},
        "best_epoch": best_epoch,
        "epochs_run": len(epoch_log),
        "stopped_by": stopped_by,
        "time_budget_s": args.time_budget,
        "mean_train_epoch_s": float(np.mean(train_walls)) if train_walls else None,
        "median_train_epoch_s": float(np.median(train_walls)) if train_walls else None,
        "mean_valid_epoch_s": float(np.mean(valid_walls)) if valid_walls else None,
        "prep_wall_s": t_prep,
        "prep_cpu_s": c_prep,
        "fit_wall_s": t_fit,
        "fit_cpu_s": c_fit,
        "test_wall_s": t_test,
        "test_cpu_s": c_test,
        "total_wall_s": time.time() - t0,
        "total_cpu_s": rusage_cpu() - c0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_trainable_params": int(n_params),
        "epoch_log": epoch_log,
        "config_overrides": cfg_dict,
        "config_resolved": {
            k: _jsonable(config[k]) for k in sorted(config.final_config_dict) if k not in ("device",)
        },
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1, default=str)
    print(
        json.dumps(
            {
                k: record[k]
                for k in (
                    "model",
                    "test",
                    "best_epoch",
                    "epochs_run",
                    "stopped_by",
                    "mean_train_epoch_s",
                    "total_wall_s",
                    "total_cpu_s",
                )
            },
            default=str,
        )
    )


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


def dump_split(path, dataset, train_data, valid_data, test_data):
    """Save (user token, item token) pairs of each split so that other
    libraries can be run on exactly the same leave-one-out split."""
    uf, itf = dataset.uid_field, dataset.iid_field
    out = {}
    for name, dl in (("train", train_data), ("valid", valid_data), ("test", test_data)):
        d = dl.dataset
        u = d.inter_feat[uf].numpy()
        i = d.inter_feat[itf].numpy()
        out[name + "_user"] = dataset.id2token(uf, u).astype(str)
        out[name + "_item"] = dataset.id2token(itf, i).astype(str)
    np.savez_compressed(path, **out)


if __name__ == "__main__":
    sys.exit(main())
