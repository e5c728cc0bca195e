"""Fine-tuning the image encoder together with the fusion module and classifier ("Ours + FT"):
the joint model, its images, and the task the training loop runs on them (:class:`JointTask`).

It starts from a fusion model already trained on the frozen embeddings (a trained head
first, then everything: the order Kumar et al., ICLR 2022, found to keep more of the
pretrained features than fine-tuning under a random head). Each step embeds the batch's
images with the encoder being trained; their neighbours, keys and values stay those the
frozen encoder retrieved, so a step costs one encoder pass per query image and none per
memory entry. The encoder trains at ``train.encoder_lr``, the fusion module and classifier
at ``train.finetune_lr``, both with warm-up and cosine decay.

It runs on the one training loop (:class:`ravis.training.trainer.TrainingLoop`), which
checkpoints after a step too here: every draw inside a step (dropout, flips) depends on
(seed, step), so a run killed mid-epoch and resumed from its last checkpoint reaches the same
weights as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..device import autocast, to_device
from ..evaluation.metrics import selection_score
from ..encoders.trainable import FeatureNet
from .data import BatchBuffers
from .loss import lace_loss
from .trainer import FitData, FitResult, Schedule, TrainingLoop, parameter_groups, predict, to_model


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


@dataclass
class Images:
    """The images of the training (and validation) queries: the dataset rows, one per query,
    whose pixels each step (and each validation pass) loads."""

    pixels: Pixels
    train_rows: np.ndarray  # (N_train,) dataset row of each training query
    val_rows: np.ndarray | None = None  # (N_val,) dataset row of each validation query


class JointTask:
    """Encoder, fusion module and classifier trained together: each step embeds its batch's
    images with the encoder being trained; their neighbours, keys and values stay those the
    frozen encoder retrieved (``data``), and validation queries are embedded afresh."""

    def __init__(self, joint: JointModel, images: Images, data: FitData, cfg: TrainConfig, tau: float):
        self.model, self.images, self.data, self.cfg, self.tau = joint, images, data, cfg, tau
        self.buffers = BatchBuffers()
        self.batches: list[torch.Tensor] = []
        self.pending: Pending | None = None

    def __len__(self) -> int:
        return len(self.data.train)

    def _submit(self, b: int) -> Pending:
        return self.images.pixels.submit(self.images.train_rows[self.batches[b].numpy()])

    def start_epoch(self, epoch: int, batches: list[torch.Tensor], first: int) -> None:
        self.batches = batches
        self.pending = self._submit(first) if first < len(batches) else None
        self.model.train()

    def loss(self, step: int, b: int) -> torch.Tensor:
        seed, joint = self.cfg.seed, self.model
        gen = torch.Generator().manual_seed(seed * 104729 + step)
        torch.manual_seed(seed * 15485863 + step)  # dropout draws depend on (seed, step)
        images = self.pending.result()
        if b + 1 < len(self.batches):  # the next batch loads while this one trains
            self.pending = self._submit(b + 1)
        (_, *neighbours), y = self.data.train.batch(self.batches[b], self.data.memory, joint.fusion.reads,
                                                    self.buffers)
        (x, *neighbours), y = to_model(joint, (flip(images, joint.encoder.width_axis, gen), *neighbours), y)
        with autocast(next(joint.parameters()).device):
            logits, _ = joint(x, *neighbours)  # neighbours: keys, values, their labels
        return lace_loss(logits.float(), y, self.data.class_counts, tau=self.tau,
                         label_smoothing=self.cfg.label_smoothing)

    def score(self) -> float | None:
        d = self.data
        if not d.has_val:
            return None
        z = embed_rows(self.model.encoder, self.images.pixels, self.images.val_rows, self.cfg.finetune_batch_size)
        queries = dataclasses.replace(d.val, z=torch.from_numpy(z))
        logits = predict(self.model.fusion, queries, d.memory, buffers=self.buffers)[0]
        return selection_score(logits.argmax(1), d.val.labels.numpy(), d.metric)


def finetune(joint: JointModel, images: Images, data: FitData, cfg: TrainConfig, *, tau: float,
             checkpoint: Path | None = None, resume: bool = False,
             log: Callable[[str], None] | None = None) -> FitResult:
    """Trains ``joint`` in place (one training query per image of ``images.train_rows``),
    the encoder at ``train.encoder_lr``, the fusion module and classifier at
    ``train.finetune_lr``. With validation queries keeps the epoch whose score is best, the
    starting point (epoch 0: the frozen encoder) included."""
    groups = (parameter_groups(joint.fusion, cfg.finetune_lr, cfg.weight_decay)
              + parameter_groups(joint.encoder, cfg.encoder_lr, cfg.weight_decay))
    opt = torch.optim.AdamW(groups, lr=cfg.finetune_lr)
    steps_per_epoch = max(1, math.ceil(len(data.train) / cfg.finetune_batch_size))
    schedule = Schedule(cfg.finetune_epochs, cfg.finetune_batch_size, steps_per_epoch,
                        round(min(cfg.warmup_epochs, 1.0) * steps_per_epoch), cfg.seed,
                        cfg.checkpoint_every, step_checkpoints=True)
    return TrainingLoop(JointTask(joint, images, data, cfg, tau), opt, schedule, checkpoint, log).run(resume)


__all__ = ["Images", "JointModel", "JointTask", "Pixels", "embed_rows", "finetune", "flip"]
