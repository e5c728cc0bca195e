"""Throughput of `ravis memory build` (local and Ray engines) against bare embedding.

    python benchmarks/bench_memory_build.py [--source tuxpaint] [--rows-per-shard 100]
                                            [--limit 0] [--ray-cpus 2] [--no-ray]

All three sides handle the same rows of one real collection (default: the Tux Paint stamps,
about 800 captioned PNGs). The reference, "bare", times only the two encoders' forward passes
(image session on pixels preprocessed beforehand, at the build's batch size, and the text
encoder on the captions) in this process. The builds run end to end: read, decode, resize,
thumbnails, both encoders, float16 conversion, atomic writes, checksums, manifest. The Ray
build runs on a local Ray with --ray-cpus CPUs (one task per shard, one encoder thread each);
ray.init is timed separately. The Ray output must be byte-identical to the local one, or the
benchmark fails.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ravis.encoders import create_image_encoder, create_text_encoder
from ravis.memory.shard_build import build_sharded_memory
from ravis.memory.sources import decode_image, read_rows, resolve_sources


def bare_seconds(rows, batch_size: int) -> float:
    """Seconds of the encoders' forward passes alone over ``rows``."""
    image_encoder = create_image_encoder("efficientnet_lite0")
    text_encoder = create_text_encoder("minilm")
    pixels = np.stack([image_encoder.preprocess(decode_image(r.image, r.key)) for r in rows])
    image_encoder.encode_pixels(pixels[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for b in range(0, len(pixels), batch_size):
        image_encoder.encode_pixels(pixels[b:b + batch_size])
    text_encoder.encode_texts([r.text for r in rows])
    return time.perf_counter() - t0


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    other = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return names == other and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="tuxpaint", help="source spec (a folder source)")
    ap.add_argument("--rows-per-shard", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args(argv)

    shards, _ = resolve_sources(args.source, args.rows_per_shard)
    rows = [r for s in shards for r in read_rows(s).rows]
    n = len(rows)
    bare = bare_seconds(rows, args.batch_size)
    results = {"bare encoders": bare}
    with tempfile.TemporaryDirectory(prefix="bench_memory_build_") as tmp:
        t0 = time.perf_counter()
        mem = build_sharded_memory(args.source, Path(tmp) / "local", progress=False,
                                   rows_per_shard=args.rows_per_shard,
                                   batch_size=args.batch_size)
        results["build, local"] = time.perf_counter() - t0
        built = mem.count
        if not args.no_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
            init = time.perf_counter() - t0
            t0 = time.perf_counter()
            build_sharded_memory(args.source, Path(tmp) / "ray", engine="ray", progress=False,
                                 rows_per_shard=args.rows_per_shard, batch_size=args.batch_size)
            results[f"build, ray ({args.ray_cpus} cpus)"] = time.perf_counter() - t0
            ray.shutdown()
            if not same_files(Path(tmp) / "local", Path(tmp) / "ray"):
                print("FAIL: the Ray build differs from the local build", file=sys.stderr)
                return 1
    print(f"source {args.source!r}: {n} rows read, {built} built, {len(shards)} shards, "
          f"batch size {args.batch_size}")
    for name, seconds in results.items():
        print(f"{name:24s} {n / seconds:8.1f} rows/s  ({seconds:.1f} s)  "
              f"ratio to bare {bare / seconds:.3f}")
    if not args.no_ray:
        ray_s = results[f"build, ray ({args.ray_cpus} cpus)"]
        print(f"ray / local:             {results['build, local'] / ray_s:.3f}  "
              f"(ray.init {init:.1f} s not included); outputs byte-identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
