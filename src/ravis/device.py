"""The compute device, chosen once at the boundary (``--device``, ``run.device``).

``auto`` is the first CUDA device where torch sees one, else the CPU (and says so); ``cpu``;
``cuda`` or ``cuda:N`` must exist, or the run stops with a clear error before any work. The
torch encoders, fusion training and evaluation and the exact k-NN index take the resolved
device; the ONNX default encoders use onnxruntime's CUDA provider where the GPU build is
installed (:func:`onnx_providers`). On the CPU everything is as it was.
"""

from __future__ import annotations

import logging

import torch

from .config import DEVICE_CHOICES as CHOICES, is_device_spec
from .errors import InputError

log = logging.getLogger(__name__)


class DeviceError(InputError):
    """A device that this machine does not have, or a spec that names none."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device of ``spec``.

    Raises:
        DeviceError: ``cuda`` without a CUDA device, ``cuda:N`` beyond the devices there
            are, or a spec that is none of auto, cpu, cuda, cuda:N.
    """
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if not is_device_spec(spec):
        raise DeviceError(f"device {spec!r}: expected {CHOICES}")
    if spec == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda", 0)
            log.info("device auto: %s (%s)", device, torch.cuda.get_device_name(0))
            return device
        log.info("device auto: no CUDA device, the CPU is used")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    index = spec.partition(":")[2] or "0"  # cuda or cuda:N from here on
    if not torch.cuda.is_available():
        raise DeviceError(f"device {spec!r}: torch sees no CUDA device on this machine "
                          "(torch.cuda.is_available() is False); use --device cpu, or auto to "
                          "take a GPU only where there is one")
    if int(index) >= torch.cuda.device_count():
        raise DeviceError(f"device {spec!r}: this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", int(index))


def onnx_providers(device: torch.device) -> list[str]:
    """onnxruntime execution providers for ``device``: CUDA first where it is a GPU and the
    onnxruntime build has the CUDA provider (``onnxruntime-gpu``), the CPU otherwise."""
    if device is None or torch.device(device).type != "cuda":
        return ["CPUExecutionProvider"]
    device = torch.device(device)
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    log.warning("device %s: this onnxruntime has no CUDA provider (install onnxruntime-gpu); the "
                "ONNX encoders run on the CPU", device)
    return ["CPUExecutionProvider"]


def to_device(x, device: torch.device) -> torch.Tensor:
    """A numpy array or CPU tensor on ``device``. To a GPU it goes through pinned (page-locked)
    memory with a non-blocking copy, so the copy overlaps the work already queued there while
    the loader threads prepare the next batch; on the CPU it is the array itself, as before."""
    import numpy as np

    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if device is None or torch.device(device).type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def autocast(device: torch.device):
    """bf16 autocast on a GPU (the torch encoders and fusion forward passes); nothing on the CPU,
    so that CPU results are bit for bit what they were."""
    import contextlib

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["CHOICES", "DeviceError", "autocast", "onnx_providers", "resolve_device", "to_device"]
