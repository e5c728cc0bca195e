"""What embedding Fashion-MNIST at fewer pixels costs: accuracy and images/s per size.

    python benchmarks/study_resolution.py [--sizes 224,160,128,112,96] [--train 10000] [--test 2000]

Fashion-MNIST's images are 28 px; EfficientNet-Lite0 was trained at 224. Embedding 70k of
them at 224 px is most of a cold ``ravis demo``, so this measures, per size, the encoder's
throughput end to end (``embed_images`` into a fresh cache) and the accuracy of the two
untrained read-outs the demo leans on: a kNN vote (k 10, temperature 0.07) over a labelled
memory of the first ``--train`` training images, and a linear probe (full-batch logistic
regression, 300 L-BFGS steps) on the same images; both scored on the first ``--test`` test
images. Every size sees the same images. Writes benchmarks/results/fmnist-resolution.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ravis.data import load_fashion_mnist
from ravis.encoders.efficientnet_lite import EfficientNetLite0Encoder
from ravis.encoders.embed import embed_images
from ravis.fusion import knn_vote


def linear_probe(x: np.ndarray, y: np.ndarray, xt: np.ndarray, classes: int) -> np.ndarray:
    torch.manual_seed(0)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(X), Y) + 1e-4 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return head(torch.from_numpy(xt)).argmax(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="224,160,128,112,96")
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fmnist-resolution.json")
    args = ap.parse_args()
    splits = load_fashion_mnist()
    train = splits.train.subset(np.arange(args.train), name=f"fmnist-train-{args.train}")
    test = splits.test.subset(np.arange(args.test), name=f"fmnist-test-{args.test}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="study_resolution_") as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            encoder = EfficientNetLite0Encoder(size, cache_dir=Path(tmp))
            t0 = time.perf_counter()
            zt = embed_images(encoder, train, tmp, progress=False).embeddings
            zq = embed_images(encoder, test, tmp, progress=False).embeddings
            seconds = time.perf_counter() - t0
            sims = torch.from_numpy(zq) @ torch.from_numpy(zt).T
            D, I = sims.topk(10, dim=1)
            votes = knn_vote(D.numpy(), train.labels[I.numpy()], 10, 10, 0.07)
            row = {"size": size, "images_per_s": (len(train) + len(test)) / seconds,
                   "knn_vote_top1": float((votes.argmax(1) == test.labels).mean()),
                   "linear_top1": float((linear_probe(zt, train.labels, zq, 10) == test.labels).mean())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]
    for row in rows:
        row["speedup"] = row["images_per_s"] / base["images_per_s"]
    args.out.write_text(json.dumps({"train_images": args.train, "test_images": args.test,
                                    "reference_size": base["size"], "sizes": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
