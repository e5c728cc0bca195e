"""What checking every byte costs: a memory and its index opened cold (every file hashed),
warm (files unchanged since they hashed right are trusted by their stamps), fully re-hashed
(`ravis memory verify`), and what a search costs after each.

ravis checks whole files against the sha256 in their manifest before a byte is used, once
per file: the stamp (size, modification time, inode) of a file that hashed right is kept
beside it (``.verified.json``), and later opens hash only files whose stamp changed
(git trusts stat data the same way). That is the equivalent of per-block checksums checked
on first use that this benchmark measures: the cost is paid on the first open of each file
and never on a search. Printed: seconds and GB/s of each open, the ratios cold / warm and
search-after-cold / search-after-warm (goal: 1.0, nothing is checked per search), and the
cold open of a 10^9-row memory extrapolated from the measured hash rate.

    python benchmarks/bench_verify.py --rows 400000 --out benchmarks/results/verify-4e5.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_memory(memdir: Path, rows: int, shard_rows: int, dim: int, value_dim: int) -> None:
    """A sharded float16 memory of random unit keys (the bytes, not their meaning, matter)."""
    from ravis.memory.sharded import FORMAT, meta_table, save_manifest, write_shard

    rng = np.random.default_rng(0)
    shards = []
    for i, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        keys = rng.standard_normal((n, dim), dtype=np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        values = rng.standard_normal((n, value_dim), dtype=np.float32)
        meta = meta_table([f"r{start + j}" for j in range(n)], ["a caption"] * n, ["bench"] * n,
                          rng.integers(0, 10, n).tolist(), [b""] * n, [None] * n)
        name = f"{i:05d}"
        files = write_shard(memdir, name, keys.astype("float16"), values.astype("float16"), meta)
        shards.append({"name": name, "input": f"random[{start}:{start + n}]", "rows": n,
                       "skipped": {}, "files": files})
    save_manifest(memdir, {"format": FORMAT, "key_encoder": "bench", "value_encoder": "bench",
                           "dim": dim, "value_dim": value_dim, "dtype": "float16", "count": rows,
                           "class_names": [str(c) for c in range(10)], "skipped": {},
                           "sources": [], "shards": shards, "failed_shards": []})


def checked_bytes(memdir: Path) -> int:
    """The bytes an open checks: every file the memory's manifest and its index.json list."""
    manifest = json.loads((memdir / "manifest.json").read_text())
    index = json.loads((memdir / "index" / "index.json").read_text())
    return (sum(f["bytes"] for s in manifest["shards"] for f in s["files"].values())
            + sum(f["bytes"] for f in index["files"].values()))


def forget_stamps(memdir: Path) -> None:
    for p in memdir.rglob(".verified.json"):
        p.unlink()


def open_all(memdir: Path):
    """What an experiment, `ravis predict` and the server do: the memory verified, then its index."""
    from ravis.memory.indexing import open_memory_index
    from ravis.memory.sharded import ShardedMemory

    t0 = time.perf_counter()
    memory = ShardedMemory.open(memdir, verify=True)
    index = open_memory_index(memdir)
    return memory, index, time.perf_counter() - t0


def full_verify(memdir: Path) -> float:
    from ravis.memory.indexing import verify_memory_index
    from ravis.memory.sharded import ShardedMemory

    t0 = time.perf_counter()
    ShardedMemory.open(memdir).verify()
    verify_memory_index(memdir)
    return time.perf_counter() - t0


def search_seconds(index, xq: np.ndarray, k: int) -> float:
    t0 = time.perf_counter()
    index.search(xq, k)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--shard-rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--value-dim", type=int, default=384)
    p.add_argument("--factory", default="IVF1024,SQ8", help="the memory's faiss index")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="where the memory is made (default: a temp folder)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from ravis.memory.indexing import index_memory

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-verify-"))
    memdir = work / "memory"
    if not (memdir / "manifest.json").exists():
        print(f"making a {args.rows}-row float16 memory ...", flush=True)
        make_memory(memdir, args.rows, args.shard_rows, args.dim, args.value_dim)
    if not (memdir / "index" / "index.json").exists():
        print(f"building its {args.factory} index ...", flush=True)
        index_memory(memdir, factory=args.factory, k=args.k, progress=False)
    size = checked_bytes(memdir)
    xq = np.random.default_rng(1).standard_normal((args.queries, args.dim), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)

    cold, warm, rehash, s_cold, s_warm = [], [], [], [], []
    for _ in range(args.repeats):  # alternating, so that drift hits each alike
        forget_stamps(memdir)
        _, index, seconds = open_all(memdir)
        cold.append(seconds)
        s_cold.append(search_seconds(index, xq, args.k))
        del index
        _, index, seconds = open_all(memdir)
        warm.append(seconds)
        s_warm.append(search_seconds(index, xq, args.k))
        del index
        rehash.append(full_verify(memdir))
    med = statistics.median
    rate = size / med(rehash)
    result = {
        "rows": args.rows, "dim": args.dim, "value_dim": args.value_dim, "dtype": "float16",
        "index": args.factory, "bytes_checked": size, "repeats": args.repeats,
        "note": "files in the page cache (the hash rate, not the disk, is measured); "
                "cold = no stamps: every file hashed; warm = stamps trusted",
        "open_seconds": {"cold": [round(x, 3) for x in cold], "warm": [round(x, 3) for x in warm],
                         "full_verify": [round(x, 3) for x in rehash]},
        "hash_rate_gb_per_s": round(rate / 1e9, 3),
        "ratio_cold_over_warm_open": round(med(cold) / med(warm), 2),
        f"search_seconds_{args.queries}q_k{args.k}": {"after_cold": [round(x, 4) for x in s_cold],
                                                      "after_warm": [round(x, 4) for x in s_warm]},
        "ratio_search_after_cold_over_after_warm": round(med(s_cold) / med(s_warm), 3),
        "extrapolated_cold_open_1e9_rows_hours": round(
            size / args.rows * 1e9 / rate / 3600, 2),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
