"""Searching a memory folder directly (``ravis memory search``): query embeddings from
images or a ``.npy``, and the nearest entries by the memory's built index or exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .base import MemoryMismatchError
from .sharded import ShardedMemory


def embedded_queries(memory: ShardedMemory, images: list[Path], queries: Path | None,
                     encoder_spec: str) -> tuple[list[str], np.ndarray]:
    """(names, (n, d) float32 queries): the embeddings in the file ``queries``, or
    ``images`` embedded by ``encoder_spec``, which must be the encoder of the keys."""
    if queries is not None:
        from ..io import load_npy

        xq = load_npy(queries)
        if not np.issubdtype(xq.dtype, np.number):
            raise InputError(f"{queries}: queries must be numbers, not {xq.dtype}")
        xq = xq.astype(np.float32)
        if xq.ndim != 2 or xq.shape[1] != memory.dim:
            raise InputError(f"{queries}: queries are {xq.shape}, the memory's keys are {memory.dim}-d")
        return [f"query {i}" for i in range(len(xq))], xq
    if not images:
        raise InputError("give query images or --queries FILE.npy")
    from ..data.images import open_image
    from ..encoders import create_image_encoder

    encoder = create_image_encoder(encoder_spec)
    if encoder.fingerprint() != memory.key_encoder or encoder.dim != memory.dim:
        raise MemoryMismatchError(f"{memory.memdir}: keys were made by {memory.key_encoder!r}, "
                                  f"not by {encoder_spec!r}; pass --encoder")
    xq = encoder.encode_pixels(np.stack([encoder.preprocess(open_image(p)) for p in images]))
    return [str(p) for p in images], xq


def search_memory(memory: ShardedMemory, xq: np.ndarray, k: int, exact: bool = False) -> list[list[dict]]:
    """Per query, its k nearest entries, best first: {rank, row, score, id, text, source};
    by the memory's built index, or with ``exact`` by scanning the key shards."""
    from ..index.multi import exact_search
    from .indexing import key_paths, open_memory_index

    if exact:
        D, I = exact_search([np.load(p, mmap_mode="r") for p in key_paths(memory)], xq, k)
    else:
        D, I = open_memory_index(memory.memdir).search(xq, k)
    rows = np.unique(I[I >= 0])
    meta = memory.meta_at(rows, ["id", "text", "source"])
    entry = {int(r): {c: meta[c][j] for c in meta} for j, r in enumerate(rows)}
    return [[{"rank": r + 1, "row": int(i), "score": float(d), **entry[int(i)]}
             for r, (d, i) in enumerate(zip(Dq, Iq)) if i >= 0]
            for Dq, Iq in zip(D, I)]
