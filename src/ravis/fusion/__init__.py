"""Fusion modules: refine a query embedding z with its retrieved neighbours.

Every module has ``forward(z, keys, values) -> (f, attn)`` with ``z (B, d)``,
``keys (B, k, d)``, ``values (B, k, d')``, ``f (B, d)`` and ``attn (B, L, k)``.
They only read the memory. :class:`RetrievalClassifier` puts a linear classifier on top.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from .heads import MLP, NoMemory
from .knn_vote import knn_vote
from .mean_knn import MeanKNN
from .memory_attention import MemoryAttention, MemoryAttentionLayer
from .rac import RACFusion
from ..methods import method

def create_fusion(name: str, dim: int, value_dim: int, **kwargs) -> nn.Module:
    """Builds the fusion module of registered method ``name`` (:mod:`ravis.methods`)."""
    spec = method(name)
    if not spec.trains:
        raise ValueError(f"method {name!r} has no fusion module: it trains nothing")
    return globals()[spec.fusion](dim, value_dim, **kwargs)


class RetrievalClassifier(nn.Module):
    """A fusion module followed by a linear classifier: logits = W f + b.

    With ``label_evidence`` the classifier also reads the labels of the neighbours (where the
    memory's entries carry labels in the experiment's classes), weighted by the fusion's
    last-layer attention a:

        logits_c = W_c f + b_c + beta * log(eps + sum_j a_j [y_j = c])

    a product of the trained head and an attention-weighted vote, with beta learned (from 1).
    A neighbour without a label in the class set (-1: a web caption, an emoji) adds no
    evidence to any class, so unlabelled neighbours cannot push a prediction anywhere.
    beta -> 0 gives the plain classifier, a large beta the vote; ``eps`` bounds how much a
    class with no labelled neighbour is held back (log eps = -4.6 at 0.01).
    """

    def __init__(self, fusion: nn.Module, dim: int, num_classes: int, *, label_evidence: bool = False,
                 label_eps: float = 0.01, device=None, dtype=None):
        super().__init__()
        self.fusion = fusion
        self.head = nn.Linear(dim, num_classes, device=device, dtype=dtype)
        self.num_classes, self.label_eps = num_classes, label_eps
        self.label_weight = nn.Parameter(torch.ones((), device=device, dtype=dtype)) if label_evidence else None
        fusion_reads = tuple(getattr(fusion, "reads", ("keys", "values")))
        #: what forward() reads of each neighbour (the training data gathers only these)
        self.reads = fusion_reads + (("labels",) if label_evidence else ())

    def forward(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                labels: torch.Tensor | None = None):
        """Returns logits (B, C) and attention (B, L, k); ``labels`` (B, k), -1 where a
        neighbour has none, is read only with label evidence."""
        f, attn = self.fusion(z, keys, values)
        logits = self.head(f)
        if self.label_weight is not None:
            if labels is None:
                raise ValueError("this classifier reads the neighbours' labels; none were given")
            weight = attn[:, -1] * (labels >= 0)  # (B, k): the last layer's attention
            votes = weight.new_zeros((weight.shape[0], self.num_classes))
            votes.scatter_add_(1, labels.clamp(min=0), weight)  # (B, C)
            logits = logits + self.label_weight * torch.log(votes + self.label_eps)
        return logits, attn


def build_model(name: str, exp, dim: int, value_dim: int, num_classes: int) -> RetrievalClassifier:
    """The fusion module of method ``name`` with a linear classifier, configured by the
    experiment config ``exp`` (the method's options section) and seeded by its train seed."""
    spec = method(name)
    torch.manual_seed(exp.train.seed)
    options = asdict(getattr(exp, spec.options)) if spec.options else {}
    label_evidence = bool(options.pop("label_evidence", False)) and "labels" in spec.reads
    return RetrievalClassifier(create_fusion(name, dim, value_dim, **options), dim, num_classes,
                               label_evidence=label_evidence)


__all__ = [
    "build_model", "MLP", "MeanKNN", "MemoryAttention", "MemoryAttentionLayer", "NoMemory",
    "RACFusion", "RetrievalClassifier", "create_fusion", "knn_vote",
]
