"""k-NN indexes behind one protocol, chosen by a factory string (as faiss.index_factory).

A spec is ``name`` or ``name:options``; the name picks a registered backend and the options
go to it unparsed, so an approximate backend can later take ``"faiss:IVF4096,PQ32"`` or
``"hnsw:32"`` without this module changing.

    index = create_index("exact", d)
    index.add(xb)
    D, I = index.search(xq, k)
    index.save(path)
    index = load_index(path)                    # refuses damaged files (IndexFileError)

An index over a memory's key shards, exact or built, tuned and cached as its spec asks, comes
from one function, :func:`ravis.index.build.index_over`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Index, IndexFileError, read_meta
from .exact import ExactIndex
from .faiss_index import FaissFlatIndex, FaissIndex
from .scann_index import ScannIndex

#: Backend name -> class. A class provides ``from_spec(d, options)`` and ``load(path)``.
INDEXES: dict[str, type] = {}


def register_index(name: str, cls: type) -> type:
    """Makes ``cls`` available to :func:`create_index` and :func:`load_index` as ``name``."""
    if not name or ":" in name:
        raise InputError(f"bad index name {name!r}")
    if name in INDEXES and INDEXES[name] is not cls:
        raise InputError(f"index name {name!r} is already registered to {INDEXES[name].__name__}")
    INDEXES[name] = cls
    return cls


def _backend(spec: str) -> tuple[type, str]:
    name, _, options = spec.partition(":")
    if name not in INDEXES:
        raise InputError(f"unknown index {name!r} in spec {spec!r}; known: {sorted(INDEXES)}")
    return INDEXES[name], options


def create_index(spec: str, d: int) -> Index:
    """An empty index of dimension d built from a factory string such as ``"exact"``."""
    cls, options = _backend(spec)
    return cls.from_spec(d, options)


def load_index(path: Path | str, *, vectors=None, mmap: bool = False) -> Index:
    """Reads an index saved by ``Index.save``; its sidecar names the backend.

    Args:
        vectors: exact rows by id (e.g. a KeyShards over the memory's keys), for backends
            that compress: exact reconstruction and rescoring (see ``Index.vectors``).
        mmap: map large files instead of reading them, where the backend can.

    Raises:
        IndexFileError: a file of the index is missing, truncated or corrupt (named).
    """
    meta = read_meta(path)
    cls, _ = _backend(meta["spec"])
    return cls.load(path, vectors=vectors, mmap=mmap)


register_index("exact", ExactIndex)
register_index("faiss-flat", FaissFlatIndex)
register_index("faiss", FaissIndex)
register_index("scann", ScannIndex)  # imports scann only when used

__all__ = ["Index", "IndexFileError", "ExactIndex", "FaissFlatIndex", "FaissIndex", "ScannIndex", "INDEXES",
           "create_index", "load_index", "register_index"]
