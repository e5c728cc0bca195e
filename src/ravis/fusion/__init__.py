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


__all__ = [
    "FUSIONS", "MLP", "MeanKNN", "MemoryAttention", "MemoryAttentionLayer", "NoMemory",
    "RACFusion", "RetrievalClassifier", "create_fusion", "knn_vote",
]
