"""cached_neighbors: a second call reads the same arrays back; a damaged file is named."""


import numpy as np
import pytest

from ravis.index import create_index
from ravis.retrieval import cached_neighbors, neighbors


@pytest.fixture
def memory():
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((300, 16)).astype(np.float32)
    index = create_index("exact", 16)
    index.add(xb)
    return index, xb


def test_cache_hit_returns_identical_arrays(memory, tmp_path, monkeypatch):
    index, xb = memory
    kw = dict(self_rows=np.arange(20))
    D, I = cached_neighbors(tmp_path, index, xb[:20], 10, "train", **kw)
    assert len(list(tmp_path.glob("knn-*/D.npy"))) == 1

    def no_search(*a, **k):
        raise AssertionError("searched again on a cache hit")

    monkeypatch.setattr(neighbors, "search_neighbors", no_search)
    D2, I2 = cached_neighbors(tmp_path, index, xb[:20], 10, "train", **kw)
    np.testing.assert_array_equal(D, D2)
    np.testing.assert_array_equal(I, I2)
    assert D2.dtype == np.float32 and I2.dtype == np.int64
    assert 0 not in I2[0]  # the cached result is the self-excluded one


def test_key_changes_with_inputs(memory, tmp_path):
    index, xb = memory
    cached_neighbors(tmp_path, index, xb[:20], 10)
    cached_neighbors(tmp_path, index, xb[:20], 11)
    cached_neighbors(tmp_path, index, xb[:20], 10, "other")
    cached_neighbors(tmp_path, index, xb[:20], 10, self_rows=np.arange(20))
    cached_neighbors(tmp_path, index, xb[:20], 10, self_rows=np.arange(20),
                     exclude_duplicates=False)
    cached_neighbors(tmp_path, index, xb[1:21], 10)
    cached_neighbors(tmp_path, index, xb[:20], 10, memory_key="manifest-abc")
    assert len(list(tmp_path.glob("knn-*"))) == 7


@pytest.mark.parametrize("damage", ["flip", "truncate", "replace", "unsealed"])
def test_damaged_cache_file_is_named_and_searched_again(memory, tmp_path, caplog, damage):
    index, xb = memory
    D, I = cached_neighbors(tmp_path, index, xb[:20], 10)
    (i_path,) = tmp_path.glob("knn-*/I.npy")
    data = bytearray(i_path.read_bytes())
    if damage == "flip":  # a readable array with one id changed: the old code returned it
        data[-8] ^= 0x01
        i_path.write_bytes(bytes(data))
    elif damage == "truncate":
        i_path.write_bytes(bytes(data[:100]))
    elif damage == "replace":  # a well-formed array of the right shape, from elsewhere
        np.save(i_path, np.zeros((20, 10), np.int64))
    else:  # killed between the array and its seal
        i_path.with_name("I.npy.sha256").unlink()
    searched = []
    real = neighbors.search_neighbors

    def counting(*a, **k):
        searched.append(1)
        return real(*a, **k)

    with caplog.at_level("WARNING"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(neighbors, "search_neighbors", counting)
        D2, I2 = cached_neighbors(tmp_path, index, xb[:20], 10)
    assert searched == [1]
    np.testing.assert_array_equal(I2, I)
    np.testing.assert_array_equal(D2, D)
    if damage != "unsealed":
        assert str(i_path) in caplog.text and "recomputing" in caplog.text
    assert neighbors._load_cached(tmp_path / i_path.parent.name / "D.npy", i_path, 20, 10, 300)[1].tolist() \
        == I.tolist()  # the entry was rewritten whole


def test_one_writer_per_entry(memory, tmp_path):
    """A second run asking for an entry that another holds waits, then reads it."""
    import threading
    import time

    from ravis.cache import entry_lock

    index, xb = memory
    D, I = cached_neighbors(tmp_path, index, xb[:20], 10)
    folder = next(tmp_path.glob("knn-*"))
    got = {}
    with entry_lock(folder):  # another process computing this entry
        t = threading.Thread(target=lambda: got.update(r=cached_neighbors(tmp_path, index, xb[:20], 10)))
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and not got
    t.join(5)
    np.testing.assert_array_equal(got["r"][1], I)
