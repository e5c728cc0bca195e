"""open_clip models as ravis image and text encoders: ``open_clip:MODEL[@PRETRAINED]``.

MODEL is an open_clip model name (``ViT-B-32``), a path to a JSON model config (registered
under the file's stem; the path may not contain ``@``), or one of open_clip's own sources
``local-dir:DIR`` (``open_clip_config.json`` with model and preprocess config, plus weights) and
``hf-hub:ORG/REPO``. PRETRAINED is an open_clip pretrained tag (downloaded by open_clip, so only
with network) or a local checkpoint file: ``.safetensors`` preferred, ``.pt``/``.pth``/``.bin``
read with ``torch.load(weights_only=True)``. With neither, the weights are random (a warning says so).

Embeddings are ``encode_image`` / ``encode_text`` L2-normalised. Image preprocessing follows the
model's preprocess config (size, mean, std, interpolation, resize mode) built with
:mod:`ravis.encoders.preprocess`, not open_clip's torchvision transforms. The image and the text
encoder each load their own copy of the model.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..device import autocast, to_device
from ..errors import InputError
from .base import l2_normalize
from ..data.images import to_rgb
from .preprocess import resize_center_crop, to_chw
from .fingerprint import file_digest, settings_digest, state_digest
from .timm_adapter import INTERPOLATION, import_without_torchvision

SCHEMAS = ("local-dir:", "hf-hub:")


def _open_clip():
    return import_without_torchvision("open_clip")


def _resolve(spec: str) -> tuple[str, str, str | None]:
    """spec -> (open_clip model name, architecture id for the fingerprint, pretrained or None)."""
    model, _, pretrained = spec.partition("@")
    if model.startswith(SCHEMAS):
        if pretrained:
            raise InputError(f"{spec!r}: {model.split(':')[0]} brings its own weights, "
                             f"drop '@{pretrained}'")
        if model.startswith("local-dir:"):  # the config's content, not where the folder lies
            return model, f"local-dir:{file_digest(Path(model[10:]) / 'open_clip_config.json')}", None
        return model, model, None
    if model.endswith(".json"):
        path = Path(model)
        _open_clip().add_model_config(path)
        return path.stem, f"json:{file_digest(path)}", pretrained or None
    return model, model, pretrained or None


def _weights_id(open_clip, name: str, pretrained: str | None) -> str | None:
    """What identifies the weights before loading them; None where only the loaded state can."""
    if pretrained is None:
        return None
    if Path(pretrained).is_file():
        return f"file:{file_digest(pretrained)}"
    if not open_clip.get_pretrained_cfg(name, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise InputError(f"{pretrained!r} is neither a file nor a pretrained tag of {name} ({tags})")
    return f"tag:{pretrained}"


def load_model(spec: str, device: torch.device):
    """(model in eval mode on device, open_clip model name, fingerprint parts) for a spec."""
    open_clip = _open_clip()
    name, arch, pretrained = _resolve(spec)
    weights = _weights_id(open_clip, name, pretrained)
    model = open_clip.create_model(name, pretrained=pretrained, device=device, weights_only=True)
    if weights is None:
        if not name.startswith(SCHEMAS):
            warnings.warn(f"open_clip:{spec}: no pretrained tag or checkpoint, the weights are random")
        weights = f"state:{state_digest(model)}"
    return model.eval(), name, {"arch": arch, "weights": weights}


def _preprocess_cfg(open_clip, model) -> dict:
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    h, w = (size, size) if isinstance(size, int) else size
    if h != w:
        raise InputError(f"only square inputs are supported, the model wants {h}x{w}")
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "longest", "squash"):
        raise InputError(f"resize_mode {mode!r} is not supported")
    return {"size": int(h), "mean": [float(m) for m in cfg["mean"]],
            "std": [float(s) for s in cfg["std"]], "resize_mode": mode,
            "interpolation": cfg.get("interpolation", "bicubic"),
            "fill_color": int(cfg.get("fill_color", 0))}


def _fit_longest(image: Image.Image, size: int, resample, fill: int) -> Image.Image:
    """Resize the long side to size and pad the short one, centred (open_clip's 'longest')."""
    scale = size / max(image.size)
    nw, nh = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = Image.new("RGB", (size, size), (fill,) * 3)
    canvas.paste(image.resize((nw, nh), resample), ((size - nw) // 2, (size - nh) // 2))
    return canvas


class OpenCLIPImageEncoder:
    """An open_clip model's image tower (``encode_image``), L2-normalised.

    Args:
        spec: ``MODEL[@PRETRAINED]`` (see the module docstring).
        device: where the model runs, chosen once here.
    """

    def __init__(self, spec: str, device: str | torch.device = "cpu"):
        self.name = f"open_clip:{spec}"
        self.device = torch.device(device)
        self.model, _, self._ids = load_model(spec, self.device)
        self.cfg = _preprocess_cfg(_open_clip(), self.model)
        self.dim = int(self.encode_pixels(np.zeros((1, 3, self.cfg["size"], self.cfg["size"]),
                                                   np.float32)).shape[1])

    def fingerprint(self) -> str:
        return f"open_clip-image-{settings_digest(self._ids, self.cfg)}"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        c = self.cfg
        image, resample = to_rgb(image), INTERPOLATION[c["interpolation"]]
        if c["resize_mode"] == "squash":
            image = image.resize((c["size"], c["size"]), resample)
        elif c["resize_mode"] == "longest":
            image = _fit_longest(image, c["size"], resample, c["fill_color"])
        else:
            image = resize_center_crop(image, c["size"], 1.0, resample)
        return to_chw(image, c["mean"], c["std"])  # (3, size, size)

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        x = to_device(np.asarray(pixels, dtype=np.float32), self.device)
        with autocast(self.device):  # bf16 on a GPU; nothing changes on the CPU
            feats = self.model.encode_image(x)
        return l2_normalize(feats.float().cpu().numpy())  # (B, dim)

    def network(self):
        """A trainable copy of the image tower (:mod:`ravis.encoders.trainable`) whose
        features are ``encode_image``'s. Where ``encode_image`` is CLIP's own (the tower's
        output as it is) only the tower is copied: the text tower would double the memory,
        the checkpoints and the saved encoder while getting no gradient. Other models (CoCa
        pools inside ``encode_image``) are copied whole."""
        from .trainable import FeatureNet

        oc = _open_clip().model
        plain = {getattr(getattr(oc, n, None), "encode_image", None) for n in ("CLIP", "CustomTextCLIP")}
        if type(self.model).encode_image in plain:
            return FeatureNet(copy.deepcopy(self.model.visual), _tower)
        return FeatureNet(copy.deepcopy(self.model), _image_features)


def _image_features(model, x: torch.Tensor) -> torch.Tensor:
    return model.encode_image(x.float())


def _tower(visual, x: torch.Tensor) -> torch.Tensor:
    return visual(x.float())


class OpenCLIPTextEncoder:
    """An open_clip model's text tower (``encode_text``) with the model's own tokenizer.

    Args:
        spec: ``MODEL[@PRETRAINED]`` (see the module docstring).
        device: where the model runs, chosen once here.
        batch_size: texts per forward pass.
    """

    def __init__(self, spec: str, device: str | torch.device = "cpu", batch_size: int = 256):
        self.name = f"open_clip:{spec}"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model, model_name, self._ids = load_model(spec, self.device)
        self.tokenizer = _open_clip().get_tokenizer(model_name)
        self._tok_id = [type(self.tokenizer).__name__, getattr(self.tokenizer, "context_length", None)]
        self.dim = int(self.encode_texts(["a"]).shape[1])

    def fingerprint(self) -> str:
        return f"open_clip-text-{settings_digest(self._ids, self._tok_id)}"

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start:start + self.batch_size]).to(self.device)  # (b, ctx)
            with autocast(self.device):
                out.append(self.model.encode_text(tokens).float().cpu().numpy())
        if not out:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        return l2_normalize(np.concatenate(out))  # (B, dim)
