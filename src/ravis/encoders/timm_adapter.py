"""timm image models as ravis image encoders: the spec ``timm:MODEL[@CHECKPOINT_PATH]``.

The embedding is timm's pre-logits feature (``forward_features`` then
``forward_head(pre_logits=True)``, built with ``num_classes=0``), L2-normalised. Preprocessing
follows the model's ``pretrained_cfg`` (input size, crop_pct, crop mode, interpolation, mean, std)
but is built with :mod:`ravis.encoders.preprocess`, not timm's torchvision transforms.

Weights come from a local checkpoint (``.safetensors`` preferred; ``.pth``/``.pt``/``.bin`` are read
with ``torch.load(weights_only=True)``), or from timm's hub only when the caller opts in with
``pretrained=True``. Without either the model is randomly initialised (a warning says so).

timm and open_clip import torchvision when they are imported, for ``FrozenBatchNorm2d`` and
their training transforms, although running a model needs neither. Where torchvision is not
installed, :func:`import_without_torchvision` imports them with stand-ins that fail only if used.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import math
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..device import autocast, to_device
from ..errors import InputError
from .base import l2_normalize
from .fingerprint import file_digest, settings_digest, state_digest
from ..data.images import to_rgb
from .preprocess import resize_center_crop, to_chw

_TV = "torchvision"
INTERPOLATION = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                 "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


class _MissingMeta(type):
    """A torchvision name that is absent: it can be imported, subclassed and used as a dict key
    (what timm and open_clip do at import time) but raises ImportError when called."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args, **kwargs):
        raise ImportError(f"torchvision.{cls.__qualname__} needs torchvision, which is not installed")


@functools.cache  # one stand-in per name, so the same name compares equal wherever it is used
def _missing(qualname: str) -> type:
    return _MissingMeta(qualname, (), {"__module__": _TV, "__qualname__": qualname})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        prefix = self.__name__.partition(".")[2]
        return _missing(f"{prefix}.{name}" if prefix else name)


def _importer() -> str:
    """The module whose import statement (or find_spec call) reached the finder."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", __name__)):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves torchvision stand-ins to the named packages only: anyone else probing for
    torchvision meanwhile (transformers caches its availability checks) still finds none."""

    def __init__(self, importers: tuple[str, ...]):
        self.importers = importers

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] != _TV or _importer().partition(".")[0] not in self.importers:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _settle_torchvision_probes() -> None:
    """Libraries that cache whether torchvision exists must ask before the stand-ins are in
    sys.modules, where ``importlib.util.find_spec`` would find them. transformers is the one
    that open_clip imports meanwhile."""
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import import_utils

        import_utils.is_torchvision_available()
        import_utils.is_torchvision_v2_available()


@contextlib.contextmanager
def _torchvision_stand_ins(importers: tuple[str, ...]):
    _settle_torchvision_probes()
    finder = _StubFinder(importers)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        # Gone from sys.modules afterwards, so later imports of torchvision fail as they should.
        for key in [k for k in sys.modules if k.partition(".")[0] == _TV]:
            del sys.modules[key]


def import_without_torchvision(name: str, importers: tuple[str, ...] = ("timm", "open_clip")):
    """Import ``name`` (timm or open_clip); with torchvision stand-ins only where it is absent."""
    if name in sys.modules:
        return sys.modules[name]
    if importlib.util.find_spec(_TV) is not None:
        return importlib.import_module(name)
    with _torchvision_stand_ins(importers):
        return importlib.import_module(name)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central size x size square (the image is at least that large)."""
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _head_names(model) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def load_timm_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Strictly load a timm-format checkpoint, minus the classifier (the model has none)."""
    from timm.models import load_state_dict  # safetensors, or torch.load(weights_only=True)

    state = load_state_dict(str(path))
    heads = tuple(f"{name}." for name in _head_names(model))
    state = {k: v for k, v in state.items() if not (heads and k.startswith(heads))}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"checkpoint {path} does not match the model: "
                         f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")


