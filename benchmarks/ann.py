"""Approximate retrieval: FAISS HNSW (and IVF) against exact search on a large synthetic catalogue.

Items: `--items` vectors of dimension `--dim` drawn around `--clusters` Gaussian centres (seeded),
plus a per-item bias (the index handles it as one more dimension, as for MF/GRU4Rec). Queries:
`--queries` vectors drawn the same way. Exact search is ``torch`` matmul + top-k
(`dynrec.models.retrieval.exact_search`); the index is `AnnIndex` built once. For each efSearch /
nprobe: recall@10 against exact, and the median wall time of a search for one query and for a
batch of 256, all on `--threads` threads. One record in results/ann.json per configuration.

    python -m benchmarks.ann --items 1000000 --dim 64 --queries 1000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from benchmarks._common import put, record
from dynrec.models.retrieval import AnnConfig, AnnIndex, exact_search

K = 10


def synthetic(n: int, dim: int, clusters: int, n_queries: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(items [n, dim], bias [n], queries [n_queries, dim]) around shared cluster centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    items = centres[torch.randint(0, clusters, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)
    bias = 0.1 * torch.randn(n, generator=g)
    queries = centres[torch.randint(0, clusters, (n_queries,), generator=g)] + 0.5 * torch.randn(
        n_queries, dim, generator=g
    )
    items[0] = 0.0
    bias[0] = 0.0
    return items, bias, queries


def recall(got: torch.Tensor, want: torch.Tensor) -> float:
    hits = (got[:, :, None] == want[:, None, :]).any(2).sum(1).float()
    return float((hits / want.shape[1]).mean())


def median_ms(fn: Any, batches: list[torch.Tensor]) -> float:
    ms = []
    for b in batches:
        t0 = time.perf_counter()
        fn(b)
        ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="search threads (torch and FAISS)")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--kind", default="hnsw", choices=["hnsw", "ivf"])
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--ef-search", default="32,64,128,256", help="HNSW beams to measure")
    ap.add_argument("--nprobe", default="8,16,32,64", help="IVF cells to measure")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items, bias, queries = synthetic(args.items, args.dim, args.clusters, args.queries, args.seed)
    singles = [queries[i : i + 1] for i in range(min(200, len(queries)))]
    batches = [queries[a : a + 256] for a in range(0, len(queries) - 255, 256)]

    t0 = time.perf_counter()
    want, _ = exact_search(items, bias, queries, K, chunk=64)
    exact_all_s = time.perf_counter() - t0
    exact = {
        "ms_1": median_ms(lambda q: exact_search(items, bias, q, K), singles[:50]),
        "ms_256": median_ms(lambda q: exact_search(items, bias, q, K, chunk=64), batches),
    }
    print("exact", json.dumps(exact), f"all queries {exact_all_s:.1f}s", flush=True)

    cfg = AnnConfig(
        kind=args.kind, m=args.m, ef_construction=args.ef_construction, num_threads=args.build_threads
    )
    index = AnnIndex.build(items, bias, cfg)
    print(f"built {args.kind} in {index.build_seconds:.1f}s", flush=True)
    index.config = index.config.replace(num_threads=args.threads)
    sweep = [int(x) for x in (args.ef_search if args.kind == "hnsw" else args.nprobe).split(",")]
    rows = []
    for s in sweep:
        index.config = (
            index.config.replace(ef_search=s) if args.kind == "hnsw" else index.config.replace(nprobe=s)
        )
        got, _ = index.search(queries, K)
        row = {
            "ef_search" if args.kind == "hnsw" else "nprobe": s,
            "recall@10": recall(got, want),
            "ms_1": median_ms(lambda q: index.search(q, K), singles),
            "ms_256": median_ms(lambda q: index.search(q, K), batches),
        }
        row["speedup_1"] = exact["ms_1"] / row["ms_1"]
        row["speedup_256"] = exact["ms_256"] / row["ms_256"]
        print(json.dumps(row), flush=True)
        rows.append(row)

    params = {
        "catalogue": "synthetic clustered gaussian",
        "items": args.items,
        "dim": args.dim,
        "clusters": args.clusters,
        "queries": args.queries,
        "threads": args.threads,
        "kind": args.kind,
        "m": args.m,
        "ef_construction": args.ef_construction,
        "build_threads": args.build_threads,
        "seed": args.seed,
    }
    metrics = {"build_s": index.build_seconds, "exact": exact, "sweep": rows}
    command = (
        f"python -m benchmarks.ann --items {args.items} --dim {args.dim} --queries {args.queries} "
        f"--threads {args.threads} --kind {args.kind} --m {args.m} --ef-construction {args.ef_construction}"
    )
    key = f"synthetic-{args.items}x{args.dim}/{args.kind}/m={args.m}"
    rec = record("ann", key, params, metrics, command)
    put(rec)
    print("python -m benchmarks.pages  # to render the page")


if __name__ == "__main__":
    main()
