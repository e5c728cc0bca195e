"""Top-1 accuracy overall, per class, and for many- / mid- / few-shot classes."""

from __future__ import annotations

import numpy as np

from ..data.longtail import shot_buckets
from ..errors import InputError


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


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present of per-class accuracy (mean per-class recall)."""
    classes = np.unique(labels)
    if not len(classes):
        return 0.0
    return float(np.mean([(pred[labels == c] == c).mean() for c in classes]))


def selection_score(pred: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """The validation score that picks epochs, tau and k: "balanced" accuracy where the test
    set is balanced while the training set is not, "top1" where the test set is drawn like
    the training set (a stratified split of one collection)."""
    if metric == "top1":
        return float((pred == labels).mean()) if len(labels) else 0.0
    if metric == "balanced":
        return balanced_accuracy(pred, labels)
    raise InputError(f"unknown selection metric {metric!r}; expected 'balanced' or 'top1'")


def sample_weights(labels: np.ndarray, metric: str) -> np.ndarray:
    """(N,) weights w with ``selection_score = sum_i w_i [pred_i == label_i]``."""
    labels = np.asarray(labels)
    if metric == "top1":
        return np.full(len(labels), 1.0 / max(len(labels), 1))
    if metric == "balanced":
        counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
        present = int((counts > 0).sum())
        return 1.0 / (present * counts[labels]) if len(labels) else np.zeros(0)
    raise InputError(f"unknown selection metric {metric!r}; expected 'balanced' or 'top1'")


def paired_gain(pred: np.ndarray, reference: np.ndarray, labels: np.ndarray, metric: str) -> tuple[float, float]:
    """(gain, standard error): how much ``pred`` scores above ``reference`` on the same
    images, and the standard error of that difference (McNemar's: only the images on which
    the two disagree in correctness count, each with its weight in the score)."""
    w = sample_weights(labels, metric)
    d = w * ((pred == labels).astype(float) - (reference == labels).astype(float))
    return float(d.sum()), float(np.sqrt(np.square(d).sum()))


def prediction_metrics(pred: np.ndarray, labels: np.ndarray, train_counts) -> tuple[dict, list]:
    """(top1, many / mid / few and balanced accuracy; per-class accuracy as a JSON list with
    None for absent classes)."""
    counts = np.asarray(train_counts)
    per_class = per_class_accuracy(pred, labels, len(counts))
    metrics = shot_accuracy(pred, labels, counts)
    metrics["balanced"] = balanced_accuracy(pred, labels) if len(labels) else None
    return metrics, [None if np.isnan(v) else float(v) for v in per_class]
