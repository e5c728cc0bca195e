"""The index an experiment, the predictor and the server search: one per memory part.

A composed memory is searched part by part and merged exactly (:class:`MultiIndex`): a
sharded part with its own built index (``ravis memory index``) uses it; every other part gets
``retrieval.index`` over its keys. Exact specs over a part whose float32 keys exceed
``retrieval.budget`` scan its memory-mapped shards block by block instead of copying them
into RAM (:class:`~ravis.index.mapped.MappedExactIndex`): peak RSS follows the budget, not
the memory's size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..config import RetrievalConfig
from ..errors import InputError
from ..index.build import KeyShards, index_over, is_approximate
from ..sizes import parse_bytes
from ..index.mapped import MappedExactIndex
from ..index.multi import MultiIndex
from ..io import stable_hash
from ..memory.base import Memory
from ..memory.indexing import has_index, open_memory_index
from ..memory.sharded import ShardedMemory

log = logging.getLogger(__name__)

def memory_index(memory: Memory, r: RetrievalConfig, cache_dir: Path | None = None,
                 search_params: dict | None = None, device=None):
    """The index over ``memory`` (a composed memory: one part index each, merged exactly).

    ``search_params`` (e.g. ``{"nprobe": 16}``) override the tuned ones of every part. On a
    GPU ``device``, exact search over keys that fit the budget runs there (torch).
    """
    parts = getattr(memory, "parts", None) or [("", memory)]
    indexes = [part_index(m, r, cache_dir, search_params, device) for _, m in parts]
    return indexes[0] if len(indexes) == 1 else MultiIndex(indexes)


def part_index(memory: Memory, r: RetrievalConfig, cache_dir: Path | None, search_params: dict | None,
               device=None):
    if isinstance(memory, ShardedMemory) and has_index(memory.memdir):
        index = open_memory_index(memory.memdir)
        if search_params:
            index.set_search_params(**search_params)
        return index
    vectors = KeyShards(memory.key_blocks())
    if not is_approximate(r.index) and 4 * len(memory) * memory.dim > parse_bytes(r.budget):
        log.warning("memory of %d rows: its float32 keys exceed retrieval.budget %s, so exact "
                    "search scans the mapped shards (slow); build an index with `ravis memory "
                    "index`", len(memory), r.budget)
        return MappedExactIndex(vectors)
    if device is not None and torch.device(device).type == "cuda" and not is_approximate(r.index):
        return index_over(vectors, "exact").to(device)
    folder = None
    if is_approximate(r.index):
        if cache_dir is None:
            raise InputError(f"retrieval.index={r.index!r} needs a cache folder to build its index in")
        folder = Path(cache_dir) / "indexes" / stable_hash(memory.key_digest, r.index, r.budget,
                                                           r.target_recall, r.k)
    return index_over(vectors, r.index, folder, budget=r.budget, target_recall=r.target_recall,
                      k=min(r.k, len(memory) - 1), search_params=search_params)


def index_signature(index) -> list:
    """What determines an index's answers besides its vectors: specs, search parameters
    and, for a saved index, the checksums of its files (a rebuilt or replaced index with the
    same spec answers differently)."""
    parts = index.parts if isinstance(index, MultiIndex) else [index]
    return [[p.spec, dict(sorted(p.search_params.items())), getattr(p, "saved_files", None)]
            for p in parts]
