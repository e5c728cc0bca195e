"""A sharded memory's index: built into ``MEMDIR/index`` (or attached from a faiss file made
elsewhere), opened with the memory's key shards attached (so compressed indexes can rescore
exactly and exclude self-duplicates), verified file by file, and extended when shards are
appended.

    ravis memory index MEMDIR --budget 16G --target-recall 0.95
    ravis memory index MEMDIR --from-faiss knn.index
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..index import load_index
from ..index.attach import attach_faiss
from ..index.base import META_NAME, read_meta, verify_files
from ..index.build import KeyShards, add_to_index, build_index
from .sharded import ShardedMemory

INDEX_DIR = "index"


def key_paths(memory: ShardedMemory) -> list[Path]:
    return [memory.memdir / s["files"]["keys"]["path"] for s in memory.manifest["shards"]]


def has_index(memdir: Path | str) -> bool:
    return (Path(memdir) / INDEX_DIR / META_NAME).is_file()


def index_memory(memdir: Path | str, *, budget="16G", target_recall: float = 0.95, k: int = 100,
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


def attach_index(memdir: Path | str, file: Path | str, *, target_recall: float = 0.95, k: int = 100):
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
