"""The training loop: LACE, AdamW, warm-up + cosine in steps, checkpoints, best-epoch selection.

Resuming is exact: the shuffle of epoch e and the dropout draws inside it depend only on
(seed, e), so a run killed after epoch e and resumed reaches the same weights as one that
was never interrupted.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


def parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices only, and per-parameter learning-rate scales.

    Decaying biases, temperatures and gates toward zero would undo their initialisation (a
    temperature decayed to 1 flattens the attention). A parameter may carry ``lr_scale``:
    MAM's similarity-initialised psiQ/psiK do, since Adam moves every one of their d*d
    entries by about lr per step, which at lr 1e-2 erases the identity within a few steps.
    """
    groups: dict[tuple[float, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((getattr(p, "lr_scale", 1.0), p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr_scale": scale, "lr": lr * scale,
             "weight_decay": weight_decay if decay else 0.0}
            for (scale, decay), ps in sorted(groups.items())]


def epochs_for(cfg: TrainConfig, n: int) -> tuple[int, int]:
    """(epochs, steps per epoch): ``min_steps`` stretches the run on small training sets."""
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    return epochs, steps_per_epoch


def fit(model: torch.nn.Module, train: QuerySet, memory: MemoryTensors, cfg: TrainConfig,
        class_counts, *, tau: float, val: QuerySet | None = None,
        checkpoint: Path | None = None, resume: bool = False, metric: str = "balanced",
        log: Callable[[str], None] | None = None) -> FitResult:
    """Trains ``model`` in place; with ``val`` keeps the epoch with the best validation score
    (``metric``: see :func:`ravis.evaluation.metrics.selection_score`)."""
    opt = torch.optim.AdamW(parameter_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr)
    epochs, steps_per_epoch = epochs_for(cfg, len(train))
    total = epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    result, best_state, best_score, start = FitResult(), None, -1.0, 0
    last_saved = time.monotonic()
    buffers = BatchBuffers()  # one set for every batch of the run, training and validation
    if resume and checkpoint is not None and checkpoint.exists():
        progress, best_state = load_checkpoint(checkpoint, model, opt)
        start, result.history = progress["epoch"], progress["history"]
        result.best_epoch, best_score = progress["best_epoch"], progress["best_score"]
    if start == 0 and val is not None and len(val):
        # The untrained model is a candidate too: a model that starts as the kNN vote (label
        # evidence, zero head) keeps it when no epoch of training beats it on validation.
        result.initial_score = selection_score(predict(model, val, memory, buffers=buffers)[0].argmax(1),
                                               val.labels.numpy(), metric)
        best_score, result.best_epoch = result.initial_score, 0
        best_state = copy.deepcopy(model.state_dict())
    for epoch in range(start, epochs):
        loss = _train_epoch(model, opt, train, memory, buffers, cfg, class_counts, tau, epoch,
                            steps_per_epoch, total, warmup)
        entry = {"epoch": epoch + 1, "loss": loss}
        if val is not None and len(val):
            entry["val_score"] = selection_score(predict(model, val, memory, buffers=buffers)[0].argmax(1),
                                                 val.labels.numpy(), metric)
            if entry["val_score"] > best_score:
                best_score, result.best_epoch = entry["val_score"], epoch + 1
                best_state = copy.deepcopy(model.state_dict())
        result.history.append(entry)
        if log:
            log(format_entry(entry))
        if checkpoint is not None and time.monotonic() - last_saved >= cfg.checkpoint_every:
            last_saved = time.monotonic()
            save_checkpoint(checkpoint, model, opt,
                            {"epoch": epoch + 1, "history": result.history,
                             "best_epoch": result.best_epoch, "best_score": best_score},
                            best_state)
        if (cfg.patience and result.best_epoch is not None
                and epoch + 1 - result.best_epoch >= cfg.patience):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        result.best_score = best_score
    result.steps = total
    return result


def _train_epoch(model, opt, train, memory, buffers, cfg, class_counts, tau, epoch, steps_per_epoch,
                 total, warmup) -> float:
    model.train()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
    torch.manual_seed(cfg.seed * 104729 + epoch)  # dropout draws depend on (seed, epoch) only
    losses = []
    for b in range(steps_per_epoch):
        step = epoch * steps_per_epoch + b
        for group in opt.param_groups:
            group["lr"] = cfg.lr * group["lr_scale"] * warmup_cosine(step, total, warmup)
        inputs, y = to_model(model, *train.batch(order[b * cfg.batch_size:(b + 1) * cfg.batch_size],
                                                 memory, model.reads, buffers))
        with autocast(y.device):
            logits, _ = model(*inputs)
        loss = lace_loss(logits.float(), y, class_counts, tau=tau, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def predict(model: torch.nn.Module, queries: QuerySet, memory: MemoryTensors,
            batch_size: int = 1024, buffers: BatchBuffers | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (N, C) and attention (N, L, k) in evaluation mode (``buffers``: gather
    arrays to reuse, as training passes its own)."""
    model.eval()
    logits, attns = [], []
    buffers = buffers if buffers is not None else BatchBuffers()
    for start in range(0, len(queries), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(queries)))
        inputs, _ = to_model(model, *queries.batch(idx, memory, model.reads, buffers))
        with autocast(next(model.parameters()).device):
            out, attn = model(*inputs)
        logits.append(out.float().cpu().numpy())
        attns.append(attn.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(attns)


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


__all__ = ["FitResult", "epochs_for", "fit", "parameter_groups", "predict"]
