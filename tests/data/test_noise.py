"""The label-noise injector: exact rate, seeded, never the true class, uniform over the others."""

import numpy as np
import pytest

from ravis.data.noise import noisy_labels


def test_rate_seed_and_never_the_true_class():
    labels = np.repeat(np.arange(10), 100)
    noisy = noisy_labels(labels, 0.4, 10, seed=3)
    changed = noisy != labels
    assert changed.sum() == 400  # exactly 40%, and a changed label is never the true one
    assert np.array_equal(noisy, noisy_labels(labels, 0.4, 10, seed=3))
    assert not np.array_equal(noisy, noisy_labels(labels, 0.4, 10, seed=4))
    assert ((noisy >= 0) & (noisy < 10)).all()
    assert np.array_equal(labels, np.repeat(np.arange(10), 100))  # the input is not touched


def test_wrong_classes_are_uniform():
    labels = np.zeros(20000, dtype=np.int64)
    noisy = noisy_labels(labels, 1.0, 5, seed=0)
    counts = np.bincount(noisy, minlength=5)
    assert counts[0] == 0
    assert np.allclose(counts[1:] / 20000, 0.25, atol=0.015)


def test_bad_rates():
    with pytest.raises(ValueError, match="rate"):
        noisy_labels(np.zeros(3, dtype=np.int64), 1.5, 3, seed=0)
    with pytest.raises(ValueError, match="two classes"):
        noisy_labels(np.zeros(3, dtype=np.int64), 0.5, 1, seed=0)
