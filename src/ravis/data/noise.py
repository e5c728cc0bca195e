"""Noisy training labels, the paper's WebVision setting at toy scale: a fixed fraction of the
training labels replaced by a wrong class drawn uniformly from the others."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError
from ..io import stable_hash
from .dataset import ImageDataset


def noisy_labels(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """A copy of ``labels`` with round(rate * N) of them, chosen with ``seed``, replaced by
    another class (uniform over the other num_classes - 1; never the true one)."""
    if not 0 <= rate <= 1:
        raise InputError(f"label noise rate must be in [0, 1], got {rate}")
    if num_classes < 2 and rate > 0:
        raise InputError("label noise needs at least two classes")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    flip = rng.choice(len(labels), round(rate * len(labels)), replace=False)
    out = labels.copy()
    out[flip] = (labels[flip] + rng.integers(1, num_classes, len(flip))) % num_classes
    return out


def with_label_noise(dataset: ImageDataset, rate: float, seed: int) -> ImageDataset:
    """``dataset`` with noisy labels (and a fingerprint that says so, so no cache mixes the
    two); images, ids and captions are unchanged."""
    labels = noisy_labels(dataset.labels, rate, dataset.num_classes, seed)
    return dataclasses.replace(dataset, labels=labels,
                               fingerprint=stable_hash(dataset.fingerprint, "label-noise", rate, seed))
