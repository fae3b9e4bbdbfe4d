"""Latency of one real-time update for SASRec: append an event to a user's KV-cache state, then a
fresh top-10 — against recomputing from the whole history. ml-1m sizes (3,417 items), default config.

The weights do not change the cost, so the model is a default-config SASRec with untrained
(seeded) weights; no data needed. Reports median/p90 ms per event for one user at a time, the cost
of recomputing from the whole history instead, and the max |cached - recomputed| score difference.

    DYNREC_DATA_DIR=/work/shared/data python benchmarks/sasrec_state_latency.py --out benchmarks/results/sasrec_state_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from dynrec.data.vocab import Vocabulary
from dynrec.models.base import QueryBatch, topk_stable
from dynrec.models.seq.sasrec import SASRec, SASRecConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--history", type=int, default=300, help="events already in the state")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_items = 3417  # ml-1m (SASRec version) incl. padding
    cfg = SASRecConfig(device="cpu", progress=False)
    model = SASRec(cfg)
    model.item_vocab = Vocabulary(str(i) for i in range(1, n_items))
    model.user_vocab = Vocabulary(["u"])
    model.meta["n_items"] = n_items
    torch.manual_seed(0)
    net = model.build_net_from_meta()
    net.eval()
    model.net = net
    rng = np.random.default_rng(0)
    hist = rng.integers(1, n_items, size=args.history + args.events).tolist()
    state = model.init_state(QueryBatch.from_histories([hist[: args.history]]))
    step_ms, rec_ms, full_ms = [], [], []
    for t in range(args.history, args.history + args.events):
        t0 = time.perf_counter()
        state = model.step(state, [hist[t]])
        t1 = time.perf_counter()
        s = model.score_state(state)
        topk_stable(s, 10)
        t2 = time.perf_counter()
        step_ms.append((t1 - t0) * 1e3)
        rec_ms.append((t2 - t0) * 1e3)
        if t % 50 == 0:
            t3 = time.perf_counter()
            full = model.score(QueryBatch.from_histories([hist[: t + 1]]))
            topk_stable(full, 10)
            full_ms.append((time.perf_counter() - t3) * 1e3)
    full = model.score(QueryBatch.from_histories([hist]))
    diff = float((model.score_state(state)[:, 1:] - full[:, 1:]).abs().max())
    out = {
        "model": "sasrec",
        "config": {
            k: v
            for k, v in cfg.to_dict().items()
            if k in ("embedding_dim", "num_layers", "num_heads", "ffn_dim", "max_len")
        },
        "n_items": n_items,
        "history_len_start": args.history,
        "events": args.events,
        "threads": args.threads,
        "step_ms_median": float(np.median(step_ms)),
        "step_plus_top10_ms_median": float(np.median(rec_ms)),
        "step_plus_top10_ms_p90": float(np.percentile(rec_ms, 90)),
        "recompute_plus_top10_ms_median": float(np.median(full_ms)),
        "max_abs_diff_cached_vs_recomputed": diff,
        "loadavg": os.getloadavg(),
        "note": "shared 2-core machine, noisy",
    }
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
