"""Probe: is validation on ml-100k misled because a validation history ends with the user's last
*training target*? Train SASRec (default config) without each user's last training event, so the
validation history's last item — like the test history's — was never a training target for that
user; select on validation as usual, report test next to the standard run of the same seed.

    DYNREC_DATA_DIR=../shared/data python benchmarks/valid_gap_probe.py --seeds 42,1,2
"""

from __future__ import annotations

import argparse
import json
import logging

from _common import RESULTS

from dynrec.data.dataset import InteractionData
from dynrec.data.registry import load
from dynrec.evaluation.offline import evaluate
from dynrec.models.seq.sasrec import SASRec, SASRecConfig
from dynrec.preprocessing.split import leave_one_out
from dynrec.training.trainer import EpochRecord, TorchRecommender


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--seeds", default="42,1,2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    split = leave_one_out(InteractionData.from_events(load(args.dataset)))
    out = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        curve: list[dict[str, float]] = []

        def cb(rec: EpochRecord, m: TorchRecommender, curve: list[dict[str, float]] = curve) -> None:
            t = evaluate(m, split.test, ks=(10,), extra=False).metrics
            curve.append({"epoch": rec.epoch, "valid_ndcg": rec.valid_ndcg or 0.0, "test_ndcg": t["NDCG@10"]})

        model = SASRec(SASRecConfig(seed=seed, num_threads=args.threads, progress=False, valid_gap=1))
        model.epoch_callbacks.append(cb)
        model.fit(split.train, split.valid)  # valid_gap drops each user's last training event
        res = evaluate(model, split.test, ks=(10,), extra=False).metrics
        out[str(seed)] = {
            "test": {k: res[k] for k in ("HR@10", "NDCG@10")},
            "best_epoch": model.meta["best_epoch"],
            "epochs_run": model.meta["epochs_run"],
            "seconds_to_best": model.meta["seconds_to_best"],
            "test_curve": curve,
        }
        print(seed, json.dumps({k: v for k, v in out[str(seed)].items() if k != "test_curve"}), flush=True)
    (RESULTS / f"valid_gap_probe_{args.dataset}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
