"""The in-RAM memory: the downstream training split (or any small memory) as arrays.

It offers the :class:`~ravis.memory.base.Memory` protocol like the on-disk memory does, and
``save`` writes the one on-disk format (:mod:`ravis.memory.sharded`, a single shard), so a
saved in-RAM memory opens as a :class:`~ravis.memory.sharded.ShardedMemory`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import stable_hash
from .base import META_COLUMNS, MemoryMismatchError, as_rows, check_query_encoder


@dataclass
class ArrayMemory:
    """An image-text memory held in RAM."""

    keys: np.ndarray  # (M, d) unit rows: the query encoder's embeddings of the images
    values: np.ndarray  # (M, d') text embeddings (or a second image encoder's)
    labels: np.ndarray  # (M,) int64 class index, -1 where an entry has no known class
    texts: list[str]  # (M,) caption or label text: what RAC concatenates and predict shows
    ids: list[str]  # (M,) entry ids, unique within the memory
    sources: list[str]  # (M,) which collection each entry came from
    key_encoder: str  # fingerprint of the encoder that made the keys
    value_encoder: str  # fingerprint of the encoder that made the values
    class_names: list[str] = field(default_factory=list)
    thumbnails: list[bytes] | None = None  # (M,) small image per entry (b"" for none)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.values.dtype != self.keys.dtype:
            raise MemoryMismatchError(f"memory keys are {self.keys.dtype}, values {self.values.dtype}")
        m = len(self.keys)
        lengths = {"values": len(self.values), "labels": len(self.labels), "texts": len(self.texts),
                   "ids": len(self.ids), "sources": len(self.sources)}
        if self.thumbnails is not None:
            lengths["thumbnails"] = len(self.thumbnails)
        bad = {k: v for k, v in lengths.items() if v != m}
        if bad:
            raise MemoryMismatchError(f"memory has {m} keys but {bad}")
        self._row_of: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.keys.shape[1])

    @property
    def value_dim(self) -> int:
        return int(self.values.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.keys.dtype

    # Hashed once: the arrays are built whole and never changed in place (an edit makes a
    # new memory), and a 60k-row memory is 400 MB to hash, asked for by every cache key.
    @functools.cached_property
    def digest(self) -> str:
        return stable_hash(self.keys, self.values, self.labels, self.texts, self.ids, self.class_names)

    @functools.cached_property
    def key_digest(self) -> str:
        return stable_hash(self.keys, self.ids)

    def keys_at(self, rows) -> np.ndarray:
        return self.keys[as_rows(rows, len(self))]

    def values_at(self, rows) -> np.ndarray:
        return self.values[as_rows(rows, len(self))]

    def labels_at(self, rows) -> np.ndarray:
        return self.labels[as_rows(rows, len(self))]

    def meta_at(self, rows, columns: Sequence[str]) -> dict[str, list]:
        rows = as_rows(rows, len(self))
        thumbs = self.thumbnails if self.thumbnails is not None else [b""] * len(self)
        lists = {"id": self.ids, "text": self.texts, "source": self.sources, "thumbnail": thumbs}
        unknown = set(columns) - set(META_COLUMNS)
        if unknown:
            raise KeyError(f"unknown memory metadata columns {sorted(unknown)}; known: {META_COLUMNS}")
        return {c: [lists[c][r] for r in rows] for c in columns}

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        if self._row_of is None:
            self._row_of = {item: r for r, item in enumerate(self.ids)}
        return np.array([self._row_of.get(item, -1) for item in ids], dtype=np.int64)

    @property
    def parts(self) -> list[tuple[str, "ArrayMemory"]]:
        return [("", self)]

    def key_blocks(self) -> list[np.ndarray]:
        return [self.keys]

    def verify(self) -> None:
        """Nothing to check: the arrays are in RAM, made by this process."""

    def check_query_encoder(self, encoder_fingerprint: str, dim: int) -> None:
        check_query_encoder(self, encoder_fingerprint, dim)

    @classmethod
    def from_memory(cls, memory, verify: bool = True) -> "ArrayMemory":
        """Every row of ``memory`` (any :class:`~ravis.memory.base.Memory`) in RAM, checked
        against its checksums first: for tests and small memories (experiments read rows
        through the protocol instead)."""
        if verify:
            memory.verify()
        rows = np.arange(len(memory))
        meta = memory.meta_at(rows, ["id", "text", "source", "thumbnail"])
        return cls(keys=memory.keys_at(rows), values=memory.values_at(rows),
                   labels=memory.labels_at(rows), texts=meta["text"], ids=meta["id"],
                   sources=meta["source"], key_encoder=memory.key_encoder,
                   value_encoder=memory.value_encoder, class_names=memory.class_names,
                   thumbnails=meta["thumbnail"])

    def save(self, folder: Path | str, dtype: str | None = None):
        """Writes the memory as a one-shard :mod:`ravis.memory.sharded` folder; returns it
        opened. ``dtype`` (default: the arrays' own) is float16 or float32."""
        from .sharded import save_single_shard

        return save_single_shard(self, Path(folder), dtype or str(self.keys.dtype))
