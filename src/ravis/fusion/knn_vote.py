"""Non-parametric weighted k-NN vote over memory labels (Wu et al. 2018, as used by DINO):
each of the k nearest labelled neighbours votes for its label with weight exp(similarity / T).

Neighbours without a label in the class set (a web caption, an emoji) are passed over, not
counted among the k: they carry no class evidence, so adding an unlabelled collection to a
memory leaves the vote as it was wherever the k labelled neighbours are still retrieved."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def knn_vote(D: np.ndarray, labels: np.ndarray, num_classes: int, k: int,
             temperature: float = 0.07) -> np.ndarray:
    """Class scores from the k nearest neighbours.

    Args:
        D: (nq, K) similarities of each query's neighbours, best first, K >= k.
        labels: (nq, K) memory labels of those neighbours; -1 for a neighbour without a label.
        num_classes: C.
        k: how many of the nearest labelled neighbours vote.
        temperature: T of the vote weights.

    Returns:
        (nq, C) vote scores.
    """
    if k > D.shape[1]:
        raise InputError(f"k={k} exceeds the {D.shape[1]} precomputed neighbours")
    votes = voting(labels, k)  # (nq, K)
    w = np.where(votes, np.exp(D.astype(np.float64) / temperature), 0.0)
    scores = np.zeros((D.shape[0], num_classes))
    rows = np.repeat(np.arange(D.shape[0]), D.shape[1])
    np.add.at(scores, (rows, np.clip(labels, 0, None).ravel()), w.ravel())
    return scores


def voting(labels: np.ndarray, k: int) -> np.ndarray:
    """(nq, K) bool: which neighbours vote, the first k with a label (>= 0) in each row."""
    labelled = labels >= 0
    return labelled & (np.cumsum(labelled, axis=1) <= k)
