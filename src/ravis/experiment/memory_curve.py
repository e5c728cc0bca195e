"""Accuracy versus memory size: the trained models and the vote retrieving, at test time, from
random fractions of their memory (``retrieval.memory_curve``).

The paper draws accuracy against memory size by training with each memory. Here one
training serves every size: the test queries search nested random subsets of the memory
(each holds the smaller ones; seeded), the same exact search, k and near-duplicate exclusion
as the full memory, and each model reads what it retrieves there. The curve shows how much
of the accuracy the memory's size carries for a model trained with the whole of it; it is
not the curve of models trained with the smaller memories.
"""

from __future__ import annotations

import numpy as np

from ..fusion import knn_vote
from ..index import create_index
from ..memory.base import neighbor_labels
from ..retrieval.neighbors import search_neighbors
from ..training.data import MemoryTensors, QuerySet
from ..training.trainer import predict

SEED = 0


def sizes(prep) -> list[int]:
    """The memory sizes of the curve (the fractions of ``retrieval.memory_curve``), ascending."""
    m, k = len(prep.memory), prep.test_I.shape[1]
    return sorted({max(k + 1, round(f * m)) for f in prep.config.retrieval.memory_curve if f * m < m})


def subset_neighbors(prep, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, I) of the test queries over the first ``size`` rows of a seeded permutation of the
    memory (I: memory rows), cached on ``prep`` for every method."""
    cache = prep.rows_cache.setdefault("memory_curve", {})
    if size not in cache:
        order = np.random.default_rng(SEED).permutation(len(prep.memory))
        rows = np.sort(order[:size])
        index = create_index("exact", prep.memory.dim)
        index.add(prep.memory.keys_at(rows).astype(np.float32))
        r = prep.config.retrieval
        D, I = search_neighbors(index, prep.test.z, prep.test_I.shape[1],
                                max_similarity=r.duplicate_threshold if r.exclude_duplicates else None)
        cache[size] = (D, np.where(I >= 0, rows[np.where(I >= 0, I, 0)], -1))
    return cache[size]


def model_curve(model, prep, adjust: np.ndarray, reads_labels: bool, full_top1: float) -> dict[int, float]:
    """{memory size: test top-1} of a trained model (``adjust``: its post-hoc adjustment)."""
    labels = prep.test.dataset.labels
    out = {}
    for size in sizes(prep):
        _, I = subset_neighbors(prep, size)
        tensors, (local,) = MemoryTensors.gather(prep.memory, I)
        nl = neighbor_labels(prep.memory, I) if reads_labels else None
        logits = predict(model, QuerySet.from_numpy(prep.test.z, local, labels, None, nl), tensors)[0]
        out[size] = float(((logits - adjust).argmax(1) == labels).mean())
    out[len(prep.memory)] = full_top1
    return out


def vote_curve(prep, k: int, full_top1: float) -> dict[int, float]:
    """{memory size: test top-1} of the kNN vote at ``k``."""
    labels = prep.test.dataset.labels
    out = {}
    for size in sizes(prep):
        D, I = subset_neighbors(prep, size)
        scores = knn_vote(D, neighbor_labels(prep.memory, I), prep.num_classes, k,
                          prep.config.retrieval.vote_temperature)
        out[size] = float((scores.argmax(1) == labels).mean())
    out[len(prep.memory)] = full_top1
    return out
