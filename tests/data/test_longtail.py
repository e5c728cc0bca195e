"""The exponential long-tail profile and the many/mid/few buckets."""

import numpy as np
import pytest

from ravis.data import BUCKETS, longtail_indices, shot_buckets

FMNIST_LT = [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]


def _balanced(n_per_class=6000, classes=10):
    return np.tile(np.arange(classes), n_per_class)  # interleaved, like a shuffled dataset


def test_fashion_mnist_profile():
    labels = _balanced()
    idx = longtail_indices(labels)
    assert np.bincount(labels[idx], minlength=10).tolist() == FMNIST_LT
    assert len(idx) == sum(FMNIST_LT) == 2478
    assert (np.diff(idx) > 0).all() and idx.dtype == np.int64  # sorted, no repeats


def test_deterministic_by_seed():
    labels = _balanced()
    a, b = longtail_indices(labels, seed=3), longtail_indices(labels, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, longtail_indices(labels, seed=4))


def test_class_order_and_caps():
    labels = _balanced(n_per_class=500, classes=3)
    order = [2, 0, 1]
    idx = longtail_indices(labels, imbalance_ratio=10, max_per_class=400, class_order=order)
    counts = np.bincount(labels[idx], minlength=3)
    assert counts[2] == 400 and counts[0] == int(400 * 10 ** -0.5) and counts[1] == 40
    capped = longtail_indices(labels, imbalance_ratio=10, max_per_class=1000)
    assert np.bincount(labels[capped]).tolist() == [500, 316, 100]  # head capped at 500
    with pytest.raises(ValueError, match="leaves out"):
        longtail_indices(labels, class_order=[0, 1])


def test_shot_buckets_boundaries():
    assert BUCKETS == ("many", "mid", "few")
    got = shot_buckets([101, 100, 20, 19, 0, 5000])
    assert got.tolist() == ["many", "mid", "mid", "few", "few", "many"]
    assert shot_buckets(np.array(FMNIST_LT)).tolist() == \
        ["many"] * 5 + ["mid"] * 3 + ["few"] * 2
