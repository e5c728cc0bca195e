"""Composed memories: several memories searched as one (the paper's "All" memory, e.g. the
downstream training set plus a web collection).

Entries keep their source name, and the ids of every part after the first are prefixed with
it (``"laion-400m:00012/000123"``), so a neighbour says where it came from and ids stay
unique. The first part is usually the training split, whose ids must stay as they are: the
self-exclusion of training queries matches query ids against memory ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .store import Memory, MemoryMismatchError


def source_name(spec: str) -> str:
    """A short name for a memory source: the folder name of a path, else the spec."""
    return Path(spec).name or spec


def relabel(memory: Memory, class_names: list[str]) -> np.ndarray:
    """The memory's labels in the experiment's class space, matched by class name; -1 for
    entries whose class the experiment does not have (the vote ignores them)."""
    if list(memory.class_names) == list(class_names):
        return memory.labels
    lookup = {name: i for i, name in enumerate(class_names)}
    mapping = np.array([lookup.get(name, -1) for name in memory.class_names] + [-1], dtype=np.int64)
    return mapping[np.where(memory.labels >= 0, memory.labels, len(memory.class_names))]


def compose(parts: list[tuple[str, Memory]], class_names: list[str]) -> Memory:
    """One memory from (source spec, memory) parts, in order, with ``parts`` recorded.

    Raises:
        MemoryMismatchError: the parts' keys or values come from different encoders or
            dimensions (named by source), or two entries share an id.
    """
    if len(parts) == 1:
        spec, memory = parts[0]
        memory.parts = [(spec, len(memory))]
        return memory
    first_spec, first = parts[0]
    for spec, m in parts[1:]:
        for what, a, b in [("key encoder", first.key_encoder, m.key_encoder),
                           ("value encoder", first.value_encoder, m.value_encoder),
                           ("key dimension", first.dim, m.dim), ("value dimension", first.value_dim, m.value_dim)]:
            if a != b:
                raise MemoryMismatchError(f"memory {spec!r} has {what} {b!r} but {first_spec!r} has {a!r}: "
                                          "composed memories must share both embedding spaces")
    ids = list(first.ids)
    for spec, m in parts[1:]:
        ids += [f"{source_name(spec)}:{i}" for i in m.ids]
    if len(set(ids)) != len(ids):
        raise MemoryMismatchError(f"composed memory {[s for s, _ in parts]} has duplicate entry ids")
    out = Memory(keys=np.concatenate([m.keys for _, m in parts]),
                 values=np.concatenate([m.values for _, m in parts]),
                 labels=np.concatenate([relabel(m, class_names) for _, m in parts]),
                 texts=[t for _, m in parts for t in m.texts], ids=ids,
                 sources=[s for _, m in parts for s in m.sources],
                 key_encoder=first.key_encoder, value_encoder=first.value_encoder,
                 class_names=list(class_names))
    out.parts = [(spec, len(m)) for spec, m in parts]
    return out
