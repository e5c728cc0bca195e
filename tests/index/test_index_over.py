"""index_over: the one entry point to an index over a memory's keys, exact or built and cached."""

import json

import numpy as np
import pytest

from ravis.index import FaissIndex
from ravis.index import build as build_mod
from ravis.index.build import KeyShards, index_over, is_approximate
from ravis.index.exact import ExactIndex
from ravis.index.multi import exact_search
from ravis.index.tune import recall_at_k


def clustered(n, d, seed, centres=32):
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def keys():
    x = clustered(3000, 16, 0)
    return KeyShards([x[:1000], x[1000:2500], x[2500:].astype(np.float16)])  # any float dtype


@pytest.fixture(scope="module")
def queries():
    return clustered(100, 16, 1)


def test_which_specs_are_built():
    assert [is_approximate(s) for s in ("exact", "faiss-flat", "faiss:Flat")] == [False] * 3
    assert all(is_approximate(s) for s in ("auto", "scann", "scann:leaves=8", "faiss:IVF16,Flat"))


@pytest.mark.parametrize("spec", ["exact", "faiss-flat", "faiss:Flat"])
def test_exact_specs_are_filled_in_ram(spec, keys, queries, tmp_path):
    index = index_over(keys, spec, tmp_path / "unused", k=10)
    assert index.ntotal == keys.n and not (tmp_path / "unused").exists()
    D, I = index.search(queries, 10)
    De, Ie = exact_search(keys.arrays, queries, 10)
    np.testing.assert_allclose(D, De, atol=1e-5)
    assert (I == Ie).mean() > 0.99


def test_ivf_factory_is_trained_then_filled_and_tuned(keys, queries, tmp_path):
    index = index_over(keys, "faiss:IVF16,Flat", tmp_path, target_recall=0.9, k=10)
    assert isinstance(index, FaissIndex) and index.is_trained and index.ntotal == keys.n
    assert index.info["tuning"]["reached"] and index.search_params["nprobe"] >= 1
    assert index.vectors is keys  # exact reconstruction from the shards
    np.testing.assert_array_equal(index.reconstruct(np.array([2999])), keys(np.array([2999])))
    _, gt = exact_search(keys.arrays, queries, 10)
    approx = recall_at_k(index.search(queries, 10)[1], gt, 10)
    exact = recall_at_k(index_over(keys, "exact").search(queries, 10)[1], gt, 10)
    assert exact == 1.0 and 0.85 <= approx < 1.0
    assert json.loads((tmp_path / "index.json").read_text())["spec"] == "faiss:IVF16,Flat"


def test_a_built_folder_is_reused_and_rebuilt_when_the_plan_changes(keys, tmp_path, monkeypatch):
    first = index_over(keys, "faiss:IVF16,Flat", tmp_path, target_recall=0.9, k=10)
    real = build_mod.build_index
    builds = []
    monkeypatch.setattr(build_mod, "build_index", lambda *a, **kw: builds.append(kw) or real(*a, **kw))
    again = index_over(keys, "faiss:IVF16,Flat", tmp_path, target_recall=0.9, k=10)
    assert builds == [] and again.search_params == first.search_params and again.vectors is keys
    index_over(keys, "faiss:IVF16,Flat", tmp_path, target_recall=0.99, k=10)  # another target: retuned
    assert len(builds) == 1
    index_over(keys, "faiss:IVF32,Flat", tmp_path, target_recall=0.99, k=10)  # another factory
    assert len(builds) == 2 and json.loads((tmp_path / "index.json").read_text())["spec"] == "faiss:IVF32,Flat"


def test_search_params_are_applied_and_checked(keys, queries, tmp_path):
    index = index_over(keys, "faiss:IVF16,Flat", tmp_path, target_recall=0.9, k=10,
                       search_params={"nprobe": 16})
    assert index.search_params["nprobe"] == 16  # all lists: exact
    _, gt = exact_search(keys.arrays, queries, 10)
    assert recall_at_k(index.search(queries, 10)[1], gt, 10) == 1.0
    saved = json.loads((tmp_path / "index.json").read_text())["search_params"]
    assert saved["nprobe"] == index.info["tuning"]["params"]["nprobe"]  # the override is not saved
    with pytest.raises(ValueError, match="nprobe"):
        index_over(keys, "exact", search_params={"nprobe": 4})
    with pytest.raises(ValueError, match="bogus"):
        index_over(keys, "faiss:IVF16,Flat", tmp_path, target_recall=0.9, k=10,
                   search_params={"bogus": 1})


def test_approximate_needs_a_folder_and_a_valid_factory(keys, tmp_path):
    with pytest.raises(ValueError, match="needs a folder"):
        index_over(keys, "faiss:IVF16,Flat")
    with pytest.raises(ValueError, match="faiss cannot build"):
        index_over(keys, "faiss:IVFbogus", tmp_path)
    assert not (tmp_path / "plan.json").exists()


def test_one_array_is_accepted(tmp_path):
    x = clustered(200, 8, 2)
    index = index_over(x, "exact")
    assert isinstance(index, ExactIndex) and index.ntotal == 200
