"""Exact search over memory-mapped key shards, for memories too large to copy into RAM.

Each search scans every shard block by block (:func:`~ravis.index.multi.exact_search`), so
RAM stays at one block whatever the memory's size; the cost is a full read of the keys per
call, which suits precomputing the neighbours of a whole query set in one call, not serving.
"""

from __future__ import annotations

import numpy as np

from .base import ExactBackend, as_vectors, check_ids, check_k
from .multi import exact_search


class MappedExactIndex(ExactBackend):
    """The exact inner-product index of a :class:`~ravis.index.build.KeyShards`, never copied."""

    def __init__(self, vectors):
        self.vectors, self.d, self.spec = vectors, int(vectors.d), "exact"
        self.info: dict = {}
        self.saved_files: dict = {}  # never saved: it scans the memory's own shards

    @property
    def ntotal(self) -> int:
        return int(self.vectors.n)

    def add(self, xb) -> None:
        raise TypeError("a mapped exact index reads its memory's shards; add rows to the memory")

    def search(self, xq, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(self.vectors.arrays, as_vectors(xq, self.d, "xq"), check_k(k))

    def reconstruct(self, ids) -> np.ndarray:
        return self.vectors(check_ids(ids, self.ntotal))

    def save(self, path) -> None:
        raise TypeError("a mapped exact index has nothing to save: it is its memory's key shards")

    @classmethod
    def load(cls, path, **options):
        raise TypeError("a mapped exact index is opened over its memory's key shards, not loaded")
