"""The index over an experiment's memory: one per part, merged exactly; an exact scan of a
part too big for the budget streams its mapped shards and gives the in-RAM answer."""

import numpy as np

from ravis.config import RetrievalConfig
from ravis.index.base import Index
from ravis.index.mapped import MappedExactIndex
from ravis.index.multi import MultiIndex
from ravis.memory import ArrayMemory, compose
from ravis.memory.indexing import index_signature, memory_index


def memory(m, seed, d=16):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((m, d)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    return ArrayMemory(keys=keys, values=np.zeros((m, 4), np.float32), labels=np.zeros(m, np.int64),
                       texts=[""] * m, ids=[f"{seed}/{i}" for i in range(m)], sources=["s"] * m,
                       key_encoder="e", value_encoder="v", class_names=["a"])


def test_parts_are_searched_and_merged_like_one_flat_index(tmp_path):
    train = memory(300, 0)
    web = memory(500, 1).save(tmp_path / "web")
    mem = compose([("train", train), (str(tmp_path / "web"), web)], ["a"])
    xq = memory(20, 2).keys
    whole = ArrayMemory(keys=np.concatenate([train.keys, web.keys_at(np.arange(500))]),
                        values=np.zeros((800, 4), np.float32), labels=np.zeros(800, np.int64),
                        texts=[""] * 800, ids=[str(i) for i in range(800)], sources=["s"] * 800,
                        key_encoder="e", value_encoder="v")
    r = RetrievalConfig()
    index = memory_index(mem, r)
    assert isinstance(index, MultiIndex) and index.ntotal == 800
    D, I = index.search(xq, 10)
    Dw, Iw = memory_index(whole, r).search(xq, 10)
    np.testing.assert_array_equal(I, Iw)
    np.testing.assert_allclose(D, Dw, rtol=1e-6)


def test_exact_scan_over_budget_streams_the_mapped_shards(tmp_path, caplog):
    web = memory(700, 3).save(tmp_path / "web")
    xq = memory(15, 4).keys
    in_ram = memory_index(web, RetrievalConfig())
    streamed = memory_index(web, RetrievalConfig(budget="4K"))  # 700 x 16 x 4 bytes > 4 KiB
    assert isinstance(streamed, MappedExactIndex) and isinstance(streamed, Index)
    assert "exceed retrieval.budget" in caplog.text
    D, I = streamed.search(xq, 10)
    Dr, Ir = in_ram.search(xq, 10)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_allclose(D, Dr, rtol=1e-6)
    np.testing.assert_array_equal(streamed.reconstruct([5, 0]), web.keys_at([5, 0]))
    assert index_signature(streamed) == [["exact", {}, None]]  # in RAM: no saved files


def test_a_saved_index_is_keyed_on_its_files(tmp_path):
    """Neighbours cached from a saved index are keyed on its files' checksums: an index
    rebuilt with the same spec and parameters (other centroids) must not reuse them."""
    import shutil

    from ravis.index.build import index_over

    xb = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)
    built = index_over(xb, "faiss:IVF4,Flat", tmp_path / "a", k=5)
    loaded = index_over(xb, "faiss:IVF4,Flat", tmp_path / "a", k=5)  # read back from the folder
    assert built.saved_files and built.saved_files == loaded.saved_files
    assert index_signature(built) == index_signature(loaded)
    shutil.rmtree(tmp_path / "a")
    other = index_over(xb[::-1].copy(), "faiss:IVF4,Flat", tmp_path / "a", k=5)
    other.set_search_params(**loaded.search_params)
    assert index_signature(other)[0][:2] == index_signature(loaded)[0][:2]  # same spec, params
    assert index_signature(other) != index_signature(loaded)
