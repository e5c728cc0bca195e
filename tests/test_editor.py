"""Editing a finished run's memory: the predictor retrieves from the edited memory at once,
a delete is exact unlearning (byte-equal to a memory built without the entries), a new
class is predicted without retraining, and compaction gives the answers of the log it folds."""

import json
import shutil

import numpy as np
import torch
import pytest

import ravis
from ravis.cli import main
from ravis.data import load_fashion_mnist
from ravis.editor import MemoryEditor
from ravis.memory import ArrayMemory
from ravis.index.edited_index import EditedIndex
from ravis.memory.edited_view import EditedMemory, EditError
from ravis.memory.indexing import memory_index


@pytest.fixture
def run(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def images(run, n):
    ids = json.loads((run / "tiny-fmnist" / "test_ids.json").read_text())[:n]
    test = load_fashion_mnist().test
    return [test.load_image(int(i.rsplit("/", 1)[1])) for i in ids]


def answers(predictor, ims):
    """What a response says, less the timings and the row numbers (which renumber)."""
    out = predictor.predict(ims, top_neighbors=None)
    for o in out:
        o.pop("timings_ms")
        for n in o["neighbors"]:
            n.pop("row")
    return out


def test_cli_edits_reach_a_loaded_predictor_at_once(run, tmp_path, capsys):
    p = ravis.load(run)
    query = images(run, 1)
    before = answers(p, query)
    path = tmp_path / "query.png"
    query[0].save(path)
    assert main(["memory", "edit", str(run), "--add", str(path), "--label", "T-shirt/top"]) == 0
    added = capsys.readouterr().out.split()[1]
    assert added.startswith("edit/") and added.endswith("/query.png")
    after = answers(p, query)[0]
    top = after["neighbors"][0]
    assert top["memory_id"] == added and top["similarity"] > 0.999 and top["label"] == "T-shirt/top"
    assert main(["memory", "edit", str(run), "--delete", added]) == 0
    assert answers(p, query) == before  # added, then deleted: as if never added
    assert main(["memory", "edit", str(run), "--delete", added]) == 2
    assert "no live memory entry" in capsys.readouterr().err


def test_a_delete_is_exact_unlearning(run):
    """Logits and neighbour lists after a delete equal those of the same model served with a
    memory built without the entries; their texts and thumbnails are in no response."""
    p = ravis.load(run)
    ims = images(run, 12)
    first = answers(p, ims)
    gone = sorted({n["memory_id"] for o in first for n in o["neighbors"][:3]})
    MemoryEditor.for_predictor(p).delete(gone)
    edited = answers(p, ims)

    base = p.memory.base
    keep = np.flatnonzero(~np.isin(base.meta_at(np.arange(len(base)), ["id"])["id"], gone))
    meta = base.meta_at(keep, ["id", "text", "source", "thumbnail"])
    without = ArrayMemory(keys=base.keys_at(keep), values=base.values_at(keep),
                          labels=base.labels_at(keep), texts=meta["text"], ids=meta["id"],
                          sources=meta["source"], key_encoder=base.key_encoder,
                          value_encoder=base.value_encoder, class_names=base.class_names,
                          thumbnails=meta["thumbnail"])
    clean = ravis.load(run)
    clean.memory = EditedMemory(without)
    clean.index = EditedIndex(memory_index(without, clean.experiment.retrieval), clean.memory)
    assert json.dumps(edited) == json.dumps(answers(clean, ims))  # byte-equal
    assert not {n["memory_id"] for o in edited for n in o["neighbors"]} & set(gone)
    rows = p.memory.base.rows_of(gone)
    assert all(p.thumbnail(int(r)) is None for r in rows)  # and their thumbnails are gone


def test_a_new_class_is_predicted_without_retraining(run):
    p = ravis.load(run)
    editor = MemoryEditor.for_predictor(p)
    ims = images(run, 40)
    assert "a new class" not in p.all_class_names
    others = [o["prediction"] for o in p.predict(ims[5:])]
    editor.add(ims[:5], [f"q{i}.png" for i in range(5)], label="a new class")
    out = p.predict(ims[:5])
    assert p.all_class_names[-1] == "a new class"
    assert all(o["prediction"] == "a new class" for o in out)  # from the memory alone
    assert [o["prediction"] for o in p.predict(ims[5:])] == others  # the old classes keep theirs


def skew_votes(predictor):
    """Makes the served model's vote balanced by unequal class counts, as a long-tailed
    memory's is (the tiny run's memory may be even)."""
    counts = predictor.model.label_counts
    counts.copy_(torch.arange(1, len(counts) + 1, dtype=counts.dtype) * 10)
    assert predictor.model.balances_votes


def test_a_new_class_is_balanced_by_its_own_count_also_after_compaction(run, capsys):
    """A balanced vote divides a new class by its entries in the memory, not by the trained
    classes' mean count (which held small new classes back); compaction records the count,
    so the compacted memory answers as the log did."""
    p = ravis.load(run)
    skew_votes(p)
    editor = MemoryEditor.for_predictor(p)
    ims = images(run, 10)
    added = editor.add(ims[:3], ["a.png", "b.png", "c.png"], label="a new class")
    editor.delete([added[0]["id"]])
    assert p._new_class_counts(p.all_class_names).tolist() == [2.0]
    logged = answers(p, ims)
    assert main(["memory", "compact", str(run), "--quiet"]) == 0
    capsys.readouterr()
    folded = ravis.load(run)
    skew_votes(folded)
    assert folded.memory.class_counts() == {"a new class": 2}
    assert answers(folded, ims) == logged
    MemoryEditor.for_predictor(folded).add(ims[3:4], ["d.png"], label="a new class")
    assert folded._new_class_counts(folded.all_class_names).tolist() == [3.0]


def test_relabel_of_a_label_prompt_entry_moves_its_text_and_value(run):
    p = ravis.load(run)
    editor = MemoryEditor.for_predictor(p)
    entry = p.memory.meta_at([0], ["id", "text"])
    old = p.memory.labels_at([0])[0]
    new = p.class_names[(old + 1) % len(p.class_names)]
    editor.relabel({entry["id"][0]: new})
    assert p.memory.labels_at([0])[0] == p.class_names.index(new)
    assert p.memory.meta_at([0], ["text"])["text"] == [new]
    same = np.flatnonzero(p.memory.base.labels_at(np.arange(50)) == p.class_names.index(new))[0]
    np.testing.assert_array_equal(p.memory.values_at([0]), p.memory.values_at([same]))
    with pytest.raises(EditError, match="unknown class"):
        editor.relabel({entry["id"][0]: "no such class"})


def test_compaction_gives_the_answers_of_the_log(run, tmp_path, capsys):
    p = ravis.load(run)
    editor = MemoryEditor.for_predictor(p)
    ims = images(run, 10)
    editor.add(ims[:2], ["a.png", "b.png"], label="a new class")
    editor.delete([p.memory.meta_at([5], ["id"])["id"][0]])
    editor.relabel({p.memory.meta_at([7], ["id"])["id"][0]: p.class_names[0]})
    logged = answers(p, ims)
    assert main(["memory", "compact", str(run), "--quiet"]) == 0
    assert "folded 4 edits" in capsys.readouterr().out  # two adds, a delete, a relabel
    folded = ravis.load(run)
    assert folded.memory.folded == 4 and len(folded.memory) == len(p.memory) - 1
    assert answers(folded, ims) == logged
    assert not (run / "tiny-fmnist" / "memory-edits.log").exists()
    assert (run / "tiny-fmnist" / "memory-edits.log.folded-000004").exists()
    with pytest.raises(EditError, match="compacted .* after this model was loaded"):
        editor.delete([p.memory.meta_at([9], ["id"])["id"][0]])  # the old server's editor
    assert answers(p, ims) == logged  # it still serves what it served
    MemoryEditor.for_predictor(folded).delete([logged[0]["neighbors"][0]["memory_id"]])
    assert ravis.load(run).memory.seq == 5  # numbering goes on after the folded edits
    assert main(["memory", "compact", str(run), "--quiet"]) == 0


def test_a_log_over_another_memory_is_refused(run):
    p = ravis.load(run)
    MemoryEditor.for_predictor(p).delete([p.memory.meta_at([0], ["id"])["id"][0]])
    other = ArrayMemory(keys=p.memory.base.keys_at([1, 2]), values=p.memory.base.values_at([1, 2]),
                        labels=[0, 1], texts=["x", "y"], ids=["x", "y"], sources=["s", "s"],
                        key_encoder="e", value_encoder="v", class_names=p.class_names)
    with pytest.raises(ValueError, match="made to another memory"):
        EditedMemory(other, run / "tiny-fmnist" / "memory-edits.log")
