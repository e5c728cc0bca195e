"""The k-NN index interface shared by every backend, and the helpers backends share.

Every backend scores by inner product. Callers store and query L2-normalised vectors, so
that a score is the cosine similarity, as in the paper's retrieval step.

On disk an index is a folder: ``index.json`` (spec, d, ntotal) beside the backend's arrays
(``.npy`` with ``allow_pickle=False``). The JSON is written last, so a folder without it is
an unfinished save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ravis.io import load_json, save_json

META_NAME = "index.json"


@runtime_checkable
class Index(Protocol):
    """A store of nb vectors of dimension d, searched by inner product.

    Backends are built by :func:`ravis.index.create_index` from a factory string and
    reloaded by :func:`ravis.index.load_index`; ``spec`` is the string that built them.
    """

    spec: str
    d: int

    @property
    def ntotal(self) -> int:
        """Number of stored vectors nb."""
        ...

    def add(self, xb: np.ndarray) -> None:
        """Appends xb (nb, d); the new vectors get the next ids."""
        ...

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best vectors for each query.

        Args:
            xq: (nq, d) queries.
            k: neighbours per query.

        Returns:
            D (nq, k) float32 scores, best first, and I (nq, k) int64 ids. Where fewer than
            k vectors exist, I is -1 and D is -inf.
        """
        ...

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors (len(ids), d) for ids. Exact backends return them bit for bit;
        compressed ones (a later PQ backend) return their approximation."""
        ...

    def save(self, path: Path | str) -> None:
        """Writes the index into the folder ``path``."""
        ...

    @classmethod
    def load(cls, path: Path | str) -> "Index":
        """Reads an index written by :meth:`save`."""
        ...


def as_vectors(x, d: int, name: str = "x") -> np.ndarray:
    """x as a C-contiguous float32 (n, d) array, without a copy when it already is one."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{name}: expected shape (n, {d}), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_ids(ids, ntotal: int) -> np.ndarray:
    """ids as int64, refusing any outside [0, ntotal)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= ntotal):
        raise IndexError(f"ids out of range [0, {ntotal})")
    return ids


def no_results(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What searching an empty index returns: -inf scores and -1 ids, (nq, k)."""
    return pad_results(np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), k)


def pad_results(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widens (nq, k') results to k columns with -inf / -1 (the index had k' < k vectors)."""
    nq, kk = I.shape
    if kk == k:
        return D, I
    Dp = np.full((nq, k), -np.inf, dtype=np.float32)
    Ip = np.full((nq, k), -1, dtype=np.int64)
    Dp[:, :kk], Ip[:, :kk] = D, I
    return Dp, Ip


def write_meta(path: Path | str, spec: str, d: int, ntotal: int, **extra) -> None:
    save_json(Path(path) / META_NAME, {"spec": spec, "d": d, "ntotal": ntotal, **extra})


def read_meta(path: Path | str) -> dict:
    """The JSON sidecar of a saved index, with a clear error when it is missing or malformed."""
    meta_path = Path(path) / META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no saved index here (missing {META_NAME})")
    meta = load_json(meta_path)
    missing = {"spec", "d", "ntotal"} - set(meta) if isinstance(meta, dict) else {"spec", "d", "ntotal"}
    if missing:
        raise ValueError(f"{meta_path}: missing fields {sorted(missing)}")
    return meta


def check_loaded(path: Path | str, meta: dict, xb: np.ndarray) -> None:
    """The stored array must match its sidecar (a save interrupted between files would not)."""
    if xb.ndim != 2 or xb.shape != (meta["ntotal"], meta["d"]) or xb.dtype != np.float32:
        raise ValueError(
            f"{path}: vectors {xb.dtype}{xb.shape} do not match {META_NAME} "
            f"(ntotal={meta['ntotal']}, d={meta['d']}, float32)"
        )
