"""The metrics against plain re-implementations of their definitions: top-1 over all and over
many / mid / few classes (by training count), balanced accuracy, per-class accuracy, the
selection score and the paired gain with its standard error."""

import math

import numpy as np
import pytest

from ravis.evaluation.metrics import (balanced_accuracy, paired_gain, prediction_metrics,
                                      sample_weights, selection_score)


def test_balanced_accuracy():
    assert balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0 + 1])) == 1.0
    assert balanced_accuracy(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1])) == 0.5
    assert math.isclose(balanced_accuracy(np.array([1, 0, 2]), np.array([0, 0, 2])), 0.75)


def _reference(pred, labels, counts):
    """The definitions, one class and one image at a time."""
    bucket = ["many" if c > 100 else "mid" if c >= 20 else "few" for c in counts]
    out = {"top1": sum(p == y for p, y in zip(pred, labels)) / len(labels)}
    for name in ("many", "mid", "few"):
        hits = [p == y for p, y in zip(pred, labels) if bucket[y] == name]
        out[name] = sum(hits) / len(hits) if hits else None
    per_class = []
    for c in range(len(counts)):
        hits = [p == y for p, y in zip(pred, labels) if y == c]
        per_class.append(sum(hits) / len(hits) if hits else None)
    present = [a for a in per_class if a is not None]
    out["balanced"] = sum(present) / len(present)
    return out, per_class


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prediction_metrics_match_their_definitions(seed):
    rng = np.random.default_rng(seed)
    counts = np.array([500, 150, 101, 100, 40, 20, 19, 3, 1])  # bucket edges on both sides
    labels = rng.integers(0, len(counts) - 1, 300)  # the last class has no test image
    pred = np.where(rng.random(300) < 0.6, labels, rng.integers(0, len(counts), 300))
    metrics, per_class = prediction_metrics(pred, labels, counts)
    expected, expected_per_class = _reference(pred.tolist(), labels.tolist(), counts.tolist())
    assert metrics.keys() == expected.keys()
    for k, v in expected.items():
        assert metrics[k] == pytest.approx(v), k
    assert per_class[-1] is None
    assert per_class == pytest.approx(expected_per_class)


def test_selection_score_is_the_weighted_hit_count():
    rng = np.random.default_rng(3)
    labels, pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    for metric in ("top1", "balanced"):
        w = sample_weights(labels, metric)
        assert selection_score(pred, labels, metric) == pytest.approx(float((w * (pred == labels)).sum()))
    assert selection_score(pred, labels, "balanced") == pytest.approx(balanced_accuracy(pred, labels))
    with pytest.raises(ValueError, match="unknown selection metric"):
        selection_score(pred, labels, "f1")


def test_paired_gain_counts_only_the_disagreements():
    labels = np.array([0, 0, 1, 1, 2, 2])
    reference = np.array([0, 1, 1, 0, 2, 0])  # right on 0, 2, 4
    better = np.array([0, 0, 1, 0, 2, 0])  # right on 0, 1, 2, 4: one more, none lost
    gain, se = paired_gain(better, reference, labels, "top1")
    assert gain == pytest.approx(1 / 6) and se == pytest.approx(1 / 6)
    assert paired_gain(reference, reference, labels, "top1") == (0.0, 0.0)
    gain, se = paired_gain(reference, better, labels, "top1")
    assert gain == pytest.approx(-1 / 6) and se == pytest.approx(1 / 6)
