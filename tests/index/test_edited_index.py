"""The index that follows a memory's edits: deleted entries are never returned and k live
rows remain, added ones are found at once, and after deletes the results equal those over a
memory built without the deleted entries (exact unlearning)."""

import base64

import numpy as np
from edit_data import add_args, base_memory, edited, unit

from ravis.config import RetrievalConfig
from ravis.memory import ArrayMemory
from ravis.memory.indexing import memory_index


def test_deleted_entries_are_never_returned_and_k_live_rows_remain(tmp_path):
    memory, index = edited(tmp_path)
    rng = np.random.default_rng(2)
    xq = unit(rng, 30)
    D0, I0 = index.search(xq, 10)
    gone = sorted({int(i) for i in I0[:, :5].ravel()})
    memory.edit("delete", ids=[f"id{r}" for r in gone])
    D, I = index.search(xq, 10)
    assert (I >= 0).all() and not np.isin(I, gone).any()
    memory.edit("delete_class", name="a")
    D, I = index.search(xq, 50)  # more than the 16-row margin per query is deleted
    assert (I >= 0).all() and memory.is_live(I.ravel()).all()
    assert (memory.labels_at(I.ravel()) != 0).all()


def test_an_added_entry_is_found_at_once(tmp_path):
    memory, index = edited(tmp_path)
    rng = np.random.default_rng(3)
    args = add_args(rng, "new")
    memory.edit("add", **args)
    key = np.frombuffer(base64.b64decode(args["key"]), np.float32)[None]
    D, I = index.search(key, 3)
    assert I[0, 0] == 200 and memory.meta_at([200], ["id"])["id"] == ["new"]


def test_exact_unlearning_equals_a_memory_built_without_the_entries(tmp_path):
    """After deletes, search results (scores and entries) are byte-equal to those of the
    same index over a memory that never held the deleted entries."""
    memory, index = edited(tmp_path)
    rng = np.random.default_rng(4)
    gone = rng.choice(200, 40, replace=False)
    memory.edit("delete", ids=[f"id{r}" for r in gone])
    keep = np.setdiff1d(np.arange(200), gone)
    base = base_memory()
    without = ArrayMemory(keys=base.keys[keep], values=base.values[keep], labels=base.labels[keep],
                          texts=[base.texts[i] for i in keep], ids=[base.ids[i] for i in keep],
                          sources=[base.sources[i] for i in keep], key_encoder="enc",
                          value_encoder="txt", class_names=base.class_names)
    reference = memory_index(without, RetrievalConfig())
    xq = unit(rng, 50)
    D, I = index.search(xq, 20)
    Dr, Ir = reference.search(xq, 20)
    assert D.tobytes() == Dr.tobytes()
    assert memory.meta_at(I.ravel(), ["id"]) == without.meta_at(Ir.ravel(), ["id"])
