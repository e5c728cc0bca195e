"""search_neighbors against a brute-force loop that drops self and byte-equal duplicates."""

import numpy as np
import pytest

from ravis.index import create_index
from ravis.retrieval import search_neighbors, self_rows_from_ids


def planted_memory(rng, nb=400, d=16):
    """Normalised memory with planted copies; returns xb, the query rows and extra queries."""
    xb = rng.standard_normal((nb, d)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xb[[5, 7]] = xb[0]  # two exact duplicates of row 0
    xb[100:140] = xb[1]  # 40 copies of row 1 (more than the margin) -> a re-search
    xb[8] = np.nextafter(xb[0], np.float32(2))  # near-duplicate of row 0: one ulp off, not byte-equal
    query_rows = np.array([0, 1, 2, 5, 100, 300, 399])
    return xb, query_rows


def reference(xb, xq, k, query_ids, memory_ids, exclude_duplicates):
    """One query at a time: rank all of memory, skip excluded entries, keep the first k."""
    S = xq.astype(np.float64) @ xb.T.astype(np.float64)  # (nq, nb)
    D = np.full((len(xq), k), -np.inf)
    I = np.full((len(xq), k), -1)
    for i in range(len(xq)):
        kept = [
            j for j in np.argsort(-S[i], kind="stable")
            if memory_ids[j] != query_ids[i]
            and not (exclude_duplicates and xb[j].tobytes() == xq[i].tobytes())
        ][:k]
        D[i, : len(kept)], I[i, : len(kept)] = S[i, kept], kept
    return D, I, S


def assert_same_neighbors(D, I, Dr, Ir, S):
    """Scores equal; ids equal up to the order of (and choice among) tied scores."""
    np.testing.assert_allclose(D, Dr, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(I == -1, Ir == -1)
    for i in range(len(I)):
        got, want = I[i][I[i] >= 0], Ir[i][Ir[i] >= 0]
        np.testing.assert_allclose(S[i, got], D[i][: len(got)], atol=1e-5)
        # Ids must agree except among entries tied with the last kept score.
        last = Dr[i][len(want) - 1] if len(want) else np.inf
        strict = lambda ids: set(ids[S[i, ids] > last + 1e-5])  # noqa: E731
        assert strict(got) == strict(want)
        assert len(set(got)) == len(got)


@pytest.mark.parametrize("spec", ["exact", "faiss-flat"])
@pytest.mark.parametrize("id_kind", ["int", "str"])
@pytest.mark.parametrize("exclude_duplicates", [True, False])
def test_self_exclusion_matches_reference(spec, id_kind, exclude_duplicates):
    rng = np.random.default_rng(0)
    xb, query_rows = planted_memory(rng)
    memory_ids = np.arange(1000, 1000 + len(xb))
    # Two extra queries not in memory: a copy of row 9 (a duplicate only) and a fresh vector.
    xq = np.concatenate([xb[query_rows], xb[[9]], xb[[10]] * 0.5])
    query_ids = np.concatenate([memory_ids[query_rows], [-1, -2]])
    if id_kind == "str":
        memory_ids, query_ids = [f"img{i}" for i in memory_ids], [f"img{i}" for i in query_ids]
    index = create_index(spec, xb.shape[1])
    index.add(xb)
    k = 12
    D, I = search_neighbors(index, xq, k, self_rows=self_rows_from_ids(query_ids, memory_ids),
                            exclude_duplicates=exclude_duplicates, margin=4, block=3)
    Dr, Ir, S = reference(xb, xq, k, list(query_ids), list(memory_ids), exclude_duplicates)
    assert_same_neighbors(D, I, Dr, Ir, S)
    rows = {r: i for i, r in enumerate(query_rows)}
    assert 0 not in I[rows[0]] and 8 in I[rows[0]]  # self gone, the near-duplicate stays
    assert ({5, 7} & set(I[rows[0]])) == (set() if exclude_duplicates else {5, 7})
    if exclude_duplicates:
        assert not set(range(100, 140)) & set(I[rows[1]])  # all 40 copies gone
        assert 9 not in I[len(query_rows)]  # a duplicate of a query that is not in memory


def test_exclusions_leave_fewer_than_k():
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((20, 8)).astype(np.float32)
    xb[10:] = xb[0]  # row 0 and its 10 copies
    index = create_index("exact", 8)
    index.add(xb)
    D, I = search_neighbors(index, xb[[0, 1]], 15, self_rows=[0, 1], margin=0)
    assert (I[0, :9] >= 0).all() and (I[0, 9:] == -1).all() and np.isneginf(D[0, 9:]).all()
    assert set(I[0, :9]) == set(range(1, 10))
    assert (I[1] >= 0).all() and 1 not in I[1]


def test_without_ids_is_plain_search():
    rng = np.random.default_rng(2)
    xb = rng.standard_normal((100, 8)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    index = create_index("exact", 8)
    index.add(xb)
    D, I = search_neighbors(index, xb[:10], 5, block=4)
    Dp, Ip = index.search(xb[:10], 5)
    np.testing.assert_array_equal(D, Dp)
    np.testing.assert_array_equal(I, Ip)
    assert (I[:, 0] == np.arange(10)).all()  # nothing excluded: each query finds itself


def test_id_errors():
    index = create_index("exact", 4)
    index.add(np.eye(4, dtype=np.float32))
    x = np.eye(4, dtype=np.float32)[:2]
    with pytest.raises(TypeError, match="both be ints or both strings"):
        self_rows_from_ids([0, 1], ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="must be"):
        search_neighbors(index, x, 2, self_rows=[0])  # one row for two queries
    with pytest.raises(ValueError, match="must be"):
        search_neighbors(index, x, 2, self_rows=[0, 4])  # a row the memory does not have
    assert self_rows_from_ids(["b", "z"], ["a", "b"]).tolist() == [1, -1]


@pytest.mark.parametrize("with_self", [False, True])
def test_near_duplicates_above_max_similarity_are_excluded(with_self):
    """A test image crawled into the memory (cosine >= 0.99) is never retrieved for it, the
    k neighbours are still k, and everything below the bound is as before; 40 copies (more
    than the margin) make it search again."""
    rng = np.random.default_rng(3)
    xb, _ = planted_memory(rng)
    index = create_index("exact", xb.shape[1])
    index.add(xb)
    near = xb[1] + 0.01 * rng.standard_normal(xb.shape[1]).astype(np.float32)
    xq = np.stack([xb[0], near / np.linalg.norm(near), xb[300]]).astype(np.float32)
    own = np.array([0, -1, 300]) if with_self else None
    k = 10
    D, I = search_neighbors(index, xq, k, self_rows=own, max_similarity=0.99)
    assert (I >= 0).all() and (D < 0.99).all()
    S = xq.astype(np.float64) @ xb.T.astype(np.float64)
    for i in range(len(xq)):
        allowed = [j for j in np.argsort(-S[i], kind="stable") if S[i, j] < 0.99 - 1e-6][:k]
        np.testing.assert_allclose(D[i], S[i, allowed], atol=1e-5)
    plain_D, plain_I = search_neighbors(index, xq, 41)
    assert (plain_D[1] >= 0.99).all() and set(plain_I[1]) == {1, *range(100, 140)}
