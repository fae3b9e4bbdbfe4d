"""Approximate retrieval: FAISS HNSW (and IVF) against exact search on a large synthetic catalogue.

Items: `--items` vectors of dimension `--dim` drawn around `--clusters` Gaussian centres (seeded),
plus a per-item bias (the index handles it as one more dimension, as for MF/GRU4Rec). Queries:
`--queries` vectors drawn the same way (a multiple of 256). Exact search is ``torch`` matmul +
top-k over every item (`dynrec.models.retrieval.exact_search`); the index is `AnnIndex` built once.

Every query is searched exactly in batches of 256: those calls are both the exact batch latency
and the ground truth (exact top-10 on the same vectors). For each efSearch / nprobe the index
searches the same batches (batch latency and recall@10 against the ground truth), then single
queries: the first `--singles` for the index, the first `--exact-singles` for exact search (a 1M
exact search is slow, so fewer). Exact and index run in the same process on `--threads` threads.

Each latency is the median over calls of both the wall time and the process CPU time of the call.
On a machine shared with other jobs this process may be descheduled mid-call: the wall time then
grows with the call's length (long exact calls lose more than short index calls), while the CPU
time stays what the call costs; with one thread, CPU time is the uncontended single-thread latency.
Both ratios are recorded, with the load average and this process's CPU share over the run.

One record in results/ann.json per index configuration.

    python -m benchmarks.ann --items 1000000 --kind ivf --nlist 1024 --queries 512 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import put, record
from dynrec.models.retrieval import AnnConfig, AnnIndex, exact_search

K = 10
BATCH = 256


def synthetic(
    n: int, dim: int, clusters: int, n_queries: int, seed: int, noise: float = 0.5
) -> tuple[torch.Tensor, ...]:
    """(items [n, dim], bias [n], queries [n_queries, dim]) around shared cluster centres
    (standard normal), each vector its centre plus `noise` times standard normal noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    items = centres[torch.randint(0, clusters, (n,), generator=g)] + noise * torch.randn(n, dim, generator=g)
    bias = 0.1 * torch.randn(n, generator=g)
    queries = centres[torch.randint(0, clusters, (n_queries,), generator=g)] + noise * torch.randn(
        n_queries, dim, generator=g
    )
    items[0] = 0.0
    bias[0] = 0.0
    return items, bias, queries


def recall(got: torch.Tensor, want: torch.Tensor) -> float:
    """Mean fraction of each row of `want` found anywhere in the same row of `got`."""
    hits = (got[:, :, None] == want[:, None, :]).any(2).sum(1).float()
    return float((hits / want.shape[1]).mean())


