"""Fusion modules: refine a query embedding z with its retrieved neighbours.

Every module has ``forward(z, keys, values) -> (f, attn)`` with ``z (B, d)``,
``keys (B, k, d)``, ``values (B, k, d')``, ``f (B, d)`` and ``attn (B, L, k)``.
They only read the memory. :class:`RetrievalClassifier` puts a linear classifier on top.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .heads import MLP, NoMemory
from .knn_vote import knn_vote
from .mean_knn import MeanKNN
from .memory_attention import MemoryAttention, MemoryAttentionLayer
from .rac import RACFusion

#: Method name -> fusion class. ``knn_vote`` is not here: it has no parameters.
FUSIONS: dict[str, Callable[..., nn.Module]] = {
    "linear": NoMemory,
    "mlp": MLP,
    "mean_knn": MeanKNN,
    "mam": MemoryAttention,
    "rac": RACFusion,
}


def create_fusion(name: str, dim: int, value_dim: int, **kwargs) -> nn.Module:
    """Builds a registered fusion module by name."""
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose from {sorted(FUSIONS)}")
    return FUSIONS[name](dim, value_dim, **kwargs)


class RetrievalClassifier(nn.Module):
    """A fusion module followed by a linear classifier: logits = W f + b."""

    def __init__(self, fusion: nn.Module, dim: int, num_classes: int, *, device=None, dtype=None):
        super().__init__()
        self.fusion = fusion
        self.head = nn.Linear(dim, num_classes, device=device, dtype=dtype)

    def forward(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """Returns logits (B, C) and attention (B, L, k)."""
        f, attn = self.fusion(z, keys, values)
        return self.head(f), attn


def build_model(method: str, exp, dim: int, value_dim: int, num_classes: int) -> RetrievalClassifier:
    """The fusion module of ``method`` with a linear classifier, configured by the experiment
    config ``exp`` (its ``mam`` section) and seeded by its train seed."""
    torch.manual_seed(exp.train.seed)
    kwargs = {}
    if method == "mam":
        m = exp.mam
        kwargs = dict(num_layers=m.num_layers, similarity_init=m.similarity_init,
                      learn_temperature=m.learn_temperature, init_temperature=m.init_temperature,
                      similarity_bias=m.similarity_bias, attn_dropout=m.attn_dropout,
                      qk_lr_scale=m.qk_lr_scale, query_dropout=m.query_dropout)
    return RetrievalClassifier(create_fusion(method, dim, value_dim, **kwargs), dim, num_classes)


__all__ = [
    "FUSIONS", "build_model", "MLP", "MeanKNN", "MemoryAttention", "MemoryAttentionLayer", "NoMemory",
    "RACFusion", "RetrievalClassifier", "create_fusion", "knn_vote",
]
