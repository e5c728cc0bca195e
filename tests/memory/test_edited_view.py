"""The edited memory over its log: replay, torn and damaged records, all-or-nothing adds, a
process killed while editing."""

import numpy as np
import pytest
from edit_data import DV, add_args, base_memory, edited, some_edits, state

from ravis.memory import Memory, MemoryMismatchError
from ravis.memory.edit_log import EditLog
from ravis.memory.edited_view import EditedMemory, EditError


def test_class_counts_follow_the_edits(tmp_path):
    """A class edits brought in is counted over its live entries, added or relabelled into
    it; a class of the base only where its base count is given, then with what edits changed
    (compared with a full count of the live labels)."""
    memory = EditedMemory(base_memory(), tmp_path / "memory-edits.log", base_class_counts={"c": 66})
    rng = np.random.default_rng(3)
    assert memory.class_counts() == {"c": 66}  # ids 2, 5, ..., 197: 66 of the 200
    memory.add_many([add_args(rng, f"z{i}", label="zebra") for i in range(3)] + [add_args(rng, "q", label="quagga")])
    memory.edit("add", who="t", **add_args(rng, "a1", label="c"))
    assert memory.class_counts() == {"c": 67, "zebra": 3, "quagga": 1}
    memory.edit("delete", who="t", ids=["z0", "id2", "z0"])  # an id twice is one delete
    memory.edit("relabel", who="t", changes=[["id5", "zebra", None], ["z1", "quagga", None], ["id0", "c", None]])
    assert memory.class_counts() == {"c": 66, "zebra": 2, "quagga": 2}  # -id2 -id5 +id0; z2 id5; q z1
    memory.edit("delete_class", who="t", name="quagga")
    live = memory.live_rows(0, len(memory))
    full = np.bincount(memory.labels_at(live), minlength=len(memory.class_names))
    expected = {c: int(full[memory.class_names.index(c)]) for c in ("c", "zebra", "quagga")}
    assert memory.class_counts() == expected == {"c": 66, "zebra": 2, "quagga": 0}
    again = EditedMemory(base_memory(), tmp_path / "memory-edits.log", base_class_counts={"c": 66})
    assert again.class_counts() == expected


def test_edits_apply_and_replay_to_the_same_memory(tmp_path):
    memory, _ = edited(tmp_path)
    assert isinstance(memory, Memory)
    some_edits(memory, np.random.default_rng(1))
    assert len(memory) == 202 and memory.class_names == ["a", "b", "c", "zebra"]
    assert memory.rows_of(["id3", "new0", "new1", "id4", "id1", "id0"]).tolist() == [-1, -1, 201, 4, -1, -1]
    assert memory.labels_at([201, 4]).tolist() == [3, 2]
    np.testing.assert_array_equal(memory.values_at([4])[0], np.ones(DV))
    assert memory.meta_at([4, 201], ["text"])["text"] == ["c", "a zebra"]
    live = memory.is_live(np.arange(200))
    base = base_memory()
    gone = (base.labels == 1) | (np.arange(200) % 5 == 0)
    gone[4] = False  # relabelled from b to c before class b was deleted
    assert not live[gone].any() and live[~gone & (np.arange(200) != 3)].all()
    again = EditedMemory(base_memory(), tmp_path / "memory-edits.log")
    assert state(again) == state(memory)
    records, _ = EditLog(tmp_path / "memory-edits.log").read()
    assert [r["op"] for r in records] == ["add", "add", "delete", "relabel", "delete_class", "delete_source"]
    assert all(r["who"] == "t" and r["time"] > 0 for r in records) and [r["seq"] for r in records] == list(range(1, 7))


@pytest.mark.parametrize("op, args, says", [
    ("delete", {"ids": ["id1", "nope"]}, "no live memory entry 'nope'"),
    ("relabel", {"changes": [["id1", "nope", None]]}, "unknown class 'nope'"),
    ("relabel", {"changes": [["gone", "a", None]]}, "no live memory entry 'gone'"),
    ("relabel", {"changes": [["id1", "a", "a"]]}, "without its value"),
    ("delete_class", {"name": "nope"}, "no class 'nope'"),
    ("add", {"id": "id1", "label": "a"}, "already has an entry 'id1'"),
])
def test_a_bad_edit_changes_nothing(tmp_path, op, args, says):
    memory, _ = edited(tmp_path)
    memory.edit("delete", ids=["id9"])
    before, log_bytes = state(memory), (tmp_path / "memory-edits.log").read_bytes()
    if op == "add":
        args = {**add_args(np.random.default_rng(0), args["id"]), **args}
    with pytest.raises(EditError, match=says):
        memory.edit(op, **args)
    assert state(memory) == before and (tmp_path / "memory-edits.log").read_bytes() == log_bytes


