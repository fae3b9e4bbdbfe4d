#!/usr/bin/env python
"""implicit (ALS, BPR) on ml-100k under the same leave-one-out split that
RecBole builds with eval_args split {'LS': 'valid_and_test'}, order 'TO'.

Split, rebuilt here from RecBole's bundled ml-100k.inter: stable sort of the
file rows by the min-max-normalised float32 timestamp (what RecBole sorts on,
with np.argsort(kind='stable')), then per user
the last interaction is test, the second-to-last is valid, the rest is train.
If --check-split points at the npz dumped by recbole_run.py --dump-split, the
split is verified to be identical pair-for-pair.

Evaluation (own numpy code): full ranking over all 1682 items; for valid the
user's train items are masked, for test the train+valid items are masked (the
same as RecBole's general-model full-sort evaluation). rank = number of
unmasked items scoring strictly higher than the held-out item plus the number
of other unmasked items tying with it (pessimistic on ties).
HR@10 = [rank < 10], NDCG@10 = [rank < 10] / log2(rank + 2),
MRR@10 = [rank < 10] / (rank + 1), averaged over the 943 users.

Two training regimes:
  A "train_only": fit on train (first n-2 per user), select settings on valid,
    report test -- the exact data RecBole's models see.
  B "train+valid": refit the selected setting on train+valid (first n-1 per
    user), report test (mask = the fitted items; same mask as A).
"""

import argparse
import itertools
import json
import os
import resource
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice for ALS
os.environ.setdefault("MKL_NUM_THREADS", "1")

import implicit  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from implicit.cpu.als import AlternatingLeastSquares  # noqa: E402
from implicit.cpu.bpr import BayesianPersonalizedRanking  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

DEFAULT_INTER = os.path.join(
    os.environ.get("PEERS_DIR", os.path.expanduser("~/.cache/dynrec-peers")),
    "venv/lib/python3.11/site-packages/recbole/dataset_example/ml-100k/ml-100k.inter",
)
K = 10


def load_split(path):
    df = pd.read_csv(path, sep="\t", dtype=str)
    df.columns = [c.split(":")[0] for c in df.columns]
    ts = df["timestamp"].astype(np.float64).to_numpy()
    # RecBole (ml-100k.yaml: normalize_all: True) min-max normalises the
    # timestamp and stores it as a float32 tensor before the stable sort; the
    # float32 rounding merges timestamps a second or so apart into ties that
    # keep file order.  Reproduce that exactly to get the identical split.
    key = ((ts - ts.min()) / (ts.max() - ts.min())).astype(np.float32)
    order = np.argsort(key, kind="stable")
    df = df.iloc[order].reset_index(drop=True)
    # position of each row inside its user's time-ordered history, from the end
    df["rev_pos"] = df.groupby("user_id", sort=False).cumcount(ascending=False)
    users = np.sort(df["user_id"].astype(int).unique()).astype(str)
    items = np.sort(df["item_id"].astype(int).unique()).astype(str)
    uidx = {u: i for i, u in enumerate(users)}
    iidx = {t: i for i, t in enumerate(items)}
    df["u"] = df["user_id"].map(uidx)
    df["i"] = df["item_id"].map(iidx)
    parts = {
        "train": df[df.rev_pos >= 2],
        "valid": df[df.rev_pos == 1],
        "test": df[df.rev_pos == 0],
    }
    return df, parts, users, items


def check_against_recbole(parts, npz_path):
    d = np.load(npz_path)
    for name in ("train", "valid", "test"):
        mine = sorted(zip(parts[name]["user_id"], parts[name]["item_id"], strict=False))
        theirs = sorted(zip(d[name + "_user"], d[name + "_item"], strict=False))
        if mine != theirs:
            raise SystemExit(f"split mismatch in {name}: {len(mine)} vs {len(theirs)}")
    return True


def csr(frame, n_users, n_items):
    m = sp.csr_matrix(
        (np.ones(len(frame), dtype=np.float32), (frame["u"].to_numpy(), frame["i"].to_numpy())),
        shape=(n_users, n_items),
    )
    m.data[:] = 1.0  # binary (no duplicates in ml-100k, but be explicit)
    return m


