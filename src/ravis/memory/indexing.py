"""A sharded memory's index: built into ``MEMDIR/index``, opened with the memory's key shards
attached (so compressed indexes can rescore exactly and exclude self-duplicates), and
extended when shards are appended.

    ravis memory index MEMDIR --budget 16G --target-recall 0.95
"""

from __future__ import annotations

from pathlib import Path

from ..index import load_index
from ..index.base import META_NAME
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


def open_memory_index(memdir: Path | str, mmap: bool = True):
    """The memory's built index with its tuned parameters and the key shards attached."""
    memory = ShardedMemory.open(memdir)
    folder = memory.memdir / INDEX_DIR
    if not has_index(memdir):
        raise FileNotFoundError(f"{folder}: no finished index; run `ravis memory index {memdir}`")
    index = load_index(folder, mmap=mmap)
    if index.ntotal != memory.count:
        raise ValueError(f"{folder}: index holds {index.ntotal} vectors but the memory has "
                         f"{memory.count} rows; rerun `ravis memory index {memdir}`")
    index.vectors = KeyShards(key_paths(memory), memory.shard_names)
    return index


def add_shards_to_index(memdir: Path | str, new_shard_names: list[str], progress: bool = True):
    """Appends the memory's new shards to its index without retraining it."""
    memory = ShardedMemory.open(memdir)
    names = memory.shard_names
    missing = [n for n in new_shard_names if n not in names]
    if missing:
        raise ValueError(f"{memdir}: shards {missing} are not in the manifest")
    first = names.index(new_shard_names[0])
    paths = key_paths(memory)[first:first + len(new_shard_names)]
    return add_to_index(memory.memdir / INDEX_DIR, paths, new_shard_names,
                        offset=int(memory.offsets[first]), progress=progress)
