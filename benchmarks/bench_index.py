"""Recall@k versus queries/s for exact, IVF-Flat, IVF-SQ8, OPQ+IVF+PQ, HNSW (faiss), ScaNN and
the index ``ravis memory index`` chooses for a RAM budget, on memory-mapped key shards.

    python benchmarks/synthetic.py --n 1e6 --d 384 --out /work/bench/1e6x384
    python benchmarks/bench_index.py --data /work/bench/1e6x384 --budget 8G \
        --methods exact,ravis,ivf-flat,ivf-sq8,ivf-pq,hnsw,scann --out benchmarks/results/1e6x384.json

Each method runs in its own process, so its peak memory is its own: the build's peak
anonymous RSS (RssAnon: the process's own allocations, not the page cache of mapped files)
and the resident set while searching are sampled from /proc. Queries are fresh draws from
the data's distribution (not memory rows); ground truth is exact search over all shards.
Printed ratios compare methods measured in this same run:
    exact:  ravis exact search (faiss-flat backend) / bare faiss IndexFlatIP
    ravis:  ravis QPS / ScaNN QPS interpolated at ravis's recall
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic import open_shards  # noqa: E402


def proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Samples RssAnon every 50 ms in a thread; ``peak`` is the high-water mark in bytes."""

    def __enter__(self):
        self.peak, self._stop = proc_kib("RssAnon") * 1024, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, proc_kib("RssAnon") * 1024)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_kib("RssAnon") * 1024)


def ground_truth(data: Path, queries: np.ndarray, shards, k: int) -> np.ndarray:
    from ravis.index.multi import exact_search

    path = data / f"gt_k{k}.npy"
    if path.exists():
        return np.load(path)
    t = time.perf_counter()
    _, I = exact_search(shards, queries, k)
    np.save(path, I)
    print(f"ground truth: {time.perf_counter() - t:.1f} s", flush=True)
    return I


def timed_search(index, queries, k, repeats=1):
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        D, I = index.search(queries, k)
        best = min(best, time.perf_counter() - t)
    return I, len(queries) / best


def factories(n: int, d: int) -> dict[str, str]:
    from ravis.index.choose import nlist_for

    nlist = nlist_for(n)
    coarse = f"IVF{nlist}_HNSW32" if nlist >= 4096 else f"IVF{nlist}"
    m = 64 if d <= 512 else 128
    return {"ivf-flat": f"{coarse},Flat", "ivf-sq8": f"{coarse},SQ8",
            "ivf-fs": f"{coarse},PQ{d // 2}x4fs,Refine(SQ8)",
            "ivf-pq": f"OPQ{m}_{4 * m},{coarse},PQ{m}", "hnsw": "HNSW32,Flat"}


def run_one(method: str, args) -> dict:
    """Builds one method's index over the shards and measures its recall/QPS curve."""
    import faiss

    from ravis.index import FaissFlatIndex
    from ravis.index.build import build_index
    from ravis.index.tune import ladder, recall_at_k

    faiss.omp_set_num_threads(args.threads)
    shards, queries = open_shards(args.data)
    queries = queries[: args.nq]
    n, d, k = sum(len(s) for s in shards), shards[0].shape[1], args.k
    gt = ground_truth(args.data, queries, shards, k)[: args.nq]
    paths = [args.data / "keys" / f"{i:05d}.npy" for i in range(len(shards))]
    work = args.work / f"{args.data.name}-{method}"
    out = {"method": method, "n": n, "d": d, "k": k, "nq": len(queries)}
    base_rss = proc_kib("RssAnon") * 1024
    if method == "exact":
        xb = np.concatenate([np.asarray(s, dtype=np.float32) for s in shards])
        bare = faiss.IndexFlatIP(d)
        bare.add(xb)
        ours = FaissFlatIndex(d)
        ours.add(xb)
        _, bare_qps = timed_search(bare, queries, k, repeats=2)
        I, ours_qps = timed_search(ours, queries, k, repeats=2)
        out.update(curve=[{"recall": recall_at_k(I, gt, k), "qps": ours_qps}], bare_faiss_qps=bare_qps,
                   ratio_vs_faiss=ours_qps / bare_qps, resident_bytes=proc_kib("RssAnon") * 1024 - base_rss,
                   bytes_per_vector_disk=4 * d)
        return out
    factory = factories(n, d).get(method)
    with PeakRss() as rss:
        t = time.perf_counter()
        index = build_index(paths, work, budget=args.budget, target_recall=args.target, k=k,
                            backend="scann" if method == "scann" else "faiss",
                            factory=None if method in ("ravis", "scann") else factory, progress=False)
        build_s = time.perf_counter() - t
    info = index.info
    disk = sum(info["bytes_on_disk"].values())
    out.update(spec=index.spec, build_seconds=build_s, build_peak_anon_bytes=rss.peak,
               bytes_on_disk=disk, bytes_per_vector_disk=disk / n, tuned=info["tuning"])
    # The tuned setting on the benchmark's own queries (not memory rows).
    I, qps = timed_search(index, queries, k, repeats=2)
    out["tuned_point"] = {"params": dict(index.search_params), "recall": recall_at_k(I, gt, k), "qps": qps}
    out["search_resident_anon_bytes"] = proc_kib("RssAnon") * 1024 - base_rss
    out["search_resident_file_bytes"] = proc_kib("RssFile") * 1024
    if method != "ravis":  # the whole curve
        family = "scann" if method == "scann" else info["choice"]["family"]
        nlist = index.num_leaves if method == "scann" else info["choice"]["nlist"]
        curve = []
        reranks = (1, 4) if family == "ivf-pq" else (2, 4) if family == "ivf-fs" else (1,)
        rerank_name = "k_factor_rf" if family == "ivf-fs" else "rerank"
        for r in reranks:
            segment = []
            for params in ladder(family, nlist, k, "_HNSW" in info["choice"]["factory"]):
                if len(reranks) > 1:
                    params = {**params, rerank_name: r}  # explicit: the tuned index may hold another
                index.set_search_params(**params)
                I, qps = timed_search(index, queries, k)
                point = {**params, "recall": recall_at_k(I, gt, k), "qps": qps}
                curve.append(point)
                segment.append(point["recall"])
                print(f"  {method} {params}: recall {point['recall']:.4f}, {qps:,.0f} q/s", flush=True)
                if point["recall"] >= 0.995 or (len(segment) > 1 and segment[-1] - segment[-2] < 5e-4):
                    break  # at the top, or the curve has flattened (quantization caps recall)
        out["curve"] = curve
    return out


