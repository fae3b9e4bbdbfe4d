"""Quality of every model with its default config: HR/NDCG/MRR@10 (temporal leave-one-out, full
ranking, seen items excluded), train time, epochs. Results accumulate in results/quality.json
(keyed by dataset/model) so runs can be split across invocations; the markdown table is rebuilt
from all stored rows.

    python benchmarks/quality.py --datasets ml-100k,ml-1m,amazon-beauty --models pop,itemknn,ease,sasrec
    python benchmarks/quality.py --table-only
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import time
from collections.abc import Iterator

from _common import RESULTS, environment, markdown_table

from dynrec.models.base import available_models
from dynrec.pipeline import evaluate_model, prepare, train

STORE = RESULTS / "quality.json"
COLUMNS = [
    "dataset",
    "model",
    "HR@10",
    "NDCG@10",
    "MRR@10",
    "Coverage@10",
    "fit_s",
    "epochs",
    "best_epoch",
    "s_to_best",
]


def load_store() -> dict[str, dict[str, object]]:
    return json.loads(STORE.read_text())["runs"] if STORE.exists() else {}


def save_store(runs: dict[str, dict[str, object]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps({"environment": environment(), "runs": runs}, indent=2, sort_keys=True))
    rows = sorted(runs.values(), key=lambda r: (str(r["dataset"]), -float(r["NDCG@10"])))  # type: ignore[arg-type]
    (RESULTS / "quality.md").write_text(markdown_table(rows, COLUMNS) + "\n")


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / ".quality.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="ml-100k,ml-1m,amazon-beauty")
    ap.add_argument("--models", default=",".join(available_models()))
    ap.add_argument("--set", action="append", default=[], help="MODEL.key=value")
    ap.add_argument("--tag", default="", help="suffix for the stored key (e.g. an ablation name)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    runs = load_store()
    if args.table_only:
        save_store(runs)
        print((RESULTS / "quality.md").read_text())
        return
    sets: dict[str, dict[str, str]] = {}
    for s in args.set:
        mk, v = s.split("=", 1)
        m, k = mk.split(".", 1)
        sets.setdefault(m, {})[k] = v
    for ds in args.datasets.split(","):
        p = prepare(ds)
        for name in args.models.split(","):
            t0 = time.perf_counter()
            model = train(name, p, overrides=sets.get(name))
            fit_s = time.perf_counter() - t0
            res = evaluate_model(model, p)
            label = name + (f"[{args.tag}]" if args.tag else "")
            row = {
                "dataset": ds,
                "model": label,
                **{k: res.metrics[k] for k in ("HR@10", "NDCG@10", "MRR@10", "Coverage@10")},
                "fit_s": fit_s,
                "epochs": model.meta.get("epochs_run", ""),
                "best_epoch": model.meta.get("best_epoch", ""),
                "s_to_best": model.meta.get("seconds_to_best", ""),
                "valid_NDCG@10": model.meta.get("valid_ndcg@10"),
                "config": model.config.to_dict(),
                "overrides": sets.get(name, {}),
            }
            with store_lock():  # several quality.py processes may run at once: merge, don't overwrite
                runs = load_store()
                runs[f"{ds}/{label}"] = row
                save_store(runs)
            print(json.dumps({k: row[k] for k in COLUMNS}), flush=True)
    print((RESULTS / "quality.md").read_text())


if __name__ == "__main__":
    main()
