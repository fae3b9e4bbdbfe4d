"""Training speed of the neural models: seconds per epoch, tokens/s and achieved GFLOP/s next to
this machine's measured matrix-multiply peak (the physical limit).

FLOPs are counted, not estimated: torch.utils.flop_counter.FlopCounterMode runs one forward+backward
of a real training batch and counts every matmul/attention FLOP; per-epoch FLOPs = that count scaled
by the epoch's batches (batches are equal-shaped slices of pre-tensorised data).

    python benchmarks/train_speed.py --dataset ml-1m --models sasrec,gru4rec --epochs 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import RESULTS, markdown_table, write_json
from torch.utils.flop_counter import FlopCounterMode

from dynrec.models.base import create_model
from dynrec.pipeline import prepare
from dynrec.training.trainer import TorchRecommender, set_threads


def sgemm_peak(n: int = 2048, repeats: int = 10) -> float:
    """Median GFLOP/s of an n x n float32 matrix multiply with torch's BLAS."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--models", default="sasrec,gru4rec")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    set_threads(0)
    peak = sgemm_peak()
    print(f"sgemm peak: {peak:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    p = prepare(args.dataset)
    rows = []
    for name in args.models.split(","):
        model = create_model(name, {"epochs": str(args.epochs), "progress": "false", "patience": "1000"})
        assert isinstance(model, TorchRecommender)
        # count FLOPs of one training step on the model's own first batch
        model.item_vocab, model.user_vocab = p.split.train.item_vocab, p.split.train.user_vocab
        model.meta.update(n_items=p.split.train.n_items, n_users=p.split.train.n_users)
        model.net = model.build_net(p.split.train)
        model.prepare(p.split.train)
        gen = torch.Generator().manual_seed(0)
        batches = list(model.train_batches(p.split.train, gen))
        tokens_per_epoch = sum(int(b["n_tokens"].sum()) if "n_tokens" in b else 0 for b in batches)
        with FlopCounterMode(display=False) as fc:
            model.loss(batches[0]).backward()  # type: ignore[no-untyped-call]
        flops_batch = fc.get_total_flops()
        flops_epoch = flops_batch * len(batches)
        model.fit(p.split.train, None)
        epoch_s = statistics.median([h["seconds"] for h in model.meta["train_log"]])
        rows.append(
            {
                "model": name,
                "dataset": args.dataset,
                "s_per_epoch": epoch_s,
                "batches": len(batches),
                "tokens_per_s": tokens_per_epoch / epoch_s,
                "GFLOP_per_epoch": flops_epoch / 1e9,
                "achieved_GFLOP_s": flops_epoch / epoch_s / 1e9,
                "peak_GFLOP_s": peak,
                "pct_of_peak": 100 * flops_epoch / epoch_s / 1e9 / peak,
            }
        )
        print(rows[-1], flush=True)
    write_json(f"train_speed_{args.dataset}", {"sgemm_peak_gflops": peak, "rows": rows})
    cols = [
        "model",
        "dataset",
        "s_per_epoch",
        "tokens_per_s",
        "GFLOP_per_epoch",
        "achieved_GFLOP_s",
        "peak_GFLOP_s",
        "pct_of_peak",
    ]
    (RESULTS / f"train_speed_{args.dataset}.md").write_text(markdown_table(rows, cols) + "\n")
    print(markdown_table(rows, cols))


if __name__ == "__main__":
    main()
