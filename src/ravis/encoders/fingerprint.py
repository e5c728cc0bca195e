"""What an encoder's fingerprint is made of: digests of its weight files, of its weights in
memory and of its settings, 16 hex digits each.

A fingerprint names the cached embeddings an encoder produced, so every adapter builds it
from these three, and two encoders share a fingerprint only when their files, weights and
settings are the same.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..io import sha256_file


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    return sha256_file(path)[:16]


def state_digest(module, skip=()) -> str:
    """sha256 of a torch module's state (names, dtypes, shapes, bytes), less the ``skip``
    keys: for weights that have no file (randomly initialised, fine-tuned, partly loaded)."""
    import torch

    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        if key in skip:
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def settings_digest(*parts) -> str:
    """sha256 of JSON-able settings (a model's name, its config, its pooling...)."""
    return text_digest(json.dumps(parts, sort_keys=True, default=str))


def text_digest(text: str) -> str:
    """sha256 of a string (a tokenizer's serialised form)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
