"""Index choice by budget, sharded build with on-disk merge, tuning, resume, append, ScaNN."""

import json

import faiss
import numpy as np
import pytest

from ravis.index import FaissIndex, load_index
from ravis.index import build as build_mod
from ravis.index.build import add_to_index, build_index
from ravis.index.choose import choose_index
from ravis.sizes import parse_bytes
from ravis.index.multi import MultiIndex, exact_search, merge_topk
from ravis.index.tune import recall_at_k


def clustered(n, d, seed, centres=64):
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(123).standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 1.0 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_same_neighbors(I, Ir, Dr, whole, queries):
    """Same top k up to the order of equal-scoring entries: the scores of I, recomputed
    exactly, match the reference scores position by position."""
    rescored = np.einsum("nkd,nd->nk", whole[I], queries)
    np.testing.assert_allclose(rescored, Dr, atol=1e-5)
    assert (I == Ir).mean() > 0.99


@pytest.fixture(scope="module")
def shards():
    x = clustered(12000, 32, 0)
    return [x[i * 3000:(i + 1) * 3000] for i in range(4)]


@pytest.fixture(scope="module")
def queries():
    return clustered(200, 32, 1)


def test_parse_bytes():
    assert parse_bytes("16G") == 16 * 2**30
    assert parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("2.5GiB") == int(2.5 * 2**30)
    assert parse_bytes("1e9") == 10**9
    with pytest.raises(ValueError, match="cannot read a size"):
        parse_bytes("lots")


@pytest.mark.parametrize("n,d,budget,target,family", [
    (50_000, 1280, "8G", 0.95, "flat"),
    (500_000, 384, "8G", 0.95, "ivf-fs"),
    (500_000, 384, "8G", 0.99, "hnsw"),
    (500_000, 384, "512M", 0.99, "ivf-sq8"),
    (5_000_000, 384, "16G", 0.99, "ivf-flat"),
    (10_000_000, 384, "8G", 0.95, "ivf-fs"),
    (10_000_000, 384, "4.5G", 0.95, "ivf-sq8"),
    (10_000_000, 1280, "8G", 0.95, "ivf-pq"),
    (1_000_000_000, 768, "64G", 0.95, "ivf-pq"),
])
def test_choice_follows_budget(n, d, budget, target, family):
    choice = choose_index(n, d, budget, target)
    assert choice.family == family
    assert choice.resident_bytes <= 0.85 * parse_bytes(budget)
    if family.startswith("ivf"):
        assert ("_HNSW32," in choice.factory) == (choice.nlist >= 4096)  # HNSW coarse quantizer beyond


def test_pq_size_shrinks_with_budget():
    big = choose_index(10_000_000, 1280, "12G").factory
    small = choose_index(10_000_000, 1280, "1G").factory
    assert int(big.rsplit("PQ", 1)[1]) > int(small.rsplit("PQ", 1)[1])


def test_budget_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="do not fit .* raise --budget"):
        choose_index(1_000_000_000, 384, "1G")


def test_merge_topk_equals_single_exact_index(shards, queries):
    whole = np.concatenate(shards)
    parts = []
    for s in shards:
        part = FaissIndex(32, "Flat")
        part.add(s)
        parts.append(part)
    multi = MultiIndex(parts)
    D, I = multi.search(queries, 50)
    ref = faiss.IndexFlatIP(32)
    ref.add(whole)
    Dr, Ir = ref.search(queries, 50)
    assert_same_neighbors(I, Ir, Dr, whole, queries)
    np.testing.assert_allclose(D, Dr, atol=1e-6)
    De, Ie = exact_search(shards, queries, 50, rows_per_block=1000)
    assert_same_neighbors(Ie, Ir, Dr, whole, queries)
    np.testing.assert_allclose(multi.reconstruct(np.array([5, 3001, 11999])), whole[[5, 3001, 11999]])


def test_merge_topk_pads_short_parts():
    D, I = merge_topk([(np.array([[0.9]], np.float32), np.array([[7]])),
                       (np.array([[0.5, -np.inf]], np.float32), np.array([[2, -1]]))], 3)
    assert I.tolist() == [[7, 2, -1]] and D[0, 2] == -np.inf


