"""faiss backends. For now only the flat (exact) inner-product index, the reference that
ExactIndex is measured against; the approximate ones (IVF, HNSW) will join it here."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from ravis.io import load_npy, save_npy

from .base import as_vectors, check_k, check_loaded, pad_results, read_meta, write_meta

XB_NAME = "xb.npy"


class FaissFlatIndex:
    """faiss ``IndexFlatIP``: exact search with faiss's BLAS blocks and heaps."""

    def __init__(self, d: int):
        self.spec, self.d = "faiss-flat", int(d)
        self.index = faiss.IndexFlatIP(self.d)

    @classmethod
    def from_spec(cls, d: int, options: str = "") -> "FaissFlatIndex":
        if options:
            raise ValueError(f"'faiss-flat' takes no options, got {options!r}")
        return cls(d)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, xb) -> None:
        self.index.add(as_vectors(xb, self.d, "xb"))

    def reconstruct(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.ntotal):
            raise IndexError(f"ids out of range [0, {self.ntotal})")
        return self.index.reconstruct_batch(ids).reshape(len(ids), self.d)

    def search(self, xq, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq, k = as_vectors(xq, self.d, "xq"), check_k(k)
        if self.ntotal == 0:
            return pad_results(np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64), k)
        D, I = self.index.search(xq, k)
        D[I < 0] = -np.inf  # faiss pads with -FLT_MAX; ravis pads with -inf
        return D, I.astype(np.int64, copy=False)

    def _vectors(self) -> np.ndarray:
        """A copy of the stored vectors (nb, d)."""
        if self.ntotal == 0:
            return np.zeros((0, self.d), dtype=np.float32)
        flat = faiss.rev_swig_ptr(self.index.get_xb(), self.ntotal * self.d)
        return np.array(flat, dtype=np.float32).reshape(self.ntotal, self.d)

    def save(self, path: Path | str) -> None:
        # .npy rather than faiss.write_index, so every flat backend shares one plain format.
        path = Path(path)
        save_npy(path / XB_NAME, self._vectors())
        write_meta(path, self.spec, self.d, self.ntotal)

    @classmethod
    def load(cls, path: Path | str) -> "FaissFlatIndex":
        meta = read_meta(path)
        xb = load_npy(Path(path) / XB_NAME)
        check_loaded(Path(path) / XB_NAME, meta, xb)
        index = cls(meta["d"])
        index.add(xb)
        return index
