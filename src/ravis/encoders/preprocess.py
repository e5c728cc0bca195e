"""Image preprocessing shared by the encoders: resize + centre crop, normalise (the colour
mode is :func:`ravis.data.images.to_rgb`'s, the decoder's)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..data.images import to_rgb


def resize_center_crop(image: Image.Image, size: int, crop_pct: float = 224 / 256,
                       resample=Image.BICUBIC) -> Image.Image:
    """Resize the short side to size / crop_pct, then crop the central size x size square."""
    w, h = image.size
    scale = size / crop_pct / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_chw(image: Image.Image, mean, std) -> np.ndarray:
    """RGB image -> (3, H, W) float32, (x/255 - mean) / std per channel.

    One fused multiply-add per channel straight from uint8 into a preallocated output: the
    naive float conversion, subtraction and transpose cost about 8x more and left the
    encoder waiting on preprocessing on a 2-core machine.
    """
    arr = np.asarray(image)  # (H, W, 3) uint8
    out = np.empty((3, *arr.shape[:2]), dtype=np.float32)
    for c in range(3):
        scale = 1.0 / (255.0 * std[c])
        np.multiply(arr[..., c], np.float32(scale), out=out[c], casting="unsafe")
        out[c] -= np.float32(mean[c] / std[c])
    return out


def resized_rgb(image: Image.Image, size: int, crop_pct: float = 224 / 256) -> Image.Image:
    """to_rgb + resize_center_crop, resizing grey images before they become 3 channels."""
    if image.mode == "L":
        return resize_center_crop(image, size, crop_pct).convert("RGB")
    return resize_center_crop(to_rgb(image), size, crop_pct)
