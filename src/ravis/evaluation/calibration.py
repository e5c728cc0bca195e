"""Whether a confidence means what it says: temperature scaling chosen on validation data
(Guo et al. 2017), the expected calibration error (ECE, equal-width bins) and the negative
log-likelihood, and the reliability diagram's bins.

A method's probabilities are ``softmax(logits / T)``. Its logits are the adjusted logits it
ranks classes by (a trained model's, with the post-hoc adjustment), or for the kNN vote
``log(eps + share of the vote)``, the form the label evidence adds to MAM's logits
(:class:`ravis.fusion.RetrievalClassifier`): a vote's raw sums of ``exp(similarity / T)`` are
no probabilities, and a class without a vote gets ``eps``, not zero. ``T`` is the one value
that minimises the validation NLL; dividing by it never changes which class ranks first.
"""

from __future__ import annotations

import math

import numpy as np

BINS = 15  # equal-width confidence bins of the ECE and the reliability diagram
VOTE_EPS = 0.01  # as the label evidence's eps (RetrievalClassifier's label_eps)


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def vote_logits(scores: np.ndarray, eps: float = VOTE_EPS) -> np.ndarray:
    """(N, C) ``log(eps + share)`` of kNN vote scores (each row's share of its vote mass; a
    row with no vote is uniform)."""
    scores = np.asarray(scores, dtype=np.float64)
    share = scores / np.maximum(scores.sum(1, keepdims=True), np.finfo(np.float64).tiny)
    return np.log(eps + share)


def method_logits(name: str, logits: np.ndarray) -> np.ndarray:
    """The logits whose softmax is method ``name``'s probabilities, from what its test
    predictions store: the vote's scores become :func:`vote_logits`."""
    from ..methods import method

    return np.asarray(logits, dtype=np.float64) if method(name).trains else vote_logits(logits)


