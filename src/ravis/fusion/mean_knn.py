"""Mean k-NN fusion, Eq. 4: r = z + chi(mean of the k neighbour values)."""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_fusion


@register_fusion("mean_knn")
class MeanKNN(nn.Module):
    """Adds the projected mean of the neighbours' values to the query."""

    reads = ("values",)  # the memory parts forward() uses

    def __init__(self, dim: int, value_dim: int, *, device=None, dtype=None):
        super().__init__()
        self.chi = nn.Linear(value_dim, dim, device=device, dtype=dtype)

    def forward(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """Returns f (B, d) and uniform attention (B, 1, k)."""
        B, k = values.shape[:2]
        f = z + self.chi(values.mean(dim=1))  # (B, d)
        attn = values.new_full((B, 1, k), 1.0 / k)
        return f, attn

    def split(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """f as the query's part (B, d) plus each neighbour's (B, k, d): Eq. 4 is linear in
        the values, so an explanation can give every neighbour its exact share."""
        k = values.shape[1]
        return z + self.chi.bias, (values @ self.chi.weight.T) / k