def qps_at_recall(curve: list[dict], recall: float) -> float | None:
    """QPS of a curve at a recall, interpolated linearly in log(QPS) between its points."""
    pts = sorted((p["recall"], p["qps"]) for p in curve)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= recall <= r1:
            if r1 == r0:
                return max(q0, q1)
            w = (recall - r0) / (r1 - r0)
            return float(np.exp((1 - w) * np.log(q0) + w * np.log(q1)))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder written by benchmarks/synthetic.py")
    ap.add_argument("--methods", default="exact,ravis,ivf-flat,ivf-sq8,ivf-pq,hnsw,scann")
    ap.add_argument("--budget", default="8G")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ravis-bench-indexes"))
    ap.add_argument("--out", type=Path, help="JSON file for all results")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)), flush=True)
        return
    results = {}
    for method in args.methods.split(","):
        print(f"== {method}", flush=True)
        cmd = [sys.executable, __file__, "--one", method] + [a for a in sys.argv[1:]]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = proc.stdout.splitlines()
        print("\n".join(line for line in lines if not line.startswith("RESULT ")), flush=True)
        found = [line for line in lines if line.startswith("RESULT ")]
        if proc.returncode != 0 or not found:
            print(f"   {method} failed (exit {proc.returncode})", flush=True)
            results[method] = {"error": f"exit {proc.returncode}"}
            continue
        results[method] = r = json.loads(found[0][7:])
        if "tuned_point" in r:
            tp = r["tuned_point"]
            print(f"   {r['spec']}: built in {r['build_seconds']:.0f} s, build peak {r['build_peak_anon_bytes'] / 2**30:.2f} GiB, "
                  f"{r['bytes_per_vector_disk']:.0f} B/vector on disk; tuned {tp['params']}: recall {tp['recall']:.4f}, "
                  f"{tp['qps']:,.0f} q/s", flush=True)
    report(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))


def report(results: dict) -> None:
    if "exact" in results and "ratio_vs_faiss" in results["exact"]:
        e = results["exact"]
        print(f"exact: ravis {e['curve'][0]['qps']:,.0f} q/s vs bare faiss IndexFlatIP {e['bare_faiss_qps']:,.0f} q/s "
              f"= {e['ratio_vs_faiss']:.3f}x")
    scann = results.get("scann", {})
    for method, ours in results.items():
        if method == "scann" or "curve" not in scann or "tuned_point" not in ours:
            continue
        tp = ours["tuned_point"]
        ref = qps_at_recall(scann["curve"], tp["recall"])
        if ref:
            print(f"{method} ({ours['spec']}, {tp['params']}): recall {tp['recall']:.4f} at {tp['qps']:,.0f} q/s; "
                  f"ScaNN at that recall {ref:,.0f} q/s: ratio {tp['qps'] / ref:.2f}x")
        else:
            print(f"{method}: recall {tp['recall']:.4f} lies outside ScaNN's measured curve")


if __name__ == "__main__":
    main()
