"""The key/value memory behind one protocol (:mod:`.base`): in RAM (:mod:`.store`), on disk
in the one sharded format (:mod:`.sharded`, memory-mapped), or composed of parts
(:mod:`.compose`); built from a dataset's embeddings (:mod:`.build`) or from image-text
collections (:mod:`.sources`, :mod:`.shard_build`)."""

from .base import Memory, MemoryMismatchError
from .build import VALUE_KINDS, build_memory, with_wrong_values
from .compose import ComposedMemory, compose
from .sharded import ShardedMemory
from .store import ArrayMemory

__all__ = ["ArrayMemory", "ComposedMemory", "Memory", "MemoryMismatchError", "ShardedMemory",
           "VALUE_KINDS", "build_memory", "compose", "with_wrong_values"]
