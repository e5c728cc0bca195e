"""Training and evaluating each method of an experiment on prepared inputs."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..encoders import create_text_encoder
from ..encoders.embed import embed_texts
from ..evaluation.metrics import paired_gain, prediction_metrics, selection_score
from ..fusion import RetrievalClassifier, build_model, knn_vote
from ..sizes import parse_bytes
from ..io import stable_hash
from ..methods import method
from ..training.data import MemoryTensors, QuerySet
from ..training.loss import log_prior
from ..training.checkpoint import cached_weights
from ..training.trainer import fit, predict
from . import memory_curve
from .finetune import FINETUNE_FIELDS, finetune_method, inputs_from
from .prepare import Prepared, test_like_training

log = logging.getLogger(__name__)


@dataclass
class MethodResult:
    """One row of the results table."""

    metrics: dict  # top1, many, mid, few
    per_class: list  # (C,) accuracy, None for classes without test images
    details: dict  # method-specific: chosen tau, best epoch, vote k, accuracy versus k
    logits: np.ndarray | None = None  # (N_test, C)
    attention: np.ndarray | None = None  # (N_test, L, k)
    encoder: torch.nn.Module | None = None  # the fine-tuned encoder network (train.finetune_encoder)
    # (I, D) of the test queries where the method retrieved its own (a re-embedded memory)
    test_neighbors: tuple[np.ndarray, np.ndarray] | None = None


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


def rac_values(prep: Prepared, cache_dir: Path, text_encoder_spec: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) embeddings of each query's nearest neighbours' texts, concatenated."""
    encoder = create_text_encoder(text_encoder_spec)
    n = prep.config.retrieval.rac_texts

    def joined(I: np.ndarray) -> list[str]:
        # Repeats are kept: "Shirt, Shirt, Coat" tells the text encoder how the vote went
        # (dropping them cost this baseline 5-8 points on Fashion-MNIST-LT).
        rows, inverse = np.unique(np.where(I[:, :n] >= 0, I[:, :n], 0), return_inverse=True)
        texts = prep.memory.meta_at(rows, ["text"])["text"]
        inverse = inverse.reshape(len(I), -1)
        return [", ".join(texts[t] for t, j in zip(inv, row[:n]) if j >= 0) for inv, row in zip(inverse, I)]

    train = embed_texts(encoder, joined(prep.train_I), cache_dir)
    test = embed_texts(encoder, joined(prep.test_I), cache_dir)
    return train[:, None, :], test[:, None, :]  # (N, 1, d')


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


