"""The training loop, one for every trained model: LACE, AdamW, warm-up + cosine in steps,
checkpoints, best-epoch selection on validation.

:class:`TrainingLoop` runs a :class:`Task`: :class:`FusionTask` (a fusion model and its
classifier on frozen embeddings, :func:`fit`) and the encoder fine-tuned with them
(:class:`ravis.training.joint.JointTask`, :func:`ravis.training.joint.finetune`).

Resuming is exact: the shuffle of epoch e depends only on (seed, e), and each task seeds its
random draws (dropout, flips) by the epoch or the step, so a run killed and resumed from its
last checkpoint reaches the same weights as one that was never interrupted.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ..config import TrainConfig
from ..device import autocast, to_device
from ..evaluation.metrics import selection_score
from .checkpoint import load_checkpoint, save_checkpoint
from .data import BatchBuffers, MemoryTensors, QuerySet
from .loss import lace_loss
from .schedule import warmup_cosine


@dataclass
class FitResult:
    """What training produced besides the weights (which stay in the model)."""

    history: list[dict] = field(default_factory=list)  # one entry per epoch
    best_epoch: int | None = None  # 1-based, 0: untrained; None when no validation set was given
    initial_score: float | None = None  # validation score before training
    best_score: float | None = None  # validation score of the kept weights
    steps: int = 0


@dataclass
class FitData:
    """What a model is trained on and chosen by: the training queries, the memory rows they
    read, the training class counts (LACE's prior), and the validation queries with the
    score that picks the epoch (see :func:`ravis.evaluation.metrics.selection_score`)."""

    train: QuerySet
    memory: MemoryTensors
    class_counts: np.ndarray | list
    val: QuerySet | None = None
    metric: str = "balanced"

    @property
    def has_val(self) -> bool:
        return self.val is not None and len(self.val) > 0


def parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices only, and per-parameter learning-rate scales.

    Decaying biases, temperatures and gates toward zero would undo their initialisation (a
    temperature decayed to 1 flattens the attention). A parameter may carry ``lr_scale``:
    MAM's similarity-initialised psiQ/psiK do, since Adam moves every one of their d*d
    entries by about lr per step, which at lr 1e-2 erases the identity within a few steps.
    Each group's ``base_lr`` is its peak learning rate, which the schedule scales.
    """
    groups: dict[tuple[float, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((getattr(p, "lr_scale", 1.0), p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr_scale": scale, "lr": lr * scale, "base_lr": lr * scale,
             "weight_decay": weight_decay if decay else 0.0}
            for (scale, decay), ps in sorted(groups.items())]


def epochs_for(cfg: TrainConfig, n: int) -> tuple[int, int]:
    """(epochs, steps per epoch): ``min_steps`` stretches the run on small training sets."""
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    return epochs, steps_per_epoch


@dataclass
class Schedule:
    """The steps of one training run, and when it checkpoints and stops."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    warmup: int  # steps of linear warm-up, then cosine decay to zero
    seed: int  # epoch e's shuffle is seeded by (seed, e)
    checkpoint_every: float  # seconds between checkpoints (0: at every chance)
    # also checkpoint after a step (a killed run resumes mid-epoch) and at every epoch's end:
    # where a step is costly (an encoder pass per image)
    step_checkpoints: bool = False
    patience: int = 0  # > 0: stop after this many epochs without validation improvement

    @property
    def total(self) -> int:
        return self.epochs * self.steps_per_epoch


class Task(Protocol):
    """What :class:`TrainingLoop` trains."""

    model: torch.nn.Module

    def __len__(self) -> int:
        """Training queries: the loop shuffles their rows each epoch."""
        ...

    def start_epoch(self, epoch: int, batches: list[torch.Tensor], first: int) -> None:
        """Before the steps ``first..`` of epoch ``epoch`` (0-based) over ``batches`` (rows)."""
        ...

    def loss(self, step: int, b: int) -> torch.Tensor:
        """The loss of batch ``b`` of the epoch (global step ``step``), graph attached."""
        ...

    def score(self) -> float | None:
        """The validation score of the model as it is now; None without validation."""
        ...


class TrainingLoop:
    """Trains ``task.model`` in place; with validation keeps the epoch whose score is best,
    the untrained model (epoch 0) included."""

    def __init__(self, task: Task, opt: torch.optim.Optimizer, schedule: Schedule,
                 checkpoint: Path | None = None, log: Callable[[str], None] | None = None):
        self.task, self.opt, self.schedule = task, opt, schedule
        self.checkpoint, self.log = checkpoint, log
        self.result, self.best_state, self.best_score = FitResult(), None, -1.0
        self.losses: list[float] = []
        self.last_saved = time.monotonic()

    def run(self, resume: bool = False) -> FitResult:
        s, model = self.schedule, self.task.model
        epoch0, step0 = self._resume() if resume and self.checkpoint is not None and \
            self.checkpoint.exists() else self._start()
        try:
            for epoch in range(epoch0, s.epochs):
                self.run_epoch(epoch, step0 if epoch == epoch0 else 0)
                if self._end_epoch(epoch):
                    break
        finally:
            model.eval()
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
            self.result.best_score = self.best_score
        self.result.steps = s.total
        return self.result

    def _start(self) -> tuple[int, int]:
        score = self.task.score()
        if score is not None:
            # The untrained model is a candidate too: a model that starts as the kNN vote
            # (label evidence, zero head) keeps it when no epoch of training beats it.
            self.result.initial_score = self.best_score = score
            self.result.best_epoch, self.best_state = 0, copy.deepcopy(self.task.model.state_dict())
        return 0, 0

    def _resume(self) -> tuple[int, int]:
        base_lrs = [g["base_lr"] for g in self.opt.param_groups]
        progress, self.best_state = load_checkpoint(self.checkpoint, self.task.model, self.opt)
        for group, base_lr in zip(self.opt.param_groups, base_lrs):  # a checkpoint without them
            group.setdefault("base_lr", base_lr)
        r = self.result
        r.history, r.best_epoch = progress["history"], progress["best_epoch"]
        self.best_score, r.initial_score = progress["best_score"], progress.get("initial_score")
        self.losses = progress.get("losses", [])
        return progress["epoch"], progress.get("step", 0)

    def run_epoch(self, epoch: int, first: int) -> None:
        """The steps ``first..`` of epoch ``epoch``."""
        s = self.schedule
        order = torch.randperm(len(self.task), generator=torch.Generator().manual_seed(s.seed * 7919 + epoch))
        batches = [order[b * s.batch_size:(b + 1) * s.batch_size] for b in range(s.steps_per_epoch)]
        self.task.start_epoch(epoch, batches, first)
        for b in range(first, s.steps_per_epoch):
            step = epoch * s.steps_per_epoch + b
            for group in self.opt.param_groups:
                group["lr"] = group["base_lr"] * warmup_cosine(step, s.total, s.warmup)
            loss = self.task.loss(step, b)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.losses.append(loss.item())
            if s.step_checkpoints and self._due():
                self._save(epoch, b + 1)  # mid-epoch: resumes at the next step

    def _end_epoch(self, epoch: int) -> bool:
        """Scores and records the epoch, checkpoints it; True where patience ends the run."""
        entry = {"epoch": epoch + 1, "loss": float(np.mean(self.losses))}
        self.losses = []
        score = self.task.score()
        if score is not None:
            entry["val_score"] = score
            if score > self.best_score:
                self.best_score, self.result.best_epoch = score, epoch + 1
                self.best_state = copy.deepcopy(self.task.model.state_dict())
        self.result.history.append(entry)
        if self.log:
            self.log(format_entry(entry))
        if self.schedule.step_checkpoints or self._due():
            self._save(epoch + 1, 0)
        best, patience = self.result.best_epoch, self.schedule.patience
        return bool(patience and best is not None and epoch + 1 - best >= patience)

    def _due(self) -> bool:
        return self.checkpoint is not None and time.monotonic() - self.last_saved >= self.schedule.checkpoint_every

    def _save(self, epoch: int, step: int) -> None:
        if self.checkpoint is None:
            return
        r = self.result
        save_checkpoint(self.checkpoint, self.task.model, self.opt,
                        {"epoch": epoch, "step": step, "losses": self.losses, "history": r.history,
                         "best_epoch": r.best_epoch, "best_score": self.best_score,
                         "initial_score": r.initial_score}, self.best_state)
        self.last_saved = time.monotonic()


class FusionTask:
    """A fusion model and its classifier trained on frozen query embeddings: each batch
    gathers its queries' neighbours from the memory rows (:class:`FitData`)."""

    def __init__(self, model: torch.nn.Module, data: FitData, cfg: TrainConfig, tau: float):
        self.model, self.data, self.cfg, self.tau = model, data, cfg, tau
        self.buffers = BatchBuffers()  # one set for every batch of the run, training and validation
        self.batches: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.data.train)

    def start_epoch(self, epoch: int, batches: list[torch.Tensor], first: int) -> None:
        self.model.train()
        self.batches = batches
        torch.manual_seed(self.cfg.seed * 104729 + epoch)  # dropout draws depend on (seed, epoch) only

    def loss(self, step: int, b: int) -> torch.Tensor:
        d = self.data
        inputs, y = to_model(self.model, *d.train.batch(self.batches[b], d.memory, self.model.reads, self.buffers))
        with autocast(y.device):
            logits, _ = self.model(*inputs)
        return lace_loss(logits.float(), y, d.class_counts, tau=self.tau, label_smoothing=self.cfg.label_smoothing)

    def score(self) -> float | None:
        d = self.data
        if not d.has_val:
            return None
        logits = predict(self.model, d.val, d.memory, buffers=self.buffers)[0]
        return selection_score(logits.argmax(1), d.val.labels.numpy(), d.metric)


def fit(model: torch.nn.Module, data: FitData, cfg: TrainConfig, *, tau: float,
        checkpoint: Path | None = None, resume: bool = False,
        log: Callable[[str], None] | None = None) -> FitResult:
    """Trains ``model`` in place on ``data``; with validation queries keeps the epoch with the
    best validation score."""
    opt = torch.optim.AdamW(parameter_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr)
    epochs, steps_per_epoch = epochs_for(cfg, len(data.train))
    schedule = Schedule(epochs, cfg.batch_size, steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch),
                        cfg.seed, cfg.checkpoint_every, patience=cfg.patience)
    return TrainingLoop(FusionTask(model, data, cfg, tau), opt, schedule, checkpoint, log).run(resume)


@torch.no_grad()
def predict(model: torch.nn.Module, queries: QuerySet, memory: MemoryTensors,
            batch_size: int = 1024, buffers: BatchBuffers | None = None, *, votes: bool = False):
    """Raw logits (N, C) and attention (N, L, k) in evaluation mode (``buffers``: gather
    arrays to reuse, as training passes its own); with ``votes``, also each neighbour's share
    of the label evidence (N, k), None for a model without it."""
    model.eval()
    logits, attns, shares = [], [], []
    buffers = buffers if buffers is not None else BatchBuffers()
    for start in range(0, len(queries), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(queries)))
        inputs, _ = to_model(model, *queries.batch(idx, memory, model.reads, buffers))
        with autocast(next(model.parameters()).device):
            terms = model.terms(*inputs, by_neighbour=False)
        logits.append(terms.logits.float().cpu().numpy())
        attns.append(terms.attention.float().cpu().numpy())
        if terms.vote_weight is not None:
            shares.append(terms.vote_weight.float().cpu().numpy())
    out = np.concatenate(logits), np.concatenate(attns)
    return (*out, np.concatenate(shares) if shares else None) if votes else out


def format_entry(entry: dict) -> str:
    """One epoch's history entry as a log line: ``epoch=3 loss=0.9015 val_score=0.7213``."""
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())


def to_model(model: torch.nn.Module, inputs, labels):
    """A batch (built on the CPU) moved to the model's device; as it is where that is the CPU."""
    device = next(model.parameters()).device
    # to_device copies into fresh pinned memory first, so the gather buffers (reused by the
    # next batch, BatchBuffers) are free again at once while the copy to the GPU runs
    move = lambda t: None if t is None else to_device(t, device)
    return tuple(move(t) for t in inputs), move(labels)


__all__ = ["FitData", "FitResult", "FusionTask", "Schedule", "Task", "TrainingLoop", "epochs_for", "fit",
           "parameter_groups", "predict"]
