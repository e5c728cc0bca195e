"""Clustered synthetic embeddings for the index benchmarks, written as memory-mappable shards.

Real image/text embeddings are not isotropic: they lie near a low-dimensional manifold and
form clusters. The generator mimics that: a latent point is drawn from one of ``clusters``
Gaussian clusters in ``latent`` dimensions, mapped to d dimensions by a fixed random matrix,
plus small isotropic noise, then L2-normalised. Every shard has its own seed, so shards are
written independently, a crashed run resumes at the first missing shard, and the same
(n, d, seed) always gives the same bytes.

    python benchmarks/synthetic.py --n 10000000 --d 384 --out /tmp/ravis-bench/1e7x384
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ravis.io import load_json, save_json, save_npy  # noqa: E402

LATENT, CLUSTERS, SPREAD, NOISE = 48, 256, 1.0, 0.5


def _model(d: int, seed: int):
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((LATENT, d)).astype(np.float32) / np.sqrt(LATENT)
    centres = rng.standard_normal((CLUSTERS, LATENT)).astype(np.float32)
    return proj, centres


def draw(n: int, d: int, seed: int, stream: int) -> np.ndarray:
    """n unit vectors (n, d) float32 from stream ``stream`` of the model with ``seed``."""
    proj, centres = _model(d, seed)
    rng = np.random.default_rng([seed, stream])
    out = np.empty((n, d), dtype=np.float32)
    for r0 in range(0, n, 100_000):
        m = min(100_000, n - r0)
        latent = centres[rng.integers(0, CLUSTERS, m)] + SPREAD * rng.standard_normal((m, LATENT), dtype=np.float32)
        # isotropic noise of 0.2 NOISE times the latent signal's norm, spread over all d dims
        x = latent @ proj + 0.2 * NOISE * np.sqrt(LATENT / d) * rng.standard_normal((m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[r0:r0 + m] = x
    return out


def write_shards(out: Path, n: int, d: int, shard_rows: int, seed: int = 0, nq: int = 1000) -> dict:
    """Writes ``out/keys/NNNNN.npy`` shards and ``out/queries.npy``; returns the manifest."""
    out = Path(out)
    manifest_path = out / "synthetic.json"
    spec = {"n": n, "d": d, "shard_rows": shard_rows, "seed": seed, "nq": nq,
            "latent": LATENT, "clusters": CLUSTERS}
    if manifest_path.exists() and load_json(manifest_path)["spec"] == spec:
        return load_json(manifest_path)
    shards = []
    t0 = time.perf_counter()
    for i, r0 in enumerate(range(0, n, shard_rows)):
        path = out / "keys" / f"{i:05d}.npy"
        if not path.exists():  # each shard is written atomically: present means complete
            save_npy(path, draw(min(shard_rows, n - r0), d, seed, stream=i + 1))
            print(f"  shard {i} ({r0 + shard_rows:,} rows, {time.perf_counter() - t0:.0f} s)", flush=True)
        shards.append(str(path.relative_to(out)))
    save_npy(out / "queries.npy", draw(nq, d, seed, stream=0))
    manifest = {"spec": spec, "shards": shards, "queries": "queries.npy"}
    save_json(manifest_path, manifest)
    return manifest


def open_shards(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """(memory-mapped key shards, queries) of a folder written by :func:`write_shards`."""
    folder = Path(folder)
    manifest = load_json(folder / "synthetic.json")
    shards = [np.load(folder / p, mmap_mode="r") for p in manifest["shards"]]
    return shards, np.load(folder / manifest["queries"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=float, required=True)
    ap.add_argument("--d", type=int, required=True)
    ap.add_argument("--shard-rows", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    write_shards(args.out, int(args.n), args.d, args.shard_rows, nq=args.nq)
    print("done", args.out)


if __name__ == "__main__":
    main()
