"""Seconds per SASRec training step (forward + backward + Adam) on a full ml-1m-shaped batch
(128 rows x 200 positions, 3,417 items), for speed variants of the default config, measured
round-robin in one process so machine load hits every variant alike; with achieved GFLOP/s
(model matrix-product FLOPs on the batch's real positions) and the measured matmul peak.

    python benchmarks/sasrec_step_speed.py [--repeats 5] [--compile] --out benchmarks/results/sasrec_step_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynrec.models.seq.common import full_ce_loss
from dynrec.models.seq.sasrec import Block, SASRecConfig, SASRecNet, auto_dropout


def make(cfg: SASRecConfig, n_items: int) -> SASRecNet:
    drop = cfg.dropout if cfg.dropout is not None else auto_dropout(6040)  # ml-1m's users
    return SASRecNet(
        n_items,
        n_items,
        dim=cfg.embedding_dim,
        layers=cfg.num_layers,
        heads=cfg.num_heads,
        ffn_dim=cfg.ffn_dim,
        dropout=drop,
        max_len=cfg.max_len,
        positional=cfg.positional,
        rope_base=cfg.rope_base,
        long_term=cfg.long_term,
        attn_dropout=cfg.attn_dropout if cfg.attn_dropout is not None else drop,
    )


def legacy(net: SASRecNet) -> SASRecNet:
    """The previous code path: `nn.Dropout` (per-element bernoulli_) and attention dropout inside
    `F.scaled_dot_product_attention` (its non-fused CPU path)."""
    net.emb_drop = nn.Dropout(net.emb_drop.p)  # type: ignore[assignment]
    for blk in net.block_list():
        blk.drop = nn.Dropout(blk.drop.p)  # type: ignore[assignment]

        def fwd(x: Any, rope: Any, mask: Any, causal: bool, blk: Block = blk) -> torch.Tensor:
            q, k, v = blk.project(x, rope)
            p = blk.attn_dropout if blk.training else 0.0
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
            return blk.finish(x, a)

        blk.forward = fwd  # type: ignore[method-assign]
    return net


def step_fn(net: SASRecNet, bf16: bool, compiled: bool, seq: torch.Tensor, chunk: int) -> Callable[[], float]:
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    inputs, targets = seq[:, :-1], seq[:, 1:]
    mask = targets > 0
    enc = torch.compile(net.train_hidden) if compiled else net.train_hidden

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = enc(inputs)[mask]
        loss = full_ce_loss(h.float(), net.item_weight, targets[mask], bf16=bf16, chunk=chunk)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        return time.perf_counter() - t

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_items, b, length = 3417, 128, 200
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(1, n_items, (b, length + 1), generator=g)
    base = SASRecConfig()
    old_chunk = max(64, (1 << 24) // n_items)  # the previous automatic chunk (~64 MB of logits)
    # name: (config, bf16, torch.compile, legacy dropout/attention path, CE chunk rows; 0 = automatic)
    variants: dict[str, tuple[SASRecConfig, bool, bool, bool, int]] = {
        "previous default (fp32, torch dropout, SDPA attention dropout, 16M-logit CE chunks)": (
            base,
            False,
            False,
            True,
            old_chunk,
        ),
        "+ fast Dropout, explicit attention dropout": (base, False, False, False, old_chunk),
        "+ cache-sized CE chunks (fp32)": (base, False, False, False, 0),
        "+ bf16 = current default on an AVX512-BF16 CPU": (base, True, False, False, 0),
        "current default with attn_dropout=0 (fused SDPA)": (
            SASRecConfig(attn_dropout=0.0),
            True,
            False,
            False,
            0,
        ),
    }
    if args.compile:
        variants["current default + torch.compile(train_hidden)"] = (base, True, True, False, 0)
    fns: dict[str, Callable[[], float]] = {}
    compile_s: dict[str, float] = {}
    for name, (cfg, bf16, comp, old, chunk) in variants.items():
        torch.manual_seed(0)
        net = make(cfg, n_items)
        fns[name] = step_fn(legacy(net) if old else net, bf16, comp, seq, chunk)
        t = time.perf_counter()
        fns[name]()  # warm-up (and compilation)
        compile_s[name] = time.perf_counter() - t
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, f in fns.items():
            times[k].append(f())
    d, f_dim, layers = base.embedding_dim, base.ffn_dim, base.num_layers
    tokens = b * length
    keys = (length + 1) / 2
    flops = 3.0 * tokens * (layers * (8 * d * d + 4 * d * f_dim + 4 * d * keys) + 2 * d * (n_items - 1))
    rows: list[dict[str, Any]] = []
    for k, ts in times.items():
        med = float(np.median(ts))
        rows.append(
            {
                "variant": k,
                "median_s": med,
                "all_s": [round(x, 3) for x in ts],
                "first_step_s": round(compile_s[k], 2),
                "tokens_per_s": tokens / med,
                "gflops": flops / med / 1e9,
            }
        )
    a = torch.randn(2048, 2048)
    bb = torch.randn(2048, 2048)
    peaks = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x, y = a.to(dt), bb.to(dt)
        x @ y
        t = time.perf_counter()
        for _ in range(3):
            x @ y
        peaks[name] = 2 * 2048**3 * 3 / (time.perf_counter() - t) / 1e9
    out = {
        "batch": [b, length],
        "n_items": n_items,
        "threads": args.threads,
        "gflop_per_step": flops / 1e9,
        "rows": rows,
        "matmul_peak_gflops": peaks,
        "loadavg": os.getloadavg(),
        "note": "variants measured round-robin in one process: compare ratios",
    }
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
