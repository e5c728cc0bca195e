"""Search parameters tuned to a target recall@k against exact search.

The queries are memory rows the quantizers did not train on. Each query's own row is left out
of both the exact and the approximate answers (it is a trivially easy hit), so recall
measures the neighbours a training query would really get. Half the queries choose the
parameter, the other half report the recall it reaches on unseen queries.
"""

from __future__ import annotations

import time

import numpy as np

from .base import check_k


def recall_at_k(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean over queries of |I[:, :k] & gt[:, :k]| / k (ids -1 never count)."""
    I, gt = I[:, :k], gt[:, :k]
    hits = sum(len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(I, gt))
    return hits / (k * len(gt))


def drop_self(I: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Rows of ``I`` (nq, k + 1) without each query's own id, cut to k columns."""
    keep = I != self_ids[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(I, order, axis=1)


def ladder(family: str, nlist: int, k: int, hnsw_coarse: bool = False) -> list[dict]:
    """Candidate settings for a family, cheapest first (``hnsw_coarse``: the IVF coarse
    quantizer is an HNSW graph, whose efSearch must grow with nprobe)."""
    if family in ("ivf-flat", "ivf-sq8", "ivf-pq", "ivf-fs"):
        steps = sorted({p for p in [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384,
                                   512, 768, 1024, 1536, 2048] if p <= nlist} | {nlist})
        out = []
        for p in steps:
            params = {"nprobe": p}
            if hnsw_coarse:  # the HNSW coarse quantizer must reach the nprobe lists
                params["quantizer_efSearch"] = max(64, 2 * p)
            out.append(params)
        return out
    if family == "hnsw":
        return [{"efSearch": e} for e in sorted({k, int(1.5 * k), 2 * k, 3 * k, 4 * k, 6 * k, 8 * k, 12 * k, 16 * k})]
    if family == "scann":
        return [{"leaves_to_search": s} for s in [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256,
                                                  384, 512, 768, 1024, 1536, 2048] if s <= nlist] \
            or [{"leaves_to_search": 1}]
    return [{}]


def measure(index, queries: np.ndarray, self_ids: np.ndarray, gt: np.ndarray, k: int) -> tuple[float, float]:
    """(recall@k, queries per second) of the index as currently set."""
    t = time.perf_counter()
    _, I = index.search(queries, k + 1)
    qps = len(queries) / max(time.perf_counter() - t, 1e-9)
    return recall_at_k(drop_self(I, self_ids, k), gt, k), qps


def _climb(index, steps, tq, tid, tgt, k, target, trace) -> tuple[dict, float, float]:
    """The first step reaching ``target`` (or the last step), with its recall and speed."""
    for params in steps:
        index.set_search_params(**params)
        recall, qps = measure(index, tq, tid, tgt, k)
        trace.append({**params, "recall": round(recall, 4), "qps": round(qps, 1)})
        if recall >= target:
            break
    return params, recall, qps


def tune(index, family: str, nlist: int, queries: np.ndarray, self_ids: np.ndarray,
         gt: np.ndarray, k: int, target: float, reranks: tuple[int, ...] = (1,),
         hnsw_coarse: bool = False, rerank_name: str = "rerank") -> dict:
    """Sets the cheapest ladder step whose recall on the tuning half reaches ``target``
    (the last step if none does) and reports it with the held-out half's recall and speed.

    Args:
        gt: (nq, k) exact neighbours of ``queries`` with each query's own row removed.
        reranks: candidate rescoring factors (r*k candidates rescored more exactly: the
            ravis-level ``rerank`` or faiss's ``k_factor_rf``, named by ``rerank_name``);
            each gets its own climb and the fastest setting that reaches the target wins.
    """
    k = check_k(k)
    half = max(1, len(queries) // 2)
    tq, tid, tgt = queries[:half], self_ids[:half], gt[:half]
    hq, hid, hgt = queries[half:], self_ids[half:], gt[half:]
    trace, best = [], None
    for r in reranks:
        steps = [{**p, rerank_name: r} if len(reranks) > 1 else p for p in ladder(family, nlist, k, hnsw_coarse)]
        params, recall, qps = _climb(index, steps, tq, tid, tgt, k, target, trace)
        score = (recall >= target, qps if recall >= target else recall)
        if best is None or score > best[0]:
            best = (score, params)
    chosen = best[1]
    index.set_search_params(**chosen)
    if len(hq):
        recall, qps = measure(index, hq, hid, hgt, k)
    tuned = next(t for t in reversed(trace) if all(t.get(n) == v for n, v in chosen.items()))
    return {"target_recall": target, "k": k, "params": chosen, "reached": tuned["recall"] >= target,
            "recall_tuning": tuned["recall"], "recall_heldout": round(recall, 4),
            "qps_heldout": round(qps, 1), "queries": [len(tq), len(hq)], "trace": trace}
