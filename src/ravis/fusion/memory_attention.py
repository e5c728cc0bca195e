"""Memory Attention Module (MAM), Eq. 5-6 of Iscen, Fathi, Schmid (CVPR 2023).

    f_0 = z
    f_l = z + chi_l(softmax(psiQ_l(f_{l-1}) psiK_l(M_NN)^T / sqrt(d)) V_NN)

With no keyword options the module is exactly that equation. The keyword options are the
ravis improvements (all off by default, turned on by the ravis training preset):

- ``similarity_init``: psiQ and psiK start as scaled identities, so that the first scores
  are the retrieval similarity z.m (a random psiK makes the first attention a random mix of
  neighbours, and on small training sets it never recovers), and chi starts at zero, so the
  module starts as the identity on z and each layer's query starts as z.
- ``qk_lr_scale``: a learning-rate multiplier for psiQ and psiK (read by the trainer), so
  that Adam refines the similarity instead of overwriting it.
- ``learn_temperature``: a learned log-scale replaces the fixed 1/sqrt(d), so the module can
  sharpen attention to the few nearest neighbours (a kNN vote at k=10 beats k=100).
- ``similarity_bias``: a learned multiple of the retrieval similarity is added to the
  scores, which keeps the retrieval ranking available when psiQ/psiK drift.
- ``attn_dropout``: dropout on the attention weights against over-confident attention.

Computation never applies psiK to the k neighbours: q.(Wk m + bk) = (Wk^T q).m + q.bk, and the
second term is the same for every neighbour, so it drops out of the softmax. Same parameters,
same result, k times less work in the largest matmul.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._registry import register_fusion


class MemoryAttentionLayer(nn.Module):
    """One layer of Eq. 6: psiQ (``q``), psiK (``k``) and chi (``chi``)."""

    def __init__(self, dim: int, value_dim: int, *, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.q = nn.Linear(dim, dim, **kw)
        self.k = nn.Linear(dim, dim, **kw)
        self.chi = nn.Linear(value_dim, dim, **kw)

    def scores(self, f: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """psiQ(f) . psiK(m) for every neighbour m, with psiK never applied to the k keys."""
        q = self.q(f)  # (B, d)
        qk = q @ self.k.weight  # (B, d): Wk^T applied once to the query
        # q.bk is the same for every neighbour and cancels in the softmax; it costs B*d and
        # keeps the scores equal to the plain form (psiK's bias gets its true, zero, gradient).
        return torch.einsum("bd,bkd->bk", qk, keys) + (q @ self.k.bias)[:, None]  # (B, k)


@register_fusion("memory_attention")
class MemoryAttention(nn.Module):
    """Stacked memory attention over each query's k retrieved neighbours.

    Args:
        dim: query and key dimension d.
        value_dim: value dimension d'.
        num_layers: L, each layer with its own parameters.
        similarity_init: start psiQ, psiK as identities (scaled so the initial score is the
            cosine similarity times the initial temperature).
        learn_temperature: learn the score scale instead of the fixed 1/sqrt(d).
        init_temperature: initial score scale when learning it (1/0.07, CLIP's).
        similarity_bias: add a learned multiple of the query-key cosine similarity.
        attn_dropout: dropout probability on the attention weights.
        qk_lr_scale: learning-rate multiplier for psiQ and psiK, stored as ``lr_scale`` on
            their parameters for the trainer.
        query_dropout: in training, the probability of dropping a query's z term from the
            output (the attention still uses z).
    """

    reads = ("keys", "values")  # the memory parts forward() uses

    def __init__(
        self,
        dim: int,
        value_dim: int,
        num_layers: int = 8,
        *,
        similarity_init: bool = False,
        learn_temperature: bool = False,
        init_temperature: float = 1 / 0.07,
        similarity_bias: bool = False,
        attn_dropout: float = 0.0,
        qk_lr_scale: float = 1.0,
        query_dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.dim, self.value_dim, self.num_layers = dim, value_dim, num_layers
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(dim, value_dim, device=device, dtype=dtype) for _ in range(num_layers)
        )
        kw = dict(device=device, dtype=dtype)
        self.log_scale = (
            nn.Parameter(torch.full((num_layers,), math.log(init_temperature), **kw))
            if learn_temperature
            else None
        )
        self.sim_weight = nn.Parameter(torch.zeros(num_layers, **kw)) if similarity_bias else None
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.query_dropout = query_dropout
        if similarity_init:
            self._init_as_similarity()
        if qk_lr_scale != 1.0:
            for layer in self.layers:
                for p in (*layer.q.parameters(), *layer.k.parameters()):
                    p.lr_scale = qk_lr_scale

    @torch.no_grad()
    def _init_as_similarity(self) -> None:
        # The fixed 1/sqrt(d) scale would make identity scores nearly flat, so when the
        # temperature is not learned the identities absorb sqrt(sqrt(d)) each.
        gain = 1.0 if self.log_scale is not None else self.dim**0.25
        for layer in self.layers:
            for lin in (layer.q, layer.k):
                lin.weight.copy_(torch.eye(self.dim) * gain)
                lin.bias.zero_()
            layer.chi.weight.zero_()
            layer.chi.bias.zero_()

    def scale(self, i: int) -> torch.Tensor | float:
        if self.log_scale is None:
            return 1.0 / math.sqrt(self.dim)
        return self.log_scale[i].clamp(max=math.log(1000.0)).exp()

    def forward(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """Refine z with its neighbours.

        Args:
            z: (B, d) query embeddings.
            keys: (B, k, d) neighbour keys.
            values: (B, k, d') neighbour values.

        Returns:
            f (B, d) and the attention weights (B, L, k).
        """
        sim = torch.einsum("bd,bkd->bk", z, keys) if self.sim_weight is not None else None  # (B, k)
        skip = z
        if self.training and self.query_dropout > 0:
            # Drop the whole z term for some queries (an inverted-dropout mask per row), so the
            # classifier must also learn to read the memory alone.
            keep = z.new_ones((z.shape[0], 1))
            skip = z * nn.functional.dropout(keep, self.query_dropout, training=True)
        f, attns = z, []
        for i, layer in enumerate(self.layers):
            scores = layer.scores(f, keys) * self.scale(i)  # (B, k)
            if sim is not None:
                scores = scores + self.sim_weight[i] * sim
            attn = scores.softmax(dim=-1)  # (B, k)
            attns.append(attn)
            mixed = torch.einsum("bk,bkv->bv", self.attn_dropout(attn), values)  # (B, d')
            f = skip + layer.chi(mixed)  # every layer adds to the original z
        return f, torch.stack(attns, dim=1)  # (B, d), (B, L, k)
