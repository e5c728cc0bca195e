"""Logit-adjusted cross-entropy (Menon et al., ICLR 2021), the paper's loss for long-tailed data."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_prior(class_counts, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """log(n_c / sum n) with empty classes given one pseudo-count (log 0 would be -inf)."""
    counts = torch.as_tensor(class_counts, device=device, dtype=dtype).clamp(min=1)
    return counts.log() - counts.sum().log()


def lace_loss(logits: torch.Tensor, targets: torch.Tensor, class_counts, tau: float = 1.0,
              label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of ``logits + tau * log(prior)``; predict with the raw logits.

    Args:
        logits: (B, C).
        targets: (B,) class indices.
        class_counts: (C,) training images per class.
        tau: strength of the adjustment; 0 is plain cross-entropy.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
    """
    adjusted = logits + tau * log_prior(class_counts, device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(adjusted, targets, label_smoothing=label_smoothing)
