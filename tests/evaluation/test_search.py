"""``bctbench.evaluation.search``: exact, stable, backend- and chunk-independent rankings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bctbench.errors import EvaluationError
from bctbench.evaluation import search
from bctbench.evaluation.search import l2_normalize, rank, similarity_topk

try:
    import faiss  # noqa: F401

    BACKENDS = ["torch", "faiss"]
except ImportError:  # pragma: no cover - faiss-cpu is a dependency
    BACKENDS = ["torch"]

CPU = {"device": "cpu"}


def brute_scores(query, gallery):
    """float64 cosine similarities of the float32 unit vectors (one independent dot product per pair)."""

    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        n = np.sqrt((x * x).sum(axis=1, keepdims=True))
        return (x / np.where(n > 0, n, 1.0)).astype(np.float32).astype(np.float64)

    return np.einsum("qd,gd->qg", unit(query), unit(gallery))


def brute_rank(query, gallery, k=None):
    s = brute_scores(query, gallery)
    return np.argsort(-s, axis=1, kind="stable")[:, : (k or s.shape[1])]


def tied_case(seed=0, nq=24, n_db=700, dim=16):
    """Random features plus deliberate exact ties: duplicated and rescaled gallery rows, zero rows,
    disjoint one-hot rows (exact zero scores), queries equal to gallery rows, near-ties below float32
    resolution."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    g = rng.standard_normal((n_db, dim)).astype(np.float32)
    assert n_db >= 70
    g[20:40] = g[3]  # 21 identical rows
    g[45] = 2.0 * g[7]  # same direction: identical unit vector
    g[46] = 0.0
    g[47] = 0.0
    g[50:60] = 0.0
    g[50:60, 0] = 1.0  # ten copies of e_0
    g[61] = g[11] + np.float32(1e-6) * rng.standard_normal(dim).astype(np.float32)  # near-tie with row 11
    q[0] = g[3]  # best match has 21 exact ties
    q[1] = 0.0
    q[1, 1] = 1.0  # e_1: zero score against the e_0 rows and the zero rows
    q[2] = g[11]
    q[3] = q[4]  # duplicated query
    return q, g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [None, 1, 10, 45, 120, 699])
def test_rank_equals_stable_brute_force(backend, k):
    q, g = tied_case()
    expected = brute_rank(q, g, k)
    got = rank(q, g, topk=k, backend=backend, **CPU)
    assert got.dtype == np.int64 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("k", [5, 50, None])
def test_many_tie_clusters_per_row_equal_brute_force(k):
    # ternary 6-d features: a few dozen distinct scores, so every ranking is a chain of large tie clusters
    rng = np.random.default_rng(5)
    q = rng.integers(-1, 2, (30, 6)).astype(np.float32)
    g = rng.integers(-1, 2, (500, 6)).astype(np.float32)
    g[::7] += np.float32(1e-7) * rng.standard_normal((72, 6)).astype(np.float32)  # near-ties as well
    np.testing.assert_array_equal(rank(q, g, topk=k, **CPU), brute_rank(q, g, k))


def test_ties_go_to_the_lower_index():
    q, g = tied_case()
    r = rank(q, g, topk=21, **CPU)
    np.testing.assert_array_equal(r[0], [3, *range(20, 40)])
    # e_1 query: every e_0 row and zero row scores exactly 0; they keep index order among themselves
    full = rank(q, g, **CPU)[1]
    zero = [i for i in full.tolist() if i in {46, 47, *range(50, 60)}]
    assert zero == sorted(zero)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [1, 7, (3, 50), (1000, 64), (5, 699)])
def test_chunked_equals_unchunked(backend, chunk_size):
    q, g = tied_case(seed=1)
    for k in (None, 25):
        np.testing.assert_array_equal(
            rank(q, g, topk=k, backend=backend, chunk_size=chunk_size, **CPU), brute_rank(q, g, k)
        )


def test_group_pruned_selection_is_exact():
    # chunks wide enough for the group-maximum pruning, with tail columns, duplicates beyond the margin
    rng = np.random.default_rng(2)
    q = rng.standard_normal((40, 8)).astype(np.float32)
    g = rng.standard_normal((9000, 8)).astype(np.float32)
    g[5000:5100] = g[17]
    q[5] = g[17]
    expected = brute_rank(q, g, 5)
    for chunk in [(16, 2010), (40, 4096), (7, 9000)]:
        np.testing.assert_array_equal(rank(q, g, topk=5, chunk_size=chunk, **CPU), expected)
    np.testing.assert_array_equal(
        rank(q, g, topk=5, backend=BACKENDS[-1], chunk_size=(16, 2010), **CPU), expected
    )


