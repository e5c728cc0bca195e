"""Other runtimes for the embedded default encoder, against the onnxruntime session ravis uses.

    python benchmarks/bench_encoder_backends.py [--n 512] [--batch-size 64] [--out F.json]

The cold demo spends most of its time embedding Fashion-MNIST with EfficientNet-Lite0 at
224 px (README, "Time"). This measures whether another runtime on the same CPU would
shorten that: each side encodes the same first N Fashion-MNIST test images, preprocessed
once beforehand, and is compared with onnxruntime's float32 session (the reference, timed
in the same process) on images per second and on the cosine of its features to the
reference's (a lower precision changes the features, and so the accuracy).

Sides: onnxruntime at other batch sizes; torch (the same weights, channels-last, float32
and bfloat16 autocast); OpenVINO reading the same ONNX file (float32 and bfloat16
inference precision) where the `openvino` package is installed (it is not a ravis
dependency; a missing one is reported and skipped).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from ravis.data import load_fashion_mnist
from ravis.data.fashion_mnist import DEFAULT_ROOT
from ravis.encoders.efficientnet_lite import (EfficientNetLite0Encoder, pooled_features,
                                              torch_model)
from ravis.encoders.base import l2_normalize
from ravis.io import save_json


def images_per_s(encode, pixels: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """Throughput of encode over pixels in batches (after one warm-up batch), and its features."""
    encode(pixels[:batch_size])
    t0 = time.perf_counter()
    feats = [encode(pixels[b:b + batch_size]) for b in range(0, len(pixels), batch_size)]
    return len(pixels) / (time.perf_counter() - t0), np.concatenate(feats)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (l2_normalize(a) * l2_normalize(b)).sum(1)  # (N,)


def torch_sides(encoder, threads: int):
    """name -> encode for the torch copy of the network, float32 and bfloat16."""
    import torch

    torch.set_num_threads(threads)
    net = torch_model(encoder.weights).to(memory_format=torch.channels_last)

    def run(pixels, dtype):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                    enabled=dtype == "bf16"):
            x = torch.from_numpy(pixels)  # pooled_features permutes to (B, 3, H, W)
            return pooled_features(net, x).float().numpy()

    return {f"torch {dtype}": (lambda p, dtype=dtype: run(p, dtype)) for dtype in ("f32", "bf16")}


def openvino_sides(encoder, threads: int):
    """name -> encode for OpenVINO compiled from the same ONNX file; {} where not installed."""
    try:
        import openvino
    except ImportError:
        print("openvino is not installed: its rows are skipped (pip install openvino)")
        return {}
    core = openvino.Core()
    sides = {}
    for precision in ("f32", "bf16"):
        model = core.compile_model(str(encoder.onnx_path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision})
        request, out = model.create_infer_request(), model.output("features")
        sides[f"openvino {precision}"] = (
            lambda p, request=request, out=out: request.infer({"pixels": p})[out].copy())
    return sides


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="number of Fashion-MNIST test images")
    ap.add_argument("--batch-size", type=int, default=64, help="the reference's batch size")
    ap.add_argument("--root", type=Path, default=Path(DEFAULT_ROOT), help="Fashion-MNIST folder")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    threads = os.cpu_count() or 1
    encoder = EfficientNetLite0Encoder(num_threads=threads)
    test = load_fashion_mnist(args.root).test
    n = min(args.n, len(test))
    pixels = np.stack([encoder.preprocess(test.load_image(i)) for i in range(n)])
    reference = lambda p: encoder.run(p)[0]  # noqa: E731

    base, base_feats = images_per_s(reference, pixels, args.batch_size)
    rows = [{"side": "onnxruntime f32", "batch_size": args.batch_size, "images_per_s": base,
             "ratio": 1.0, "cosine_mean": 1.0, "cosine_min": 1.0}]
    sides = [("onnxruntime f32", reference, bs) for bs in (16, 256) if bs != args.batch_size]
    sides += [(name, f, args.batch_size) for name, f in
              {**torch_sides(encoder, threads), **openvino_sides(encoder, threads)}.items()]
    for name, encode, batch_size in sides:
        rate, feats = images_per_s(encode, pixels, batch_size)
        cos = cosines(feats, base_feats)
        rows.append({"side": name, "batch_size": batch_size, "images_per_s": rate,
                     "ratio": rate / base, "cosine_mean": float(cos.mean()),
                     "cosine_min": float(cos.min())})

    print(f"{n} Fashion-MNIST test images at {encoder.image_size} px, {threads} threads")
    print(f"{'side':18} {'batch':>5} {'images/s':>9} {'ratio':>6} {'cos mean':>9} {'cos min':>8}")
    for r in rows:
        print(f"{r['side']:18} {r['batch_size']:5d} {r['images_per_s']:9.1f} {r['ratio']:6.2f} "
              f"{r['cosine_mean']:9.4f} {r['cosine_min']:8.4f}")
    if args.out:
        save_json(args.out, {"images": n, "image_size": encoder.image_size, "threads": threads,
                             "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
