"""Precomputed k nearest neighbours of a query set, with self-exclusion, and their cache.

When the queries are themselves in the memory (training images retrieving from the training
set), each query would find itself, and any exact copy of itself, at the top; the model would
then learn to read its own label off the memory. Those entries are removed:

- its own entry: the memory row whose id equals the query's id (``self_rows``, found by the
  memory's ``rows_of``, so no list of the memory's ids is ever held);
- its exact duplicates: memory rows whose vector is byte-equal to the query vector;
- with ``max_similarity``, for any query set (test images too), every memory row at or above
  that cosine similarity: near-duplicates of the query, such as a benchmark's test image
  crawled into a web memory, which would hand it its own label.

The search asks the index for k + margin neighbours, drops the excluded ones (vectorised),
and re-searches, with a doubled window, only the rows left with fewer than k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ravis.cache import entry_lock, is_sealed, seal
from ravis.index.base import Index, as_vectors, check_k, pad_results
from ravis.io import load_npy, save_npy, stable_hash
from ravis.errors import InputError

#: A candidate is compared byte for byte when its score is within this relative distance of
#: the query's squared norm (its self-similarity). The score only preselects; byte equality
#: decides, so a loose bound never changes the result (float32 GEMM rounding at d=1280 can
#: exceed 1e-6, so a tight one could miss a duplicate).
DUP_RTOL = 1e-4

#: Bumped when the cached arrays would change for the same inputs.
CACHE_VERSION = 3


def search_neighbors(
    index: Index,
    xq,
    k: int,
    *,
    self_rows=None,
    exclude_duplicates: bool = True,
    max_similarity: float | None = None,
    margin: int = 16,
    block: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest memory entries of each query, excluding the query itself.

    Args:
        index: the memory's index.
        xq: (nq, d) query vectors.
        k: neighbours per query.
        self_rows: (nq,) the memory row of each query's own entry, -1 where it has none
            (:func:`self_rows_from_ids`, or a memory's ``rows_of``); None searches without
            any exclusion.
        exclude_duplicates: with self_rows, also drop memory rows byte-equal to the query.
        max_similarity: drop memory rows whose score is at or above it (near-duplicates).
        margin: extra neighbours searched up front, so that re-searches are rare.
        block: queries per index search, to bound the memory of the (block, k + margin) lists.

    Returns:
        D (nq, k) float32 scores, best first, and I (nq, k) int64 memory rows; -inf / -1 where
        fewer than k entries remain.
    """
    xq, k = as_vectors(xq, index.d, "xq"), check_k(k)
    own = _check_self_rows(self_rows, len(xq), index.ntotal)
    out = [
        _search_block(index, xq[q0 : q0 + block], k, None if own is None else own[q0 : q0 + block],
                      exclude_duplicates, max_similarity, margin)
        for q0 in range(0, len(xq), block)
    ]
    if not out:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([D for D, _ in out]), np.concatenate([I for _, I in out])


