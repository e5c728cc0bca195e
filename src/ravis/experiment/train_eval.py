"""Training and evaluating one method of an experiment on prepared inputs.

:func:`train_method` runs the named steps of a :class:`MethodRun`, the one object that holds
what the steps share (the method, its inputs, the validation split, the choices made so far):

    setup            the method's query sets, validation split, LACE prior, label evidence
    train            one model per training tau (``train.tau_grid``), each with its warm start
                     where one applies; the best on validation is kept
    finetune         with ``train.finetune_encoder``: the encoder too ("Ours + FT")
    choose_posthoc   the post-hoc logit adjustment, on validation
    keep_simplest    for a model that reads labels: the trained model, or the vote it starts
                     as, whichever validation prefers by more than the margin
    calibrate        the temperature of the kept model's probabilities, on validation
    evaluate         the test metrics, accuracy versus k and versus memory size

Every tuned value is chosen on the validation split; the test labels are read only to score
the final predictions. Final weights are cached under a key of everything that determines
them, so a warm rerun loads instead of training; the per-epoch checkpoint makes a killed run
resume.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import TrainConfig
from ..encoders import create_text_encoder
from ..encoders.embed import embed_texts
from ..evaluation.calibration import calibration_record, fit_on
from ..evaluation.metrics import paired_gain, prediction_metrics, selection_score
from ..fusion import RetrievalClassifier, build_model
from ..io import stable_hash
from ..methods import method
from ..sizes import parse_bytes
from ..training.checkpoint import cached_weights
from ..training.data import MemoryTensors, QuerySet
from ..training.loss import log_prior
from ..training.trainer import FitData, fit, predict
from . import memory_curve
from .finetune import FINETUNE_FIELDS, finetune_method, inputs_from
from .prepare import Prepared
from .results import MethodResult
from .selection import choose_on_validation, selection_metric, validation_split
from .vote import vote_k

log = logging.getLogger(__name__)


def train_method(name: str, prep: Prepared, cache_dir: Path, text_encoder: str, *,
                 checkpoint_dir: Path, resume: bool = True,
                 log_fn: Callable[[str], None] | None = None) -> tuple[RetrievalClassifier, MethodResult]:
    """Trains method ``name`` and evaluates it on the test set; returns (the kept model, its
    result). See the module doc for the steps."""
    run = MethodRun(name, prep, cache_dir, text_encoder, checkpoint_dir, resume, log_fn)
    run.train()
    if run.cfg.finetune_encoder:
        run.finetune()
    run.choose_posthoc()
    if run.reads_labels and len(run.val):
        run.keep_simplest()
    run.calibrate()
    return run.model, run.evaluate()


class MethodRun:
    """One method's training and evaluation on one prepared experiment (the steps of
    :func:`train_method`, and the state they share)."""

    def __init__(self, name: str, prep: Prepared, cache_dir: Path, text_encoder: str,
                 checkpoint_dir: Path, resume: bool = True, log_fn: Callable[[str], None] | None = None):
        self.name, self.spec, self.prep = name, method(name), prep
        self.exp, self.cfg = prep.config, prep.config.train
        self.cache_dir, self.text_encoder = Path(cache_dir), text_encoder
        self.checkpoint_dir, self.resume, self.log_fn = Path(checkpoint_dir), resume, log_fn
        self.metric = selection_metric(self.exp)
        self.reads_labels = self.spec.reads_labels(self.exp)
        self.options = asdict(getattr(self.exp, self.spec.options)) if self.spec.options else None
        self.classifier = getattr(self.exp, self.spec.classifier) if self.spec.classifier else None
        self.val_mask = (validation_split(prep.train.dataset.labels, self.cfg.val_fraction, self.cfg.seed)
                         if self.cfg.val_fraction > 0 else np.zeros(len(prep.train.z), dtype=bool))
        self._query_sets()
        self.counts = np.bincount(self.fit_set.labels.numpy(), minlength=prep.num_classes)
        self.prior = log_prior(self.counts).numpy()
        self.train_tau, self.posthoc_setting = self.cfg.for_method(self.spec.reads_memory)
        # label evidence starts as the kNN vote at the k the vote itself is run with; the
        # memory's label counts are read only where they balance it
        self.label_k = vote_k(prep)[0] if self.reads_labels else 0
        balance = self.reads_labels and self.classifier is not None and self.classifier.balance_votes
        self.label_counts = prep.memory_label_counts if balance else None
        wants_warm_start = bool(self.reads_labels and self.cfg.warm_start and len(self.val))
        self.warm_skipped = self._why_no_warm_start() if wants_warm_start else None
        self.warm_start_applies = wants_warm_start and self.warm_skipped is None
        # what the steps choose
        self.model: RetrievalClassifier | None = None
        self.tau, self.key, self.details, self.warm = 0.0, "", {}, None
        self.posthoc_tau, self.temperature = 0.0, 1.0
        self.encoder_net, self.test_neighbors = None, None

    # -- inputs --------------------------------------------------------------------------------
    def _query_sets(self) -> None:
        """The memory rows and query sets of the method: train (split into fit and
        validation) and test."""
        prep, spec = self.prep, self.spec
        self.memory, self.test_memory, (train_I,), (test_I,) = _memory_rows(prep, spec.reads_memory)
        direct = rac_values(prep, self.cache_dir, self.text_encoder) if spec.extra == "texts" else (None, None)
        labels = self.reads_labels
        self.train_set = QuerySet.from_numpy(prep.train.z, train_I, prep.train.dataset.labels, direct[0],
                                             prep.neighbor_labels("train") if labels else None)
        self.test = QuerySet.from_numpy(prep.test.z, test_I, prep.test.dataset.labels, direct[1],
                                        prep.neighbor_labels("test") if labels else None)
        self.fit_set = self.train_set.subset(np.flatnonzero(~self.val_mask))
        self.val = self.train_set.subset(np.flatnonzero(self.val_mask))

    def fit_data(self) -> FitData:
        return FitData(self.fit_set, self.memory, self.counts, self.val if len(self.val) else None, self.metric)

    def posthoc_choices(self, tau: float) -> list[float]:
        """The post-hoc adjustments a model trained at LACE strength ``tau`` may take."""
        if self.posthoc_setting != "auto":
            return [float(self.posthoc_setting)]
        if self.reads_labels and self.metric == "balanced" and not self.cfg.tune_posthoc:
            # LACE at tau 1 already targets the balanced score and the vote is balanced by the
            # memory's counts; chosen on a long-tailed validation split (1 to 3 images in a
            # tail class) the adjustment came out at -0.25 to -1 and lost 2 to 6 points on
            # test (docs/method.md, "No post-hoc adjustment for the vote")
            return [1.0 - tau]
        return list(self.cfg.posthoc_grid)

    def _why_no_warm_start(self) -> str | None:
        """Why the warm start does not apply to this experiment, or None where it does."""
        if self.metric != "balanced":
            # Where the score is top-1 (a test set as skewed as training: Tux Paint, an
            # ImageFolder) it moved nothing beyond seed noise, and its head, which leans
            # little on the vote, stopped MAM from learning classes added to the memory (Tux
            # Paint's new classes: 0% against the vote's 64%; docs/method.md, "Warm start")
            return "the score is top-1"
        labelled, num_train = int(self.prep.memory_label_counts.sum()), len(self.train_set)
        if labelled > num_train:
            # The classifier can learn only from the training images; a memory with more
            # labelled entries than those gives the vote strictly more labelled evidence, and
            # there the classifier-plus-vote lost to the vote alone at nearly every weight
            # (fmnist-lt/B, C) while the long-tailed validation split, with 1 to 3 images in
            # a tail class, favoured it (docs/method.md, "Warm start")
            return f"the memory holds {labelled} labelled entries, more than the {num_train} training images"
        return None

    def build(self, label_counts=None) -> RetrievalClassifier:
        """An untrained model of the method (``label_counts``: balancing its vote)."""
        prep = self.prep
        return build_model(self.name, self.exp, prep.memory.dim, prep.memory.value_dim, prep.num_classes,
                           self.label_k, label_counts).to(prep.device)

    # -- train ---------------------------------------------------------------------------------
    def train(self) -> None:
        """One model per training tau, each trained (and warm-started where that applies) or
        loaded from the cache; the best on validation is kept."""
        best = None
        for tau in self.cfg.tau_grid if self.train_tau == "auto" else [float(self.train_tau)]:
            key = self._model_key(tau)
            model = self.build(self.label_counts)
            warm = self.warm_start(model, key, tau, self.posthoc_choices(tau)) if self.warm_start_applies else None
            details = self.fit_cached(model, key, tau, f"tau={tau}")
            if warm is not None:
                warm, details["warm_start"] = warm  # (the warm-started model, what was chosen)
            elif self.warm_skipped:
                details["warm_start"] = {"skipped": self.warm_skipped}
            score = details.get("val_score", 0.0)
            if best is None or score > best[0]:
                best = (score, tau, model, details, key, warm)
        _, self.tau, self.model, self.details, self.key, self.warm = best

    def _model_key(self, tau: float) -> str:
        """The cache key of the weights trained at ``tau``: everything that determines them."""
        prep, spec = self.prep, self.spec
        return stable_hash("model-v8", self.name, _train_key(self.cfg), self.metric, self.options,
                           asdict(self.classifier) if self.classifier else None,
                           self.warm_start_applies, tau, self.label_k,
                           prep.train.dataset.fingerprint, prep.test.dataset.fingerprint,
                           prep.embeddings_digest,
                           prep.memory.digest if spec.reads_memory else None,
                           stable_hash(prep.train_I) if spec.reads_memory else None,
                           self.exp.retrieval.rac_texts if spec.extra == "texts" else None, prep.num_classes)

    def fit_cached(self, model, key: str, tau: float, what: str) -> dict:
        """Trains ``model`` at ``tau`` (or loads its cached weights); returns the details."""
        name = f"{self.exp.name}/{self.name} {what}"

        def train(ckpt: Path) -> dict:
            result = fit(model, self.fit_data(), self.cfg, tau=tau, checkpoint=ckpt, resume=self.resume,
                         log=(lambda s: self.log_fn(f"{name}: {s}")) if self.log_fn else None)
            details = {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                       "steps": result.steps, "history": result.history}
            if result.best_epoch is not None:  # the kept weights are that epoch's
                details["val_score"] = result.best_score
            return details

        return cached_weights(model, self.cache_dir / "models" / f"{key}.safetensors",
                              self.checkpoint_dir / f"{key}.ckpt.safetensors", train)

    def warm_start(self, model: RetrievalClassifier, key: str, tau: float,
                   posthoc_grid: list[float]) -> tuple[RetrievalClassifier, dict]:
        """Trains ``model``'s classifier alone, then sets the weight of its vote on validation;
        returns (a copy of the warm-started model, what was chosen).

        Training the head jointly with the vote from a zero head teaches it only what the vote
        misses on the training queries; where the memory is the training set itself, that head
        is worse than one trained alone (fmnist-lt/A: 80.0 against the MLP's 80.5 over ten
        seeds; docs/method.md, "Warm start"). So the vote's weight beta is held at 0 and the
        fusion module stays as initialised (with ``similarity_init`` the identity on z) while
        the classifier trains; then beta is the value of ``train.vote_weight_grid`` whose
        product scores best on validation (each with the post-hoc adjustments
        ``posthoc_grid``, as the final model is), and the whole module trains on from there."""
        frozen = [p for p in (*model.fusion.parameters(), model.label_weight, model.label_log_scale)
                  if p.requires_grad]
        with torch.no_grad():
            model.label_weight.zero_()
        for p in frozen:
            p.requires_grad_(False)
        try:
            trained = self.fit_cached(model, stable_hash(key, "warm-start"), tau, f"tau={tau} warm start")
        finally:
            for p in frozen:
                p.requires_grad_(True)
        weight, score = self._vote_weight(model, posthoc_grid)
        chosen = {"vote_weight": float(weight), "val_score": float(score), "best_epoch": trained.get("best_epoch")}
        return copy.deepcopy(model), chosen

    def _vote_weight(self, model: RetrievalClassifier, posthoc_grid: list[float]) -> tuple[float, float]:
        """Sets and returns the vote's weight (with its validation score) that scores best."""
        head = predict(model, self.val, self.memory)[0]  # beta = 0: the classifier alone
        with torch.no_grad():
            model.label_weight.fill_(1.0)
        vote = predict(model, self.val, self.memory)[0] - head  # log(eps + balanced vote)
        labels = self.val.labels.numpy()
        scores = {(w, p): selection_score((head + w * vote - p * self.prior).argmax(1), labels, self.metric)
                  for w in self.cfg.vote_weight_grid for p in posthoc_grid}
        weight, _ = max(scores, key=scores.get)  # first best: the smaller weight on a tie
        with torch.no_grad():
            model.label_weight.fill_(weight)
        return weight, max(scores.values())

    # -- finetune, post-hoc adjustment, the simplest model ---------------------------------------
    def finetune(self) -> None:
        """Fine-tunes the encoder with the model (``train.finetune_encoder``); where
        validation prefers it to the frozen encoder, the steps after read the fine-tuned
        encoder's queries (and, re-embedded, its keys and neighbours)."""
        self.model, encoder, tuned = finetune_method(self, self.model)
        self.details = {**self.details, "finetune": tuned}
        # Epoch 0 kept: validation preferred the frozen encoder, and the method is as it was
        # (served with it too).
        if tuned["best_epoch"] == 0:
            return
        self.encoder_net = encoder.net
        self.prep = inputs_from(encoder, self.prep, self.cache_dir, self.spec.reads_memory)
        self._query_sets()
        self.warm = None  # it read the frozen encoder's queries
        if self.cfg.finetune_keys == "reembed" and self.spec.reads_memory:
            self.test_neighbors = (self.prep.test_I, self.prep.test_D)

    def choose_posthoc(self) -> None:
        """The post-hoc logit adjustment: the setting, or the best of its grid on validation
        (adjusting the validation logits needs no retraining)."""
        grid = self.posthoc_choices(self.tau)
        if self.posthoc_setting != "auto":
            self.posthoc_tau = float(self.posthoc_setting)
            return
        val_logits, labels = predict(self.model, self.val, self.memory)[0], self.val.labels.numpy()
        self.posthoc_tau = float(choose_on_validation(
            grid, lambda p: selection_score((val_logits - p * self.prior).argmax(1), labels, self.metric)))

    def keep_simplest(self) -> None:
        """The trained model, or a simpler one where training did not earn its place. A model
        with label evidence starts as the kNN vote at ``label_k`` (zero head), balanced by the
        memory's class counts where ``classifier.balance_votes`` says so; the plain vote and
        that balanced one (``kept``: "untrained", "balanced"), the warm start where there is
        one ("warm start"), each also with each post-hoc adjustment, and the trained model are
        scored on validation, and the best replaces the simplest only when its paired gain
        exceeds ``train.select_margin`` standard errors (the one-standard-error rule:
        validation splits of a few hundred images rank close candidates by chance, and an
        epoch chosen for a lucky validation score lost 1-5 points on the demo's test sets)."""
        labels = self.val.labels.numpy()
        untrained = {"untrained": self.build(None)}  # the plain kNN vote at label_k: the reference
        if self.model.balances_votes:
            untrained["balanced"] = self.build(self.prep.memory_label_counts)  # what training started from
        if self.warm is not None:
            untrained["warm start"] = self.warm
        logits = {w: predict(m, self.val, self.memory)[0] for w, m in untrained.items()}
        # The simplest model, kept unless training earns its place: the vote, balanced where
        # the score is balanced accuracy (a balanced test set: a vote that follows the
        # memory's long tail is the wrong untrained model there), plain where it is top-1.
        simplest = "balanced" if self.metric == "balanced" and "balanced" in untrained else "untrained"
        candidates = [(w, p, (x - p * self.prior).argmax(1)) for w, x in logits.items()
                      for p in self.posthoc_choices(self.tau)]
        trained = predict(self.model, self.val, self.memory)[0]
        candidates.append(("trained", self.posthoc_tau, (trained - self.posthoc_tau * self.prior).argmax(1)))
        scores = [selection_score(pred, labels, self.metric) for _, _, pred in candidates]
        which, tau, pred = candidates[int(np.argmax(scores))]  # first best: untrained before trained
        gain, se = paired_gain(pred, logits[simplest].argmax(1), labels, self.metric)
        margin = self.cfg.select_margin
        if gain <= margin * se:
            which, tau = simplest, 0.0
        self.details = {**self.details, "kept": which,
                        "vs_vote_on_validation": {"gain": gain, "se": se, "margin": margin, "vote": simplest}}
        self.model = self.model if which == "trained" else untrained[which]
        self.posthoc_tau = tau

    def calibrate(self) -> None:
        """The temperature that makes the kept model's validation probabilities honest
        (:func:`ravis.evaluation.calibration.fit_on`: weighted as the selection score weighs
        the split, with the training labels' known noise rate ``data.label_noise``). Without a
        validation split the temperature stays 1."""
        if not len(self.val):
            return
        labels = self.val.labels.numpy()
        logits = predict(self.model, self.val, self.memory)[0] - self.posthoc_tau * self.prior
        self.temperature = fit_on(logits, labels, self.metric, self.exp.data.label_noise)

    # -- evaluate ------------------------------------------------------------------------------
    def evaluate(self) -> MethodResult:
        """The kept model's test predictions and metrics, and its accuracy versus k and
        versus memory size."""
        adjust = self.posthoc_tau * self.prior
        logits, attn, vote_weights = predict(self.model, self.test, self.test_memory, votes=True)
        logits = logits - adjust
        labels = self.prep.test.dataset.labels
        metrics, per_class = prediction_metrics(logits.argmax(1), labels, self.prep.class_counts)
        details = {"tau": self.tau, "posthoc_tau": self.posthoc_tau, "select_on": self.metric,
                   **({"label_k": self.label_k} if self.label_k else {}), **self.details,
                   "calibration": calibration_record(logits, labels, self.temperature)}
        # RAC-style reads one embedding of its nearest neighbours' texts (retrieval.rac_texts),
        # made once from the whole memory: fed fewer neighbours, or a smaller memory, its input
        # would be the same, so it has neither curve (both once fed it the top neighbour's
        # value instead: flat at 42.3% on Tux Paint for k = 1..50)
        if self.spec.reads_memory and self.spec.extra is None:
            k = int(self.test.neighbors.shape[1])
            curve = accuracy_vs_k(self.model, self.test, self.test_memory,
                                  [c for c in self.exp.retrieval.k_curve if c < k], labels, adjust)
            curve[k] = metrics["top1"]  # all k: the main prediction
            details["accuracy_vs_k"] = curve
            # the curve searches memory subsets with the test queries; with frozen keys the
            # fine-tuned queries are not the ones retrieval used, so there is no such curve
            frozen_keys = self.encoder_net is not None and self.cfg.finetune_keys == "frozen"
            if self.exp.retrieval.memory_curve and not frozen_keys:
                details["accuracy_vs_memory"] = memory_curve.model_curve(
                    self.model, self.prep, adjust, self.reads_labels, metrics["top1"])
        return MethodResult(metrics=metrics, per_class=per_class, details=details, logits=logits,
                            attention=attn, vote_weights=vote_weights, encoder=self.encoder_net, test_neighbors=self.test_neighbors)


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


def accuracy_vs_k(model, test: QuerySet, memory: MemoryTensors, ks, labels, adjust=0.0) -> dict:
    """Test accuracy when the trained model sees only each query's top-k neighbours
    (``adjust``: the post-hoc logit adjustment the method's predictions use)."""
    out = {}
    for k in ks:
        if k > test.neighbors.shape[1]:
            continue
        nl = None if test.neighbor_labels is None else test.neighbor_labels[:, :k]
        sub = QuerySet(test.z, test.neighbors[:, :k], test.labels, test.direct_values, nl)
        out[int(k)] = float(((predict(model, sub, memory)[0] - adjust).argmax(1) == labels).mean())
    return out


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


__all__ = ["MethodRun", "accuracy_vs_k", "rac_values", "train_method"]
