"""The index of an edited memory: the base memory's index with the added entries (searched
exactly) merged in, never returning a deleted row. It reads the edited memory through the
few members :class:`EditedRows` declares (:class:`ravis.memory.edited_view.EditedMemory` has
them), so the index layer does not depend on the memory layer."""

from __future__ import annotations

import threading
from typing import Protocol

import faiss
import numpy as np

from .base import as_vectors, check_ids, check_k, pad_results
from .multi import merge_topk


class EditedRows(Protocol):
    """What :class:`EditedIndex` reads of an edited memory."""

    lock: threading.RLock  # held across a search: an edit never lands half-way through one
    base_count: int  # rows of the base memory; added entries follow them

    def __len__(self) -> int: ...

    @property
    def deleted_count(self) -> int: ...

    def is_live(self, rows) -> np.ndarray:
        """(len(rows),) bool: not deleted."""
        ...

    def added_keys(self) -> np.ndarray:
        """(added, d) float32 keys of the entries edits added, in row order."""
        ...

    def keys_at(self, rows) -> np.ndarray: ...


class EditedIndex:
    """The base memory's index with the added entries (searched exactly) merged in, never
    returning a deleted row: the parts are asked for k + the deleted rows they could return,
    so that k live rows remain wherever the memory has k."""

    vectors = None

    def __init__(self, base_index, memory: EditedRows):
        self.base_index, self.memory = base_index, memory
        self.d = base_index.d
        self.spec = f"edited:{base_index.spec}"
        self.info: dict = {"base": base_index.spec}
        self.saved_files: dict = {}  # never saved: compaction writes a new memory and index

    @property
    def ntotal(self) -> int:
        return len(self.memory)

    @property
    def is_trained(self) -> bool:
        return True

    def train(self, xb) -> None:
        raise ValueError("an edited memory's index follows its edits; it is not trained")

    @property
    def search_params(self) -> dict:
        return self.base_index.search_params

    def set_search_params(self, **params) -> None:
        self.base_index.set_search_params(**params)

    def add(self, xb) -> None:
        raise ValueError("add entries to an edited memory with an edit, not to its index")

    def search(self, xq, k: int) -> tuple[np.ndarray, np.ndarray]:
        xq, k = as_vectors(xq, self.d, "xq"), check_k(k)
        with self.memory.lock:
            deleted = self.memory.deleted_count
            if not deleted:
                return self._search_parts(xq, k)
            margin = min(deleted, 16)
            D, I = self._live_first(*self._search_parts(xq, k + margin), k)
            short = np.flatnonzero((I < 0).any(axis=1))  # fewer than k live among k + margin
            if len(short) and k + margin < self.ntotal:
                D[short], I[short] = self._live_first(
                    *self._search_parts(xq[short], min(k + deleted, self.ntotal)), k)
            return D, I

    def _search_parts(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n_base = self.memory.base_count
        D, I = self.base_index.search(xq, min(k, n_base)) if n_base else (
            np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64))
        parts = [pad_results(D, I, k)]
        added = self.memory.added_keys()
        if len(added):
            Da, Ia = faiss.knn(xq, np.ascontiguousarray(added), min(k, len(added)),
                               metric=faiss.METRIC_INNER_PRODUCT)
            parts.append((Da.astype(np.float32), np.where(Ia >= 0, Ia + n_base, -1)))
        return merge_topk(parts, k)

    def _live_first(self, D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first k live results of each row (order kept), padded with -1 / -inf."""
        live = (I >= 0) & self.memory.is_live(np.where(I >= 0, I, 0).ravel()).reshape(I.shape)
        order = np.argsort(~live, axis=1, kind="stable")[:, :k]
        D, I = np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)
        keep = np.take_along_axis(live, order, axis=1)
        return np.where(keep, D, -np.inf).astype(np.float32), np.where(keep, I, -1)

    def reconstruct(self, ids) -> np.ndarray:
        ids = check_ids(ids, self.ntotal)
        return self.memory.keys_at(ids).astype(np.float32)

    def save(self, path) -> None:
        raise NotImplementedError("`ravis memory compact` writes an edited memory and its index")

    @classmethod
    def load(cls, path, *, vectors=None, mmap: bool = False):
        raise NotImplementedError("open the base index and wrap it with the memory's edits")
