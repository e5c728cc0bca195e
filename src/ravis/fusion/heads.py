"""Baselines that do not look at the memory: the linear probe and a 2-layer MLP.

They share the fusion signature so the trainer and the evaluation treat every method alike;
their attention has zero layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_fusion


def _no_attention(z: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return z.new_zeros((z.shape[0], 0, keys.shape[1]))  # (B, 0, k)


@register_fusion("no_memory")
class NoMemory(nn.Module):
    """f = z: with the classifier's linear layer this is the linear probe."""

    reads = ()  # the memory parts forward() uses

    def __init__(self, dim: int, value_dim: int | None = None, *, device=None, dtype=None):
        super().__init__()

    def forward(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        return z, _no_attention(z, keys)


@register_fusion("mlp")
class MLP(nn.Module):
    """f = dropout(gelu(W z + b)): with the classifier's linear layer, a 2-layer MLP."""

    reads = ()  # the memory parts forward() uses

    def __init__(self, dim: int, value_dim: int | None = None, *, dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.fc = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        return self.drop(self.act(self.fc(z))), _no_attention(z, keys)
