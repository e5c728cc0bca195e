"""The non-parametric kNN vote: its k chosen leave-one-out on the training queries, and its
test result."""

from __future__ import annotations

from ..evaluation.calibration import calibration_record, fit_on, vote_logits
from ..evaluation.metrics import prediction_metrics, selection_score
from ..fusion import knn_vote
from . import memory_curve
from .prepare import Prepared
from .results import MethodResult
from .selection import choose_on_validation, selection_metric


def _vote_ks(prep: Prepared) -> list[int]:
    """The k of ``retrieval.vote_ks`` that the precomputed neighbours allow."""
    return [int(k) for k in prep.config.retrieval.vote_ks if k <= prep.test_I.shape[1]]


def vote_k(prep: Prepared) -> tuple[int, str]:
    """(k, how it was chosen): the k of ``retrieval.vote_ks`` whose kNN vote scores best on
    every training query, each with its own memory entry excluded from its neighbours
    (leave-one-out). The vote trains nothing, so no image needs holding out for it, and ten
    times the queries of the validation split make the choice far less noisy (Tux Paint's
    validation split holds 61 images)."""
    r = prep.config.retrieval
    metric = selection_metric(prep.config)
    labels, nl = prep.train.dataset.labels, prep.neighbor_labels("train")
    best = int(choose_on_validation(_vote_ks(prep), lambda k: selection_score(
        knn_vote(prep.train_D, nl, prep.num_classes, int(k), r.vote_temperature).argmax(1), labels, metric)))
    return best, f"k chosen leave-one-out on the training queries ({metric}): {best}"


def vote_result(prep: Prepared) -> MethodResult:
    """The kNN vote at the k chosen on validation (:func:`vote_k`); accuracy at every k of
    ``retrieval.vote_ks`` is reported too."""
    r = prep.config.retrieval
    best_k, note = vote_k(prep)
    test_nl = prep.neighbor_labels("test")
    labels = prep.test.dataset.labels
    train_votes = knn_vote(prep.train_D, prep.neighbor_labels("train"), prep.num_classes, best_k,
                           r.vote_temperature)  # leave-one-out, as k was chosen
    train_labels = prep.train.dataset.labels
    temperature = fit_on(vote_logits(train_votes), train_labels, selection_metric(prep.config),
                         prep.config.data.label_noise)
    by_k = {k: knn_vote(prep.test_D, test_nl, prep.num_classes, k, r.vote_temperature) for k in _vote_ks(prep)}
    curve = {k: float((by_k[k].argmax(1) == labels).mean()) for k in by_k}
    metrics, per_class = prediction_metrics(by_k[best_k].argmax(1), labels, prep.class_counts)
    details = {"k": best_k, "accuracy_vs_k": curve, "note": note,
               "calibration": calibration_record(vote_logits(by_k[best_k]), labels, temperature)}
    if r.memory_curve:
        details["accuracy_vs_memory"] = memory_curve.vote_curve(prep, best_k, metrics["top1"])
    return MethodResult(metrics=metrics, per_class=per_class, details=details, logits=by_k[best_k])


__all__ = ["vote_k", "vote_result"]