def train_method(name: str, prep: Prepared, cache_dir: Path, text_encoder: str, *,
                 checkpoint_dir: Path, resume: bool = True, log_fn=None) -> tuple[RetrievalClassifier, MethodResult]:
    """Trains method ``name`` and evaluates it on the test set. Training tau, post-hoc tau and
    the epoch are chosen on the validation split when the config says "auto"; the test
    labels are read only to score the final predictions.

    Final weights are cached under a key of everything that determines them, so a warm
    rerun loads instead of training; the per-epoch checkpoint makes a killed run resume.
    """
    spec = method(name)
    exp, cfg = prep.config, prep.config.train
    metric = selection_metric(exp)
    reads_labels = spec.reads_labels(exp)
    memory, test_memory, train, test = _query_sets(prep, name, cache_dir, text_encoder)
    val_mask = (validation_split(prep.train.dataset.labels, cfg.val_fraction, cfg.seed)
                if cfg.val_fraction > 0 else np.zeros(len(train), dtype=bool))
    split = lambda queries: (queries.subset(np.flatnonzero(~val_mask)), queries.subset(np.flatnonzero(val_mask)))
    fit_set, val = split(train)
    counts = np.bincount(fit_set.labels.numpy(), minlength=prep.num_classes)
    prior = log_prior(counts).numpy()
    train_tau, posthoc = cfg.for_method(spec.reads_memory)
    options = asdict(getattr(exp, spec.options)) if spec.options else None

    def posthoc_choices(tau: float) -> list[float]:
        """The post-hoc adjustments a model trained at LACE strength ``tau`` may take."""
        if posthoc != "auto":
            return [float(posthoc)]
        if reads_labels and metric == "balanced" and not (options or {}).get("tune_posthoc"):
            # LACE at tau 1 already targets the balanced score and the vote is balanced by the
            # memory's counts; chosen on a long-tailed validation split (1 to 3 images in a
            # tail class) the adjustment came out at -0.25 to -1 and lost 2 to 6 points on
            # test (docs/method.md, "No post-hoc adjustment for the vote")
            return [1.0 - tau]
        return list(cfg.posthoc_grid)
    # label evidence starts as the kNN vote at the k the vote itself is run with
    label_k = vote_k(prep)[0] if reads_labels else 0
    # read from the memory only where they are used: a pass over every row's label
    label_counts = prep.memory_label_counts if reads_labels and (options or {}).get("balance_votes") else None
    wants_warm_start = bool(reads_labels and (options or {}).get("warm_start") and len(val))
    warm_skipped = _why_no_warm_start(prep, metric, len(train)) if wants_warm_start else None
    warm_start = wants_warm_start and warm_skipped is None
    best = None
    for tau in cfg.tau_grid if train_tau == "auto" else [float(train_tau)]:
        key = stable_hash("model-v7", name, _train_key(cfg), metric, options, warm_start, tau, label_k,
                          prep.train.dataset.fingerprint, prep.test.dataset.fingerprint,
                          prep.embeddings_digest,
                          prep.memory.digest if spec.reads_memory else None,
                          stable_hash(prep.train_I) if spec.reads_memory else None,
                          exp.retrieval.rac_texts if spec.extra == "texts" else None, prep.num_classes)
        model = build_model(name, exp, prep.memory.dim, prep.memory.value_dim, prep.num_classes,
                            label_k, label_counts).to(prep.device)
        warm = None
        if warm_start:
            warm = _warm_start(model, key, fit_set, val, memory, cfg, counts, tau, metric, prior,
                               options["vote_weight_grid"], posthoc_choices(tau), cache_dir, checkpoint_dir,
                               resume, log_fn, f"{exp.name}/{name} tau={tau} warm start")
        details = _fit_cached(model, key, fit_set, val, memory, cfg, counts, tau, metric, cache_dir,
                              checkpoint_dir, resume, log_fn, f"{exp.name}/{name} tau={tau}")
        if warm is not None:
            warm, details["warm_start"] = warm  # (the warm-started model, what was chosen)
        elif warm_skipped:
            details["warm_start"] = {"skipped": warm_skipped}
        score = details.get("val_score", 0.0)
        if best is None or score > best[0]:
            best = (score, tau, model, details, key, warm)
    _, tau, model, details, key, warm = best
    encoder_net, test_neighbors = None, None
    if cfg.finetune_encoder:
        model, encoder, tuned = finetune_method(
            model, prep, fit_set, val, val_mask, memory, counts, tau, metric, key, cache_dir,
            checkpoint_dir, resume, log_fn, f"{exp.name}/{name} tau={tau}")
        details = {**details, "finetune": tuned}
        # Epoch 0 kept: validation preferred the frozen encoder, and the method is as it was
        # (served with it too). Otherwise, from here on: the queries (and, re-embedded, the
        # keys and neighbours) of the fine-tuned encoder.
        if tuned["best_epoch"] != 0:
            encoder_net = encoder.net
            prep = inputs_from(encoder, prep, cache_dir, spec.reads_memory)
            memory, test_memory, train, test = _query_sets(prep, name, cache_dir, text_encoder)
            fit_set, val = split(train)
            warm = None  # it read the frozen encoder's queries
            if cfg.finetune_keys == "reembed" and spec.reads_memory:
                test_neighbors = (prep.test_I, prep.test_D)
    posthoc_grid = posthoc_choices(tau)
    if posthoc == "auto":  # adjusting the validation logits needs no retraining
        val_logits, val_labels = predict(model, val, memory)[0], val.labels.numpy()
        posthoc = choose_on_validation(
            posthoc_grid, lambda p: selection_score((val_logits - p * prior).argmax(1), val_labels, metric))
    posthoc_tau = float(posthoc)
    if reads_labels and len(val):
        model, posthoc_tau, details = _simplest_within_margin(
            model, posthoc_tau, details, name, prep, val, memory, prior, metric, label_k,
            posthoc_grid, warm)
    logits, attn = predict(model, test, test_memory)
    logits = logits - posthoc_tau * prior
    labels = prep.test.dataset.labels
    metrics, per_class = prediction_metrics(logits.argmax(1), labels, prep.class_counts)
    result = MethodResult(metrics=metrics, per_class=per_class,
                          details={"tau": tau, "posthoc_tau": posthoc_tau, "select_on": metric,
                                   **({"label_k": label_k} if label_k else {}), **details},
                          logits=logits, attention=attn, encoder=encoder_net,
                          test_neighbors=test_neighbors)
    if spec.reads_memory:
        curve = accuracy_vs_k(model, test, test_memory, [k for k in exp.retrieval.k_curve if k < test.neighbors.shape[1]],
                              labels, posthoc_tau * prior)
        curve[int(test.neighbors.shape[1])] = result.metrics["top1"]  # all k: the main prediction
        result.details["accuracy_vs_k"] = curve
        # the curve searches memory subsets with the test queries; with frozen keys the
        # fine-tuned queries are not the ones retrieval used, so there is no such curve
        if exp.retrieval.memory_curve and not (encoder_net is not None and cfg.finetune_keys == "frozen"):
            result.details["accuracy_vs_memory"] = memory_curve.model_curve(
                model, prep, posthoc_tau * prior, reads_labels, result.metrics["top1"])
    return model, result


