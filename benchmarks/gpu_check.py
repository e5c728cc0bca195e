"""The GPU check: three figures a GPU user of ravis needs, measured in one run.

1. Embedding: images/s through ravis's timm encoder (``timm:vit_base_patch16_224``, randomly
   initialised: the speed does not depend on the weights, and nothing is downloaded), 224 px,
   bf16 autocast on a GPU. Timed twice: the model alone on pixels already prepared, and end to
   end from PIL images (resize, crop, normalise on the CPU in loader threads, then the model).
2. MAM training: samples/s of forward + backward + AdamW step of ravis's MemoryAttention with
   a linear classifier at the paper's shape (B 512, k 100, d 768, L 8), bf16 autocast.
3. Exact k-NN: queries/s of k=100 inner-product search over nb x d (10^6 x 768) with ravis's
   exact index on the device, against CPU faiss (IndexFlatIP) in the same run, and the
   fraction of top-100 ids on which the two agree.

Prints each figure and writes them as JSON (--out). Every size is an option, so the same
script runs as a CPU smoke test at tiny sizes (``--device cpu --nb 2000 ...``).

    python benchmarks/gpu_check.py --out gpu_check.json
    python benchmarks/gpu_check.py --device cpu --images 8 --batch 4 --mam-batch 8 --mam-k 10 \\
        --mam-dim 64 --mam-layers 2 --nb 2000 --nq 64 --dim 64 --tiny-vit
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import sys
import time

import numpy as np
import torch
from PIL import Image

from ravis.device import autocast, resolve_device
from ravis.encoders import create_image_encoder
from ravis.fusion.memory_attention import MemoryAttention
from ravis.index.exact import ExactIndex


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_images(n: int, size: int = 256, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def check_embedding(device, images: int, batch: int, tiny: bool, workers: int) -> dict:
    kwargs = {"model_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2}} if tiny else {}
    encoder = create_image_encoder("timm:vit_base_patch16_224", device=device, **kwargs)
    pictures = random_images(min(images, 4 * batch))  # cycled: decoding is not what is timed
    pixels = np.stack([encoder.preprocess(p) for p in pictures[:batch]])  # (B, 3, 224, 224)
    encoder.encode_pixels(pixels)  # warm-up: cuDNN/cuBLAS plans, allocator
    sync(device)

    steps = max(1, images // batch)
    t0 = time.perf_counter()
    for _ in range(steps):
        encoder.encode_pixels(pixels)
    sync(device)
    model_only = steps * batch / (time.perf_counter() - t0)

    def prepare(i: int) -> np.ndarray:
        return np.stack([encoder.preprocess(pictures[(i * batch + j) % len(pictures)]) for j in range(batch)])

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # prepares batches ahead of the model
        for prepared in pool.map(prepare, range(steps)):
            encoder.encode_pixels(prepared)
    sync(device)
    end_to_end = steps * batch / (time.perf_counter() - t0)
    return {"model": encoder.name, "dim": int(encoder.dim), "batch": batch, "images": steps * batch,
            "images_per_s_model": round(model_only, 1), "images_per_s_end_to_end": round(end_to_end, 1),
            "loader_threads": workers}


def check_mam_training(device, batch: int, k: int, dim: int, layers: int, classes: int, steps: int) -> dict:
    torch.manual_seed(0)
    mam = MemoryAttention(dim, dim, layers).to(device)
    head = torch.nn.Linear(dim, classes).to(device)
    optim = torch.optim.AdamW([*mam.parameters(), *head.parameters()], lr=1e-3)
    z = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=-1)  # (B, d)
    keys = torch.nn.functional.normalize(torch.randn(batch, k, dim, device=device), dim=-1)  # (B, k, d)
    values = torch.randn(batch, k, dim, device=device)  # (B, k, d)
    labels = torch.randint(0, classes, (batch,), device=device)

    def step():
        optim.zero_grad(set_to_none=True)
        with autocast(device):
            f, _ = mam(z, keys, values)
            loss = torch.nn.functional.cross_entropy(head(f).float(), labels)
        loss.backward()
        optim.step()

    for _ in range(3):  # warm-up
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - t0
    return {"batch": batch, "k": k, "d": dim, "L": layers, "classes": classes, "steps": steps,
            "samples_per_s": round(steps * batch / elapsed, 1), "ms_per_step": round(1000 * elapsed / steps, 2)}


def check_exact_knn(device, nb: int, nq: int, dim: int, k: int) -> dict:
    import faiss

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((nb, dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = rng.standard_normal((nq, dim), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)

    index = ExactIndex(dim, device=device)
    index.add(xb)
    index.search(xq[:8], k)  # copies the vectors to the device once, warms the kernels
    sync(device)
    t0 = time.perf_counter()
    _, I_dev = index.search(xq, k)
    t_dev = time.perf_counter() - t0

    flat = faiss.IndexFlatIP(dim)
    flat.add(xb)
    t0 = time.perf_counter()
    _, I_cpu = flat.search(xq, k)
    t_cpu = time.perf_counter() - t0
    agree = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(I_dev, I_cpu)])
    return {"nb": nb, "nq": nq, "d": dim, "k": k, "device": str(device),
            "queries_per_s_device": round(nq / t_dev, 1), "queries_per_s_cpu_faiss": round(nq / t_cpu, 1),
            "speedup": round(t_cpu / t_dev, 2), "faiss_threads": faiss.omp_get_max_threads(),
            "top_k_agreement": round(float(agree), 5)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--images", type=int, default=4096, help="images embedded per timing")
    p.add_argument("--batch", type=int, default=256, help="embedding batch")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader threads")
    p.add_argument("--tiny-vit", action="store_true", help="a 2-block ViT (CPU smoke test)")
    p.add_argument("--mam-batch", type=int, default=512)
    p.add_argument("--mam-k", type=int, default=100)
    p.add_argument("--mam-dim", type=int, default=768)
    p.add_argument("--mam-layers", type=int, default=8)
    p.add_argument("--mam-classes", type=int, default=1000)
    p.add_argument("--mam-steps", type=int, default=50)
    p.add_argument("--nb", type=int, default=1_000_000, help="database vectors for exact k-NN")
    p.add_argument("--nq", type=int, default=10_000, help="queries for exact k-NN")
    p.add_argument("--dim", type=int, default=768, help="vector dimension for exact k-NN")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--out", default=None, help="write the figures here as JSON")
    a = p.parse_args(argv)

    device = resolve_device(a.device)
    result = {"date": datetime.date.today().isoformat(), "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__, "cpu_count": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(result), flush=True)
    for name, run in [
        ("embedding", lambda: check_embedding(device, a.images, a.batch, a.tiny_vit, a.workers)),
        ("mam_training", lambda: check_mam_training(device, a.mam_batch, a.mam_k, a.mam_dim, a.mam_layers,
                                                    a.mam_classes, a.mam_steps)),
        ("exact_knn", lambda: check_exact_knn(device, a.nb, a.nq, a.dim, a.k)),
    ]:
        t0 = time.perf_counter()
        result[name] = run()
        result[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(result[name]), flush=True)
    if a.out:
        tmp = f"{a.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
