"""Several indexes searched as one, with an exact top-k merge.

A memory too big for one index (or composed of several memories, each with its own index)
is a list of parts; part p holds global rows ``offsets[p] .. offsets[p] + ntotal_p``. Each
part returns its own top k and the merge keeps the k best scores overall. The merge is
exact: the global top k are each in their part's top k, so the result equals one index over
all rows (for exact parts: identical; for approximate parts: the union of their answers).
"""

from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np

from ..errors import InputError
from .base import Index, as_vectors, check_ids, check_k, pad_results


def by_part(ids: np.ndarray, offsets: np.ndarray):
    """For global ids over parts starting at ``offsets`` (with the total last): each part p
    that holds some of them, with their positions in ``ids`` and their ids local to p."""
    which = np.searchsorted(offsets, ids, side="right") - 1
    for p in np.unique(which):
        pos = np.flatnonzero(which == p)
        yield int(p), pos, ids[pos] - offsets[p]


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of several (D, I) result lists over the same queries (ids already global).
    Ties keep the earlier part first, so the merge is deterministic."""
    D = np.concatenate([p[0] for p in parts], axis=1)
    I = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-D, axis=1, kind="stable")[:, :k]
    D, I = np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)
    I[~np.isfinite(D)] = -1
    return pad_results(D, I, k)


class MultiIndex:
    """Index parts over consecutive row ranges, searched in turn and merged exactly.

    The parts keep their own training, search parameters and vectors: a MultiIndex has no
    search parameters of its own (set them on a part), cannot be trained as a whole, and
    is assembled from loaded parts rather than saved or loaded.
    """

    vectors = None  # each part reconstructs its own rows

    def __init__(self, parts: Sequence[Index]):
        if not parts:
            raise ValueError("MultiIndex needs at least one part")
        dims = {p.d for p in parts}
        if len(dims) != 1:
            raise InputError(f"index parts disagree on dimension: {sorted(dims)}")
        self.parts, self.d = list(parts), dims.pop()
        self.spec = "multi:" + "|".join(p.spec for p in self.parts)
        self.info: dict = {"parts": [p.spec for p in self.parts]}
        self.saved_files: dict = {}  # never saved; each part has its own

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([p.ntotal for p in self.parts])]).astype(np.int64)

    @property
    def ntotal(self) -> int:
        return int(self.offsets[-1])

    @property
    def is_trained(self) -> bool:
        return all(p.is_trained for p in self.parts)

    def train(self, xb) -> None:
        raise ValueError("a MultiIndex is not trained as a whole: train each part on its own rows")

    @property
    def search_params(self) -> dict:
        return {}

    def set_search_params(self, **params) -> None:
        if params:
            raise InputError(f"a MultiIndex has no search parameters of its own (got {sorted(params)}); "
                             f"set them on its parts")

    def add(self, xb) -> None:
        """New vectors go to the last part (the ids stay consecutive)."""
        self.parts[-1].add(xb)

    def search(self, xq, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq, k = as_vectors(xq, self.d, "xq"), check_k(k)
        results = []
        for part, offset in zip(self.parts, self.offsets):
            D, I = part.search(xq, k)
            results.append((D, np.where(I >= 0, I + offset, -1)))
        return merge_topk(results, k)

    def reconstruct(self, ids) -> np.ndarray:
        ids = check_ids(ids, self.ntotal)
        out = np.empty((len(ids), self.d), dtype=np.float32)
        for p, pos, local in by_part(ids, self.offsets):
            out[pos] = self.parts[p].reconstruct(local)
        return out

    def save(self, path) -> None:
        raise NotImplementedError("save each part on its own; a MultiIndex is assembled at load time")

    @classmethod
    def load(cls, path, *, vectors=None, mmap: bool = False) -> "MultiIndex":
        raise NotImplementedError("load each part on its own and pass them to MultiIndex(parts)")


def exact_search(shards: Sequence, xq, k: int, rows_per_block: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top k of ``xq`` over key shards (arrays or memory maps, any float
    dtype), reading ``rows_per_block`` rows at a time: the reference that approximate indexes
    are tuned and measured against, in bounded RAM for any memory size."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    k = check_k(k)
    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    offset = 0
    for shard in shards:
        for r0 in range(0, len(shard), rows_per_block):
            block = np.ascontiguousarray(shard[r0:r0 + rows_per_block], dtype=np.float32)
            D, I = faiss.knn(xq, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(D, np.where(I >= 0, I + offset + r0, -1))
        offset += len(shard)
    heap.finalize()
    D, I = heap.D, heap.I
    D[I < 0] = -np.inf
    return D.astype(np.float32), I.astype(np.int64)
