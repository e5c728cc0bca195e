"""A method's finished evaluation, cached: a warm rerun reads its test logits, curves and
kept model instead of predicting again.

Trained weights are cached already (``training.checkpoint.cached_weights``), but evaluating
them is not free: the post-hoc and kept-model choices predict on validation, the test set is
predicted at every k of ``retrieval.k_curve``, and the accuracy-versus-memory curve searches
nested memory subsets with every test query. On the demo that was about 70 of a warm run's
130 s.

The key is everything the evaluation reads: the experiment's whole config (seed included),
the text encoder, the device, the datasets' fingerprints, the embeddings, the memory's
digest, the neighbours, and the source of the ravis package with the numeric libraries'
versions, so a code change never serves an old evaluation. An entry is one safetensors file
(the kept model's weights, logits, attention; the result's JSON in its metadata), sealed like
every cache file: a damaged entry is recomputed with a warning naming it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..cache import code_version, entry_lock, is_sealed, seal
from ..config import to_dict
from ..encoders import create_text_encoder
from ..io import atomic_path, stable_hash, to_json
from ..training.checkpoint import host_tensor
from .results import MethodResult
from .prepare import Prepared

log = logging.getLogger(__name__)

#: details whose keys are ints (k, memory size) and come back from JSON as strings
_INT_KEYED = ("accuracy_vs_k", "accuracy_vs_memory")
#: the result's arrays an entry holds
_ARRAYS = ("logits", "attention", "vote_weights")


def evaluation_key(prep: Prepared, method: str, text_encoder: str) -> str:
    """The cache key of method ``method``'s evaluation on ``prep``."""
    # the text encoder's weights, not only its name (RAC embeds texts the memory digest does
    # not cover); the accelerator, whose arithmetic differs slightly from the CPU's and GPU's
    text = create_text_encoder(text_encoder).fingerprint()
    device = str(prep.device)
    if prep.device.type == "cuda":
        device += f" {torch.cuda.get_device_name(prep.device)} cuda {torch.version.cuda}"
    return stable_hash("evaluation-v1", code_version(), method, to_dict(prep.config), text, device,
                       prep.train.dataset.fingerprint, prep.test.dataset.fingerprint,
                       prep.embeddings_digest, prep.memory.digest, prep.neighbors_digest,
                       [int(c) for c in prep.class_counts])


def cached_evaluation(path: Path, evaluate: Callable[[], tuple[torch.nn.Module | None, MethodResult]],
                      rebuild: Callable[[dict], torch.nn.Module] | None
                      ) -> tuple[torch.nn.Module | None, MethodResult]:
    """(model, result) read from the sealed entry ``path``, else made by ``evaluate()`` and
    saved. ``rebuild(details)`` makes an untrained model of the method, which the cached
    weights are loaded into (None for a method without a model, the vote)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(path):
        if is_sealed(path):
            try:
                return _load(path, rebuild)
            except (KeyError, ValueError, RuntimeError) as e:  # sealed, but not what this ravis reads
                log.warning("ignoring the cached evaluation %s, recomputing it: %s", path, e)
        model, result = evaluate()
        _save(path, model, result)
        seal(path)
        return model, result


def _save(path: Path, model, result: MethodResult) -> None:
    state = model.state_dict() if model is not None else {}
    tensors = {f"model/{k}": host_tensor(v) for k, v in state.items()}
    for name in _ARRAYS:
        array = getattr(result, name)
        if array is not None:
            tensors[name] = torch.from_numpy(np.ascontiguousarray(array))
    meta = {"metrics": result.metrics, "per_class": result.per_class, "details": result.details}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"result": to_json(meta)})


def _load(path: Path, rebuild) -> tuple[torch.nn.Module | None, MethodResult]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["result"])
    tensors = load_file(str(path))
    details = {k: ({int(a): b for a, b in v.items()} if k in _INT_KEYED else v)
               for k, v in meta["details"].items()}
    details["cached"] = True
    model = None
    if rebuild is not None:
        model = rebuild(details)
        device = next(model.parameters(), torch.zeros(0)).device
        model.load_state_dict({k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model/")})
    arrays = {name: tensors[name].numpy() if name in tensors else None for name in _ARRAYS}
    return model, MethodResult(metrics=meta["metrics"], per_class=meta["per_class"], details=details,
                               **arrays)

