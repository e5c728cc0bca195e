"""Making a balanced dataset long-tailed, and the many/mid/few-shot class buckets.

The exponential profile is the one of CIFAR-LT (Cui et al. 2019) and ImageNet-LT: class
rank r of C keeps ``max_per_class * imbalance_ratio ** (-r / (C - 1))`` items, so the head
class has ``imbalance_ratio`` times as many as the tail class.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

BUCKETS = ("many", "mid", "few")
MANY_ABOVE = 100  # "many-shot": more than 100 training images (Liu et al. 2019, OLTR)
FEW_BELOW = 20  # "few-shot": fewer than 20; "mid" is 20..100 inclusive


def longtail_counts(num_classes: int, imbalance_ratio: float = 100,
                    max_per_class: int = 1000) -> np.ndarray:
    """Items kept per rank 0..C-1 (before capping by what each class has)."""
    if imbalance_ratio < 1:
        raise InputError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    if max_per_class < 1:
        raise InputError(f"max_per_class must be >= 1, got {max_per_class}")
    if num_classes == 1:
        return np.array([max_per_class], dtype=np.int64)
    r = np.arange(num_classes)
    exact = max_per_class * float(imbalance_ratio) ** (-r / (num_classes - 1))
    # The tiny epsilon keeps a product like 9.999999999999998 (meant as 10) from truncating to 9.
    return np.floor(exact + 1e-9).astype(np.int64)


def longtail_indices(labels, imbalance_ratio: float = 100, max_per_class: int = 1000,
                     seed: int = 0, class_order=None) -> np.ndarray:
    """Indices of a long-tailed subset of a (roughly balanced) labelled set.

    Args:
        labels: (N,) integer class per item.
        imbalance_ratio: head count / tail count.
        max_per_class: items kept for the head class.
        seed: seeds the choice of which items each class keeps.
        class_order: class ids from head to tail; default class 0 is the head, then 1, ...

    Returns:
        Sorted int64 indices into ``labels``. For the 10 Fashion-MNIST classes with the
        defaults the class counts are [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10].
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    if class_order is None:
        class_order = np.arange(num_classes)
    class_order = np.asarray(class_order, dtype=np.int64)
    if len(np.unique(class_order)) != len(class_order):
        raise InputError("class_order repeats a class")
    unranked = np.setdiff1d(np.unique(labels), class_order)
    if len(unranked):
        raise InputError(f"class_order leaves out classes present in labels: {unranked.tolist()}")
    if len(class_order) == 0:
        return np.zeros(0, dtype=np.int64)
    counts = longtail_counts(len(class_order), imbalance_ratio, max_per_class)
    rank = np.empty(int(class_order.max()) + 1, dtype=np.int64)
    rank[class_order] = np.arange(len(class_order))
    rng = np.random.default_rng(seed)
    kept = []
    # One rng stream consumed in class-id order: the subset depends only on (labels, seed, order).
    for c in np.sort(class_order):
        idx = np.flatnonzero(labels == c)
        k = min(int(counts[rank[c]]), len(idx))
        kept.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(kept))


def shot_buckets(train_counts) -> np.ndarray:
    """The bucket of each class by its number of training images.

    "many" above 100, "mid" from 20 to 100 inclusive, "few" below 20: the convention of
    the long-tail literature, so many/mid/few accuracies are comparable with papers.
    """
    counts = np.asarray(train_counts)
    return np.where(counts > MANY_ABOVE, "many", np.where(counts >= FEW_BELOW, "mid", "few"))
