"""The classifier on a fusion module's output, with the label evidence that makes it start
as the kNN vote (:class:`RetrievalClassifier`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class RetrievalClassifier(nn.Module):
    """A fusion module followed by a linear classifier: logits = W f + b, or with
    ``hidden_layer`` logits = W gelu(W_h f + b_h) + b, the MLP baseline's classifier on f.

    With ``label_evidence`` the classifier also reads the labels of the neighbours (where the
    memory's entries carry labels in the experiment's classes) as a learned kNN vote:

        w_j      = softmax_j(s * z.m_j) over the ``label_k`` nearest labelled neighbours (0: all)
        logits_c = W_c f + b_c + beta * log(eps + sum_j w_j [y_j = c])

    a product of the trained head and a vote, with the vote's sharpness s (from 1 / 0.07,
    the vote's temperature) and its weight beta (from 1) learned, and the head starting at
    zero: an untrained model predicts exactly what the kNN vote at ``label_k`` predicts, and
    training can only move it where the training data say the head helps. A neighbour
    without a label in the class set (-1: a web caption, an emoji) is passed over, as the
    vote passes it over, so unlabelled neighbours push a prediction nowhere. ``eps`` bounds
    how much a class with no labelled neighbour is held back (log 0.01 = -4.6).

    ``label_counts`` (C,), the memory's labelled entries per class, balances the vote: each
    neighbour's weight is divided by its class's count and the votes are normalised again,
    so a class with 10 entries is not outvoted by one with 1,000 merely for being rarer in
    the memory. LACE trains the head's logits to be free of the training prior; an
    unbalanced vote from a long-tailed memory would put the prior back in. With counts all
    equal (the default, and a balanced memory) it is the plain vote.
    """

    def __init__(self, fusion: nn.Module, dim: int, num_classes: int, *, label_evidence: bool = False,
                 label_k: int = 0, label_temperature: float = 0.07, label_eps: float = 0.01,
                 label_counts=None, hidden_layer: bool = False, device=None, dtype=None):
        super().__init__()
        self.fusion = fusion
        # no parameters without the hidden layer, so weights of a linear head load as before
        self.hidden = nn.Sequential(nn.Linear(dim, dim, device=device, dtype=dtype), nn.GELU()) \
            if hidden_layer else nn.Identity()
        self.head = nn.Linear(dim, num_classes, device=device, dtype=dtype)
        self.num_classes, self.label_eps = num_classes, label_eps
        fusion_reads = tuple(fusion.reads)  # every fusion module declares what it reads
        # the label evidence's members, None without it (so a reader need not probe for them;
        # None buffers are not in the state dict: weights files are as before)
        self.label_weight = self.label_log_scale = None
        self.register_buffer("label_k", None)
        self.register_buffer("label_counts", None)
        if label_evidence:
            kw = dict(device=device, dtype=dtype)
            self.label_weight = nn.Parameter(torch.ones((), **kw))
            self.label_log_scale = nn.Parameter(torch.full((), math.log(1 / label_temperature), **kw))
            # a buffer, so the served model reads it from its weights file
            self.register_buffer("label_k", torch.tensor(int(label_k)))
            counts = torch.ones(num_classes, **kw) if label_counts is None else \
                torch.as_tensor(label_counts, dtype=dtype or torch.float32, device=device).clamp(min=1)
            if counts.shape != (num_classes,):
                raise ValueError(f"label_counts has shape {tuple(counts.shape)}, expected ({num_classes},)")
            self.register_buffer("label_counts", counts)
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.zero_()
            fusion_reads = tuple(dict.fromkeys(fusion_reads + ("keys", "labels")))
        #: what forward() reads of each neighbour (the training data gathers only these)
        self.reads = fusion_reads

    def forward(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                labels: torch.Tensor | None = None, num_classes: int | None = None,
                new_counts: torch.Tensor | None = None):
        """Returns logits (B, C) and attention (B, L, k); ``labels`` (B, k), -1 where a
        neighbour has none, is read only with label evidence. Neighbours come nearest first.

        ``num_classes`` above the trained classes opens the scores to classes that exist only
        in the memory (entries added after training, labels ``C..num_classes-1``): with label
        evidence their score is the head's mean over the trained classes (it never saw them,
        so it neither favours nor holds them back) plus their vote; without, they cannot be
        predicted (-inf). ``new_counts`` (num_classes - C,), their entries in the memory,
        balances their vote as the trained classes' is (see :meth:`label_votes`)."""
        terms = self.terms(z, keys, values, labels, num_classes, new_counts, by_neighbour=False)
        return terms.logits, terms.attention

    def terms(self, z: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              labels: torch.Tensor | None = None, num_classes: int | None = None,
              new_counts: torch.Tensor | None = None, by_neighbour: bool = True) -> "Terms":
        """:meth:`forward`'s logits as the sum of their additive terms (:class:`Terms`):
        what an explanation shows is what produced the scores. ``by_neighbour`` False skips
        the per-neighbour split of a linear fusion (k times its arithmetic; training needs
        only the sum)."""
        f, attn = self.fusion(z, keys, values)
        contribution = None
        if by_neighbour and hasattr(self.fusion, "split") and isinstance(self.hidden, nn.Identity):
            # f is linear in the values (mean kNN): the head's logits split exactly into the
            # query's term and each neighbour's
            f, by_neighbour = self.fusion.split(z, keys, values)  # (B, d), (B, k, d)
            contribution = by_neighbour @ self.head.weight.T  # (B, k, C)
        head = self.head(self.hidden(f))  # (B, C)
        extra = (num_classes or self.num_classes) - self.num_classes
        if extra > 0:
            fill = head.mean(dim=1, keepdim=True) if self.label_weight is not None else \
                torch.full_like(head[:, :1], float("-inf"))
            head = torch.cat([head, fill.expand(-1, extra)], dim=1)  # (B, C + extra)
        memory = vote_weight = None
        if contribution is not None and extra <= 0:
            memory = contribution.sum(dim=1)
        elif contribution is not None:  # a class the head never saw takes no neighbour's share
            memory = torch.cat([contribution.sum(dim=1), head.new_zeros((head.shape[0], extra))], dim=1)
        if self.label_weight is not None:
            vote_weight = self.vote_weights(z, keys, labels, num_classes, new_counts)
            votes = vote_weight.new_zeros((vote_weight.shape[0], head.shape[1]))
            votes = votes.scatter_add_(1, labels.clamp(min=0), vote_weight)  # (B, C)
            vote = self.label_weight * torch.log(votes + self.label_eps)
            memory = vote if memory is None else memory + vote
        return Terms(head, memory, vote_weight, attn, contribution)

    @property
    def balances_votes(self) -> bool:
        """Whether the label evidence's vote is balanced: its class counts differ (read from
        the buffer, so a model loaded from a weights file answers for its own counts)."""
        return self.label_weight is not None and bool((self.label_counts != self.label_counts[0]).any())

    def label_votes(self, z: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor | None,
                    num_classes: int | None = None, new_counts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) the learned vote's mass per class (C: ``num_classes``, default the trained):
        :meth:`vote_weights` summed by the class each neighbour votes for."""
        weight = self.vote_weights(z, keys, labels, num_classes, new_counts)
        votes = weight.new_zeros((weight.shape[0], max(num_classes or 0, self.num_classes)))
        return votes.scatter_add_(1, labels.clamp(min=0), weight)  # (B, C)

    def vote_weights(self, z: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor | None,
                     num_classes: int | None = None, new_counts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, k) each neighbour's share of the vote (0 for one that does not vote).

        A balanced vote divides a class beyond the trained ones by its entry count in
        ``new_counts`` where given, else by the trained classes' mean count. The mean holds a
        small new class back: fmnist-lt/A's held-out Sneaker and Shirt, 27 and 46 entries
        next to a mean of 301, were predicted at 27.3% by the edited model against the plain
        vote's 48.9% (docs/method.md, "Classes that exist only in the memory")."""
        if labels is None:
            raise ValueError("this classifier reads the neighbours' labels; none were given")
        top = int(self.label_k) or keys.shape[1]
        labelled = labels >= 0
        votes_mask = labelled & (labelled.cumsum(dim=1) <= top)  # the first `top` labelled
        scores = torch.einsum("bd,bkd->bk", z, keys) * self.label_log_scale.exp()  # (B, k)
        scores = scores.masked_fill(~votes_mask, float("-inf"))
        # a query with no labelled neighbour gets no votes (softmax over nothing is NaN)
        weight = scores.softmax(dim=-1).nan_to_num(0.0)  # (B, k)
        if self.balances_votes:
            extra = max(num_classes or 0, self.num_classes) - self.num_classes
            fill = self.label_counts.mean().expand(extra) if new_counts is None else \
                torch.as_tensor(new_counts, dtype=self.label_counts.dtype, device=z.device).clamp(min=1)
            if fill.shape != (extra,):
                raise ValueError(f"new_counts has shape {tuple(fill.shape)}, expected ({extra},)")
            counts = torch.cat([self.label_counts, fill])
            weight = weight / counts[labels.clamp(min=0)]
            weight = weight / weight.sum(dim=1, keepdim=True).clamp(min=torch.finfo(weight.dtype).tiny)
        return weight


class Terms(NamedTuple):
    """A :class:`RetrievalClassifier`'s logits as additive terms: ``logits = head + memory``.

    ``head`` (B, C) is the classifier on the fused embedding f (for MAM it reads the memory
    through the attention, which mixes values into f); ``memory`` (B, C) the label evidence
    ``beta * log(eps + votes)``, None without it; ``vote_weight`` (B, k) each neighbour's share
    of that vote; ``attention`` (B, L, k) the fusion module's weights. Where f is linear in
    the values (mean kNN), ``head`` is the classifier on the query's part of f and ``memory``
    the sum of ``contribution`` (B, k, C), each neighbour's term."""

    head: torch.Tensor
    memory: torch.Tensor | None
    vote_weight: torch.Tensor | None
    attention: torch.Tensor
    contribution: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor:
        return self.head if self.memory is None else self.head + self.memory
