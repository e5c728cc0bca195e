"""The key/value memory: the store (:mod:`.store`) and the build step (:mod:`.build`)."""

from .build import VALUE_KINDS, build_memory, with_wrong_values
from .store import Memory, MemoryMismatchError

__all__ = ["Memory", "MemoryMismatchError", "VALUE_KINDS", "build_memory", "with_wrong_values"]
