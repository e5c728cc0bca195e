"""Image preprocessing shared by the encoders: colour mode, resize + centre crop, normalise."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL mode to RGB. Transparent pixels are flattened onto ``background`` (white):
    converting RGBA straight to RGB would expose whatever colour the invisible pixels hold."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if image.mode == "I;16" or image.mode == "I":
        arr = np.asarray(image, dtype=np.float32)
        arr = 255 * (arr - arr.min()) / max(1.0, float(arr.max() - arr.min()))
        image = Image.fromarray(arr.astype(np.uint8))
    return image.convert("RGB")


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
    """RGB image -> (3, H, W) float32, (x/255 - mean) / std per channel."""
    arr = np.asarray(image, dtype=np.float32) * (1 / 255.0)  # (H, W, 3)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
