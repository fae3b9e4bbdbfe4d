#!/usr/bin/env python
"""implicit ALS/BPR on a subset of implicit_run.py's configurations.

implicit_run.py always runs its full grid (18 ALS + 8 BPR fits, BPR up to 300
iterations); on ml-1m, on a loaded 2-core machine, the BPR grid alone takes
about an hour.  This wrapper reuses implicit_run.py's own split, fit and
evaluation functions unchanged (same leave-one-out split, same masking, same
pessimistic tie rank) and runs only the chosen configurations:

* the library defaults for ALS and BPR, fit on train (regime A) and refit on
  train+valid (regime B);
* with ``--grid ALS`` (or ``BPR``) also that model's grid, selected on valid,
  refit on train+valid -- exactly as implicit_run.py does.

The JSON record has implicit_run.py's schema, so make_tables.py reads both.
Run it with the peer venv's python, e.g.::

    python benchmarks/peers/implicit_subset.py --inter DIR/ml-1m/ml-1m.inter \\
        --check-split split.npz --out implicit.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import implicit_run as ir  # noqa: E402  (sets the BLAS thread env before numpy loads)

GRIDS = {
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
DEFAULTS = {
    "ALS": {"factors": 100, "regularization": 0.01, "alpha": 1.0, "iterations": 15},
    "BPR": {"factors": 100, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100},
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--inter", required=True)
    p.add_argument("--check-split", default=None)
    p.add_argument("--models", nargs="+", default=["ALS", "BPR"], choices=["ALS", "BPR"])
    p.add_argument("--grid", nargs="*", default=[], choices=["ALS", "BPR"], help="models whose grid to run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    t0 = time.time()

    df, parts, users, items = ir.load_split(args.inter)
    n_users, n_items = len(users), len(items)
    checked = ir.check_against_recbole(parts, args.check_split) if args.check_split else False
    tr = ir.csr(parts["train"], n_users, n_items)
    trva = ir.csr(ir.pd.concat([parts["train"], parts["valid"]]), n_users, n_items)
    valid_t = parts["valid"].sort_values("u")["i"].to_numpy()
    test_t = parts["test"].sort_values("u")["i"].to_numpy()
    assert len(valid_t) == n_users and len(test_t) == n_users

    out: dict[str, object] = {
        "implicit_version": ir.implicit.__version__,
        "numpy": ir.np.__version__,
        "n_users": n_users,
        "n_items": n_items,
        "n_inter": len(df),
        "split_rows": {k: len(v) for k, v in parts.items()},
        "split_identical_to_recbole": checked,
        "threads": args.threads,
        "seed": args.seed,
        "subset": {"models": args.models, "grid": args.grid},
        "runs": [],
    }
    runs: list[dict[str, object]] = out["runs"]  # type: ignore[assignment]

    for kind in args.models:
        configs = [("default", DEFAULTS[kind])]
        if kind in args.grid:
            keys = list(GRIDS[kind])
            configs += [
                ("grid", dict(zip(keys, v, strict=True))) for v in itertools.product(*GRIDS[kind].values())
            ]
        best = None
        for tag, params in configs:
            model, w, c = ir.fit(kind, params, tr, args.threads, args.seed)
            v = ir.evaluate(model.user_factors, model.item_factors, tr, valid_t)
            t = ir.evaluate(model.user_factors, model.item_factors, trva, test_t)
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
            runs.append(rec)
            print(json.dumps(rec), flush=True)
            if tag == "grid" and (best is None or v["ndcg@10"] > best["valid"]["ndcg@10"]):
                best = rec
        refits = [("default", DEFAULTS[kind])]
        if best is not None:
            best["selected_on_valid"] = True
            refits.append(("selected", best["params"]))
        for tag, params in refits:
            model, w, c = ir.fit(kind, params, trva, args.threads, args.seed)
            t = ir.evaluate(model.user_factors, model.item_factors, trva, test_t)
            rec = {
                "model": kind,
                "tag": tag,
                "regime": "B_train+valid",
                "params": params,
                "fit_wall_s": w,
                "fit_cpu_s": c,
                "test": t,
            }
            runs.append(rec)
            print(json.dumps(rec), flush=True)

    r = resource.getrusage(resource.RUSAGE_SELF)
    out["total_wall_s"] = time.time() - t0
    out["total_cpu_s"] = r.ru_utime + r.ru_stime
    out["peak_rss_mib"] = r.ru_maxrss / 1024
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
