"""Throughput of embed_images against the bare onnxruntime session it wraps.

    python benchmarks/bench_embed.py [--n 2048] [--batch-size 64] [--repeats 1] [--no-check]

Both sides embed the first N Fashion-MNIST test images with EfficientNet-Lite0. The reference
times only ``encoder.session.run`` on images preprocessed beforehand, at the same batch size;
embed_images runs end to end (decode, preprocess on worker threads, encode, cache writes) into
a fresh temporary cache. With --repeats the two alternate and the medians are compared, since
other processes on the machine shift single runs. Exits 1 if the ratio is below --min-ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ravis.data import ImageDataset, load_fashion_mnist
from ravis.data.fashion_mnist import DEFAULT_ROOT
from ravis.encoders.base import l2_normalize
from ravis.encoders.efficientnet_lite import EfficientNetLite0Encoder
from ravis.encoders.embed import embed_images

def fashion_mnist_test(root: Path, n: int) -> ImageDataset:
    """The first n Fashion-MNIST test images."""
    test = load_fashion_mnist(root).test
    return test.subset(np.arange(min(n, len(test))), name=f"fashion-mnist-test-{n}")


def time_bare(encoder, pixels: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds of session.run over pre-made batches, and the normalised features."""
    batches = [np.ascontiguousarray(pixels[b:b + batch_size])
               for b in range(0, len(pixels), batch_size)]
    feats = []
    t0 = time.perf_counter()
    for x in batches:
        feats.append(encoder.session.run(["features"], {"pixels": x})[0])
    return time.perf_counter() - t0, l2_normalize(np.concatenate(feats))


def time_pipeline(encoder, dataset, batch_size: int, workers: int | None):
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        t0 = time.perf_counter()
        result = embed_images(encoder, dataset, tmp, batch_size=batch_size, progress=False,
                              num_workers=workers)
        return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048, help="number of test images")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs of each side")
    ap.add_argument("--workers", type=int, default=None, help="embed_images num_workers")
    ap.add_argument("--root", type=Path, default=Path(DEFAULT_ROOT), help="Fashion-MNIST folder")
    ap.add_argument("--min-ratio", type=float, default=0.9)
    ap.add_argument("--no-check", action="store_true", help="always exit 0")
    args = ap.parse_args(argv)

    encoder = EfficientNetLite0Encoder()
    dataset = fashion_mnist_test(args.root, args.n)
    n = len(dataset)
    pixels = np.stack([encoder.preprocess(dataset.load_image(i)) for i in range(n)])  # model inputs
    encoder.session.run(["features"], {"pixels": pixels[:args.batch_size]})  # warm-up

    bare, piped = [], []
    for _ in range(args.repeats):
        seconds, reference = time_bare(encoder, pixels, args.batch_size)
        bare.append(n / seconds)
        seconds, result = time_pipeline(encoder, dataset, args.batch_size, args.workers)
        piped.append(n / seconds)
    err = float(np.abs(result.embeddings - reference).max())
    if err > 1e-4 or not result.valid.all():
        print(f"FAIL: embed_images differs from the bare session (max abs err {err:.2e})")
        return 1

    b, p = statistics.median(bare), statistics.median(piped)
    ratio = p / b
    print(f"images: {n}, batch size {args.batch_size}, repeats {args.repeats}")
    print(f"bare session.run:  {b:8.1f} images/s  (runs: {', '.join(f'{x:.1f}' for x in bare)})")
    print(f"embed_images:      {p:8.1f} images/s  (runs: {', '.join(f'{x:.1f}' for x in piped)})")
    print(f"ratio:             {ratio:8.3f}  (target >= {args.min_ratio})")
    if ratio < args.min_ratio and not args.no_check:
        print("FAIL: embed_images is slower than the target ratio", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
