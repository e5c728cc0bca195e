"""Top-1 accuracy overall, per class, and for many- / mid- / few-shot classes."""

from __future__ import annotations

import numpy as np

from ..data.longtail import shot_buckets


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) accuracy of each class; NaN for a class with no test image."""
    hits = np.bincount(labels, weights=(pred == labels).astype(float), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hits / np.maximum(total, 1), np.nan)


def shot_accuracy(pred: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict:
    """{"top1", "many", "mid", "few"}: top-1 over all test images and over the test images of
    each bucket of classes (by training count: many > 100, mid 20-100, few < 20). A bucket
    with no test image is None."""
    buckets = shot_buckets(np.asarray(train_counts))  # (C,) "many" | "mid" | "few"
    correct = pred == labels
    out = {"top1": float(correct.mean()) if len(labels) else None}
    for name in ("many", "mid", "few"):
        mask = buckets[labels] == name
        out[name] = float(correct[mask].mean()) if mask.any() else None
    return out


def prediction_metrics(pred: np.ndarray, labels: np.ndarray, train_counts) -> tuple[dict, list]:
    """(shot_accuracy, per-class accuracy as a JSON list with None for absent classes)."""
    counts = np.asarray(train_counts)
    per_class = per_class_accuracy(pred, labels, len(counts))
    return (shot_accuracy(pred, labels, counts),
            [None if np.isnan(v) else float(v) for v in per_class])
