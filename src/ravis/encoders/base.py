"""The encoder interface: what the rest of ravis needs from an image or text encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class ImageEncoder(Protocol):
    """Maps images to L2-normalised embeddings.

    Preprocessing and the forward pass are separate so that decoding and resizing can run on
    other threads while the model runs (see :mod:`ravis.encoders.embed`).
    """

    name: str  # the registry spec that recreates it, e.g. "efficientnet_lite0"
    dim: int

    def fingerprint(self) -> str:
        """A hash of everything that changes the output: weights and preprocessing."""

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """An image to one input array of the model: (C, H, W) float32 for most, (H, W, 3)
        uint8 for encoders that scale inside their graph. Same shape and dtype for every image."""

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """A batch of stacked preprocess() outputs -> (B, dim) float32, rows of unit norm."""


@runtime_checkable
class OnnxImageEncoder(ImageEncoder, Protocol):
    """An image encoder that runs an ONNX graph in an onnxruntime session (the embedded
    default, EfficientNet-Lite): a server may open its graph again with other thread settings
    (:func:`ravis.serve.threads.tune_for_latency`)."""

    onnx_path: Path  # the graph the session runs
    session: object  # the onnxruntime.InferenceSession that runs it


@runtime_checkable
class TextEncoder(Protocol):
    """Maps strings to L2-normalised embeddings."""

    name: str
    dim: int

    def fingerprint(self) -> str: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(B,) strings -> (B, dim) float32, rows of unit norm."""


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
