"""The key/value memory behind one protocol (:mod:`.base`): in RAM (:mod:`.store`), on disk
in the one sharded format (:mod:`.sharded`, memory-mapped), or composed of parts
(:mod:`.compose`); built from a dataset's embeddings (:mod:`.from_dataset`) or from
image-text collections (:mod:`.shard_build`, reading :mod:`ravis.data.sources`); imported
from and exported to clip-retrieval's layout (:mod:`.clip_retrieval`); edited after training
(:mod:`.edit_log`, :mod:`.edited_view`); its index (:mod:`.indexing`) and a direct search
(:mod:`.search`)."""

from .base import Memory, MemoryMismatchError
from .compose import ComposedMemory, compose
from .from_dataset import build_memory, with_wrong_values
from .sharded import ShardedMemory
from .store import ArrayMemory

__all__ = ["ArrayMemory", "ComposedMemory", "Memory", "MemoryMismatchError", "ShardedMemory",
           "build_memory", "compose", "with_wrong_values"]
