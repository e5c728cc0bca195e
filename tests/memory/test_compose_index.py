"""A sharded memory indexed, searched and composed with an experiment's training set."""

import json
from pathlib import Path

import numpy as np
import pytest

from ravis.cli import main
from ravis.config import load_preset
from ravis.experiment.prepare import memory_index, prepare
from ravis.index.multi import MultiIndex, exact_search
from ravis.memory.indexing import key_paths, open_memory_index
from ravis.memory.sharded import ShardedMemory

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def memdir(wds_dir, tmp_path_factory, ravis_cache):
    out = tmp_path_factory.mktemp("web") / "web-memory"
    assert main(["memory", "build", "--source", f"wds:{wds_dir}/{{00000,00001,00004}}.tar",
                 "--out", str(out), "--quiet", "--cache", str(ravis_cache)]) == 0
    return out


def test_index_search_cli(memdir, tmp_path, capsys):
    assert main(["memory", "index", str(memdir), "--budget", "1G", "--k", "5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "faiss:Flat" in printed and "recall@5 1.000" in printed
    meta = json.loads((memdir / "index" / "index.json").read_text())
    assert meta["info"]["choice"]["family"] == "flat" and meta["ntotal"] == ShardedMemory.open(memdir).count

    memory = ShardedMemory.open(memdir)
    queries = np.asarray(memory.keys(0)[:2], dtype=np.float32)
    np.save(tmp_path / "q.npy", queries)
    assert main(["memory", "search", str(memdir), "--queries", str(tmp_path / "q.npy"), "--k", "3", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert main(["memory", "search", str(memdir), "--queries", str(tmp_path / "q.npy"), "--k", "3",
                 "--json", "--exact"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert found == exact
    first = memory.meta(0, ["id"]).to_pydict()["id"][0]
    assert found[0]["neighbors"][0]["id"] == first and found[0]["neighbors"][0]["score"] == pytest.approx(1, abs=2e-3)


def test_search_refuses_wrong_query_dimension(memdir, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), np.float32))
    assert main(["memory", "search", str(memdir), "--queries", str(tmp_path / "bad.npy")]) == 2
    assert "bad.npy" in capsys.readouterr().err


def test_experiment_composes_training_set_and_sharded_memory(memdir, ravis_cache, capsys):
    if not (memdir / "index" / "index.json").exists():
        assert main(["memory", "index", str(memdir), "--budget", "1G", "--k", "5", "--quiet"]) == 0
    cfg = load_preset(TINY, [f"memory.source=[train,{memdir}]"])
    exp = cfg.experiments[0]
    prep = prepare(cfg, exp, ravis_cache, progress=False)
    web = ShardedMemory.open(memdir)
    n_train = len(prep.train.dataset)
    mem = prep.memory
    assert len(mem) == n_train + web.count
    assert mem.parts == [("train", n_train), (str(memdir), web.count)]
    assert all(i.startswith("web-memory:") for i in mem.ids[n_train:])
    assert set(mem.sources[n_train:]) != set(mem.sources[:n_train])  # each entry names its collection
    assert (mem.labels[n_train:] == -1).all()  # web entries have no class of this dataset

    index = memory_index(exp, mem)
    assert isinstance(index, MultiIndex) and index.parts[1].spec == "faiss:Flat"
    D, I = index.search(prep.test.z, 20)
    De, Ie = exact_search([mem.keys], prep.test.z, 20)
    np.testing.assert_allclose(D, De, atol=1e-5)
    assert (I == Ie).mean() > 0.99
    _, top = index.search(mem.keys[n_train:], 1)  # a web image finds itself in the web part
    np.testing.assert_array_equal(top[:, 0], np.arange(n_train, len(mem)))

    # the stage verb runs the same composed memory
    assert main(["knn", "-c", str(TINY), "--set", f"memory.source=[train,{memdir}]", "--quiet",
                 "--cache", str(ravis_cache)]) == 0


def test_missing_memory_folder_is_named(ravis_cache, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["knn", "-c", str(TINY), "--set", f"memory.source=[train,{missing}]", "--quiet",
                 "--cache", str(ravis_cache)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_open_memory_index_attaches_exact_vectors(memdir):
    if not (memdir / "index" / "index.json").exists():
        assert main(["memory", "index", str(memdir), "--budget", "1G", "--k", "5", "--quiet"]) == 0
    index = open_memory_index(memdir)
    memory = ShardedMemory.open(memdir)
    keys = np.concatenate([np.load(p) for p in key_paths(memory)]).astype(np.float32)
    np.testing.assert_array_equal(index.reconstruct(np.array([0, len(keys) - 1])), keys[[0, -1]])


def test_experiment_with_a_tuned_approximate_index(ravis_cache):
    cfg = load_preset(TINY, ["retrieval.index=faiss:IVF8,Flat", "retrieval.target_recall=0.9"])
    exp = cfg.experiments[0]
    prep = prepare(cfg, exp, ravis_cache, progress=False)
    index = memory_index(exp, prep.memory, ravis_cache)
    assert index.spec == "faiss:IVF8,Flat" and index.search_params["nprobe"] >= 1
    assert index.info["tuning"]["reached"]
    _, gt = exact_search([prep.memory.keys], prep.test.z, 20)
    from ravis.index.tune import recall_at_k

    assert recall_at_k(prep.test_I, gt, 20) >= 0.85  # the experiment's neighbours came from it
    again = memory_index(exp, prep.memory, ravis_cache)  # cached: loaded with its parameters
    assert again.search_params == index.search_params


def test_memory_add_extends_an_ivf_index_without_retraining(wds_dir, tmp_path, ravis_cache, capsys):
    memdir = tmp_path / "growing"
    assert main(["memory", "build", "--source", f"wds:{wds_dir}/{{00000,00004}}.tar", "--out", str(memdir),
                 "--quiet", "--cache", str(ravis_cache)]) == 0
    assert main(["memory", "index", str(memdir), "--factory", "IVF2,Flat", "--k", "3", "--quiet"]) == 0
    trained = (memdir / "index" / "trained.faiss").read_bytes()
    before = open_memory_index(memdir).ntotal
    assert main(["memory", "add", str(memdir), "--source", f"wds:{wds_dir}/00001.tar", "--quiet",
                 "--cache", str(ravis_cache)]) == 0
    memory = ShardedMemory.open(memdir)
    index = open_memory_index(memdir)
    assert index.ntotal == memory.count > before
    assert (memdir / "index" / "trained.faiss").read_bytes() == trained  # not retrained
    assert index.search_params == {"nprobe": index.info["tuning"]["params"]["nprobe"]}
    new_keys = np.asarray(memory.keys(len(memory.shard_names) - 1), dtype=np.float32)
    index.set_search_params(nprobe=2)  # all lists: exact, so each new row must find itself
    _, I = index.search(new_keys, 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(before, memory.count))


def test_add_interrupted_before_the_index_update_catches_up_on_rerun(wds_dir, tmp_path, ravis_cache,
                                                                     monkeypatch):
    from ravis.memory import indexing

    memdir = tmp_path / "interrupted"
    assert main(["memory", "build", "--source", f"wds:{wds_dir}/00000.tar", "--out", str(memdir),
                 "--quiet", "--cache", str(ravis_cache)]) == 0
    assert main(["memory", "index", str(memdir), "--factory", "IVF2,Flat", "--k", "3", "--quiet"]) == 0
    real = indexing.add_shards_to_index

    def die(*a, **kw):
        raise KeyboardInterrupt("killed after the shards were written")

    monkeypatch.setattr(indexing, "add_shards_to_index", die)
    with pytest.raises(KeyboardInterrupt):
        main(["memory", "add", str(memdir), "--source", f"wds:{wds_dir}/00004.tar", "--quiet",
              "--cache", str(ravis_cache)])
    with pytest.raises(ValueError, match="rerun"):
        open_memory_index(memdir)  # the index is behind the memory and says so
    monkeypatch.setattr(indexing, "add_shards_to_index", real)
    assert main(["memory", "add", str(memdir), "--source", f"wds:{wds_dir}/00004.tar", "--quiet",
                 "--cache", str(ravis_cache)]) == 0
    assert open_memory_index(memdir).ntotal == ShardedMemory.open(memdir).count