def _query_sets(prep: Prepared, name: str, cache_dir: Path, text_encoder: str):
    """(train memory rows, test memory rows, train queries, test queries) of method ``name``."""
    spec = method(name)
    reads_labels = spec.reads_labels(prep.config)
    memory, test_memory, (train_I,), (test_I,) = _memory_rows(prep, spec.reads_memory)
    direct = rac_values(prep, cache_dir, text_encoder) if spec.extra == "texts" else (None, None)
    train = QuerySet.from_numpy(prep.train.z, train_I, prep.train.dataset.labels, direct[0],
                                prep.neighbor_labels("train") if reads_labels else None)
    test = QuerySet.from_numpy(prep.test.z, test_I, prep.test.dataset.labels, direct[1],
                               prep.neighbor_labels("test") if reads_labels else None)
    return memory, test_memory, train, test


def _simplest_within_margin(model, posthoc_tau, details, name, prep, val, memory, prior, metric,
                            label_k, posthoc_grid, warm=None):
    """(model, post-hoc tau, details): the trained model, or a simpler one where training
    did not earn its place. A model with label evidence starts as the kNN vote at
    ``label_k`` (zero head), balanced by the memory's class counts where ``balance_votes``
    says so; the plain vote and that balanced one (``kept``: "untrained", "balanced"), the
    warm start where there is one (``warm``: the classifier trained alone plus the vote,
    "warm start"), each also with each post-hoc adjustment, and the trained model are scored
    on validation, and the best replaces the simplest only when its paired gain exceeds
    ``train.select_margin`` standard errors (the one-standard-error rule:
    validation splits of a few hundred images rank close candidates by chance, and an epoch
    chosen for a lucky validation score lost 1-5 points on the demo's test sets)."""
    labels = val.labels.numpy()
    build = lambda counts: build_model(name, prep.config, prep.memory.dim, prep.memory.value_dim,
                                       prep.num_classes, label_k, counts).to(prep.device)
    vote = build(None)  # the plain kNN vote at label_k: the reference, and the fallback
    untrained = {"untrained": vote}
    if model.balances_votes:
        untrained["balanced"] = build(prep.memory_label_counts)  # what training started from
    if warm is not None:
        untrained["warm start"] = warm
    logits = {w: predict(m, val, memory)[0] for w, m in untrained.items()}
    # The simplest model, kept unless training earns its place: the vote, balanced where the
    # score is balanced accuracy (a balanced test set: a vote that follows the memory's
    # long tail is the wrong untrained model there), plain where it is top-1.
    simplest = "balanced" if metric == "balanced" and "balanced" in untrained else "untrained"
    reference = logits[simplest].argmax(1)
    candidates = [(w, p, (x - p * prior).argmax(1)) for w, x in logits.items() for p in posthoc_grid]
    trained_logits = predict(model, val, memory)[0]
    candidates.append(("trained", posthoc_tau, (trained_logits - posthoc_tau * prior).argmax(1)))
    scores = [selection_score(pred, labels, metric) for _, _, pred in candidates]
    which, tau, pred = candidates[int(np.argmax(scores))]  # first best: untrained before trained
    gain, se = paired_gain(pred, reference, labels, metric)
    margin = prep.config.train.select_margin
    if gain <= margin * se:
        which, tau = simplest, 0.0
    details = {**details, "kept": which,
               "vs_vote_on_validation": {"gain": gain, "se": se, "margin": margin, "vote": simplest}}
    return (model if which == "trained" else untrained[which]), tau, details


