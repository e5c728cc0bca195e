"""Hugging Face transformers models as ravis encoders: ``hf:NAME_OR_PATH``.

NAME_OR_PATH is a local directory (loaded with ``local_files_only``) or a hub id (downloaded by
transformers, so only with network). Models are loaded with ``AutoModel``.

Images: a CLIP-like model (one with ``get_image_features``) gives its projected image embedding;
any other vision model gives its pooled output, or its CLS token (the spatial mean for
convolutional backbones) where it has no pooler or the checkpoint lacks the pooler's weights
(AutoModel would initialise them at random). Preprocessing is read from
``preprocessor_config.json`` (size, crop_size, resample, mean, std, rescale) and built with
:mod:`ravis.encoders.preprocess`; without that file, the ViT processor's defaults apply: squash
to the config's ``image_size``, bilinear, mean = std = 0.5.

Texts: a CLIP-like model gives ``get_text_features``; any other model is pooled the
sentence-transformers way, the mean over real (unpadded) tokens. Both are L2-normalised.
"""

from __future__ import annotations

import copy
import functools
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..device import autocast, to_device
from ..errors import InputError
from ..io import load_json
from .base import l2_normalize
from .fingerprint import settings_digest, state_digest, text_digest
from ..data.images import to_rgb
from .preprocess import resize_center_crop, to_chw

POOLINGS = ("auto", "pooler", "cls", "mean")
DEFAULT_MEAN = DEFAULT_STD = (0.5, 0.5, 0.5)


def _load_model(name_or_path: str, device: torch.device):
    """(model in eval mode, the weights missing from the checkpoint, which AutoModel made up)."""
    from transformers import AutoModel

    try:
        model, info = AutoModel.from_pretrained(name_or_path, local_files_only=Path(name_or_path).exists(),
                                                output_loading_info=True)
    except ValueError as e:  # "Unrecognized model": a folder or hub id of something else
        raise InputError(f"hf:{name_or_path}: transformers cannot load it as a model: {e}") from e
    missing = sorted(info.get("missing_keys", ()))
    others = [k for k in missing if "pooler" not in k]
    if others:
        warnings.warn(f"hf:{name_or_path}: weights missing from the checkpoint, random: {others[:5]}")
    return model.eval().to(device), missing


def _read_preprocessor_config(name_or_path: str) -> dict:
    if Path(name_or_path).exists():
        path = Path(name_or_path) / "preprocessor_config.json"
        return load_json(path) if path.is_file() else {}
    from transformers.utils import cached_file

    path = cached_file(name_or_path, "preprocessor_config.json",
                       _raise_exceptions_for_missing_entries=False)
    return load_json(path) if path else {}


def _side(size) -> tuple[str, int]:
    """A processor's size entry -> ("shortest", n) or ("square", n)."""
    if isinstance(size, int):
        return "square", size
    if "shortest_edge" in size:
        return "shortest", int(size["shortest_edge"])
    if size.get("height") != size.get("width"):
        raise InputError(f"only square inputs are supported, got size {size}")
    return "square", int(size["height"])


def preprocess_params(pc: dict, image_size: int) -> dict:
    """preprocessor_config.json (possibly empty) -> the parameters :class:`HFImageEncoder` uses."""
    crop = pc.get("crop_size")
    do_crop = bool(pc.get("do_center_crop", False)) and crop is not None
    size = pc.get("size", image_size)
    # CLIP-style processors read an int size as the shortest edge, ViT-style ones as a square.
    mode, side = ("shortest", size) if isinstance(size, int) and do_crop else _side(size)
    out = _side(crop)[1] if do_crop else side
    mean = pc.get("image_mean", DEFAULT_MEAN) if pc.get("do_normalize", True) else (0.0, 0.0, 0.0)
    std = pc.get("image_std", DEFAULT_STD) if pc.get("do_normalize", True) else (1.0, 1.0, 1.0)
    # to_chw divides by 255; another rescale factor folds into mean and std.
    k = 255.0 * (pc.get("rescale_factor", 1 / 255) if pc.get("do_rescale", True) else 1.0)
    return {"resize": mode, "side": int(side), "size": int(out), "resample": int(pc.get("resample", 2)),
            "mean": [float(m) / k for m in mean], "std": [float(s) / k for s in std]}


def _image_size(config, default: int = 224) -> int:
    size = getattr(getattr(config, "vision_config", config), "image_size", default)
    return int(size if isinstance(size, int) else size[0])


