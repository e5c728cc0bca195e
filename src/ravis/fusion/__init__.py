"""Fusion modules: refine a query embedding z with its retrieved neighbours.

Every module has ``forward(z, keys, values) -> (f, attn)`` with ``z (B, d)``,
``keys (B, k, d)``, ``values (B, k, d')``, ``f (B, d)`` and ``attn (B, L, k)``.
They only read the memory. Each registers itself by name (:func:`register_fusion`);
:class:`RetrievalClassifier` puts a classifier on top, and :func:`build_model` builds a
method's model from the method registry and the experiment's config.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ..methods import method
from ._registry import FUSIONS, register_fusion
from .classifier import RetrievalClassifier
from .heads import MLP, NoMemory
from .knn_vote import knn_vote
from .mean_knn import MeanKNN
from .memory_attention import MemoryAttention, MemoryAttentionLayer
from .rac import RACFusion


def create_fusion(name: str, dim: int, value_dim: int, **kwargs) -> nn.Module:
    """Builds the fusion module of registered method ``name`` (:mod:`ravis.methods`)."""
    spec = method(name)
    if not spec.trains:
        raise ValueError(f"method {name!r} has no fusion module: it trains nothing")
    return FUSIONS[spec.fusion](dim, value_dim, **kwargs)


def build_model(name: str, exp, dim: int, value_dim: int, num_classes: int,
                label_k: int = 0, label_counts=None) -> RetrievalClassifier:
    """The fusion module of method ``name`` with its classifier, configured by the
    experiment config ``exp`` (the method's options and classifier sections) and seeded by
    its train seed. ``label_k``: how many nearest neighbours the label evidence reads;
    ``label_counts``: the memory's labelled entries per class, which balance it where the
    classifier's ``balance_votes`` says so (a trained model's own values of both are in its
    weights)."""
    spec = method(name)
    torch.manual_seed(exp.train.seed)
    options = asdict(getattr(exp, spec.options)) if spec.options else {}
    head = getattr(exp, spec.classifier) if spec.classifier else None
    return RetrievalClassifier(create_fusion(name, dim, value_dim, **options), dim, num_classes,
                               label_evidence=spec.reads_labels(exp), label_k=label_k,
                               label_temperature=exp.retrieval.vote_temperature,
                               label_counts=label_counts if head and head.balance_votes else None,
                               hidden_layer=bool(head and head.hidden_layer))


__all__ = [
    "FUSIONS", "build_model", "MLP", "MeanKNN", "MemoryAttention", "MemoryAttentionLayer", "NoMemory",
    "RACFusion", "RetrievalClassifier", "create_fusion", "knn_vote", "register_fusion",
]
