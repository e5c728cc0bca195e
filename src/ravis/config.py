"""Typed configuration: one dataclass per stage, validated on construction.

Presets are YAML files under ``configs/``; any field can be overridden with a dotted
``key=value`` (``train.lr=1e-3``, ``experiments.0.retrieval.k=10``). The resolved config is
written next to every output.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

METHODS = ("linear", "mlp", "mean_knn", "mam", "rac", "knn_vote")


class ConfigError(ValueError):
    """A config that cannot run, with the field that is wrong."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class MAMConfig:
    """Options of :class:`ravis.fusion.MemoryAttention`; all off is the paper's Eq. 5-6."""

    num_layers: int = 8  # L, stacked layers with their own parameters
    similarity_init: bool = False  # psiQ, psiK start as identities, chi at zero
    learn_temperature: bool = False  # learned score scale instead of 1/sqrt(d)
    init_temperature: float = 1 / 0.07  # its starting value
    similarity_bias: bool = False  # add a learned multiple of the retrieval similarity
    attn_dropout: float = 0.0  # dropout on attention weights

    def __post_init__(self):
        _check(self.num_layers >= 1, f"mam.num_layers must be >= 1, got {self.num_layers}")
        _check(0 <= self.attn_dropout < 1, f"mam.attn_dropout must be in [0, 1), got {self.attn_dropout}")
        _check(self.init_temperature > 0, "mam.init_temperature must be > 0")


@dataclass
class TrainConfig:
    """Optimisation of every trained method."""

    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.2  # decoupled weight decay on weight matrices
    batch_size: int = 512
    epochs: int = 10
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to zero
    min_steps: int = 0  # stretch epochs so that small training sets still get this many steps
    label_smoothing: float = 0.1
    tau: float | str = 1.0  # LACE strength, or "auto": chosen on validation from tau_grid
    tau_grid: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    val_fraction: float = 0.0  # > 0: a stratified validation split picks epoch (and tau)
    patience: int = 0  # > 0: stop after this many epochs without validation improvement
    seed: int = 0

    def __post_init__(self):
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check(self.epochs >= 1, "train.epochs must be >= 1")
        _check(0 <= self.warmup_epochs <= self.epochs, "train.warmup_epochs must be in [0, epochs]")
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing must be in [0, 1)")
        _check(0 <= self.val_fraction < 0.5, "train.val_fraction must be in [0, 0.5)")
        if isinstance(self.tau, str):
            _check(self.tau == "auto", f"train.tau must be a number or 'auto', got {self.tau!r}")
            _check(self.val_fraction > 0, "train.tau='auto' needs train.val_fraction > 0")
            _check(len(self.tau_grid) > 0, "train.tau_grid is empty")
        _check(self.patience == 0 or self.val_fraction > 0, "train.patience needs train.val_fraction > 0")