def nll(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
        label_noise: float = 0.0) -> float:
    """Mean negative log-likelihood of the given classes under ``softmax(logits)`` (weighted
    by ``weights`` summing to 1 where given). With ``label_noise`` eta, the labels are taken to
    be flipped at that rate to a uniformly drawn other class (:func:`ravis.data.noise.
    noisy_labels`): a label's probability is ``(1 - eta) p_y + eta (1 - p_y) / (C - 1)``, so a
    model fitted to noisy labels is calibrated for the clean ones."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(1, keepdims=True)
    log_p = x - (m + np.log(np.exp(x - m).sum(1, keepdims=True)))
    log_py = log_p[np.arange(len(labels)), labels]
    if label_noise:
        p_y = np.exp(log_py)
        log_py = np.log((1 - label_noise) * p_y + label_noise * (1 - p_y) / (x.shape[1] - 1))
    per = -log_py
    return float(per.mean() if weights is None else (weights * per).sum())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """Per equal-width confidence bin ((i/bins, (i+1)/bins]): the mean confidence, the
    accuracy and the count of the predictions whose top probability falls in it (None for
    an empty bin's means)."""
    conf, pred = probs.max(1), probs.argmax(1)
    which = _bin_of(conf, bins)
    count = np.bincount(which, minlength=bins)
    hits = np.bincount(which, weights=(pred == labels).astype(np.float64), minlength=bins)
    sums = np.bincount(which, weights=conf, minlength=bins)
    mean = lambda s: [float(v / n) if n else None for v, n in zip(s, count)]
    return {"confidence": mean(sums), "accuracy": mean(hits), "count": [int(n) for n in count]}


def _bin_of(conf: np.ndarray, bins: int) -> np.ndarray:
    """The equal-width bin ((i/bins, (i+1)/bins]) of each confidence."""
    return np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: sum over the bins of (bin's share of the predictions) x
    |its accuracy - its mean confidence|."""
    return _ece(reliability(probs, labels, bins))


def _ece(r: dict) -> float:
    """:func:`ece` from the bins :func:`reliability` made."""
    n = max(sum(r["count"]), 1)
    return float(sum(c / n * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"], r["confidence"]) if c))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                    label_noise: float = 0.0) -> float:
    """The T in [0.01, 100] minimising the (weighted) NLL of ``softmax(logits / T)``, with the
    labels' known flip rate ``label_noise`` (:func:`nll`): fitted to a noisy validation split
    as it is, T would make a model as unsure as its noisy labels, on a clean test set.

    The NLL is convex in 1 / T, so it has one minimum along log T, which a golden-section
    search finds to about 1e-4 relative in 60 steps."""
    if not len(labels):
        return 1.0
    x = np.asarray(logits, dtype=np.float64)
    x = np.where(np.isfinite(x), x, np.nanmin(np.where(np.isfinite(x), x, np.nan)) - 50.0)
    f = lambda log_t: nll(x / math.exp(log_t), labels, weights, label_noise)
    lo, hi = math.log(0.01), math.log(100.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(60):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return float(math.exp((lo + hi) / 2))


def fit_on(logits: np.ndarray, labels: np.ndarray, metric: str, label_noise: float = 0.0) -> float:
    """The temperature of a method from its validation ``logits`` and ``labels``: each image
    weighted as the selection ``metric`` weighs it (a long-tailed split stands for a balanced
    test set), and with labels flipped at the known rate ``label_noise`` taken as such. Noisy
    labels are not reweighted: in a long-tailed set a rare class's labels are mostly flips
    from the common classes (fmnist-lt/noisy), and weighing them by the noisy class counts made
    the temperature 1.6 and the clean test ECE 0.3."""
    from .metrics import sample_weights

    weights = None if label_noise else sample_weights(labels, metric)
    return fit_temperature(logits, labels, weights, label_noise)


def calibration_record(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """The results.json ``calibration`` entry of one method on the test split: ECE and NLL
    with and without its temperature, and the calibrated reliability bins."""
    labels, x = np.asarray(labels), np.asarray(logits, dtype=np.float64)
    calibrated = softmax(x / temperature)
    bins = reliability(calibrated, labels)
    return {"ece": _ece(bins), "nll": nll(x / temperature, labels),
            "ece_uncalibrated": ece(softmax(x), labels), "nll_uncalibrated": nll(x, labels),
            "temperature": float(temperature), "ece_floor": ece_floor(calibrated), "reliability": bins}


def ece_floor(probs: np.ndarray, draws: int = 100, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these confidences would still show on this
    many images: each prediction right with probability its confidence, averaged over
    ``draws``. On a small test set (Tux Paint's 163 images) the bins are so thin that this
    floor, not miscalibration, can dominate the measured ECE."""
    conf = probs.max(1)
    which = _bin_of(conf, BINS)
    sums = np.bincount(which, weights=conf, minlength=BINS)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        hits = np.bincount(which, weights=(rng.random(len(conf)) < conf).astype(np.float64), minlength=BINS)
        out.append(np.abs(hits - sums).sum() / max(len(conf), 1))
    return float(np.mean(out))


def pool(records: list[dict]) -> dict:
    """One calibration entry from several seeds': each number's mean, the bins pooled."""
    out = {k: float(np.mean([r[k] for r in records])) for k in records[0] if k != "reliability"}
    count = np.sum([r["reliability"]["count"] for r in records], axis=0)

    def pooled(key):
        total = np.sum([np.nan_to_num(np.array(r["reliability"][key], dtype=np.float64)) * r["reliability"]["count"]
                        for r in records], axis=0)
        return [float(t / n) if n else None for t, n in zip(total, count)]

    out["reliability"] = {"confidence": pooled("confidence"), "accuracy": pooled("accuracy"),
                          "count": [int(n) for n in count]}
    return out


__all__ = ["BINS", "calibration_record", "ece", "ece_floor", "fit_on", "fit_temperature", "method_logits", "nll", "pool", "reliability", "softmax",
           "vote_logits"]
