"""Throughput of `ravis memory build` (local and Ray engines) against its encoders alone.

    python benchmarks/bench_memory_build.py [--source tuxpaint] [--rows-per-shard 100]
                                            [--repeats 1] [--min-ratio 0] [--ray-cpus 2]
                                            [--no-ray]

The encoders' own throughput is the ceiling, and the printed ratio is build rows/s over it
(issue 8 asks for at least 0.9 from the local engine). Every side handles the same rows of
one real collection (default: the Tux Paint stamps, about 800 captioned PNGs).

* "bare encoders" times only the forward passes the build makes: the image encoder on the
  same images, decoded and preprocessed the way the build does it but beforehand (outside
  the timing), in the same batches (``--batch-size`` within each input shard), then the text
  encoder on each shard's captions in one call, as the build calls it. It uses the build's
  own encoder objects (:func:`ravis.memory.shard_build.load_encoders`: same thread counts),
  warmed up, in this process.
* "build, local" runs ``build_sharded_memory`` end to end: resolve and read the sources,
  decode, resize, thumbnails, both encoders, float16 conversion, atomic writes, sha256
  checksums, manifest. Loading the encoders (once per process, under a second) is not
  timed, as it does not grow with the rows; bare has them loaded too. How far its peak RSS
  rises above the process's RSS before it (VmHWM after a reset, Linux) is printed too.
* "build, ray" runs the same on a local Ray with --ray-cpus CPUs (one task per shard, one
  encoder thread each, encoders loaded in every worker); ray.init is timed separately. Its
  output must be byte-identical to the local one, or the benchmark fails.

With --repeats the bare and local runs alternate and medians are compared. Load averages
are printed before and after: other processes on the machine shift the figures, so take
the final ones on a quiet machine. Exits 1 if the local ratio is below --min-ratio.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet  # noqa: F401 - imported by the first build otherwise, inflating its RSS

from ravis.data import BadImageError
from ravis.config import MemoryBuildConfig
from ravis.memory.shard_build import build_sharded_memory, load_encoders
from ravis.data.images import open_image
from ravis.data.sources import read_rows, resolve_sources


def bare_encoders(shards, batch_size: int):
    """A function timing the encoders alone over ``shards`` (inputs prepared once, here)."""
    image_encoder, text_encoder = load_encoders(MemoryBuildConfig(batch_size=batch_size))
    jobs = []
    for shard in shards:
        rows, batches, texts = read_rows(shard).rows, [], []
        for start in range(0, len(rows), batch_size):  # the build's batches: less bad images
            pixels = []
            for row in rows[start:start + batch_size]:
                try:
                    pixels.append(image_encoder.preprocess(open_image(row.image, where=row.key)))
                except BadImageError:
                    continue
                texts.append(row.text)
            if pixels:
                batches.append(np.stack(pixels))
        jobs.append((batches, texts))
    image_encoder.encode_pixels(jobs[0][0][0])  # warm-up
    text_encoder.encode_texts(jobs[0][1])

    def seconds() -> float:
        t0 = time.perf_counter()
        for batches, texts in jobs:
            for batch in batches:
                image_encoder.encode_pixels(batch)
            text_encoder.encode_texts(texts)
        return time.perf_counter() - t0

    return seconds


def build_seconds(source, out: Path, rows_per_shard: int, batch_size: int,
                  **kwargs) -> tuple[float, int]:
    """(seconds, rows built) of one build into the fresh folder ``out``."""
    t0 = time.perf_counter()
    mem = build_sharded_memory(source, out, progress=False, rows_per_shard=rows_per_shard,
                               batch_size=batch_size, **kwargs)
    return time.perf_counter() - t0, mem.count


def reset_peak_rss() -> float | None:
    """Resets this process's peak RSS (VmHWM, Linux) and returns the RSS now, in MiB; None
    where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_mib("VmRSS")


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def load_averages() -> str:
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    other = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return names == other and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="tuxpaint", help="source spec")
    ap.add_argument("--rows-per-shard", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="alternating bare and local runs")
    ap.add_argument("--min-ratio", type=float, default=0.0,
                    help="exit 1 if the local build's ratio to bare is below this")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args(argv)

    shards, _ = resolve_sources(args.source, args.rows_per_shard)
    n = sum(len(read_rows(s).rows) for s in shards)
    print(f"before: {load_averages()}", flush=True)
    bare = bare_encoders(shards, args.batch_size)
    bare_runs, local_runs, rises, built = [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="bench_memory_build_") as tmp:
        for i in range(args.repeats):
            bare_runs.append(bare())
            before = reset_peak_rss()
            seconds, built = build_seconds(args.source, Path(tmp) / f"local{i}",
                                           args.rows_per_shard, args.batch_size)
            local_runs.append(seconds)
            if before is not None:
                rises.append(_status_mib("VmHWM") - before)
        results = {"bare encoders": statistics.median(bare_runs),
                   "build, local": statistics.median(local_runs)}
        if not args.no_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
            init = time.perf_counter() - t0
            ray_label = f"build, ray ({args.ray_cpus} cpus)"
            results[ray_label], _ = build_seconds(args.source, Path(tmp) / "ray",
                                             args.rows_per_shard, args.batch_size, engine="ray")
            ray.shutdown()
            if not same_files(Path(tmp) / "local0", Path(tmp) / "ray"):
                print("FAIL: the Ray build differs from the local build", file=sys.stderr)
                return 1
    after = load_averages()
    print(f"source {args.source!r}: {n} rows read, {built} built, {len(shards)} shards, "
          f"batch size {args.batch_size}, {args.repeats} run(s) each, medians")
    bare_s = results["bare encoders"]
    for label, seconds in results.items():
        print(f"{label:24s} {n / seconds:8.1f} rows/s  ({seconds:.2f} s)  "
              f"ratio to bare {bare_s / seconds:.3f}")
    if rises:
        print(f"build, local: peak RSS {max(rises):.0f} MiB above the RSS before it")
    if not args.no_ray:
        print(f"ray / local:             {results['build, local'] / results[ray_label]:.3f}  "
              f"(ray.init {init:.1f} s not included); outputs byte-identical")
    print(f"after: {after}  (figures from a busy machine are not comparable: take them on a "
          "quiet one)")
    ratio = bare_s / results["build, local"]
    if ratio < args.min_ratio:
        print(f"FAIL: local ratio {ratio:.3f} < {args.min_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