def _search_block(index, xq, k, own, exclude_duplicates, max_similarity, margin):
    nq, nb = len(xq), index.ntotal
    if (own is None and max_similarity is None) or nb == 0:
        return index.search(xq, k)
    if own is None:  # only the similarity bound excludes
        own, exclude_duplicates = np.full(nq, -1, np.int64), False
    D = np.full((nq, k), -np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    rows, window = np.arange(nq), k + max(0, margin)
    while rows.size:  # rows still short of k neighbours; the first pass has them all
        window = min(window, nb)
        Dr, Ir = index.search(xq[rows], window)  # (n, window)
        keep = _keep_mask(index, xq[rows], Dr, Ir, own[rows], exclude_duplicates)
        if max_similarity is not None:
            keep &= Dr < max_similarity
        Dk, Ik, n_kept = _compact(Dr, Ir, keep, k)
        done = (n_kept >= k) | (window >= nb)  # a full-width search has nothing more to give
        D[rows[done]], I[rows[done]] = Dk[done], Ik[done]
        rows, window = rows[~done], 2 * window
    return D, I


def _keep_mask(index, xq, D, I, own, exclude_duplicates) -> np.ndarray:
    """(n, window) True where a neighbour survives the exclusions."""
    keep = I >= 0
    keep &= I != own[:, None]  # the query's own memory entry
    if exclude_duplicates:
        self_sim = np.einsum("nd,nd->n", xq, xq)  # (n,) the score a byte-equal copy gets
        r, c = np.nonzero(keep & (D >= (self_sim - DUP_RTOL * np.abs(self_sim))[:, None]))
        if r.size:
            xb = index.reconstruct(I[r, c])  # (m, d): only near-exact matches, few
            same = (xb.view(np.uint32) == xq[r].view(np.uint32)).all(axis=1)
            keep[r[same], c[same]] = False
    return keep


def _compact(D, I, keep, k):
    """The first k kept entries of each row, in their score order, and the count kept."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept columns first, order kept
    Dk = np.take_along_axis(D, order, axis=1)
    Ik = np.take_along_axis(I, order, axis=1)
    n_kept = keep.sum(axis=1)
    short = np.arange(order.shape[1])[None, :] >= n_kept[:, None]
    Dk[short], Ik[short] = -np.inf, -1
    Dk, Ik = pad_results(Dk, Ik, k)
    return Dk, Ik, n_kept


def self_rows_from_ids(query_ids, memory_ids) -> np.ndarray:
    """(nq,) row of each query id among ``memory_ids`` (ints or strings, unique), -1 if absent."""
    q, m = np.asarray(query_ids), np.asarray(memory_ids)
    if q.ndim != 1 or m.ndim != 1:
        raise InputError(f"query_ids {q.shape} and memory_ids {m.shape} must be 1-d")
    if (q.dtype.kind in "iu") != (m.dtype.kind in "iu") or not {q.dtype.kind, m.dtype.kind} <= set("iuUSO"):
        raise TypeError(f"query_ids ({q.dtype}) and memory_ids ({m.dtype}) must both be ints or both strings")
    row_of = {item: r for r, item in enumerate(m.tolist())}
    return np.array([row_of.get(item, -1) for item in q.tolist()], dtype=np.int64)


def _check_self_rows(self_rows, nq: int, nb: int) -> np.ndarray | None:
    if self_rows is None:
        return None
    own = np.asarray(self_rows, dtype=np.int64)
    if own.shape != (nq,) or (own.size and (own.min() < -1 or own.max() >= nb)):
        raise InputError(f"self_rows must be ({nq},) rows in [-1, {nb}), got {own.shape}")
    return own


def index_fingerprint(index: Index, rows: int = 65536) -> str:
    """A content hash of an index: its spec and every stored vector, read in row blocks."""
    parts = [stable_hash(index.reconstruct(np.arange(r0, min(r0 + rows, index.ntotal))), n=32)
             for r0 in range(0, index.ntotal, rows)]
    return stable_hash(index.spec, index.d, index.ntotal, parts, n=32)


def cached_neighbors(
    cache_dir: Path | str,
    index: Index,
    xq,
    k: int,
    *key_parts,
    memory_key: str | None = None,
    self_rows=None,
    exclude_duplicates: bool = True,
    max_similarity: float | None = None,
    **kw,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search_neighbors`, stored as ``D.npy`` and ``I.npy`` under a content key, each
    sealed with its sha256 (:mod:`ravis.cache`): a damaged file is searched again, not used.

    The key hashes the memory (``memory_key`` when the caller already has one, for instance a
    manifest hash, otherwise every stored vector), the queries, the self rows, k, the
    exclusion flag and ``key_parts``. ``margin`` and ``block`` (in ``kw``) do not change the
    result and are not in the key.

    Raises:
        ValueError: a cached file is unreadable or does not match the request; the message
            names the file (delete it to recompute).
    """
    xq, k = as_vectors(xq, index.d, "xq"), check_k(k)
    own = _check_self_rows(self_rows, len(xq), index.ntotal)
    key = stable_hash(
        CACHE_VERSION,
        memory_key if memory_key is not None else index_fingerprint(index),
        xq,
        "no-ids" if own is None else stable_hash(own, n=32),
        k,
        bool(exclude_duplicates) and own is not None,
        None if max_similarity is None else float(max_similarity),
        list(key_parts),
    )
    folder = Path(cache_dir) / f"knn-{key}"
    d_path, i_path = folder / "D.npy", folder / "I.npy"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(folder):  # a second run asking for the same entry waits, then reads it
        if is_sealed(d_path) and is_sealed(i_path):
            return _load_cached(d_path, i_path, len(xq), k, index.ntotal)
        D, I = search_neighbors(index, xq, k, self_rows=own, exclude_duplicates=exclude_duplicates,
                                max_similarity=max_similarity, **kw)
        for path, array in ((i_path, I), (d_path, D)):
            save_npy(path, array)
            seal(path)
    return D, I


def _load_cached(d_path: Path, i_path: Path, nq: int, k: int, nb: int):
    D, I = load_npy(d_path), load_npy(i_path)
    if D.shape != (nq, k) or D.dtype != np.float32:
        raise InputError(f"{d_path}: cached scores are {D.dtype}{D.shape}, expected float32({nq}, {k})")
    if I.shape != (nq, k) or I.dtype != np.int64:
        raise InputError(f"{i_path}: cached ids are {I.dtype}{I.shape}, expected int64({nq}, {k})")
    if I.size and (I.min() < -1 or I.max() >= nb):
        raise InputError(f"{i_path}: cached ids outside [-1, {nb})")
    return D, I
