"""Composed memories: several memories searched as one (the paper's "All" memory, e.g. the
downstream training set plus a web collection), as a view over the parts, never a copy.

Rows are the parts' rows in order: row r of part p is ``offsets[p] + r``. Entries keep their
source name, and the ids of every part after the first are prefixed with it
(``"laion-400m:00012/000123"``), so a neighbour says where it came from and ids stay unique.
The first part is usually the training split, whose ids must stay as they are: the
self-exclusion of training queries matches query ids against memory ids. Labels are mapped
into the experiment's class names (-1 for a class the experiment does not have).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..index.multi import by_part
from ..io import stable_hash
from .base import Memory, MemoryMismatchError, as_rows, check_query_encoder


def source_name(spec: str) -> str:
    """A short name for a memory source: the folder name of a path, else the spec."""
    return Path(spec).name or spec


def label_mapping(memory_classes: Sequence[str], class_names: Sequence[str]) -> np.ndarray | None:
    """(len(memory_classes) + 1,) experiment class of each memory class (-1 if absent; the
    last entry maps the memory's -1), or None where the class lists are the same."""
    if list(memory_classes) == list(class_names):
        return None
    lookup = {name: i for i, name in enumerate(class_names)}
    return np.array([lookup.get(name, -1) for name in memory_classes] + [-1], dtype=np.int64)


class ComposedMemory:
    """Parts (source spec, memory) viewed as one memory in the class space ``class_names``."""

    def __init__(self, parts: Sequence[tuple[str, Memory]], class_names: Sequence[str]):
        if not parts:
            raise InputError("a composed memory needs at least one part")
        first_spec, first = parts[0]
        for spec, m in parts[1:]:
            for what, a, b in [("key encoder", first.key_encoder, m.key_encoder),
                               ("value encoder", first.value_encoder, m.value_encoder),
                               ("key dimension", first.dim, m.dim),
                               ("value dimension", first.value_dim, m.value_dim)]:
                if a != b:
                    raise MemoryMismatchError(
                        f"memory {spec!r} has {what} {b!r} but {first_spec!r} has {a!r}: "
                        "composed memories must share both embedding spaces")
        names = [source_name(s) for s, _ in parts[1:]]
        if len(set(names)) != len(names):
            raise MemoryMismatchError(f"composed memory {[s for s, _ in parts]}: two parts share "
                                      "a folder name, so their entry ids would collide")
        self.parts = list(parts)
        self._class_names = list(class_names)
        self.key_encoder, self.value_encoder = first.key_encoder, first.value_encoder
        self.offsets = np.concatenate([[0], np.cumsum([len(m) for _, m in parts])]).astype(np.int64)
        self._maps = [label_mapping(m.class_names, class_names) for _, m in parts]
        # every part after the first names its ids "<source name>:<id>"
        self._prefixes = [""] + [f"{n}:" for n in names]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return self.parts[0][1].dim

    @property
    def value_dim(self) -> int:
        return self.parts[0][1].value_dim

    @property
    def dtype(self) -> np.dtype:
        dtypes = {np.dtype(m.dtype) for _, m in self.parts}
        return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def digest(self) -> str:
        return stable_hash([m.digest for _, m in self.parts], self._class_names)

    @property
    def key_digest(self) -> str:
        return stable_hash([m.key_digest for _, m in self.parts])

    def check_query_encoder(self, encoder_fingerprint: str, dim: int) -> None:
        check_query_encoder(self, encoder_fingerprint, dim, name=f"memory {self.parts[0][0]!r}")

    def _by_part(self, rows):
        return by_part(as_rows(rows, len(self)), self.offsets)

    def _gather(self, rows, read, width: int | None, dtype) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        parts = list(self._by_part(rows))
        if len(parts) == 1 and len(parts[0][1]) == len(rows):
            p, _, local = parts[0]  # one part holds them all: its array as it comes, no copy
            got = read(p, local)
            return got if got.dtype == dtype else got.astype(dtype)
        out = np.empty((len(rows), width) if width else len(rows), dtype=dtype)
        for p, pos, local in parts:
            out[pos] = read(p, local)
        return out

    def keys_at(self, rows) -> np.ndarray:
        return self._gather(rows, lambda p, r: self.parts[p][1].keys_at(r), self.dim, self.dtype)

    def values_at(self, rows) -> np.ndarray:
        return self._gather(rows, lambda p, r: self.parts[p][1].values_at(r), self.value_dim, self.dtype)

    def labels_at(self, rows) -> np.ndarray:
        def read(p, local):
            labels, mapping = self.parts[p][1].labels_at(local), self._maps[p]
            return labels if mapping is None else mapping[np.where(labels >= 0, labels, len(mapping) - 1)]

        return self._gather(rows, read, None, np.int64)

    def meta_at(self, rows, columns: Sequence[str]) -> dict[str, list]:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out: dict[str, list] = {c: [None] * len(rows) for c in columns}
        for p, pos, local in self._by_part(rows):
            got = self.parts[p][1].meta_at(local, columns)
            for c in columns:
                values = got[c] if c != "id" else [self._prefixes[p] + i for i in got[c]]
                for j, v in zip(pos, values):
                    out[c][j] = v
        return out

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        ids = list(ids)
        out = np.full(len(ids), -1, dtype=np.int64)
        for p, (_, part) in enumerate(self.parts):
            prefix = self._prefixes[p]
            pos = [j for j, i in enumerate(ids) if i.startswith(prefix)]
            if not pos:  # no id names this part: its id column is never read
                continue
            found = part.rows_of([ids[j][len(prefix):] for j in pos])
            hit = found >= 0
            out[np.asarray(pos)[hit]] = self.offsets[p] + found[hit]
        return out

    def key_blocks(self) -> list[np.ndarray]:
        return [block for _, m in self.parts for block in m.key_blocks()]

    def verify(self) -> None:
        for _, m in self.parts:
            m.verify()


def compose(parts: Sequence[tuple[str, Memory]], class_names: Sequence[str]) -> ComposedMemory:
    """One memory from (source spec, memory) parts, in order (a view: nothing is copied).

    Raises:
        MemoryMismatchError: the parts' keys or values come from different encoders or
            dimensions (named by source), or two later parts share a name.
    """
    return ComposedMemory(parts, class_names)