@pytest.fixture(scope="module")
def ivf(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("ivf")
    index = build_index(shards, out, factory="IVF64,Flat", target_recall=0.9, k=20,
                        num_queries=200, progress=False)
    return out, index


def test_on_disk_merge_equals_in_memory_index(ivf, shards, queries):
    out, _ = ivf
    assert (out / "index.ivfdata").exists()
    loaded = load_index(out)
    ref = faiss.read_index(str(out / "trained.faiss"))
    ref.add(np.concatenate(shards))
    ref.nprobe = loaded.search_params["nprobe"]
    Dr, Ir = ref.search(queries, 20)
    D, I = loaded.search(queries, 20)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_array_equal(D, Dr)


def test_loading_restores_tuned_parameters(ivf):
    out, built = ivf
    meta = json.loads((out / "index.json").read_text())
    assert meta["search_params"]["nprobe"] > 1
    loaded = load_index(out, mmap=True)
    assert faiss.extract_index_ivf(loaded.index).nprobe == meta["search_params"]["nprobe"]
    assert loaded.info["tuning"]["target_recall"] == 0.9


def test_tuned_recall_holds_on_unseen_queries(ivf, shards, queries):
    out, index = ivf
    tuning = index.info["tuning"]
    assert tuning["reached"] and tuning["recall_heldout"] >= 0.87
    _, gt = exact_search(shards, queries, 20)
    _, I = load_index(out).search(queries, 20)
    assert recall_at_k(I, gt, 20) >= 0.87  # fresh queries, not memory rows
    one_probe = load_index(out)
    one_probe.set_search_params(nprobe=1)
    assert recall_at_k(one_probe.search(queries, 20)[1], gt, 20) < recall_at_k(I, gt, 20)


def test_killed_build_resumes_to_the_same_index(shards, tmp_path, monkeypatch, ivf):
    reference, _ = ivf
    real = build_mod.add_block
    calls = []

    def crash_on_third(trained, shard, offset, block):
        calls.append(block)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(trained, shard, offset, block)

    monkeypatch.setattr(build_mod, "add_block", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_index(shards, tmp_path, factory="IVF64,Flat", target_recall=0.9, k=20,
                    num_queries=200, progress=False)
    assert not (tmp_path / "index.json").exists()
    assert len(list((tmp_path / "blocks").glob("*.faiss"))) == 2
    monkeypatch.setattr(build_mod, "add_block", real)
    build_index(shards, tmp_path, factory="IVF64,Flat", target_recall=0.9, k=20,
                num_queries=200, progress=False)
    for name in ("trained.faiss", "index.ivfdata"):
        assert (tmp_path / name).read_bytes() == (reference / name).read_bytes(), name


def test_append_without_rebuild_equals_full_build(shards, queries, tmp_path, ivf):
    reference, _ = ivf
    build_index(shards[:3], tmp_path, factory="IVF64,Flat", target_recall=0.9, k=20,
                num_queries=200, progress=False)
    trained_before = (tmp_path / "trained.faiss").read_bytes()
    index = add_to_index(tmp_path, shards[3:], ["00003"], offset=9000, progress=False)
    assert index.ntotal == 12000 and (tmp_path / "trained.faiss").read_bytes() == trained_before
    ref = faiss.read_index(str(tmp_path / "trained.faiss"))
    ref.add(np.concatenate(shards))
    ref.nprobe = index.search_params["nprobe"]
    np.testing.assert_array_equal(load_index(tmp_path).search(queries, 20)[1], ref.search(queries, 20)[1])


def test_pq_index_reaches_target_with_exact_rerank(shards, queries, tmp_path):
    index = build_index(shards, tmp_path, factory="IVF16,PQ8", target_recall=0.95, k=20,
                        num_queries=200, progress=False)
    tuning = index.info["tuning"]
    assert tuning["params"].get("rerank", 1) > 1 and tuning["recall_heldout"] >= 0.93
    D, I = index.search(queries, 20)
    whole = np.concatenate(shards)
    np.testing.assert_allclose(D[:, 0], np.einsum("nd,nd->n", whole[I[:, 0]], queries), rtol=1e-5)
    loaded = load_index(tmp_path)
    with pytest.raises(ValueError, match="rerank needs the stored vectors"):
        loaded.search(queries, 5)


def test_flat_choice_is_exact(shards, queries, tmp_path):
    index = build_index(shards, tmp_path, budget="1G", k=20, num_queries=100, progress=False)
    assert index.spec == "faiss:Flat" and index.info["tuning"]["recall_heldout"] == 1.0


def test_scann_backend_tunes_saves_and_restores(shards, queries, tmp_path):
    pytest.importorskip("scann")
    index = build_index(shards, tmp_path, backend="scann", target_recall=0.9, k=20,
                        num_queries=200, progress=False)
    tuning = index.info["tuning"]
    assert "leaves_to_search" in tuning["params"] and tuning["recall_heldout"] >= 0.87
    loaded = load_index(tmp_path)
    assert loaded.search_params == index.search_params
    _, gt = exact_search(shards, queries, 20)
    assert recall_at_k(loaded.search(queries, 20)[1], gt, 20) >= 0.87


def test_unknown_factory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="faiss cannot build"):
        FaissIndex.from_spec(32, "IVFbogus")


@pytest.mark.parametrize("mmap", [False, True])
def test_merged_index_searches_when_mapped(ivf, queries, mmap):
    out, built = ivf
    D, I = load_index(out, mmap=mmap).search(queries, 20)
    np.testing.assert_array_equal(I, built.search(queries, 20)[1])


def test_ray_engine_encodes_the_same_blocks(shards, tmp_path, ivf):
    reference, _ = ivf
    ray = pytest.importorskip("ray")
    paths = []
    for i, s in enumerate(shards):
        paths.append(tmp_path / f"{i:05d}.npy")
        np.save(paths[-1], s)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        build_index(paths, tmp_path / "ray", factory="IVF64,Flat", target_recall=0.9, k=20,
                    num_queries=200, engine="ray", progress=False)
    finally:
        ray.shutdown()
    for name in ["index.ivfdata"] + [f"blocks/{i:05d}.faiss" for i in range(4)]:
        assert (tmp_path / "ray" / name).read_bytes() == (reference / name).read_bytes(), name


def test_fast_scan_refine_blocks_merge_to_the_one_go_index(shards, queries, tmp_path):
    factory = "IVF16,PQ16x4fs,Refine(SQ8)"
    index = build_index(shards, tmp_path, factory=factory, target_recall=0.9, k=20,
                        num_queries=200, progress=False)
    tuning = index.info["tuning"]
    assert index.info["choice"]["family"] == "ivf-fs" and "k_factor_rf" in tuning["params"]
    ref = faiss.read_index(str(tmp_path / "trained.faiss"))
    ref.add(np.concatenate(shards))
    faiss.ParameterSpace().set_index_parameters(ref, ",".join(f"{k}={v}" for k, v in tuning["params"].items()))
    for mmap in (False, True):
        loaded = load_index(tmp_path, mmap=mmap)
        D, I = loaded.search(queries, 20)
        np.testing.assert_array_equal(I, ref.search(queries, 20)[1])
    _, gt = exact_search(shards, queries, 20)
    assert recall_at_k(I, gt, 20) >= 0.87
    # appending a shard merges its block into the loaded index without retraining
    grown = add_to_index(tmp_path, [shards[0]], ["extra"], offset=12000, progress=False)
    assert grown.ntotal == 15000
    _, top = load_index(tmp_path).search(shards[0][:50], 2)
    assert set(range(12000, 12050)) <= set(top.ravel())  # each appended copy is found


def test_fast_scan_is_chosen_first_for_moderate_targets():
    assert choose_index(5_000_000, 384, "16G", 0.95).family == "ivf-fs"
    assert choose_index(5_000_000, 384, "16G", 0.99).family == "ivf-flat"


def test_rebuild_with_another_factory_leaves_no_stale_files(shards, tmp_path):
    build_index(shards, tmp_path, factory="IVF16,Flat", target_recall=0.9, k=20, num_queries=100,
                progress=False)
    assert (tmp_path / "index.ivfdata").exists()
    index = build_index(shards, tmp_path, factory="IVF16,PQ16x4fs,Refine(SQ8)", target_recall=0.9,
                        k=20, num_queries=100, progress=False)
    assert not (tmp_path / "index.ivfdata").exists()  # the old on-disk lists are gone
    assert set(index.info["bytes_on_disk"]) == {"index.faiss"}
