"""Checkpoints without pickle: tensors in safetensors, everything else in its JSON metadata.

The optimiser state is flattened to ``opt/<param index>/<name>`` tensors; param groups and
training progress go into the metadata. Files are written to a temporary name and renamed,
so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..cache import entry_lock, is_sealed, seal
from ..io import atomic_path


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    progress: dict, best_state: dict[str, torch.Tensor] | None = None) -> None:
    """Writes model, optimiser, the best weights so far and ``progress`` (JSON-able) to ``path``."""
    tensors = {f"model/{k}": host_tensor(v) for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"opt/{pid}/{name}"] = host_tensor(torch.as_tensor(value))
    for k, v in (best_state or {}).items():
        tensors[f"best/{k}"] = host_tensor(v)
    meta = {"progress": json.dumps(progress), "param_groups": json.dumps(opt["param_groups"])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """The model's weights alone (safetensors, atomic), for a finished run."""
    tensors = {k: host_tensor(v) for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def host_tensor(t: torch.Tensor) -> torch.Tensor:
    """A tensor as safetensors writes it: on the CPU, contiguous (a no-op for CPU tensors)."""
    return t.detach().cpu().contiguous()


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Restores model and optimiser in place; returns (progress, best_state or None)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    device = next(model.parameters()).device
    tensors = load_file(str(path), device=str(device))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, pid, name = k.split("/", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")} or None
    return json.loads(meta["progress"]), best


def cached_weights(model: torch.nn.Module, final: Path, ckpt: Path, train) -> dict:
    """The details (JSON-able) of ``model``'s weights in the cache file ``final``: loaded into
    it where the file is sealed (its bytes match the sha256 recorded when it was saved), else
    trained by ``train(ckpt)``, which returns them; then saved, sealed, and the training
    checkpoint ``ckpt`` removed. Two runs that need the same weights train them once."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(final):
        if is_sealed(final):
            with safe_open(str(final), framework="pt") as f:
                details = json.loads(f.metadata()["details"])
            model.load_state_dict(load_file(str(final), device=str(next(model.parameters()).device)))
            details["cached"] = True
            return details
        details = train(ckpt)
        save_weights(model, final, {"details": json.dumps(details)})
        seal(final)
        remove_checkpoint(ckpt)  # the final weights supersede it
        details["cached"] = False
        return details


def remove_checkpoint(path: Path) -> None:
    if path.exists():
        os.remove(path)
