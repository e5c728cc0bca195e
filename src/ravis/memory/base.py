"""The memory protocol: what every memory offers, in RAM, on disk or composed of parts.

A memory is M rows of (key, value, metadata). Keys are unit-normalised image embeddings
made by ``key_encoder``; values are embeddings of captions or label prompts (or of a second
image encoder) made by ``value_encoder``. Readers ask for the rows they need; nothing in the
protocol hands out the whole memory, so a memory on disk can be far larger than RAM:

    memory.keys_at(I.ravel())              # (n, dim) in the stored dtype
    memory.labels_at(rows)                 # (n,) int64, -1 where an entry has no known class
    memory.meta_at(rows, ["id", "text"])   # {"id": [...], "text": [...]}

Implementations: :class:`~ravis.memory.store.ArrayMemory` (in RAM: the downstream training
split), :class:`~ravis.memory.sharded.ShardedMemory` (the one on-disk format, memory-mapped)
and :class:`~ravis.memory.compose.ComposedMemory` (a view over several of them).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import InputError

#: Metadata columns every memory can return from ``meta_at``.
META_COLUMNS = ("id", "text", "source", "thumbnail")


class MemoryMismatchError(InputError):
    """A memory that cannot serve a query encoder, or whose files disagree."""


@runtime_checkable
class Memory(Protocol):
    """An image-text memory: sizes, encoders, identity, and row access."""

    key_encoder: str  # fingerprint of the encoder that made the keys
    value_encoder: str  # fingerprint of the encoder that made the values

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def value_dim(self) -> int: ...

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype of keys and values (float16 or float32)."""
        ...

    @property
    def class_names(self) -> list[str]:
        """The names that ``labels_at`` indexes into."""
        ...

    @property
    def digest(self) -> str:
        """Content identity: changes whenever any key, value, label or text changes."""
        ...

    @property
    def key_digest(self) -> str:
        """Identity of keys and ids only: neighbour caches are keyed by it (memories that
        differ only in their values share neighbours)."""
        ...

    def keys_at(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) keys of ``rows``, in the stored dtype."""
        ...

    def values_at(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), value_dim) values of ``rows``, in the stored dtype."""
        ...

    def labels_at(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) int64 class indexes into ``class_names``; -1 for unlabelled entries."""
        ...

    def meta_at(self, rows: np.ndarray, columns: Sequence[str]) -> dict[str, list]:
        """The ``columns`` (of :data:`META_COLUMNS`) of ``rows``, as lists in row order."""
        ...

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids),) int64 row of each id, -1 where the memory has no such entry."""
        ...

    @property
    def parts(self) -> list[tuple[str, "Memory"]]:
        """(source spec, memory) of the memories this one is made of, in row order: a
        composed memory's parts, else ``[("", self)]``. Each part that has an index of its
        own is searched with it."""
        ...

    def key_blocks(self) -> list[np.ndarray]:
        """The keys as consecutive row blocks (arrays or memory maps): what an index is
        built over and what exact search scans, never copied whole."""
        ...

    def verify(self) -> None:
        """Checks the memory against its checksums; raises MemoryMismatchError naming the
        first bad file."""
        ...


def check_query_encoder(memory: Memory, encoder_fingerprint: str, dim: int, name: str = "memory") -> None:
    """Refuses a query encoder whose embeddings do not live in ``memory``'s key space."""
    if dim != memory.dim:
        raise MemoryMismatchError(
            f"{name}: keys are {memory.dim}-d but the query encoder gives {dim}-d embeddings")
    if encoder_fingerprint != memory.key_encoder:
        raise MemoryMismatchError(
            f"{name}: keys were made by {memory.key_encoder!r}, not by the query encoder "
            f"{encoder_fingerprint!r}: neighbours would be meaningless")


def as_rows(rows, count: int) -> np.ndarray:
    """rows as int64, refusing any outside [0, count)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= count):
        raise IndexError(f"memory rows out of range [0, {count})")
    return rows


def sorted_read(read, rows: np.ndarray):
    """``read(sorted unique rows)`` scattered back to the order of ``rows``: reads of a
    memory map in ascending order touch each page once."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    return read(uniq), inverse


def neighbor_labels(memory, neighbors: np.ndarray) -> np.ndarray:
    """(N, k) labels of each query's neighbour rows (-1 for a missing neighbour, -1 in
    ``neighbors``, and for an entry without a label), each distinct row read once."""
    found = neighbors >= 0
    labels, inverse = sorted_read(memory.labels_at, np.where(found, neighbors, 0).ravel())
    return np.where(found, labels[inverse].reshape(neighbors.shape), -1)
