"""RAC-style fusion (Long et al., "Retrieval augmented classification for long-tail visual
recognition", CVPR 2022): the texts of the retrieved neighbours are concatenated and embedded
with the text encoder; that one embedding is fused with z.

RAC adds the logits of an image branch and a text branch. With linear heads that is
W z + W' t = W (z + chi(t)), so the module projects the text embedding into the image space
and the shared classifier does the rest. The concatenated-text embedding is computed once per
query by :func:`ravis.retrieval.rac_texts.embed_neighbour_texts` and arrives as ``values``
of shape (B, 1, d').
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_fusion


@register_fusion("rac")
class RACFusion(nn.Module):
    """f = z + chi(t), t the embedding of the neighbours' concatenated texts."""

    reads = ("values",)  # the memory parts forward() uses

    def __init__(self, dim: int, value_dim: int, *, device=None, dtype=None):
        super().__init__()
        self.chi = nn.Linear(value_dim, dim, device=device, dtype=dtype)

    def forward(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """values: (B, 1, d') one embedding of all neighbour texts per query."""
        f = z + self.chi(values[:, 0])  # (B, d)
        attn = values.new_ones((z.shape[0], 1, values.shape[1]))  # (B, 1, 1)
        return f, attn
