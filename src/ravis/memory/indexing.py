"""A memory's index, the one owner of it: what an experiment, the predictor and the server
search (:func:`memory_index`), and a memory folder's own saved index.

A memory folder's index is built into ``MEMDIR/index`` (or attached from a faiss file made
elsewhere), opened with the memory's key shards attached (so compressed indexes can rescore
exactly and exclude self-duplicates), verified file by file, and extended when shards are
appended:

    ravis memory index MEMDIR --budget 16G --target-recall 0.95
    ravis memory index MEMDIR --from-faiss knn.index

A composed memory is searched part by part and merged exactly (:class:`MultiIndex`): a
sharded part with its own built index uses it; every other part gets ``retrieval.index``
over its keys (:func:`ravis.index.build.index_over`). Exact specs over a part whose float32
keys exceed ``retrieval.budget`` scan its memory-mapped shards block by block instead of
copying them into RAM (:class:`~ravis.index.mapped.MappedExactIndex`): peak RSS follows the
budget, not the memory's size.
"""

from __future__ import annotations

import logging
from pathlib import Path


from ..config import RetrievalConfig
from ..errors import InputError
from ..index import load_index
from ..index.attach import attach_faiss
from ..index.base import META_NAME, read_meta, verify_files
from ..index.build import KeyShards, add_to_index, build_index, index_over, is_approximate
from ..index.mapped import MappedExactIndex
from ..index.multi import MultiIndex
from ..io import stable_hash
from ..sizes import parse_bytes
from .base import Memory
from .sharded import ShardedMemory

log = logging.getLogger(__name__)

INDEX_DIR = "index"


def key_paths(memory: ShardedMemory) -> list[Path]:
    return [memory.memdir / s["files"]["keys"]["path"] for s in memory.manifest["shards"]]


def has_index(memdir: Path | str) -> bool:
    return (Path(memdir) / INDEX_DIR / META_NAME).is_file()


def index_memory(memdir: Path | str, *, budget=RetrievalConfig.budget,
                 target_recall: float = RetrievalConfig.target_recall, k: int = RetrievalConfig.k,
                 backend: str = "faiss", factory: str | None = None, engine: str = "local",
                 progress: bool = True):
    """Chooses, trains, fills and tunes the index of a sharded memory (resumable)."""
    memory = ShardedMemory.open(memdir)
    return build_index(key_paths(memory), memory.memdir / INDEX_DIR, budget=budget,
                       target_recall=target_recall, k=k, backend=backend, factory=factory,
                       names=memory.shard_names, engine=engine, progress=progress)


def memory_keys(memory: ShardedMemory) -> KeyShards:
    """The memory's key shards, memory-mapped, addressed by global row."""
    return KeyShards(key_paths(memory), memory.shard_names)


def attach_index(memdir: Path | str, file: Path | str, *,
                 target_recall: float = RetrievalConfig.target_recall, k: int = RetrievalConfig.k):
    """Makes the faiss index ``file`` (e.g. autofaiss's knn.index) the memory's index, tuned
    like one ravis built (see :mod:`ravis.index.attach`)."""
    memory = ShardedMemory.open(memdir)
    return attach_faiss(file, memory_keys(memory), memory.memdir / INDEX_DIR,
                        target_recall=target_recall, k=k)


def open_memory_index(memdir: Path | str, mmap: bool = True):
    """The memory's built index with its tuned parameters and the key shards attached; its
    files are checked first (IndexFileError names a damaged one)."""
    memory = ShardedMemory.open(memdir)
    folder = memory.memdir / INDEX_DIR
    if not has_index(memdir):
        raise FileNotFoundError(f"{folder}: no finished index; run `ravis memory index {memdir}`")
    if read_meta(folder)["ntotal"] != memory.count:  # before reading a possibly large index
        raise InputError(f"{folder}: index holds {read_meta(folder)['ntotal']} vectors but the "
                         f"memory has {memory.count} rows; rerun `ravis memory index {memdir}`")
    return load_index(folder, vectors=memory_keys(memory), mmap=mmap)


def verify_memory_index(memdir: Path | str) -> int | None:
    """Re-hashes every file of the memory's finished index (no stamps trusted); returns how
    many it checked, None if the memory has no finished index.

    Raises:
        IndexFileError: naming the first missing, truncated or corrupt file.
    """
    folder = Path(memdir) / INDEX_DIR
    if not has_index(memdir):
        return None
    return verify_files(folder, read_meta(folder), stamps=False)


def indexed_rows(memdir: Path | str) -> int:
    """How many of the memory's rows its finished index holds."""
    from ..io import load_json

    return int(load_json(Path(memdir) / INDEX_DIR / META_NAME)["ntotal"])


def add_shards_to_index(memdir: Path | str, new_shard_names: list[str] | None = None,
                        progress: bool = True):
    """Appends to the index, without retraining it, every shard past the rows it holds: the
    shards just added, and any an interrupted ``ravis memory add`` left out."""
    memory = ShardedMemory.open(memdir)
    held = indexed_rows(memdir)
    starts = [int(o) for o in memory.offsets[:-1]]
    if held not in starts + [memory.count]:
        raise InputError(f"{memdir}/index: holds {held} rows, which is not a shard boundary of the "
                         f"memory; rebuild it with `ravis memory index {memdir}`")
    first = starts.index(held) if held < memory.count else len(starts)
    names = memory.shard_names[first:]
    unexpected = set(new_shard_names or []) - set(names)
    if unexpected:
        raise InputError(f"{memdir}/index: already holds shards {sorted(unexpected)}")
    if not names:
        return open_memory_index(memdir)
    return add_to_index(memory.memdir / INDEX_DIR, key_paths(memory)[first:], names,
                        offset=held, progress=progress)


# ---------------------------------------------------------------------------------------------
# The index an experiment searches: one per memory part


def memory_index(memory: Memory, r: RetrievalConfig, cache_dir: Path | None = None,
                 search_params: dict | None = None, device=None):
    """The index over ``memory`` (a composed memory: one part index each, merged exactly).

    ``search_params`` (e.g. ``{"nprobe": 16}``) override the tuned ones of every part. On a
    GPU ``device``, exact search over keys that fit the budget runs there (torch).
    """
    indexes = [part_index(m, r, cache_dir, search_params, device) for _, m in memory.parts]
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
    if device is not None and str(device).startswith("cuda") and not is_approximate(r.index):
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
    return [[p.spec, dict(sorted(p.search_params.items())), p.saved_files or None] for p in parts]