def timed_calls(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], inputs: list[torch.Tensor]
) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Median wall and CPU milliseconds of ``fn(x)`` over `inputs` (after one untimed warm-up
    call), and the indices each call returned."""
    fn(inputs[0])
    wall, cpu, out = [], [], []
    for x in inputs:
        w0, c0 = time.perf_counter(), time.process_time()
        idx, _ = fn(x)
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
        out.append(idx)
    return {"ms": statistics.median(wall), "cpu_ms": statistics.median(cpu)}, out


def rss_mb() -> float:
    """Resident memory of this process (MB; Linux ``/proc``, else 0)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.5, help="spread around a centre (higher: harder)")
    ap.add_argument("--queries", type=int, default=512, help="ground-truth queries (a multiple of 256)")
    ap.add_argument("--singles", type=int, default=200, help="single-query index searches timed")
    ap.add_argument("--exact-singles", type=int, default=20, help="single-query exact searches timed")
    ap.add_argument("--threads", type=int, default=1, help="search threads (torch and FAISS)")
    ap.add_argument("--build-threads", type=int, default=1, help="FAISS threads while building")
    ap.add_argument("--kind", default="hnsw", choices=["hnsw", "ivf"])
    ap.add_argument("--m", type=int, default=32, help="HNSW graph degree")
    ap.add_argument("--ef-construction", type=int, default=80, help="HNSW build beam")
    ap.add_argument("--nlist", type=int, default=0, help="IVF cells; 0 = 4 * sqrt(items)")
    ap.add_argument("--ef-search", default="32,64,128,256", help="HNSW beams to measure")
    ap.add_argument("--nprobe", default="8,16,32,64", help="IVF cells to measure")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.queries < BATCH or args.queries % BATCH:
        ap.error(f"--queries must be a positive multiple of {BATCH}")
    torch.set_num_threads(args.threads)
    run_w0, run_c0 = time.perf_counter(), time.process_time()
    load_start = load_avg()
    items, bias, queries = synthetic(args.items, args.dim, args.clusters, args.queries, args.seed, args.noise)
    batches = [queries[a : a + BATCH] for a in range(0, len(queries), BATCH)]
    singles = [queries[i : i + 1] for i in range(min(args.singles, len(queries)))]

    exact_256, gt = timed_calls(lambda q: exact_search(items, bias, q, K, chunk=64), batches)
    want = torch.cat(gt)
    exact_1, _ = timed_calls(lambda q: exact_search(items, bias, q, K), singles[: args.exact_singles])
    exact = {"ms_1": exact_1["ms"], "cpu_ms_1": exact_1["cpu_ms"]}
    exact |= {"ms_256": exact_256["ms"], "cpu_ms_256": exact_256["cpu_ms"]}
    print("exact", json.dumps(exact), flush=True)

    cfg = AnnConfig(
        kind=args.kind,
        m=args.m,
        ef_construction=args.ef_construction,
        nlist=args.nlist,
        num_threads=args.build_threads,
        seed=args.seed,
    )
    rss0, w0, c0 = rss_mb(), time.perf_counter(), time.process_time()
    index = AnnIndex.build(items, bias, cfg)
    build = {
        "build_s": time.perf_counter() - w0,
        "build_cpu_s": time.process_time() - c0,
        "index_rss_mb": rss_mb() - rss0,
        "load_after_build": load_avg(),
    }
    nlist = int(getattr(index.index, "nlist", 0))
    print("built", json.dumps(build), f"nlist={nlist}" if nlist else "", flush=True)

    index.config = index.config.replace(num_threads=args.threads)
    sweep = [int(x) for x in (args.ef_search if args.kind == "hnsw" else args.nprobe).split(",")]
    rows = []
    for s in sweep:
        beam = {"ef_search": s} if args.kind == "hnsw" else {"nprobe": s}
        index.config = index.config.replace(**beam)
        t256, got = timed_calls(lambda q: index.search(q, K), batches)
        t1, _ = timed_calls(lambda q: index.search(q, K), singles)
        row: dict[str, Any] = {
            **beam,
            "recall@10": recall(torch.cat(got), want),
            "ms_1": t1["ms"],
            "cpu_ms_1": t1["cpu_ms"],
            "ms_256": t256["ms"],
            "cpu_ms_256": t256["cpu_ms"],
        }
        for n in ("1", "256"):
            row[f"speedup_{n}"] = exact[f"ms_{n}"] / row[f"ms_{n}"]
            row[f"cpu_speedup_{n}"] = exact[f"cpu_ms_{n}"] / row[f"cpu_ms_{n}"]
        print(json.dumps(row), flush=True)
        rows.append(row)

    run_wall = time.perf_counter() - run_w0
    params = {
        "catalogue": "synthetic clustered gaussian",
        "items": args.items,
        "dim": args.dim,
        "clusters": args.clusters,
        "noise": args.noise,
        "queries": args.queries,
        "singles": len(singles),
        "exact_singles": min(args.exact_singles, len(singles)),
        "threads": args.threads,
        "kind": args.kind,
        "m": args.m,
        "ef_construction": args.ef_construction,
        "nlist": nlist,
        "build_threads": args.build_threads,
        "seed": args.seed,
    }
    metrics = {
        **build,
        "index_mb": index_megabytes(index),
        "exact": exact,
        "sweep": rows,
        "load_start": load_start,
        "load_end": load_avg(),
        "nice": os.nice(0),
        "cpu_share": (time.process_time() - run_c0) / run_wall,
        "run_s": run_wall,
    }
    beams = args.ef_search if args.kind == "hnsw" else args.nprobe
    command = (
        f"python -m benchmarks.ann --items {args.items} --dim {args.dim} --clusters {args.clusters} "
        f"--noise {args.noise} --queries {args.queries} "
        f"--singles {args.singles} --exact-singles {args.exact_singles} --threads {args.threads} "
        f"--build-threads {args.build_threads} --kind {args.kind} "
        + (
            f"--m {args.m} --ef-construction {args.ef_construction} --ef-search {beams}"
            if args.kind == "hnsw"
            else f"--nlist {args.nlist} --nprobe {beams}"
        )
    )
    # HNSW keys by graph degree, IVF by its number of cells; a non-default catalogue says so
    shape = "" if (args.clusters, args.noise) == (1000, 0.5) else f"-c{args.clusters}-n{args.noise:g}"
    key = f"synthetic-{args.items}x{args.dim}{shape}/{args.kind}/" + (
        f"m={args.m}" if args.kind == "hnsw" else f"nlist={nlist}"
    )
    put(record("ann", key, params, metrics, command))
    print("python -m benchmarks.pages  # to render the page")


def index_megabytes(index: AnnIndex) -> float:
    """Size of the FAISS index in its serialised form (vectors, ids and the structure), MB."""
    import faiss  # type: ignore[import-untyped, unused-ignore]

    return int(faiss.serialize_index(index.index).size) / 2**20


if __name__ == "__main__":
    main()
