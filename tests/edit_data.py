"""A small memory and edits of it, for the tests of the edited view and the edited index."""

import base64

import numpy as np

from ravis.config import RetrievalConfig
from ravis.index.edited_index import EditedIndex
from ravis.memory import ArrayMemory
from ravis.memory.edit_log import encode_array
from ravis.memory.edited_view import EditedMemory
from ravis.memory.indexing import memory_index

D, DV = 16, 6


def base_memory(m=200, seed=0) -> ArrayMemory:
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((m, D)).astype(np.float32)
    return ArrayMemory(keys=keys / np.linalg.norm(keys, axis=1, keepdims=True),
                       values=rng.standard_normal((m, DV)).astype(np.float32),
                       labels=np.arange(m) % 3, texts=[f"t{i}" for i in range(m)],
                       ids=[f"id{i}" for i in range(m)],
                       sources=["web" if i % 5 == 0 else "train" for i in range(m)],
                       key_encoder="enc", value_encoder="txt", class_names=["a", "b", "c"],
                       thumbnails=[bytes([i % 256]) for i in range(m)])


def unit(rng, n=1):
    x = rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add_args(rng, id_, label="a", text="x"):
    return dict(id=id_, label=label, text=text, source="edits", key=encode_array(unit(rng)[0]),
                value=encode_array(rng.standard_normal(DV)), thumbnail=base64.b64encode(b"png").decode())


def edited(tmp_path, base=None):
    base = base or base_memory()
    memory = EditedMemory(base, tmp_path / "memory-edits.log")
    return memory, EditedIndex(memory_index(base, RetrievalConfig()), memory)


def some_edits(memory, rng):
    memory.edit("add", who="t", **add_args(rng, "new0", label="a"))
    memory.edit("add", who="t", **add_args(rng, "new1", label="zebra", text="a zebra"))  # a new class
    memory.edit("delete", who="t", ids=["id3", "new0"])
    memory.edit("relabel", who="t", changes=[["id4", "c", "c"]], values={"c": encode_array(np.ones(DV))})
    memory.edit("delete_class", who="t", name="b")
    memory.edit("delete_source", who="t", name="web")


def state(memory):
    rows = np.arange(len(memory))
    return (memory.digest, memory.is_live(rows).tolist(), memory.labels_at(rows).tolist(),
            memory.values_at(rows).tobytes(), memory.meta_at(rows, ["id", "text", "source"]),
            memory.class_names)
