"""Training: LACE loss, warm-up + cosine schedule, checkpoints, the loop."""

from .loss import lace_loss, log_prior
from .schedule import warmup_cosine

__all__ = ["lace_loss", "log_prior", "warmup_cosine"]
