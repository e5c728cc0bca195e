"""ExactIndex against brute force numpy (with ties) and against faiss IndexFlatIP."""

import numpy as np
import pytest
import torch

from ravis.index import ExactIndex, FaissFlatIndex, create_index
from ravis.index.exact import topk_chunked


def normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def small_blocks(d):
    # Several query blocks and several database blocks, so the merge path runs.
    return ExactIndex(d, block_bytes=4 * 7 * 50, max_block_queries=7)


def check_against_bruteforce(xq, xb, k, D, I):
    """D, I must be a top-k of the full score matrix; among tied scores any ids will do."""
    S = xq.astype(np.float64) @ xb.T.astype(np.float64)  # (nq, nb)
    ref = -np.sort(-S, axis=1)[:, :k]  # (nq, k) the k best scores
    np.testing.assert_allclose(D, ref, rtol=0, atol=1e-5)
    assert (I >= 0).all()
    assert all(len(set(row)) == k for row in I)  # no id twice
    np.testing.assert_allclose(np.take_along_axis(S, I, axis=1), D, rtol=0, atol=1e-5)


@pytest.mark.parametrize("make", [lambda d: ExactIndex(d), small_blocks])
def test_matches_bruteforce_continuous(make):
    rng = np.random.default_rng(0)
    xb, xq = normalised(rng, 500, 32), normalised(rng, 40, 32)
    index = make(32)
    index.add(xb)
    D, I = index.search(xq, 10)
    check_against_bruteforce(xq, xb, 10, D, I)
    S = xq @ xb.T
    np.testing.assert_array_equal(I, np.argsort(-S, axis=1, kind="stable")[:, :10])  # no ties here


@pytest.mark.parametrize("make", [lambda d: ExactIndex(d), small_blocks])
def test_matches_bruteforce_with_ties(make):
    rng = np.random.default_rng(1)
    # Small integers: every score is exact and many are tied, also at the k-th place.
    xb = rng.integers(-1, 2, size=(300, 8)).astype(np.float32)
    xq = rng.integers(-1, 2, size=(30, 8)).astype(np.float32)
    index = make(8)
    index.add(xb)
    D, I = index.search(xq, 20)
    S = xq @ xb.T
    np.testing.assert_array_equal(D, -np.sort(-S, axis=1)[:, :20])
    np.testing.assert_array_equal(np.take_along_axis(S, I, axis=1), D)
    assert all(len(set(row)) == 20 for row in I)


def test_matches_faiss():
    rng = np.random.default_rng(2)
    xb, xq = normalised(rng, 3000, 64), normalised(rng, 200, 64)
    ours, ref = ExactIndex(64, block_bytes=4 * 64 * 1000, max_block_queries=64), FaissFlatIndex(64)
    for index in (ours, ref):
        index.add(xb[:1000])
        index.add(xb[1000:])
    D, I = ours.search(xq, 25)
    Df, If = ref.search(xq, 25)
    np.testing.assert_allclose(D, Df, rtol=0, atol=1e-5)
    assert (I == If).mean() > 0.999  # only float rounding near-ties may swap
    assert D.dtype == np.float32 and I.dtype == np.int64


@pytest.mark.parametrize("spec", ["exact", "faiss-flat"])
def test_k_larger_than_nb_pads(spec):
    rng = np.random.default_rng(3)
    xb = normalised(rng, 5, 16)
    index = create_index(spec, 16)
    index.add(xb)
    D, I = index.search(xb[:3], 8)
    assert D.shape == I.shape == (3, 8)
    assert (I[:, 5:] == -1).all() and np.isneginf(D[:, 5:]).all()
    assert sorted(I[0, :5]) == list(range(5)) and I[0, 0] == 0


@pytest.mark.parametrize("spec", ["exact", "faiss-flat"])
def test_empty_index_and_bad_input(spec):
    index = create_index(spec, 4)
    D, I = index.search(np.ones((2, 4), np.float32), 3)
    assert (I == -1).all() and np.isneginf(D).all()
    with pytest.raises(ValueError, match="shape"):
        index.add(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.ones((2, 4), np.float32), 0)


@pytest.mark.parametrize("spec", ["exact", "faiss-flat"])
def test_reconstruct_is_exact(spec):
    rng = np.random.default_rng(4)
    xb = rng.standard_normal((50, 12)).astype(np.float32)
    index = create_index(spec, 12)
    index.add(xb.astype(np.float64))  # converted to float32 on the way in
    np.testing.assert_array_equal(index.reconstruct([7, 0, 49]), xb[[7, 0, 49]])
    with pytest.raises(IndexError):
        index.reconstruct([-1])


@pytest.mark.parametrize("m", [1600, 1615, 4000])
def test_topk_chunked_matches_topk(m):
    g = torch.Generator().manual_seed(m)
    for S in (torch.randn(13, m, generator=g), torch.randint(-3, 4, (13, m), generator=g).float()):
        v, i = topk_chunked(S, 25, c=16)  # 1600 columns: exactly the 4 * k chunks that enable it
        ref = torch.topk(S, 25, dim=1)
        assert torch.equal(v, ref.values)  # tied values may come from other columns
        assert torch.equal(torch.gather(S, 1, i), v)
        assert all(len(set(row.tolist())) == 25 for row in i)
        v2, _ = topk_chunked(S[:, 1:], 25, c=16)  # a view with a row stride and an offset
        assert torch.equal(v2, torch.topk(S[:, 1:], 25, dim=1).values)