def test_threaded_selection_is_exact():
    # several query chunks selected concurrently by Python threads (the CPU path with > 1 torch thread)
    q, g = tied_case(seed=10, nq=40, n_db=3000)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for chunk in [(8, 2048), (5, 700), (40, 3000)]:
            np.testing.assert_array_equal(rank(q, g, topk=7, chunk_size=chunk, **CPU), brute_rank(q, g, 7))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_lanes_split_queries_evenly_or_share_the_gallery():
    # 20 query chunks of <= 512 rows for 2 threads: 20 chunks of 500, the gallery not split
    assert search._lanes(10000, 100000, 512, 8192, 2) == (list(range(0, 10000, 500)), 1, 500, 8192)
    # 3 chunks for 2 threads: rounded up to 4 chunks of 300
    assert search._lanes(1200, 100000, 512, 8192, 2) == ([0, 300, 600, 900], 1, 300, 8192)
    # one query chunk, 2 threads: two lanes share the gallery, blocks halved so each gets one
    assert search._lanes(70, 5000, 512, 5000, 2) == ([0], 2, 70, 2500)
    # more threads than gallery rows
    assert search._lanes(5, 3, 512, 3, 4) == ([0], 3, 5, 1)
    assert search._lanes(5, 3, 512, 3, 1) == ([0], 1, 5, 3)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_lanes_and_spans_are_exact(threads, monkeypatch):
    # several gallery spans (each normalised once), lanes sharing a query chunk's gallery, ties
    monkeypatch.setattr(search, "_SPAN_BYTES", 4 * 16 * 1024)  # 1024 rows of D = 16 per span
    q, g = tied_case(seed=12, nq=30, n_db=5000)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for chunk in [(30, 512), (8, 1000), (4, 5000)]:
            np.testing.assert_array_equal(rank(q, g, topk=9, chunk_size=chunk, **CPU), brute_rank(q, g, 9))
    finally:
        torch.set_num_threads(previous)


def test_later_chunk_without_candidates():
    rng = np.random.default_rng(8)
    q = rng.standard_normal((10, 8)).astype(np.float32)
    g = np.zeros((4096, 8), dtype=np.float32)
    g[:2048] = rng.standard_normal((2048, 8))  # the zero rows of the second chunk score 0: all pruned
    np.testing.assert_array_equal(rank(q, g, topk=5, chunk_size=(16, 2048), **CPU), brute_rank(q, g, 5))


def test_default_backend_and_device():
    q, g = tied_case(seed=9)
    expected = brute_rank(q, g, 30)
    np.testing.assert_array_equal(rank(q, g, topk=30, backend="auto"), expected)
    np.testing.assert_array_equal(rank(q, g, topk=30), expected)


def test_backends_identical_on_random_data():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((60, 32)).astype(np.float32)
    g = rng.standard_normal((2500, 32)).astype(np.float32)
    results = [rank(q, g, topk=100, backend=b, **CPU) for b in BACKENDS]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    np.testing.assert_array_equal(results[0], brute_rank(q, g, 100))


def test_inputs_normalised_and_any_array_type():
    q, g = tied_case(seed=3, n_db=300)
    expected = brute_rank(q, g, 20)
    scale = np.arange(1, g.shape[0] + 1, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(rank(q * 3, g * scale, topk=20, **CPU), brute_rank(q, g * scale, 20))
    np.testing.assert_array_equal(rank(torch.from_numpy(q), torch.from_numpy(g), topk=20, **CPU), expected)
    np.testing.assert_array_equal(rank(q.astype(np.float64), g.astype(np.float64), topk=20, **CPU), expected)


def test_topk_clamp_zero_and_empty_queries():
    q, g = tied_case(n_db=70)
    assert rank(q, g, topk=10_000, **CPU).shape == (q.shape[0], 70)
    np.testing.assert_array_equal(rank(q, g, topk=10_000, **CPU), brute_rank(q, g))
    assert rank(q, g, topk=0, **CPU).shape == (q.shape[0], 0)
    assert rank(q[:0], g, topk=5, **CPU).shape == (0, 5)


def test_similarity_topk_scores():
    q, g = tied_case(seed=5, n_db=200)
    scores, ids = similarity_topk(q, g, topk=15, **CPU)
    np.testing.assert_array_equal(ids, brute_rank(q, g, 15))
    np.testing.assert_allclose(scores, np.take_along_axis(brute_scores(q, g), ids, axis=1), atol=1e-12)
    assert (np.diff(scores, axis=1) <= 0).all()
    assert scores.dtype == np.float64


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    assert l2_normalize(x).dtype == np.float32


def test_errors():
    q, g = tied_case(n_db=70)
    bad = q.copy()
    bad[[1, 4, 6], 0] = np.nan
    with pytest.raises(EvaluationError, match=r"query.*3 of 24 rows"):
        rank(bad, g)
    badg = g.copy()
    badg[0, 0] = np.inf
    with pytest.raises(EvaluationError, match=r"gallery.*1 of 70 rows"):
        rank(q, torch.from_numpy(badg))
    with pytest.raises(EvaluationError, match="dimension mismatch"):
        rank(q, g[:, :5])
    with pytest.raises(EvaluationError, match="empty"):
        rank(q, g[:0])
    with pytest.raises(EvaluationError, match="2-D"):
        rank(q[0], g)
    with pytest.raises(EvaluationError, match="backend"):
        rank(q, g, backend="annoy")
    with pytest.raises(EvaluationError, match="topk"):
        rank(q, g, topk=-1)
    with pytest.raises(EvaluationError, match="chunk"):
        rank(q, g, chunk_size=(0, 10))
    with pytest.raises(EvaluationError, match="real numbers"):
        rank(q.astype(np.complex64), g)


def test_matmul_precision_restored():
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        q, g = tied_case(n_db=100)
        np.testing.assert_array_equal(rank(q, g, topk=10, **CPU), brute_rank(q, g, 10))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    q, g = tied_case(seed=6, n_db=5000)
    for k in (None, 100):
        expected = brute_rank(q, g, k)
        np.testing.assert_array_equal(rank(q, g, topk=k, device="cuda"), expected)
        np.testing.assert_array_equal(
            rank(torch.from_numpy(q).cuda(), torch.from_numpy(g).cuda(), topk=k), expected
        )
        if search.faiss_gpu_available():
            np.testing.assert_array_equal(rank(q, g, topk=k, backend="faiss", device="cuda"), expected)