def _preprocess_cfg(timm, model) -> dict:
    cfg = timm.data.resolve_model_data_config(model)
    _, h, w = cfg["input_size"]
    if h != w:
        raise InputError(f"only square inputs are supported, the model wants {h}x{w}")
    if cfg.get("crop_mode", "center") not in ("center", "squash"):
        raise InputError(f"crop_mode {cfg['crop_mode']!r} is not supported (center, squash)")
    return {"size": int(h), "crop_pct": float(cfg.get("crop_pct") or 1.0),
            "crop_mode": cfg.get("crop_mode", "center"), "interpolation": cfg["interpolation"],
            "mean": [float(m) for m in cfg["mean"]], "std": [float(s) for s in cfg["std"]]}


def _with_input_size(model_kwargs: dict) -> dict:
    """``img_size`` changes the model but not its pretrained_cfg; keep them in step."""
    kwargs = dict(model_kwargs)
    if "img_size" in kwargs and "pretrained_cfg_overlay" not in kwargs:
        size = kwargs["img_size"]
        h, w = (size, size) if isinstance(size, int) else size
        kwargs["pretrained_cfg_overlay"] = {"input_size": (3, h, w)}
    return kwargs


class TimmImageEncoder:
    """A timm model's pre-logits features as an image encoder.

    Args:
        spec: ``MODEL`` or ``MODEL@CHECKPOINT_PATH``.
        pretrained: download timm's default weights for MODEL (needs network; off by default).
        device: where the model runs, chosen once here.
        model_kwargs: extra arguments to ``timm.create_model`` (e.g. ``img_size``, ``depth``);
            they are part of the fingerprint.
    """

    def __init__(self, spec: str, pretrained: bool = False, device: str | torch.device = "cpu",
                 model_kwargs: dict | None = None):
        timm = import_without_torchvision("timm")
        model_name, _, checkpoint = spec.partition("@")
        if checkpoint and pretrained:
            raise InputError("give a checkpoint path or pretrained=True, not both")
        self.name = f"timm:{spec}"
        self.device = torch.device(device)
        self.model_kwargs = dict(model_kwargs or {})
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0,
                                  **_with_input_size(self.model_kwargs))
        if checkpoint:
            load_timm_weights(model, checkpoint)
            self._weights = f"file:{file_digest(checkpoint)}"
        elif pretrained:
            cfg = model.pretrained_cfg
            self._weights = f"pretrained:{cfg.get('hf_hub_id') or cfg.get('url')}:{cfg.get('tag')}"
        else:
            warnings.warn(f"{self.name}: no checkpoint and pretrained=False, the weights are random")
            self._weights = f"random:{state_digest(model)}"
        self.model = model.eval().to(self.device)
        self.cfg = _preprocess_cfg(timm, model)
        self.dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self._fingerprint = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = "timm-" + settings_digest(
                self.name.partition("@")[0], self.model_kwargs, self._weights, self.cfg)
        return self._fingerprint

    def preprocess(self, image: Image.Image) -> np.ndarray:
        c = self.cfg
        image, resample = to_rgb(image), INTERPOLATION[c["interpolation"]]
        if c["crop_mode"] == "squash":
            scaled = math.floor(c["size"] / c["crop_pct"])
            image = center_crop(image.resize((scaled, scaled), resample), c["size"])
        else:
            image = resize_center_crop(image, c["size"], c["crop_pct"], resample)
        return to_chw(image, c["mean"], c["std"])  # (3, size, size)

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        x = to_device(np.asarray(pixels, dtype=np.float32), self.device)
        with autocast(self.device):  # bf16 on a GPU; nothing changes on the CPU
            feats = pre_logits(self.model, x)  # (B, dim)
        return l2_normalize(feats.float().cpu().numpy())

    def network(self):
        """A trainable copy of the model (:mod:`ravis.encoders.trainable`)."""
        from .trainable import FeatureNet

        return FeatureNet(copy.deepcopy(self.model), pre_logits)


def pre_logits(model, x: torch.Tensor) -> torch.Tensor:
    """A timm model's pre-logits features of float (B, 3, H, W) pixels."""
    return model.forward_head(model.forward_features(x.float()), pre_logits=True)
