"""How tuned values are chosen, never on the test split: the validation split, the score it
is judged by, and the choice among a grid's values."""

from __future__ import annotations

import numpy as np

from .prepare import test_like_training


def validation_split(labels: np.ndarray, fraction: float, seed: int, min_class: int = 5) -> np.ndarray:
    """Boolean mask of a stratified validation subset: ``fraction`` of each class, at least
    one image; a class with fewer than ``min_class`` images keeps them all for training."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) >= min_class:
            n = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
            mask[rng.choice(rows, n, replace=False)] = True
    return mask


def selection_metric(exp) -> str:
    """The validation score of experiment ``exp`` (``train.select_on``; see
    :func:`ravis.evaluation.metrics.selection_score`). "auto" reads how the test split was
    made, never its labels: a stratified split of one collection (Tux Paint, an ImageFolder)
    without long-tail subsampling is as skewed as the training set, so top-1 on a validation
    split drawn like it estimates test top-1; otherwise the test set is balanced (Fashion-MNIST,
    ImageNet-LT and the other LT benchmarks) and balanced accuracy estimates it."""
    if exp.train.select_on != "auto":
        return exp.train.select_on
    return "top1" if test_like_training(exp.data) else "balanced"


def choose_on_validation(grid, score) -> float:
    """The grid value with the best validation ``score``; among equal best scores, their
    median (a small validation split often ties neighbouring values)."""
    scores = {float(v): score(float(v)) for v in grid}
    best = max(scores.values())
    tied = sorted(v for v, sc in scores.items() if sc == best)
    return tied[(len(tied) - 1) // 2]


__all__ = ["choose_on_validation", "selection_metric", "validation_split"]
