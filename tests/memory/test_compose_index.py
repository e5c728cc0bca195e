"""A sharded memory indexed, searched and composed with an experiment's training set."""

import json
from pathlib import Path

import numpy as np
import pytest

from ravis.cli import main
from ravis.config import load_preset
from ravis.experiment.prepare import prepare
from ravis.memory.indexing import memory_index
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


def test_exact_search_refuses_a_damaged_key_shard(memdir, tmp_path, capsys):
    """--exact reads the key shards directly: a flipped byte in one is refused, named,
    before any result is printed."""
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(memdir, damaged)
    keys = key_paths(ShardedMemory.open(damaged))[0]
    raw = bytearray(Path(keys).read_bytes())
    raw[-3] ^= 0x40  # inside the last key row
    Path(keys).write_bytes(bytes(raw))
    np.save(tmp_path / "q.npy", np.asarray(ShardedMemory.open(memdir).keys(0)[:1], dtype=np.float32))
    assert main(["memory", "search", str(damaged), "--queries", str(tmp_path / "q.npy"), "--exact",
                 "--json"]) == 2
    captured = capsys.readouterr()
    assert Path(keys).name in captured.err and captured.out == ""


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
    assert [(spec, len(m)) for spec, m in mem.parts] == [("train", n_train), (str(memdir), web.count)]
    assert isinstance(mem.parts[1][1], ShardedMemory)  # the web part is read where it lies
    web_rows = np.arange(n_train, len(mem))
    meta = mem.meta_at(np.arange(len(mem)), ["id", "source"])
    assert all(i.startswith("web-memory:") for i in meta["id"][n_train:])
    assert set(meta["source"][n_train:]) != set(meta["source"][:n_train])  # each entry names its collection
    assert (mem.labels_at(web_rows) == -1).all()  # web entries have no class of this dataset

    index = memory_index(mem, exp.retrieval)
    assert isinstance(index, MultiIndex) and index.parts[1].spec == "faiss:Flat"
    D, I = index.search(prep.test.z, 20)
    De, Ie = exact_search(mem.key_blocks(), prep.test.z, 20)
    np.testing.assert_allclose(D, De, atol=1e-5)
    assert (I == Ie).mean() > 0.99
    _, top = index.search(mem.keys_at(web_rows).astype(np.float32), 1)  # a web image finds itself in the web part
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
    index = memory_index(prep.memory, exp.retrieval, ravis_cache)
    assert index.spec == "faiss:IVF8,Flat" and index.search_params["nprobe"] >= 1
    assert index.info["tuning"]["reached"]
    _, gt = exact_search(prep.memory.key_blocks(), prep.test.z, 20)
    from ravis.index.tune import recall_at_k

    assert recall_at_k(prep.test_I, gt, 20) >= 0.85  # the experiment's neighbours came from it
    again = memory_index(prep.memory, exp.retrieval, ravis_cache)  # cached: loaded with its parameters
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


# -- an index built elsewhere, attached; index checksums in `ravis memory verify` --------------

def synthetic_memory(memdir: Path, shards: list[np.ndarray]) -> ShardedMemory:
    """A sharded memory of the given float32 key shards (no encoder needed)."""
    from ravis.memory.sharded import FORMAT, meta_table, save_manifest, write_shard

    entries = []
    for i, keys in enumerate(shards):
        n, name = len(keys), f"{i:05d}"
        meta = meta_table([f"{name}-{j}" for j in range(n)], [f"row {j}" for j in range(n)],
                          ["synthetic"] * n, [-1] * n, [b""] * n, ["{}"] * n)
        files = write_shard(memdir, name, keys, np.zeros((n, 4), np.float32), meta)
        entries.append({"name": name, "input": name, "rows": n, "skipped": {}, "files": files})
    save_manifest(memdir, {"format": FORMAT, "key_encoder": "synthetic", "value_encoder": "synthetic",
                           "dim": shards[0].shape[1], "value_dim": 4, "dtype": "float32", "count": 0,
                           "class_names": [], "skipped": {}, "build": {}, "sources": [],
                           "shards": entries, "failed_shards": []})
    return ShardedMemory.open(memdir)


