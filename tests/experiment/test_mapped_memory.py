"""The mapped path against the in-RAM path: the same memory read from its shards on disk
gives the in-RAM memory's neighbours, logits and results exactly."""

from pathlib import Path

import numpy as np
import pytest

from ravis.config import load_preset
from ravis.experiment import train_method, vote_result
from ravis.experiment.prepare import prepare
from ravis.memory import ArrayMemory, ShardedMemory

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def both(ravis_cache, tmp_path_factory):
    """(in-RAM prepared experiment, the same experiment over its memory saved to disk)."""
    cfg = load_preset(TINY, ["train.epochs=2", "retrieval.index=exact"])
    ram = prepare(cfg, cfg.experiments[0], ravis_cache, progress=False)
    [(spec, part)] = ram.memory.parts
    assert spec == "train" and isinstance(part, ArrayMemory)
    memdir = tmp_path_factory.mktemp("mapped") / "train-memory"
    part.save(memdir)
    cfg2 = load_preset(TINY, ["train.epochs=2", "retrieval.index=exact", f"memory.source={memdir}"])
    mapped = prepare(cfg2, cfg2.experiments[0], ravis_cache, progress=False)
    assert isinstance(mapped.memory.parts[0][1], ShardedMemory)
    return ram, mapped


def test_same_neighbours(both):
    ram, mapped = both
    for name in ("train_D", "train_I", "test_D", "test_I"):
        np.testing.assert_array_equal(getattr(ram, name), getattr(mapped, name), err_msg=name)
    assert (ram.train_I >= 0).all()
    # self-exclusion found the training images' own entries in the mapped memory too
    own = mapped.memory.rows_of(list(mapped.train.dataset.ids))
    assert (own >= 0).all() and not (mapped.train_I == own[:, None]).any()


@pytest.mark.parametrize("method", ["mam", "mean_knn", "rac"])
def test_same_logits_and_results(both, ravis_cache, tmp_path, method):
    ram, mapped = both
    results = [train_method(method, prep, ravis_cache, "minilm", checkpoint_dir=tmp_path / name)[1]
               for name, prep in (("ram", ram), ("mapped", mapped))]
    np.testing.assert_array_equal(results[0].logits, results[1].logits)
    assert results[0].metrics == results[1].metrics
    if results[0].attention is not None:
        np.testing.assert_array_equal(results[0].attention, results[1].attention)


def test_same_vote(both):
    ram, mapped = both
    a, b = vote_result(ram), vote_result(mapped)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.metrics == b.metrics and a.details["k"] == b.details["k"]


def test_float16_memory_reads_its_stored_dtype(both, tmp_path):
    ram, _ = both
    part = ram.memory.parts[0][1]
    half = part.save(tmp_path / "half", dtype="float16")
    rows = ram.test_I[:3].ravel()
    got = half.keys_at(rows)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, part.keys_at(rows).astype(np.float16))


def test_export_then_import_gives_the_same_experiment(both, ravis_cache, tmp_path):
    """A memory exported in the clip-retrieval layout and imported back: same neighbours and
    the same trained model's logits as the original memory folder."""
    from ravis.memory.clip_retrieval import export_clip_retrieval, import_clip_retrieval

    _, mapped = both
    memdir = mapped.memory.parts[0][1].memdir
    export_clip_retrieval(memdir, tmp_path / "export", progress=False)
    import_clip_retrieval(tmp_path / "export", tmp_path / "imported", "efficientnet_lite0", "minilm",
                          progress=False)
    cfg = load_preset(TINY, ["train.epochs=2", "retrieval.index=exact",
                             f"memory.source={tmp_path / 'imported'}"])
    again = prepare(cfg, cfg.experiments[0], ravis_cache, progress=False)
    np.testing.assert_array_equal(again.test_I, mapped.test_I)
    np.testing.assert_array_equal(again.train_I, mapped.train_I)  # ids kept: self-exclusion holds
    a = train_method("mam", mapped, ravis_cache, "minilm", checkpoint_dir=tmp_path / "a")[1]
    b = train_method("mam", again, ravis_cache, "minilm", checkpoint_dir=tmp_path / "b")[1]
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(vote_result(mapped).logits, vote_result(again).logits)


def test_rows_read_per_batch_past_the_budget_give_the_same_model(both, ravis_cache, tmp_path):
    """Queries whose retrieved rows exceed train.memory_rows_budget read them batch by batch
    from the mapped memory: the same logits as gathering them into RAM once."""
    import dataclasses

    from ravis.training.data import MappedRows, MemoryTensors

    _, mapped = both
    exp = mapped.config
    small = dataclasses.replace(mapped, config=dataclasses.replace(
        exp, train=dataclasses.replace(exp.train, memory_rows_budget="1K")))
    tensors, I = MemoryTensors.for_queries(mapped.memory, mapped.test_I, 1024)
    assert isinstance(tensors.keys, MappedRows) and I is mapped.test_I
    a = train_method("mam", mapped, ravis_cache, "minilm", checkpoint_dir=tmp_path / "a")[1]
    b = train_method("mam", small, tmp_path / "fresh-cache", "minilm", checkpoint_dir=tmp_path / "b")[1]
    assert not b.details["cached"]  # trained here, reading rows per batch
    np.testing.assert_array_equal(a.logits, b.logits)
    c = train_method("mam", small, ravis_cache, "minilm", checkpoint_dir=tmp_path / "c")[1]
    assert c.details["cached"]  # the budget is not part of the model key
