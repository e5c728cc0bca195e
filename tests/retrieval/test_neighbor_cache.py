"""cached_neighbors: a second call reads the same arrays back; a damaged file is named."""

import re
import shutil

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


def test_corrupted_cache_file_is_named(memory, tmp_path):
    index, xb = memory
    cached_neighbors(tmp_path, index, xb[:20], 10)
    (i_path,) = tmp_path.glob("knn-*/I.npy")
    i_path.write_bytes(i_path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=re.escape(str(i_path))):
        cached_neighbors(tmp_path, index, xb[:20], 10)
    shutil.rmtree(i_path.parent)
    cached_neighbors(tmp_path, index, xb[:20], 10)  # recomputed
    (d_path,) = tmp_path.glob("knn-*/D.npy")
    np.save(d_path, np.zeros((20, 3), np.float32))  # readable, wrong shape
    with pytest.raises(ValueError, match=re.escape(str(d_path)) + ".*expected float32"):
        cached_neighbors(tmp_path, index, xb[:20], 10)