def evaluate(user_factors, item_factors, mask_csr, target):
    """target: array (n_users,) of held-out item index, one per user."""
    scores = np.asarray(user_factors, dtype=np.float64) @ np.asarray(item_factors, dtype=np.float64).T
    n_users = scores.shape[0]
    rows = np.arange(n_users)
    tgt = scores[rows, target].copy()
    mask = mask_csr.toarray().astype(bool)
    mask[rows, target] = False
    scores[mask] = -np.inf
    higher = (scores > tgt[:, None]).sum(1)
    ties = (scores == tgt[:, None]).sum(1) - 1  # minus the target itself
    rank = higher + ties
    hit = rank < K
    return {
        "hit@10": float(hit.mean()),
        "ndcg@10": float((hit / np.log2(rank + 2)).mean()),
        "mrr@10": float((hit / (rank + 1)).mean()),
    }


def fit(kind, params, train_csr, threads, seed):
    if kind == "ALS":
        model = AlternatingLeastSquares(
            random_state=seed, num_threads=threads, calculate_training_loss=False, **params
        )
    else:
        model = BayesianPersonalizedRanking(random_state=seed, num_threads=threads, **params)
    w, c = time.time(), time.process_time()
    with threadpool_limits(1, "blas"):
        model.fit(train_csr, show_progress=False)
    return model, time.time() - w, time.process_time() - c


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--inter", default=DEFAULT_INTER)
    p.add_argument("--check-split", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    t0 = time.time()

    df, parts, users, items = load_split(args.inter)
    nU, nI = len(users), len(items)
    checked = check_against_recbole(parts, args.check_split) if args.check_split else False
    tr = csr(parts["train"], nU, nI)
    trva = csr(pd.concat([parts["train"], parts["valid"]]), nU, nI)
    valid_t = parts["valid"].sort_values("u")["i"].to_numpy()
    test_t = parts["test"].sort_values("u")["i"].to_numpy()
    assert len(valid_t) == nU and len(test_t) == nU

    grids = {
        "ALS": {
            "factors": [64, 128],
            "regularization": [0.01, 0.1, 1.0],
            "alpha": [1.0, 10.0, 40.0],
            "iterations": [15],
        },
        "BPR": {
            "factors": [64, 128],
            "learning_rate": [0.01, 0.05],
            "regularization": [0.01],
            "iterations": [100, 300],
        },
    }
    defaults = {
        "ALS": {"factors": 100, "regularization": 0.01, "alpha": 1.0, "iterations": 15},
        "BPR": {"factors": 100, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100},
    }
    out = {
        "implicit_version": implicit.__version__,
        "numpy": np.__version__,
        "n_users": nU,
        "n_items": nI,
        "n_inter": len(df),
        "split_rows": {k: len(v) for k, v in parts.items()},
        "split_identical_to_recbole": checked,
        "threads": args.threads,
        "seed": args.seed,
        "runs": [],
    }

    for kind in ("ALS", "BPR"):
        keys = list(grids[kind])
        configs = [("default", defaults[kind])] + [
            ("grid", dict(zip(keys, vals, strict=False))) for vals in itertools.product(*grids[kind].values())
        ]
        best = None
        for tag, params in configs:
            model, w, c = fit(kind, params, tr, args.threads, args.seed)
            v = evaluate(model.user_factors, model.item_factors, tr, valid_t)
            t = evaluate(model.user_factors, model.item_factors, trva, test_t)
            rec = {
                "model": kind,
                "tag": tag,
                "regime": "A_train_only",
                "params": params,
                "fit_wall_s": w,
                "fit_cpu_s": c,
                "valid": v,
                "test": t,
            }
            out["runs"].append(rec)
            print(json.dumps(rec))
            if tag == "grid" and (best is None or v["ndcg@10"] > best["valid"]["ndcg@10"]):
                best = rec
        best["selected_on_valid"] = True
        # regime B: refit the valid-selected params and the defaults on train+valid
        for tag, params in (("default", defaults[kind]), ("selected", best["params"])):
            model, w, c = fit(kind, params, trva, args.threads, args.seed)
            t = evaluate(model.user_factors, model.item_factors, trva, test_t)
            rec = {
                "model": kind,
                "tag": tag,
                "regime": "B_train+valid",
                "params": params,
                "fit_wall_s": w,
                "fit_cpu_s": c,
                "test": t,
            }
            out["runs"].append(rec)
            print(json.dumps(rec))

    r = resource.getrusage(resource.RUSAGE_SELF)
    out["total_wall_s"] = time.time() - t0
    out["total_cpu_s"] = r.ru_utime + r.ru_stime
    out["peak_rss_mib"] = r.ru_maxrss / 1024
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