def test_a_kill_at_any_byte_replays_a_consistent_memory(tmp_path, caplog):
    """The log cut at every byte (a kill at a record boundary or inside a record): replay
    applies the whole records before the cut and drops the torn one, never half of it."""
    full, _ = edited(tmp_path / "full")
    some_edits(full, np.random.default_rng(1))
    data = (tmp_path / "full" / "memory-edits.log").read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    states = []  # the memory after each number of whole records
    ref, _ = edited(tmp_path / "ref")
    states.append(state(ref))
    for r in EditLog(tmp_path / "full" / "memory-edits.log").read()[0]:
        ref._apply(r)
        states.append(state(ref))
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    for cut in range(0, len(data) + 1, 7):
        (cut_dir / "memory-edits.log").write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level("WARNING"):
            memory = EditedMemory(base_memory(), cut_dir / "memory-edits.log")
        whole = sum(e <= cut for e in ends)
        assert state(memory)[1:] == states[whole][1:]
        assert ("torn last edit record" in caplog.text) == (cut not in [0, *ends])
    # the next edit after a torn tail cuts it off and lands as a whole record
    (cut_dir / "memory-edits.log").write_bytes(data[:ends[1] + 10])
    memory = EditedMemory(base_memory(), cut_dir / "memory-edits.log")
    memory.edit("delete", ids=["id7"])
    again = EditedMemory(base_memory(), cut_dir / "memory-edits.log")
    assert [r["op"] for r in EditLog(cut_dir / "memory-edits.log").read()[0]] == ["add", "add", "delete"]
    assert state(again) == state(memory)


def test_a_damaged_record_before_good_ones_is_refused(tmp_path):
    memory, _ = edited(tmp_path)
    some_edits(memory, np.random.default_rng(1))
    path = tmp_path / "memory-edits.log"
    data = bytearray(path.read_bytes())
    data[data.index(b"\n") + 40] ^= 0x01  # inside the second record
    path.write_bytes(bytes(data))
    with pytest.raises(MemoryMismatchError, match=f"{path}.*damaged and later records follow"):
        EditedMemory(base_memory(), path)


def test_add_many_is_all_or_nothing(tmp_path):
    memory, index = edited(tmp_path)
    rng = np.random.default_rng(5)
    good = [add_args(rng, f"bulk{i}") for i in range(50)]
    memory.add_many(good, who="t")
    assert len(memory) == 250 and memory.rows_of(["bulk49"]).tolist() == [249]
    before, log_bytes = state(memory), (tmp_path / "memory-edits.log").read_bytes()
    with pytest.raises(EditError, match="already has an entry 'bulk3'"):
        memory.add_many([add_args(rng, "fresh"), add_args(rng, "bulk3")])
    with pytest.raises(EditError, match="repeat an id"):
        memory.add_many([add_args(rng, "twice"), add_args(rng, "twice")])
    assert state(memory) == before and (tmp_path / "memory-edits.log").read_bytes() == log_bytes
    assert state(EditedMemory(base_memory(), tmp_path / "memory-edits.log")) == before


KILLED_EDITOR = """
import sys, numpy as np
sys.path.insert(0, sys.argv[3])
from edit_data import add_args
from ravis.memory import ShardedMemory
from ravis.memory.edited_view import EditedMemory
memory = EditedMemory(ShardedMemory.open(sys.argv[1]), sys.argv[2])
rng = np.random.default_rng(7)
for i in range(10**6):  # until killed
    if i % 3 == 2:
        memory.edit("delete", who="loop", ids=[f"loop{i - 1}"])
    else:
        memory.add_many([add_args(rng, f"loop{i}")], who="loop")
    if i == 20:
        print("ready", flush=True)
"""


def test_a_process_killed_while_editing_leaves_a_log_that_replays(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    memdir = tmp_path / "memory"
    base_memory().save(memdir)
    log = tmp_path / "memory-edits.log"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_EDITOR, str(memdir), str(log),
                             str(Path(__file__).parents[1])], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    from ravis.memory import ShardedMemory

    memory = EditedMemory(ShardedMemory.open(memdir), log)
    records, good = EditLog(log).read()
    assert len(records) > 20 and memory.seq == records[-1]["seq"] == len(records)
    live_added = {r["id"] for r in records if r["op"] == "add"} - {i for r in records if r["op"] == "delete" for i in r["ids"]}
    assert set(memory.meta_at(memory.live_rows(200, len(memory)), ["id"])["id"]) == live_added
    memory.edit("delete", who="after", ids=["id1"])  # the log takes edits again after the kill
    assert EditedMemory(ShardedMemory.open(memdir), log).seq == len(records) + 1
