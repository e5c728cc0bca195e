"""Recognition with a memory larger than RAM: make, index, run and serve, each stage resumable.

    python benchmarks/bench_web_memory.py --n 10000000 --work /work/bench/web1e7 \
        --out benchmarks/results/web-1e7.json

make:  a sharded memory of N entries in the on-disk format, from the demo's real Fashion-MNIST
       embeddings (EfficientNet-Lite0 keys of the 60k training split) resampled with noise:
       key = normalise(key of a random training image + noise), value = the MiniLM embedding
       of its class's label prompt + noise, label = its class. float16, 10^6 rows a shard
       (1280-d keys and 384-d values: 33 GB at N = 10^7).
index: ``ravis memory index`` with ``--budget`` (the index must fit it, as it would on a
       machine whose RAM is smaller than the memory).
run:   ``ravis run`` of fmnist-lt (the demo's long-tailed training set, 10k test images) with
       ``memory.source=[train, MEMDIR]``, every method. Peak RSS of the process is sampled
       from /proc: VmHWM (resident pages, mapped shard pages included) and RssAnon (its own
       allocations; mapped file pages are page cache the kernel can drop).
serve: ``bench_serve.py latency`` on the run folder: p50 / p95 round trip and the ratio
       (search + fuse) / encode.
reads: what one training step at k = 100 reads when its rows are not in RAM: keys and values
       of 512 x 100 random rows from the mapped memory (three seeds), rows/s and MB/s.

Ratios printed: peak RSS / index budget (goal < 1), the run's stage times, and each method's
top-1 against the same experiment with the 60k memory (fmnist-lt/B of the demo, if
--reference-results names its results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHARD_ROWS = 1_000_000


def encoders():
    from ravis.encoders import create_image_encoder, create_text_encoder

    return create_image_encoder("efficientnet_lite0"), create_text_encoder("minilm")


def source_embeddings(cache: Path):
    """(keys (60000, 1280), labels, class names, prompt values (10, 384)) of the real data."""
    from ravis.data import load_fashion_mnist
    from ravis.encoders.embed import embed_images, embed_texts

    image_encoder, text_encoder = encoders()
    train = load_fashion_mnist().train
    emb = embed_images(image_encoder, train, cache, progress=True)
    prompts = embed_texts(text_encoder, [f"a photo of a {c}" for c in train.class_names], cache)
    ok = np.flatnonzero(emb.valid)
    return emb.embeddings[ok], train.labels[ok], list(train.class_names), prompts, image_encoder, text_encoder


def noisy(x: np.ndarray, rng, noise: float) -> np.ndarray:
    x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(noise / np.sqrt(x.shape[1]))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_array(path: Path, shape, fill) -> None:
    """A float16 .npy written block by block into a temporary name, then renamed."""
    from ravis.io import atomic_path

    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        for r0 in range(0, shape[0], 100_000):
            out[r0:r0 + 100_000] = fill(r0, min(r0 + 100_000, shape[0]))
        out.flush()
        del out


def make(memdir: Path, n: int, cache: Path, noise: float, shard_rows: int = SHARD_ROWS, seed: int = 0) -> None:
    from ravis.memory.sharded import (FORMAT, META_ROW_GROUP, file_record, load_manifest, meta_table,
                                      save_manifest, shard_file)

    keys, labels, classes, prompts, image_encoder, text_encoder = source_embeddings(cache)
    manifest = {"format": FORMAT, "key_encoder": image_encoder.fingerprint(),
                "value_encoder": text_encoder.fingerprint(), "dim": int(keys.shape[1]),
                "value_dim": int(prompts.shape[1]), "dtype": "float16", "count": 0,
                "class_names": classes, "skipped": {}, "sources": [f"fmnist-resampled noise={noise}"],
                "shards": [], "failed_shards": []}
    if (memdir / "manifest.json").exists():
        manifest = load_manifest(memdir)
    done = {s["name"] for s in manifest["shards"]}
    import pyarrow.parquet as pq

    from ravis.io import atomic_path

    for i, r0 in enumerate(range(0, n, shard_rows)):
        name, rows = f"{i:05d}", min(shard_rows, n - r0)
        if name in done:
            continue
        t = time.perf_counter()
        rng = np.random.default_rng([seed, i])
        src = rng.integers(0, len(keys), rows)
        write_array(memdir / shard_file(name, "keys"), (rows, keys.shape[1]),
                    lambda a, b: noisy(keys[src[a:b]], rng, noise))
        write_array(memdir / shard_file(name, "values"), (rows, prompts.shape[1]),
                    lambda a, b: noisy(prompts[labels[src[a:b]]], rng, noise))
        meta = meta_table([f"{name}/{j}" for j in range(rows)], [classes[y] for y in labels[src]],
                          ["fmnist-resampled"] * rows, labels[src].tolist(), [b""] * rows, ["{}"] * rows)
        with atomic_path(memdir / shard_file(name, "meta")) as tmp:
            pq.write_table(meta, tmp, row_group_size=META_ROW_GROUP)
        files = {kind: file_record(memdir, shard_file(name, kind)) for kind in ("keys", "values", "meta")}
        manifest["shards"].append({"name": name, "input": f"resample:{i}", "rows": rows, "skipped": {},
                                   "files": files})
        save_manifest(memdir, manifest)
        print(f"make: shard {name} ({rows} rows) in {time.perf_counter() - t:.0f} s", flush=True)


def random_reads(memdir: Path, rows: int = 512 * 100, seeds=(1, 2, 3)) -> list[dict]:
    """Seconds to read keys and values of ``rows`` random rows (one training batch at k=100)."""
    from ravis.memory import ShardedMemory

    memory = ShardedMemory.open(memdir)
    out = []
    for seed in seeds:
        picked = np.random.default_rng(seed).integers(0, len(memory), rows)
        t = time.perf_counter()
        nbytes = memory.keys_at(picked).nbytes + memory.values_at(picked).nbytes
        seconds = time.perf_counter() - t
        out.append({"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
                    "mb_per_s": round(nbytes / seconds / 1e6, 1)})
        print(f"reads: {rows} random rows in {seconds:.2f} s", flush=True)
    return out


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], log: Path) -> dict:
    """Runs ``cmd``; returns seconds, return code, peak VmHWM and peak RssAnon (bytes)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        peak = {"VmHWM": 0, "RssAnon": 0}
        while proc.poll() is None:
            for field in peak:
                peak[field] = max(peak[field], status_kib(proc.pid, field))
            time.sleep(0.2)
    return {"seconds": round(time.perf_counter() - t, 1), "returncode": proc.returncode,
            "peak_vmhwm_bytes": 1024 * peak["VmHWM"], "peak_rss_anon_bytes": 1024 * peak["RssAnon"],
            "command": " ".join(str(c) for c in cmd[1:]), "log": log.name}


