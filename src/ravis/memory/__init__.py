"""The key/value memory: the store (:mod:`.store`) and the build step (:mod:`.build`);
sharded web-scale memories on disk (:mod:`.sharded`), built from image-text collections
(:mod:`.sources`, :mod:`.shard_build`)."""

from .build import VALUE_KINDS, build_memory, with_wrong_values
from .sharded import ShardedMemory
from .store import Memory, MemoryMismatchError

__all__ = ["Memory", "MemoryMismatchError", "ShardedMemory", "VALUE_KINDS", "build_memory",
           "with_wrong_values"]