def _why_no_warm_start(prep: Prepared, metric: str, num_train: int) -> str | None:
    """Why the warm start does not apply to this experiment, or None where it does."""
    if metric != "balanced":
        # Where the score is top-1 (a test set as skewed as training: Tux Paint, an
        # ImageFolder) it moved nothing beyond seed noise, and its head, which leans little on
        # the vote, stopped MAM from learning classes added to the memory (Tux Paint's new
        # classes: 0% against the vote's 64%; docs/method.md, "Warm start")
        return "the score is top-1"
    labelled = int(prep.memory_label_counts.sum())
    if labelled > num_train:
        # The classifier can learn only from the training images; a memory with more labelled
        # entries than those gives the vote strictly more labelled evidence, and there the
        # classifier-plus-vote lost to the vote alone at nearly every weight (fmnist-lt/B, C)
        # while the long-tailed validation split, with 1 to 3 images in a tail class, favoured
        # it (docs/method.md, "Warm start")
        return f"the memory holds {labelled} labelled entries, more than the {num_train} training images"
    return None


def _warm_start(model: RetrievalClassifier, key, fit_set, val, memory, cfg: TrainConfig, counts, tau,
                metric, prior, vote_weights, posthoc_grid, cache_dir, checkpoint_dir, resume, log_fn, name):
    """Trains ``model``'s classifier alone, then sets the weight of its vote on validation;
    returns (a copy of the warm-started model, what was chosen).

    Training the head jointly with the vote from a zero head teaches it only what the vote
    misses on the training queries; where the memory is the training set itself, that head is
    worse than one trained alone (fmnist-lt/A: 80.0 against the MLP's 80.5 over ten seeds;
    docs/method.md, "Warm start"). So the vote's weight beta is held at 0 and the fusion module
    stays as initialised (with ``similarity_init`` the identity on z) while the classifier
    trains; then beta is the value of ``vote_weights`` whose product scores best on
    validation (each with the post-hoc adjustments, as the final model is), and the whole
    module trains on from there."""
    frozen = [p for p in (*model.fusion.parameters(), model.label_weight, model.label_log_scale)
              if p.requires_grad]
    with torch.no_grad():
        model.label_weight.zero_()
    for p in frozen:
        p.requires_grad_(False)
    try:
        trained = _fit_cached(model, stable_hash(key, "warm-start"), fit_set, val, memory, cfg, counts,
                              tau, metric, cache_dir, checkpoint_dir, resume, log_fn, name)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    head = predict(model, val, memory)[0]  # beta = 0: the classifier alone
    with torch.no_grad():
        model.label_weight.fill_(1.0)
    vote = predict(model, val, memory)[0] - head  # log(eps + balanced vote)
    labels = val.labels.numpy()
    scores = {(w, p): selection_score((head + w * vote - p * prior).argmax(1), labels, metric)
              for w in vote_weights for p in posthoc_grid}
    weight, _ = max(scores, key=scores.get)  # first best: the smaller weight on a tie
    with torch.no_grad():
        model.label_weight.fill_(weight)
    chosen = {"vote_weight": float(weight), "val_score": float(max(scores.values())),
              "best_epoch": trained.get("best_epoch")}
    return copy.deepcopy(model), chosen