@pytest.fixture(scope="module")
def autofaiss_dir(tmp_path_factory):
    """A memory of 3000 unit 32-d keys in 2 shards, and an IVF16,Flat inner-product index of
    them written by faiss directly, with an autofaiss-style infos.json beside it."""
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    x = centres[rng.integers(0, 40, 3000)] + 0.8 * rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    root = tmp_path_factory.mktemp("autofaiss")
    synthetic_memory(root / "mem", [x[:1800], x[1800:]])
    index = faiss.index_factory(32, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    (root / "out").mkdir()
    faiss.write_index(index, str(root / "out" / "knn.index"))
    (root / "out" / "infos.json").write_text(json.dumps({"index_key": "IVF16,Flat", "nb vectors": 3000}))
    return root, x


def test_attached_faiss_index_is_tuned_and_searched(autofaiss_dir, tmp_path, capsys):
    import faiss

    root, x = autofaiss_dir
    memdir, file = root / "mem", root / "out" / "knn.index"
    assert main(["memory", "index", str(memdir), "--from-faiss", str(file), "--target-recall", "0.9",
                 "--k", "10", "--quiet"]) == 0
    assert "faiss:IVF16,Flat over 3000 vectors (attached from" in capsys.readouterr().out
    meta = json.loads((memdir / "index" / "index.json").read_text())
    tuning = meta["info"]["tuning"]
    assert tuning["reached"] and tuning["recall_heldout"] >= 0.85 and meta["search_params"] == tuning["params"]
    assert meta["info"]["attached"]["infos"]["index_key"] == "IVF16,Flat"
    assert set(meta["files"]) == {"index.faiss"}

    index = open_memory_index(memdir)
    reference = faiss.read_index(str(file))
    reference.nprobe = tuning["params"]["nprobe"]
    queries = x[::97] + 0.01
    Dr, Ir = reference.search(queries, 10)
    D, I = index.search(queries, 10)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_allclose(D, Dr, rtol=1e-6)
    _, gt = exact_search([x], queries, 10)
    from ravis.index.tune import recall_at_k

    assert recall_at_k(I, gt, 10) >= 0.85

    np.save(tmp_path / "q.npy", queries[:2])
    assert main(["memory", "search", str(memdir), "--queries", str(tmp_path / "q.npy"), "--k", "3",
                 "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [n["row"] for n in found[0]["neighbors"]] == Ir[0, :3].tolist()


def test_attach_refuses_a_mismatched_index(autofaiss_dir, tmp_path, capsys):
    import faiss

    root, x = autofaiss_dir
    for name, index in [("short.index", faiss.IndexFlatIP(32)), ("l2.index", faiss.IndexFlatL2(32)),
                        ("narrow.index", faiss.IndexFlatIP(16))]:
        index.add(x[:100] if index.d == 32 and name == "short.index" else
                  x if index.d == 32 else x[:, :16].copy())
        faiss.write_index(index, str(tmp_path / name))
        assert main(["memory", "index", str(root / "mem"), "--from-faiss", str(tmp_path / name),
                     "--quiet"]) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / name) in err, err
        assert ("inner product" in err) == (name == "l2.index")


def test_verify_checks_the_index_files(autofaiss_dir, capsys):
    import shutil

    root, _ = autofaiss_dir
    memdir = root / "mem-verify"
    shutil.copytree(root / "mem", memdir, ignore=shutil.ignore_patterns("index"))
    assert main(["memory", "verify", str(memdir)]) == 0
    assert "no index" in capsys.readouterr().out
    assert main(["memory", "index", str(memdir), "--from-faiss", str(root / "out" / "knn.index"),
                 "--target-recall", "0.9", "--k", "10", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["memory", "verify", str(memdir)]) == 0
    assert "1 index files checked" in capsys.readouterr().out
    path = memdir / "index" / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.unlink()  # a hard link to the original: corrupt only this copy
    path.write_bytes(bytes(data))
    assert main(["memory", "verify", str(memdir)]) == 2
    assert f"{path}: sha256 differs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="index.faiss"):
        open_memory_index(memdir)


def test_an_attached_index_grows_without_touching_its_source(autofaiss_dir, tmp_path):
    from ravis.index.build import add_to_index
    from ravis.memory.indexing import attach_index

    root, x = autofaiss_dir
    source = root / "out" / "knn.index"
    before = source.read_bytes()
    attach_index(root / "mem", source, target_recall=0.9, k=10)
    grown = add_to_index(root / "mem" / "index", [x[:50]], ["extra"], offset=3000, progress=False)
    assert grown.ntotal == 3050 and source.read_bytes() == before
    grown.set_search_params(nprobe=16)
    _, I = grown.search(x[:50], 2)
    assert set(range(3000, 3050)) <= set(I.ravel())  # each appended copy is found


def test_unreadable_queries_file_is_named(memdir, tmp_path, capsys):
    """A queries file numpy cannot read (here: pickled objects) is bad input, named, not a bug."""
    np.save(tmp_path / "q.npy", np.array([{"not": "floats"}], dtype=object), allow_pickle=True)
    assert main(["memory", "search", str(memdir), "--queries", str(tmp_path / "q.npy"), "--exact"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'q.npy'}: not a readable .npy array" in err and "internal error" not in err
