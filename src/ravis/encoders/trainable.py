"""An image encoder's network as a trainable torch module, and an encoder made from one.

Fine-tuning (``train.finetune_encoder``) trains the network an encoder runs, together with
the fusion module and classifier. Each torch-backed encoder offers its network through
``network()``: a :class:`FeatureNet`, a copy of its weights that maps the stacked outputs
of the encoder's own ``preprocess`` to features, so fine-tuning sees exactly the pixels that
embedding does. Afterwards :class:`FineTunedEncoder` embeds with the trained copy, through
the same caches as any encoder (its fingerprint holds the trained weights' digest).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..device import autocast, to_device
from ..errors import InputError
from .base import ImageEncoder, l2_normalize


class FeatureNet(torch.nn.Module):
    """pixels (B, *preprocess() shape), uint8 or float32 -> features (B, dim), before the L2
    normalisation; differentiable.

    It stays in evaluation mode even while it trains: batch norm keeps the statistics the
    weights were trained with, and stochastic depth stays off. Fine-tuning batches of a few
    dozen images estimate batch statistics badly, and an encoder that computes the same
    function in training and afterwards makes a resumed run repeat an uninterrupted one.
    """

    def __init__(self, net: torch.nn.Module, features: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
                 channels_last: bool = False):
        super().__init__()
        self.net = net
        self.features = features
        # the pixels' layout: (B, H, W, 3) where True, else (B, 3, H, W); augmentation needs it
        self.width_axis = 2 if channels_last else 3
        super().train(False)

    def train(self, mode: bool = True) -> "FeatureNet":
        return super().train(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.features(self.net, pixels)


def trainable_network(encoder: ImageEncoder) -> FeatureNet:
    """A trainable copy of ``encoder``'s network (the encoder itself is left as it is)."""
    network = getattr(encoder, "network", None)
    if network is None:
        raise InputError(f"train.finetune_encoder: the image encoder {encoder.name!r} has no torch "
                         "network to fine-tune (efficientnet_lite0, timm:, open_clip: and hf: do)")
    return network()


class FineTunedEncoder:
    """``base``'s preprocessing with a fine-tuned :class:`FeatureNet`, as an image encoder."""

    def __init__(self, base: ImageEncoder, net: FeatureNet, device: torch.device | None = None):
        from .fingerprint import state_digest

        self.base, self.net = base, net.eval()
        self.device = torch.device(device or "cpu")
        self.name = f"{base.name}+finetuned"
        self.dim = base.dim
        self._fingerprint = f"{base.fingerprint()}+finetuned-{state_digest(net)}"

    def fingerprint(self) -> str:
        return self._fingerprint

    def preprocess(self, image) -> np.ndarray:
        return self.base.preprocess(image)

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        x = to_device(np.ascontiguousarray(pixels), self.device)
        with autocast(self.device):
            feats = self.net(x)
        return l2_normalize(feats.float().cpu().numpy())


__all__ = ["FeatureNet", "FineTunedEncoder", "trainable_network"]
