"""Fine-tuning the image encoder together with the fusion module and classifier ("Ours + FT").

It starts from a fusion model already trained on the frozen embeddings (a trained head
first, then everything: the order Kumar et al., ICLR 2022, found to keep more of the
pretrained features than fine-tuning under a random head). Each step embeds the batch's
images with the encoder being trained; their neighbours, keys and values stay those the
frozen encoder retrieved, so a step costs one encoder pass per query image and none per
memory entry. The encoder trains at ``train.encoder_lr``, the fusion module and classifier
at ``train.finetune_lr``, both with warm-up and cosine decay.

Resuming is exact to the step: the shuffle of epoch e depends on (seed, e) only, and every
draw inside a step (dropout, flips) on (seed, step), so a run killed mid-epoch and resumed
from its last checkpoint reaches the same weights as one that was never interrupted.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..device import autocast, to_device
from ..evaluation.metrics import selection_score
from ..encoders.trainable import FeatureNet
from .checkpoint import load_checkpoint, save_checkpoint
from .data import BatchBuffers, MemoryTensors, QuerySet
from .loss import lace_loss
from .schedule import warmup_cosine
from .trainer import FitResult, format_entry, parameter_groups, predict, to_model


class JointModel(torch.nn.Module):
    """Encoder and fusion model as one module: images in, (logits, attention) out."""

    def __init__(self, encoder: FeatureNet, fusion: torch.nn.Module):
        super().__init__()
        self.encoder, self.fusion = encoder, fusion

    def forward(self, pixels, keys, values, neighbor_labels=None):
        z = F.normalize(self.encoder(pixels).float(), dim=1)  # as embedding normalises it
        return self.fusion(z, keys, values, neighbor_labels)


class Pixels:
    """Batches of preprocessed images of a dataset, loaded on threads one batch ahead."""

    def __init__(self, dataset, preprocess: Callable, workers: int | None = None):
        self.dataset, self.preprocess = dataset, preprocess
        self.pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1))

    def _one(self, row: int) -> np.ndarray:
        return self.preprocess(self.dataset.load_image(int(row)))

    def submit(self, rows: np.ndarray) -> "Pending":
        """The stacked preprocess() outputs of ``rows``, being loaded."""
        return Pending([self.pool.submit(self._one, r) for r in rows])

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class Pending:
    def __init__(self, futures):
        self.futures = futures

    def result(self) -> np.ndarray:
        return np.stack([f.result() for f in self.futures])


def flip(pixels: np.ndarray, width_axis: int, gen: torch.Generator) -> np.ndarray:
    """Each image of the batch mirrored left-right with probability 1/2 (draws from ``gen``)."""
    mask = torch.rand(len(pixels), generator=gen).numpy() < 0.5
    out = pixels.copy()
    out[mask] = np.flip(pixels[mask], axis=width_axis)
    return out


@torch.no_grad()
def embed_rows(encoder: FeatureNet, pixels: Pixels, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """(len(rows), dim) unit-norm embeddings of the dataset rows by ``encoder`` as it is now."""
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        x = to_device(pixels.submit(rows[start:start + batch_size]).result(), device)
        with autocast(device):
            out.append(F.normalize(encoder(x).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def finetune(joint: JointModel, pixels: Pixels, train: QuerySet, train_rows: np.ndarray,
             memory: MemoryTensors, cfg: TrainConfig, class_counts, *, tau: float,
             val: QuerySet | None = None, val_rows: np.ndarray | None = None,
             checkpoint=None, resume: bool = False, metric: str = "balanced",
             log: Callable[[str], None] | None = None) -> FitResult:
    """Trains ``joint`` in place on the images ``train_rows`` of ``pixels`` (one per query of
    ``train``). With ``val`` keeps the epoch whose validation score is best, the starting
    point (epoch 0: the frozen encoder) included; its queries are embedded afresh each epoch."""
    groups = (parameter_groups(joint.fusion, cfg.finetune_lr, cfg.weight_decay)
              + parameter_groups(joint.encoder, cfg.encoder_lr, cfg.weight_decay))
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.AdamW(groups, lr=cfg.finetune_lr)
    bs, epochs = cfg.finetune_batch_size, cfg.finetune_epochs
    steps_per_epoch = max(1, math.ceil(len(train) / bs))
    total, warmup = epochs * steps_per_epoch, round(min(cfg.warmup_epochs, 1.0) * steps_per_epoch)
    result = FitResult()
    best_state, best_score, epoch0, step0, losses = None, -1.0, 0, 0, []
    device = next(joint.parameters()).device
    buffers = BatchBuffers()

    def score() -> float:
        z = embed_rows(joint.encoder, pixels, val_rows, bs)
        queries = dataclasses.replace(val, z=torch.from_numpy(z))
        return selection_score(predict(joint.fusion, queries, memory, buffers=buffers)[0].argmax(1),
                               val.labels.numpy(), metric)

    def save(epoch: int, step: int) -> None:
        save_checkpoint(checkpoint, joint, opt,
                        {"epoch": epoch, "step": step, "losses": losses, "history": result.history,
                         "best_epoch": result.best_epoch, "best_score": best_score,
                         "initial_score": result.initial_score}, best_state)

    has_val = val is not None and len(val) > 0
    if resume and checkpoint is not None and checkpoint.exists():
        progress, best_state = load_checkpoint(checkpoint, joint, opt)
        epoch0, step0, losses = progress["epoch"], progress["step"], progress["losses"]
        result.history, result.best_epoch = progress["history"], progress["best_epoch"]
        best_score, result.initial_score = progress["best_score"], progress["initial_score"]
    elif has_val:
        result.initial_score = best_score = score()
        result.best_epoch, best_state = 0, copy.deepcopy(joint.state_dict())
    last_saved = time.monotonic()
    try:
        for epoch in range(epoch0, epochs):
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
            batches = [order[b * bs:(b + 1) * bs] for b in range(steps_per_epoch)]
            first = step0 if epoch == epoch0 else 0
            pending = pixels.submit(train_rows[batches[first].numpy()]) if first < steps_per_epoch else None
            joint.train()
            for b in range(first, steps_per_epoch):
                step = epoch * steps_per_epoch + b
                gen = torch.Generator().manual_seed(cfg.seed * 104729 + step)
                torch.manual_seed(cfg.seed * 15485863 + step)  # dropout draws depend on (seed, step)
                images = pending.result()
                if b + 1 < steps_per_epoch:  # the next batch loads while this one trains
                    pending = pixels.submit(train_rows[batches[b + 1].numpy()])
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * warmup_cosine(step, total, warmup)
                (_, *neighbours), y = train.batch(batches[b], memory, joint.fusion.reads, buffers)
                (x, *neighbours), y = to_model(joint, (flip(images, joint.encoder.width_axis, gen), *neighbours), y)
                with autocast(device):
                    logits, _ = joint(x, *neighbours)  # neighbours: keys, values, their labels
                loss = lace_loss(logits.float(), y, class_counts, tau=tau,
                                 label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                if checkpoint is not None and time.monotonic() - last_saved >= cfg.checkpoint_every:
                    save(epoch, b + 1)  # mid-epoch: resumes at the next step
                    last_saved = time.monotonic()
            entry = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
            losses = []
            if has_val:
                entry["val_score"] = score()
                if entry["val_score"] > best_score:
                    best_score, result.best_epoch = entry["val_score"], epoch + 1
                    best_state = copy.deepcopy(joint.state_dict())
            result.history.append(entry)
            if log:
                log(format_entry(entry))
            if checkpoint is not None:
                save(epoch + 1, 0)
                last_saved = time.monotonic()
    finally:
        joint.eval()
    if best_state is not None:
        joint.load_state_dict(best_state)
        result.best_score = best_score
    result.steps = total
    return result


__all__ = ["JointModel", "Pixels", "embed_rows", "finetune", "flip"]
