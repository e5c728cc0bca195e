"""Exact k-NN throughput: ravis neighbour precomputation against faiss IndexFlatIP.

"ravis" is what ``ravis knn`` runs: :func:`ravis.retrieval.search_neighbors` on the index the
configs use by default (``--index``, "faiss-flat"; "exact" is ravis's own torch blockwise
matmul, also reported). Measures queries per second of both (best of --runs, the two interleaved so that other load
on the machine hits both alike) on clustered synthetic float32 L2-normalised vectors, prints
the ratio ravis/faiss, and checks that the results agree (recall@k of ravis against faiss).
Exits non-zero when the ratio is below --min-ratio (0.9; --no-check disables) or the recall
is below 0.999.

    python benchmarks/bench_knn.py
    python benchmarks/bench_knn.py --nb 1000000 --d 384 --nq 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import faiss
import numpy as np
import torch

from ravis.index import ExactIndex, create_index
from ravis.retrieval import search_neighbors


def clustered(rng, n: int, centroids: np.ndarray, spread: float) -> np.ndarray:
    """n normalised points around random centroids, like embeddings of a labelled set."""
    x = centroids[rng.integers(len(centroids), size=n)]
    x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(spread / np.sqrt(x.shape[1]))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn) -> tuple[float, tuple]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def recall(I: np.ndarray, I_ref: np.ndarray) -> float:
    """Fraction of the reference's k ids that I also returns."""
    hits = sum(len(set(a) & set(b)) for a, b in zip(I, I_ref))
    return hits / I_ref.size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nb", type=int, default=60000)
    p.add_argument("--d", type=int, default=1280)
    p.add_argument("--nq", type=int, default=10000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--block-mb", type=int, default=256, help="ExactIndex score block bound")
    p.add_argument("--block-queries", type=int, default=1024, help="ExactIndex queries per block")
    p.add_argument("--index", default="faiss-flat", help="index spec that ravis knn uses")
    p.add_argument("--min-ratio", type=float, default=0.9)
    p.add_argument("--no-check", action="store_true", help="report the ratio without failing on it")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((a.clusters, a.d), dtype=np.float32)
    xb, xq = clustered(rng, a.nb, centroids, 1.0), clustered(rng, a.nq, centroids, 1.0)

    ours = create_index(a.index, a.d)
    torch_exact = ExactIndex(a.d, block_bytes=a.block_mb << 20, max_block_queries=a.block_queries)
    ref = faiss.IndexFlatIP(a.d)  # the bare library, no ravis code in the way
    for index in (ours, torch_exact, ref):
        index.add(xb)
        index.search(xq[:64], a.k)  # warm-up: thread pools, first-touch of the stored vectors

    t_ours = t_ref = t_torch = float("inf")
    for _ in range(a.runs):  # interleaved, one run each per round
        t, (_, I) = timed(lambda: search_neighbors(ours, xq, a.k))
        t_ours = min(t_ours, t)
        t, (_, I_ref) = timed(lambda: ref.search(xq, a.k))
        t_ref = min(t_ref, t)
        t, _ = timed(lambda: torch_exact.search(xq, a.k))
        t_torch = min(t_torch, t)
    qps_ours, qps_ref = a.nq / t_ours, a.nq / t_ref
    ratio, rec = qps_ours / qps_ref, recall(I, I_ref)

    print(f"nb={a.nb} d={a.d} nq={a.nq} k={a.k} threads={a.threads} best of {a.runs}")
    print(f"ravis search_neighbors ({a.index})  {qps_ours:10.1f} queries/s  ({t_ours:.2f} s)")
    print(f"ravis ExactIndex (torch blocks)   {a.nq / t_torch:10.1f} queries/s  ({t_torch:.2f} s)  "
          f"ratio {t_ref / t_torch:.3f}")
    print(f"faiss IndexFlatIP (bare)          {qps_ref:10.1f} queries/s  ({t_ref:.2f} s)")
    print(f"ratio ravis/faiss  {ratio:.3f}  (required >= {a.min_ratio})")
    print(f"recall@{a.k} of ravis vs faiss  {rec:.5f}  (required >= 0.999)")
    if rec < 0.999:
        print("FAIL: results disagree with faiss", file=sys.stderr)
        return 1
    if ratio < a.min_ratio and not a.no_check:
        print(f"FAIL: ravis/faiss {ratio:.3f} < {a.min_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