def _pool(out, pooling: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooling in ("auto", "pooler") and pooled is not None:
        return pooled.flatten(1)  # conv backbones pool to (B, C, 1, 1)
    h = out.last_hidden_state
    if h.ndim == 4:  # (B, C, H, W)
        return h.mean((2, 3))
    return h[:, 0] if pooling != "mean" else h.mean(1)  # (B, T, D) -> (B, D)


class HFImageEncoder:
    """A transformers vision model as an image encoder.

    Args:
        name_or_path: local directory or hub id.
        device: where the model runs, chosen once here.
        pooling: "auto" (see the module docstring), "pooler", "cls" or "mean".
    """

    def __init__(self, name_or_path: str, device: str | torch.device = "cpu", pooling: str = "auto"):
        if pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.name = f"hf:{name_or_path}"
        self.device = torch.device(device)
        self.model, missing = _load_model(name_or_path, self.device)
        # A pooler AutoModel made up is random: the CLS token is the embedding then.
        pooler_missing = any("pooler" in k for k in missing)
        self.pooling = "cls" if pooling == "auto" and pooler_missing else pooling
        self.cfg = preprocess_params(_read_preprocessor_config(name_or_path),
                                     _image_size(self.model.config))
        self._fingerprint = (f"hf-image-{settings_digest(type(self.model).__name__, self.pooling, self.cfg)}"
                             f"-{state_digest(self.model, skip=set(missing))}")
        side = self.cfg["size"]
        self.dim = int(self.encode_pixels(np.zeros((1, 3, side, side), np.float32)).shape[1])

    def fingerprint(self) -> str:
        return self._fingerprint

    def preprocess(self, image: Image.Image) -> np.ndarray:
        c = self.cfg
        image, resample = to_rgb(image), Image.Resampling(c["resample"])
        if c["resize"] == "shortest":
            image = resize_center_crop(image, c["size"], c["size"] / c["side"], resample)
        else:
            image = image.resize((c["side"], c["side"]), resample)
            if c["size"] < c["side"]:
                image = resize_center_crop(image, c["size"], c["size"] / c["side"], resample)
        return to_chw(image, c["mean"], c["std"])  # (3, size, size)

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        x = to_device(np.asarray(pixels, dtype=np.float32), self.device)
        with autocast(self.device):  # bf16 on a GPU; nothing changes on the CPU
            feats = image_features(self.model, x, self.pooling)
        return l2_normalize(feats.float().cpu().numpy())  # (B, dim)

    def network(self):
        """A trainable copy of the model (:mod:`ravis.encoders.trainable`)."""
        from .trainable import FeatureNet

        return FeatureNet(copy.deepcopy(self.model), functools.partial(image_features, pooling=self.pooling))


def image_features(model, x: torch.Tensor, pooling: str) -> torch.Tensor:
    """A transformers model's pooled image features of float (B, 3, H, W) pixels."""
    x = x.float()
    out = model.get_image_features(pixel_values=x) if hasattr(model, "get_image_features") else model(pixel_values=x)
    return _pool(out, pooling)


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return text_digest(blob)


class HFTextEncoder:
    """A transformers text model as a text encoder (AutoTokenizer + AutoModel).

    Args:
        name_or_path: local directory or hub id.
        device: where the model runs, chosen once here.
        max_length: tokens kept per text; default the tokenizer's and the model's limit, at most 512.
        batch_size: texts per forward pass.
    """

    def __init__(self, name_or_path: str, device: str | torch.device = "cpu",
                 max_length: int | None = None, batch_size: int = 64):
        from transformers import AutoTokenizer

        self.name = f"hf:{name_or_path}"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, local_files_only=Path(name_or_path).exists())
        self.model, missing = _load_model(name_or_path, self.device)
        self.projected = hasattr(self.model, "get_text_features")
        config = getattr(self.model.config, "text_config", self.model.config)
        positions = getattr(config, "max_position_embeddings", None) or 512
        self.max_length = int(max_length or min(self.tokenizer.model_max_length, positions, 512))
        setup = settings_digest(type(self.model).__name__, self.max_length, self.projected)
        self._fingerprint = (f"hf-text-{setup}-{_tokenizer_digest(self.tokenizer)}"
                             f"-{state_digest(self.model, skip=set(missing))}")
        self.dim = int(self.encode_texts(["a"]).shape[1])

    def fingerprint(self) -> str:
        return self._fingerprint

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = [None] * len(texts)
        # Sorting by length keeps padding small: short label prompts never pay for a caption.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, row in zip(idx, self._encode_batch([texts[i] for i in idx])):
                out[i] = row
        return l2_normalize(np.stack(out)) if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        if self.projected:
            feats = _pool(self.model.get_text_features(input_ids=enc["input_ids"],
                                                       attention_mask=enc["attention_mask"]), "pooler")
        else:
            hidden = self.model(**enc).last_hidden_state  # (B, T, D)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            feats = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
        return feats.float().cpu().numpy()
