"""Building a large index within a RAM budget, killed midway and resumed.

    python benchmarks/bench_build.py --data /work/bench/1e7x384 --budget 8G --kill-after-blocks 4

1. runs the build (``ravis.index.build.build_index``, as ``ravis memory index`` does) in a child
   process and SIGKILLs it once ``--kill-after-blocks`` shards are encoded;
2. reruns it to the end;
3. checks the resumed build: shards encoded before and after the kill are byte-identical to the
   same shards encoded again from scratch, and the finished index reaches its recall;
4. reports the peak anonymous RSS of each run (sampled every 0.2 s from /proc) against the
   budget, build time, bytes per vector on disk and the resident set while searching.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_child(args, kill_after: int | None) -> dict:
    """Runs the build in a child; returns its peak RSS, wall time and whether it was killed."""
    cmd = [sys.executable, __file__, "--child", "--data", str(args.data), "--budget", args.budget,
           "--work", str(args.work)]
    t0, peak, killed = time.perf_counter(), 0, False
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        peak = max(peak, rss_anon(proc.pid))
        if kill_after is not None and len(list((args.work / "blocks").glob("*.faiss"))) >= kill_after:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = True
            break
        time.sleep(0.2)
    return {"seconds": time.perf_counter() - t0, "peak_anon_bytes": peak, "killed": killed,
            "returncode": proc.returncode}


def child(args) -> None:
    from ravis.index.build import build_index
    from ravis.io import load_json

    manifest = load_json(args.data / "synthetic.json")
    build_index([args.data / p for p in manifest["shards"]], args.work, budget=args.budget,
                target_recall=0.95, k=100, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--budget", default="8G")
    ap.add_argument("--kill-after-blocks", type=int, default=4)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, help="JSON file for the results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work = args.work or Path(f"/tmp/ravis-bench-indexes/{args.data.name}-ravis")
    if args.child:
        child(args)
        return

    import faiss
    import numpy as np

    from ravis.index import load_index
    from ravis.index.build import KeyShards, add_block
    from ravis.sizes import parse_bytes
    from ravis.index.tune import recall_at_k
    from ravis.io import load_json
    from synthetic import open_shards

    budget = parse_bytes(args.budget)
    first = run_child(args, args.kill_after_blocks)
    print(f"first run: killed={first['killed']} after {first['seconds']:.0f} s, "
          f"peak {first['peak_anon_bytes'] / 2**30:.2f} GiB", flush=True)
    second = run_child(args, None)
    assert second["returncode"] == 0, second
    print(f"resumed run: {second['seconds']:.0f} s, peak {second['peak_anon_bytes'] / 2**30:.2f} GiB", flush=True)

    # Shards encoded before the kill and after it equal fresh encodings of the same shards.
    manifest = load_json(args.data / "synthetic.json")
    rows = [len(np.load(args.data / p, mmap_mode="r")) for p in manifest["shards"]]
    offsets = np.concatenate([[0], np.cumsum(rows)])
    identical = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in sorted({0, len(rows) - 1}):
            fresh = Path(tmp) / f"{i}.faiss"
            add_block(args.work / "trained.faiss", args.data / manifest["shards"][i], int(offsets[i]), fresh)
            identical[f"{i:05d}"] = fresh.read_bytes() == (args.work / "blocks" / f"{i:05d}.faiss").read_bytes()
    print(f"re-encoded shards identical to the resumed build's: {identical}", flush=True)

    info = json.loads((args.work / "index.json").read_text())
    disk = sum(info["info"]["bytes_on_disk"].values())
    n = info["ntotal"]
    before = rss_anon_self()
    index = load_index(args.work, mmap=True)
    shards, queries = open_shards(args.data)
    index.vectors = KeyShards(shards)
    gt = np.load(args.data / "gt_k100.npy") if (args.data / "gt_k100.npy").exists() else None
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    _, I = index.search(queries, 100)
    qps = len(queries) / (time.perf_counter() - t)
    resident = rss_anon_self() - before
    recall = recall_at_k(I, gt, 100) if gt is not None else None
    result = {"n": n, "budget_bytes": budget, "index": info["spec"], "params": info["search_params"],
              "first_run": first, "resumed_run": second, "identical_blocks": identical,
              "build_peak_over_budget": max(first["peak_anon_bytes"], second["peak_anon_bytes"]) / budget,
              "bytes_on_disk": disk, "bytes_per_vector_disk": disk / n,
              "search_resident_anon_bytes": resident, "recall_at_100": recall, "qps": qps,
              "tuning": info["info"]["tuning"]}
    print(f"{info['spec']} {info['search_params']}: peak RSS {result['build_peak_over_budget']:.2f} of the "
          f"{budget / 2**30:.0f} GiB budget; {disk / n:.0f} B/vector on disk; searching holds "
          f"{resident / 2**30:.2f} GiB; recall@100 {recall if recall is None else round(recall, 4)} at {qps:,.0f} q/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


def rss_anon_self() -> int:
    import os

    return rss_anon(os.getpid())


if __name__ == "__main__":
    main()
