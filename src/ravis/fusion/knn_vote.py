"""Non-parametric weighted k-NN vote over memory labels (Wu et al. 2018, as used by DINO):
each of the k nearest neighbours votes for its label with weight exp(similarity / T)."""

from __future__ import annotations

import numpy as np


def knn_vote(D: np.ndarray, labels: np.ndarray, num_classes: int, k: int,
             temperature: float = 0.07) -> np.ndarray:
    """Class scores from the k nearest neighbours.

    Args:
        D: (nq, K) similarities of each query's neighbours, best first, K >= k.
        labels: (nq, K) memory labels of those neighbours; -1 for a neighbour without a label.
        num_classes: C.
        k: how many of the nearest neighbours vote.
        temperature: T of the vote weights.

    Returns:
        (nq, C) vote scores.
    """
    if k > D.shape[1]:
        raise ValueError(f"k={k} exceeds the {D.shape[1]} precomputed neighbours")
    w = np.exp(D[:, :k].astype(np.float64) / temperature)  # (nq, k)
    lab = labels[:, :k]
    w = np.where(lab >= 0, w, 0.0)
    scores = np.zeros((D.shape[0], num_classes))
    rows = np.repeat(np.arange(D.shape[0]), k)
    np.add.at(scores, (rows, np.clip(lab, 0, None).ravel()), w.ravel())
    return scores