def _train_key(cfg: TrainConfig) -> dict:
    """The training settings that change the weights (where memory rows are read from, how
    often a checkpoint is written and what replaces the trained model afterwards do not)."""
    skip = ("memory_rows_budget", "select_margin", "checkpoint_every") + FINETUNE_FIELDS
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def _memory_rows(prep: Prepared, reads_memory: bool):
    """(train memory rows, test memory rows, [train I], [test I]): the rows each query set
    retrieved, read from the memory once, with the neighbour ids renumbered into them. A
    method that reads no memory gets empty tensors and the ids as they are."""
    if not reads_memory:
        empty = MemoryTensors(torch.zeros(0, prep.memory.dim), torch.zeros(0, prep.memory.value_dim))
        return empty, empty, [prep.train_I], [prep.test_I]
    budget = parse_bytes(prep.config.train.memory_rows_budget)
    if budget not in prep.rows_cache:  # read once per experiment, not once per method
        train_memory, train_I = MemoryTensors.for_queries(prep.memory, prep.train_I, budget)
        test_memory, test_I = MemoryTensors.for_queries(prep.memory, prep.test_I, budget)
        prep.rows_cache.clear()
        prep.rows_cache[budget] = (train_memory, test_memory, [train_I], [test_I])
    return prep.rows_cache[budget]


def _fit_cached(model, key, fit_set, val, memory, cfg: TrainConfig, counts, tau, metric, cache_dir,
                checkpoint_dir, resume, log_fn, name) -> dict:
    def train(ckpt: Path) -> dict:
        result = fit(model, fit_set, memory, cfg, counts, tau=tau, val=val if len(val) else None,
                     checkpoint=ckpt, resume=resume, metric=metric,
                     log=(lambda s: log_fn(f"{name}: {s}")) if log_fn else None)
        details = {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                   "steps": result.steps, "history": result.history}
        if result.best_epoch is not None:  # the kept weights are that epoch's
            details["val_score"] = result.best_score
        return details

    return cached_weights(model, cache_dir / "models" / f"{key}.safetensors",
                          checkpoint_dir / f"{key}.ckpt.safetensors", train)


def accuracy_vs_k(model, test: QuerySet, memory: MemoryTensors, ks, labels, adjust=0.0) -> dict:
    """Test accuracy when the trained model sees only each query's top-k neighbours
    (``adjust``: the post-hoc logit adjustment the method's predictions use)."""
    out = {}
    for k in ks:
        if k > test.neighbors.shape[1]:
            continue
        nl = None if test.neighbor_labels is None else test.neighbor_labels[:, :k]
        sub = QuerySet(test.z, test.neighbors[:, :k], test.labels, None, nl)
        out[int(k)] = float(((predict(model, sub, memory)[0] - adjust).argmax(1) == labels).mean())
    return out


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
    ks = _vote_ks(prep)
    metric = selection_metric(prep.config)
    labels, nl = prep.train.dataset.labels, prep.neighbor_labels("train")
    best = int(choose_on_validation(ks, lambda k: selection_score(
        knn_vote(prep.train_D, nl, prep.num_classes, int(k), r.vote_temperature).argmax(1), labels, metric)))
    return best, f"k chosen leave-one-out on the training queries ({metric}): {best}"


def vote_result(prep: Prepared) -> MethodResult:
    """The kNN vote at the k chosen on validation (:func:`vote_k`); accuracy at every k of
    ``retrieval.vote_ks`` is reported too."""
    r = prep.config.retrieval
    best_k, note = vote_k(prep)
    ks = _vote_ks(prep)
    test_nl = prep.neighbor_labels("test")
    labels = prep.test.dataset.labels
    by_k = {k: knn_vote(prep.test_D, test_nl, prep.num_classes, k, r.vote_temperature) for k in ks}
    curve = {k: float((by_k[k].argmax(1) == labels).mean()) for k in ks}
    metrics, per_class = prediction_metrics(by_k[best_k].argmax(1), labels, prep.class_counts)
    details = {"k": best_k, "accuracy_vs_k": curve, "note": note}
    if r.memory_curve:
        details["accuracy_vs_memory"] = memory_curve.vote_curve(prep, best_k, metrics["top1"])
    return MethodResult(metrics=metrics, per_class=per_class, details=details, logits=by_k[best_k])
