"""Temperature scaling, ECE and NLL against direct computations and a planted miscalibration."""

import json

import numpy as np
import pytest

from ravis.evaluation.calibration import (calibration_record, ece, fit_temperature, nll, pool, reliability,
                                          softmax, vote_logits)


def _planted(n=20000, c=10, true_t=3.0, seed=0):
    """Labels drawn from softmax(x / true_t): logits x are over-confident by a factor true_t."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c)) * 4.0
    p = softmax(x / true_t)
    labels = np.array([rng.choice(c, p=row) for row in p])
    return x, labels


def test_a_planted_over_confident_model_gets_its_temperature_back():
    x, labels = _planted()
    t = fit_temperature(x, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    before, after = calibration_record(x, labels, 1.0), calibration_record(x, labels, t)
    assert after["ece"] < 0.02 < before["ece"]
    assert after["nll"] < before["nll"]
    assert (softmax(x / t).argmax(1) == x.argmax(1)).all()  # top-1 unchanged


def test_ece_equals_a_direct_computation():
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(size=(500, 4)) * 2)
    labels = rng.integers(0, 4, 500)
    conf, pred = probs.max(1), probs.argmax(1)
    direct = 0.0
    for i in range(15):  # bins (i/15, (i+1)/15]
        in_bin = (conf > i / 15) & (conf <= (i + 1) / 15)
        if in_bin.any():
            direct += in_bin.mean() * abs((pred[in_bin] == labels[in_bin]).mean() - conf[in_bin].mean())
    assert ece(probs, labels) == pytest.approx(direct, abs=1e-12)
    r = reliability(probs, labels)
    assert sum(r["count"]) == 500 and len(r["count"]) == 15


def test_nll_and_weights():
    x = np.array([[2.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 0])
    direct = -np.log(softmax(x)[[0, 1], [0, 0]])
    assert nll(x, labels) == pytest.approx(direct.mean())
    assert nll(x, labels, np.array([1.0, 0.0])) == pytest.approx(direct[0])


def test_vote_logits_give_eps_to_unvoted_classes_and_pool_averages_seeds():
    v = vote_logits(np.array([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert np.allclose(np.exp(v[0]), [0.76, 0.26, 0.01]) and np.allclose(v[1], np.log(0.01))  # no vote: uniform
    x, labels = _planted(n=2000)
    a, b = calibration_record(x[:1000], labels[:1000], 2.0), calibration_record(x[1000:], labels[1000:], 3.0)
    pooled = pool([a, b])
    assert pooled["temperature"] == 2.5 and sum(pooled["reliability"]["count"]) == 2000
    json.dumps(pooled)  # results.json takes it as it is


def test_noisy_labels_calibrate_for_the_clean_ones():
    """Labels flipped at a known rate (as data.label_noise flips them): fitted with that rate,
    the temperature is the clean labels' one; fitted as if clean, the model comes out unsure."""
    from ravis.data.noise import noisy_labels

    x, clean = _planted(true_t=1.5)
    noisy = noisy_labels(clean, 0.4, 10, seed=0)
    assert fit_temperature(x, noisy, label_noise=0.4) == pytest.approx(fit_temperature(x, clean), rel=0.08)
    assert fit_temperature(x, noisy) > 2 * fit_temperature(x, clean)


def test_the_ece_floor_of_a_calibrated_model_matches_its_measured_ece():
    x, labels = _planted(n=300, true_t=1.0)
    record = calibration_record(x, labels, 1.0)
    assert 0.02 < record["ece_floor"] < 0.12
    assert record["ece"] < 3 * record["ece_floor"]