def run_config(work: Path, memdir: Path) -> Path:
    path = work / "web.yaml"
    path.write_text(f"""# python benchmarks/bench_web_memory.py (the run stage)
encoder: efficientnet_lite0
text_encoder: minilm
data: {{dataset: fashion-mnist, longtail: true, imbalance_ratio: 100, max_per_class: 1000}}
experiments:
  - name: fmnist-lt/web
    memory: {{source: [train, {memdir}], values: label_prompt}}
""")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--work", type=Path, required=True, help="folder for the memory, index and run")
    p.add_argument("--budget", default="8G")
    p.add_argument("--factory", default=None,
                   help="faiss factory string instead of the budget rule's choice (for 10^7 x 1280 at "
                        "8G the rule picks OPQ256, whose training alone takes hours on 2 cores)")
    p.add_argument("--target-recall", type=float, default=0.9)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--shard-rows", type=int, default=SHARD_ROWS)
    p.add_argument("--stages", default="make,index,run,serve,reads")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--reference-results", type=Path, default=None,
                   help="results.json of the demo (fmnist-lt/B: the same run with the 60k memory)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from ravis.sizes import parse_bytes
    from ravis.io import default_cache_dir, load_json

    cache = args.cache or default_cache_dir()
    work, memdir = args.work, args.work / "memory"
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    report = load_json(report_path) if report_path.exists() else {"n": args.n, "budget": args.budget}
    stages = args.stages.split(",")
    ravis = [str(Path(sys.executable).parent / "ravis")]

    def save():
        report_path.write_text(json.dumps(report, indent=1) + "\n")

    if "make" in stages:
        t = time.perf_counter()
        make(memdir, args.n, cache, args.noise, args.shard_rows)
        report.setdefault("make", {})["seconds_this_call"] = round(time.perf_counter() - t, 1)
        report["make"]["bytes"] = sum(f.stat().st_size for f in (memdir / "shards").iterdir())
        save()
    if "index" in stages:
        factory = ["--factory", args.factory] if args.factory else []
        report["index"] = run_measured(ravis + ["memory", "index", str(memdir), "--budget", args.budget,
                                                "--target-recall", str(args.target_recall), "--k", "100",
                                                *factory, "--quiet"], work / "index.log")
        report["index"]["index_json"] = {k: v for k, v in load_json(memdir / "index" / "index.json").items()
                                         if k in ("spec", "search_params", "ntotal")}
        save()
    if "run" in stages:
        config = run_config(work, memdir)
        report["run"] = run_measured(ravis + ["run", "-c", str(config), "--out", str(work / "run"), "--quiet",
                                              "--cache", str(cache)], work / "run.log")
        report["run"]["timings"] = load_json(work / "run" / "timings.json")
        entry = load_json(work / "run" / "results.json")["experiments"][0]
        report["run"]["top1"] = {m: round(100 * v["top1"], 2) for m, v in entry["methods"].items()}
        report["run"]["memory_size"] = entry["memory_size"]
        report["run"]["peak_rss_over_budget"] = round(report["run"]["peak_vmhwm_bytes"] / parse_bytes(args.budget), 3)
        if args.reference_results:
            ref = next(e for e in load_json(args.reference_results)["experiments"] if e["name"] == "fmnist-lt/B")
            report["run"]["top1_with_60k_memory"] = {m: round(100 * v["top1"], 2) for m, v in ref["methods"].items()}
        save()
    if "serve" in stages:
        report["serve"] = run_measured([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "latency",
                                        "--run", str(work / "run"), "--experiment", "fmnist-lt/web",
                                        "--requests", "100"], work / "serve.log")
        report["serve"]["output"] = (work / "serve.log").read_text().splitlines()[-30:]
        save()
    if "reads" in stages:
        report["reads"] = random_reads(memdir)
        save()
    text = json.dumps(report, indent=1).replace(str(work), "WORK")  # results name no machine paths
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
