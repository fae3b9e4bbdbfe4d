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
from pathlib import Path

import torch
from _common import RESULTS, environment, markdown_table

from dynrec.models.base import available_models
from dynrec.pipeline import evaluate_model, prepare, train

STORE = RESULTS / "quality.json"  # --store points elsewhere (e.g. a run on a lent GPU machine)
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
    "device",
]


def load_store() -> dict[str, dict[str, object]]:
    return json.loads(STORE.read_text())["runs"] if STORE.exists() else {}


def save_store(runs: dict[str, dict[str, object]]) -> None:
    STORE.parent.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps({"environment": environment(), "runs": runs}, indent=2, sort_keys=True))
    rows = sorted(runs.values(), key=lambda r: (str(r["dataset"]), -float(r["NDCG@10"])))  # type: ignore[arg-type]
    STORE.with_suffix(".md").write_text(markdown_table(rows, COLUMNS) + "\n")


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    STORE.parent.mkdir(parents=True, exist_ok=True)
    with open(STORE.parent / ".quality.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# overrides that change how a run executes, not what it learns
OPERATIONAL = {"num_threads", "progress", "score_batch", "device", "checkpoint_dir"}


def row_from_run(path: Path) -> dict[str, object]:
    """A quality row from a `seq_transformers.py` record of a default-config run."""
    rec = json.loads(path.read_text())
    missing = [k for k in ("dataset", "model", "test", "config", "fit_seconds") if k not in rec]
    if missing:
        raise SystemExit(f"{path}: not a seq_transformers.py record (missing {missing})")
    tuned = sorted(set(rec.get("overrides", {})) - OPERATIONAL)
    if tuned or rec.get("budget_hit"):
        raise SystemExit(
            f"{path}: not a default-config run to convergence (overrides {tuned}, "
            f"budget_hit {rec.get('budget_hit')})"
        )
    return {
        "dataset": rec["dataset"],
        "model": rec["model"],
        **{k: rec["test"][k] for k in ("HR@10", "NDCG@10", "MRR@10")},
        "Coverage@10": "",
        "fit_s": rec["fit_seconds"],
        "epochs": rec["epochs_run"],
        "best_epoch": rec["best_epoch"],
        "s_to_best": rec["seconds_to_best"],
        "device": rec["gpu"] or "cpu",
        "valid_NDCG@10": rec["valid_ndcg@10"],
        "config": rec["config"],
        "overrides": rec.get("overrides", {}),
        "note": f"imported from {path.name} (seq_transformers.py)",
    }


def _device_name(model: object) -> str:
    dev = getattr(model, "device", None)
    if dev is not None and torch.device(dev).type == "cuda":
        return str(torch.cuda.get_device_name(torch.device(dev)))
    return "cpu"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="ml-100k,ml-1m,amazon-beauty")
    ap.add_argument("--models", default=",".join(available_models()))
    ap.add_argument("--set", action="append", default=[], help="MODEL.key=value")
    ap.add_argument("--tag", default="", help="suffix for the stored key (e.g. an ablation name)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--store", default="", help="results JSON (default results/quality.json)")
    ap.add_argument(
        "--import-run",
        action="append",
        default=[],
        metavar="JSON",
        help="add a row from a seq_transformers.py record (default config only; no Coverage@10)",
    )
    args = ap.parse_args()
    if args.store:
        global STORE
        STORE = Path(args.store)
    runs = load_store()
    for path in args.import_run:
        row = row_from_run(Path(path))
        with store_lock():
            runs = load_store()
            runs[f"{row['dataset']}/{row['model']}"] = row
            save_store(runs)
        print(json.dumps({k: row[k] for k in COLUMNS}), flush=True)
    if args.table_only or args.import_run:
        save_store(runs)
        print(STORE.with_suffix(".md").read_text())
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
                "device": _device_name(model),
                "valid_NDCG@10": model.meta.get("valid_ndcg@10"),
                "config": model.config.to_dict(),
                "overrides": sets.get(name, {}),
            }
            with store_lock():  # several quality.py processes may run at once: merge, don't overwrite
                runs = load_store()
                runs[f"{ds}/{label}"] = row
                save_store(runs)
            print(json.dumps({k: row[k] for k in COLUMNS}), flush=True)
    print(STORE.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
