"""Exact inner-product search with a reproducible ranking (``docs/evaluation.md`` §2).

:func:`rank` returns ``int64[n_queries, k]``: **rows are queries**, best first, values are gallery row
indices. Both inputs are L2-normalised inside (cosine similarity). The order is the stable sort on the
*canonical score* ``s(q, g) = <q_hat, g_hat>``, computed in float64 from the float32 unit vectors
``l2_normalize(x)``: higher score first, equal scores by lower gallery index. It does not depend on the
backend, the device or the chunking.

How (two stages, per block of queries):

1. **Candidates** (fast, float32): chunked GEMM over queries and gallery (torch ``matmul`` or faiss
   ``IndexFlatIP``, CPU or GPU); per gallery chunk an exact top-(k + margin) selection merged with the
   running candidates, so memory is bounded whatever the gallery size. The torch selection first prunes the
   chunk with column-group maxima against the running threshold (``_chunk_topk``), so little beyond the
   matmul touches every score. On CPU the work is cut into *lanes* (a query chunk, or a share of its
   gallery blocks when there are fewer query chunks than threads, ``_lanes``); each Python thread owns whole
   lanes and runs their matmuls and selections single-threaded, so a score block is selected by the core
   that just computed it and threads meet only once per gallery span. float32 scores differ from the
   canonical score by at most ``eps / 2`` with ``eps = 2.5 (D + 8) 2^-24``: a D-term float32 dot product of unit vectors is off by at
   most ``D 2^-24`` in any summation order, the float32 unit vectors of stage 1 differ from the canonical
   ones by at most 3 ulps per element (<= ``6 2^-24`` on the score), and a 25 % margin on top. So float32
   order can only be wrong between items whose float32 scores are within ``eps``.
2. **Exact order** (CPU, NumPy): candidates sorted by float32 score are cut into clusters of neighbours whose
   gaps are ``<= eps``; only cluster members are rescored canonically and re-sorted by (-score, index).
   A query whose (k + margin)-th candidate is still within ``eps`` of its k-th (massive ties, e.g. duplicated
   gallery rows) is redone exactly: all gallery items within ``eps`` of its k-th score are candidates.

float32 matmuls run with ``torch.set_float32_matmul_precision("highest")`` (restored afterwards), so TF32 or
bf16 settings made for training do not loosen the error bound.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from bctbench.errors import EvaluationError

__all__ = ["faiss_gpu_available", "l2_normalize", "rank", "similarity_topk"]

BACKENDS = ("torch", "faiss", "auto")

# extra candidates per query beyond k (stage 1)
_MIN_MARGIN = 16
# default (query rows, gallery rows) per float32 score block: 16 MiB on CPU (two blocks in flight with two
# threads; larger blocks were not faster but raised the peak memory), 1 GiB on CUDA
_DEFAULT_CHUNKS = {"cpu": (512, 8192), "cuda": (8192, 32768)}
_FULL_BLOCK_BYTES = 256 << 20
# gallery rows per faiss index (64 MiB of float32 at D = 256)
_FAISS_CHUNK = 65536
# gallery rows normalised at once on CPU and shared by the threads (64 MiB of float32 whatever D)
_SPAN_BYTES = 64 << 20
# columns per group of the group-maximum pruning in stage 1
_GROUP = 8
# rows rescored per NumPy call in stage 2
_RESCORE_ROWS = 2048
# query rows per stage-2 call (top-k mode)
_STAGE2_ROWS = 2048
# faiss GPU top-k limit (GpuIndexFlat supports k <= 2048)
_FAISS_GPU_MAX_K = 2048


# ------------------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------------------


def _as_matrix(x: object, name: str) -> np.ndarray | torch.Tensor:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_complex() or not (
            x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.int16)
        ):
            raise EvaluationError(f"{name} features must be real numbers, got dtype {x.dtype}")
    else:
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise EvaluationError(f"{name} features must be real numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise EvaluationError(f"{name} features must be 2-D [n, D], got shape {tuple(x.shape)}")
    return x


def _rows64(x: np.ndarray | torch.Tensor, index: slice | np.ndarray) -> np.ndarray:
    """Rows of ``x`` as a float64 NumPy array (CPU)."""
    if isinstance(x, torch.Tensor):
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index).to(x.device)
        return x[index].to(device="cpu", dtype=torch.float64).numpy()
    rows = np.take(x, index, axis=0) if isinstance(index, np.ndarray) else x[index]
    return rows.astype(np.float64)  # always a fresh array (callers modify it in place)


def _unit64(x64: np.ndarray) -> np.ndarray:
    """In place: ``x64`` rows times the reciprocal of their norm, in float64 (zero rows stay zero).

    ``np.einsum("ij,ij->i")`` reduces each row by one inner-loop call, so the result depends on the row alone
    (not on how many rows are processed together)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    np.multiply(x64, (1.0 / np.where(norms > 0, norms, 1.0))[:, None], out=x64)
    return x64


def _normalize64(x64: np.ndarray) -> np.ndarray:
    """Canonical unit vectors: float32 rounding of :func:`_unit64` (``x64`` is overwritten)."""
    return _unit64(x64).astype(np.float32)


def l2_normalize(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """``float32[n, D]``: each row times the reciprocal of its L2 norm, both computed in float64, rounded to
    float32 (zero rows stay zero).

    These are the canonical unit vectors of the ranking; ``rank`` orders by their float64 inner products.
    """
    x = _as_matrix(x, "input")
    return _normalize64(_rows64(x, slice(None)))


def _count_bad_rows(x: np.ndarray | torch.Tensor, block: int = 1 << 13) -> int:
    bad = 0
    for s in range(0, x.shape[0], block):
        part = x[s : s + block]
        if isinstance(part, torch.Tensor):
            if part.is_floating_point():
                bad += int((~torch.isfinite(part).all(dim=1)).sum())
        elif np.issubdtype(part.dtype, np.floating):
            bad += int((~np.isfinite(part).all(axis=1)).sum())
    return bad


def _validate(query: object, gallery: object) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    q = _as_matrix(query, "query")
    g = _as_matrix(gallery, "gallery")
    if g.shape[0] == 0:
        raise EvaluationError("gallery is empty: nothing to rank")
    if q.shape[1] != g.shape[1]:
        raise EvaluationError(
            f"dimension mismatch: query features have D={q.shape[1]}, gallery D={g.shape[1]}"
        )
    if q.shape[1] == 0:
        raise EvaluationError("features have dimension 0")
    for name, x in (("query", q), ("gallery", g)):
        bad = _count_bad_rows(x)
        if bad:
            raise EvaluationError(f"{name} features contain NaN or inf in {bad} of {x.shape[0]} rows")
    return q, g


def faiss_gpu_available() -> bool:
    """True when faiss is importable, was built with GPU support and sees a GPU."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def _resolve(backend: str, device: object, q: object, g: object) -> tuple[str, torch.device]:
    if backend not in BACKENDS:
        raise EvaluationError(f"unknown search backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        backend = "faiss" if faiss_gpu_available() else "torch"
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError as err:
            raise EvaluationError("backend='faiss' needs the faiss package (faiss-cpu or faiss-gpu)") from err
    if device is None:
        on_cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in (q, g))
        device = "cuda" if on_cuda or torch.cuda.is_available() else "cpu"
    return backend, torch.device(device)


def _chunks(
    chunk_size: object, nq: int, n_db: int, dim: int, dev: torch.device, backend: str = "torch"
) -> tuple[int, int]:
    if chunk_size is None:
        cq, cg = _DEFAULT_CHUNKS["cuda" if dev.type == "cuda" else "cpu"]
        if backend == "faiss":  # one index per gallery chunk; faiss blocks its own work inside
            cg = _FAISS_CHUNK
    elif isinstance(chunk_size, int):
        cq, cg = min(1024, chunk_size), chunk_size
    else:
        cq, cg = (int(v) for v in chunk_size)
    if cq < 1 or cg < 1:
        raise EvaluationError(f"chunk sizes must be >= 1, got {chunk_size!r}")
    return min(cq, max(nq, 1)), min(cg, n_db)


@contextlib.contextmanager
def _exact_fp32_matmul() -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@contextlib.contextmanager
def _one_torch_thread(dev: torch.device) -> Iterator[None]:
    """Run torch ops single-threaded while Python threads provide the parallelism (one lane per thread).

    Each multi-threaded op ends with a barrier; on a busy machine (more runnable processes than cores) a
    descheduled worker stalls every barrier, which made the selection 3-5x slower than on one thread.
    """
    threads = torch.get_num_threads()
    if dev.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------------
# stage 1: float32 candidates
# ------------------------------------------------------------------------------------------------------------


def _normalize_torch(x: np.ndarray | torch.Tensor, s: int, e: int, dev: torch.device) -> torch.Tensor:
    """float32 unit rows ``x[s:e]`` on ``dev``: float64 norms, float32 scaling (within 3 float32 ulps of the
    canonical vectors per element; ``eps`` accounts for it)."""
    t = x[s:e] if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x[s:e]))
    t = t.to(device=dev, dtype=torch.float32)
    if dev.type == "cpu":  # NumPy's float64-accumulating einsum: no float64 copy, several times faster
        a = t.numpy()
        norms = torch.from_numpy(np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64)))
    else:
        norms = torch.linalg.vector_norm(t, dim=1, dtype=torch.float64)
    inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms)).to(torch.float32)
    return t * inv[:, None]


def _merge(run: tuple[torch.Tensor, torch.Tensor] | None, v: torch.Tensor, i: torch.Tensor, kp: int):
    if run is None:
        return v, i
    vv = torch.cat([run[0], v], dim=1)
    ii = torch.cat([run[1], i], dim=1)
    if vv.shape[1] <= kp:
        return vv, ii
    v2, pos = torch.topk(vv, kp, dim=1, sorted=False)
    return v2, torch.gather(ii, 1, pos)


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """int64 flat indices of the True entries of a contiguous bool tensor, ascending. On CPU through NumPy's
    ``flatnonzero``, 3-6x faster than ``torch.nonzero`` for the sparse masks of the selection."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask.reshape(-1)).squeeze(1)


def _chunk_topk(sim: torch.Tensor, g0: int, kp: int, run):
    """Exact top-``kp`` of (running candidates ∪ this chunk); ``sim`` = contiguous float32 ``[rows, chunk]``
    scores, chunk columns are gallery ids ``g0 + j``.

    ``topk`` costs much more per element than a reduction on CPU, so the chunk is pruned first. Columns
    are split into ``n // G`` strided groups ``{c, c + n//G, c + 2 n//G, ...}`` whose maxima cost one
    vectorised pass. A per-row threshold ``tau`` that at least ``kp`` candidates reach (the running
    ``kp``-th score, or else the ``kp``-th largest maximum of disjoint column groups) rules out every group
    whose maximum is below it and then every element below it; the few survivors (a ragged list) are
    packed per row and merged with the running candidates by one small ``topk``. Exact: nothing that can
    be in the top ``kp`` is dropped.
    """
    rows, n = sim.shape
    kk = min(kp, n)
    n_groups = n // _GROUP
    full_run = run is not None and run[0].shape[1] == kp
    if n_groups < (1 if full_run else 4 * kk):
        v, i = torch.topk(sim, kk, dim=1, sorted=False)
        return _merge(run, v, i.add_(g0), kp)
    dev = sim.device
    gmax = sim[:, : n_groups * _GROUP].reshape(rows, _GROUP, n_groups).amax(dim=1)
    if full_run:
        tau = run[0].amin(dim=1)
    else:  # kk-th largest maximum of coarser groups (unions of 8 groups): cheaper, nearly as tight
        coarse = gmax[:, : (n_groups // 8) * 8].reshape(rows, 8, -1).amax(dim=1)
        if coarse.shape[1] < 2 * kk:
            coarse = gmax
        tau = torch.topk(coarse, kk, dim=1, sorted=False).values.amin(dim=1)
    kept_groups = _flat_nonzero(gmax >= tau[:, None])  # row-major order
    r, c = kept_groups // n_groups, kept_groups % n_groups
    if 2 * r.numel() > rows * n_groups:  # pruning would not pay off
        v, i = torch.topk(sim, kk, dim=1, sorted=False)
        return _merge(run, v, i.add_(g0), kp)
    # the members of the kept groups, [n_kept, G]; survivors >= tau as a row-sorted ragged list
    v = torch.take(sim, (r * n + c)[:, None] + torch.arange(_GROUP, device=dev) * n_groups)
    sel = _flat_nonzero(v >= tau[r][:, None])
    v = v.view(-1)[sel]
    kept = sel // _GROUP
    rr = r[kept]
    cc = c[kept] + (sel % _GROUP) * n_groups + g0
    # pack into [rows, m] with -inf padding; without a full running set every row holds >= kk real
    # entries (the maxima of its >= kk kept groups), so padding is never selected
    counts = torch.bincount(rr, minlength=rows)
    m = int(counts.max()) if rr.numel() else 0
    vals = torch.full((rows * m,), float("-inf"), device=dev)
    ids = torch.full((rows * m,), -1, dtype=torch.int64, device=dev)
    # flat slot = row * m + (index of the entry within its row); 1-D index_put is the cheap one
    flat = torch.arange(rr.numel(), device=dev) + (rr * m - (torch.cumsum(counts, 0) - counts)[rr])
    vals[flat] = v
    ids[flat] = cc
    vals, ids = vals.view(rows, m), ids.view(rows, m)
    if n > n_groups * _GROUP:  # tail columns outside the groups: all candidates
        vals = torch.cat([vals, sim[:, n_groups * _GROUP :]], dim=1)
        tail = torch.arange(n_groups * _GROUP, n, device=dev) + g0
        ids = torch.cat([ids, tail.expand(rows, -1)], dim=1)
    if vals.shape[1] == 0:
        return run
    if run is None:
        vals, pos = torch.topk(vals, min(kk, vals.shape[1]), dim=1, sorted=False)
        return vals, torch.gather(ids, 1, pos)
    return _merge(run, vals, ids, kp)


def _sorted_desc(v: torch.Tensor, i: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    v, order = torch.sort(v, dim=1, descending=True)
    i = torch.gather(i, 1, order)
    return v.cpu().numpy(), i.cpu().numpy()


def _lanes(nb: int, n_db: int, cq: int, cg: int, workers: int) -> tuple[list[int], int, int, int]:
    """Split ``nb`` queries x ``n_db`` gallery rows into independent lanes for ``workers`` threads.

    Returns ``(query chunk starts, gallery parts per query chunk, query rows per chunk, gallery rows per
    block)``. Query chunks (at most ``cq`` rows) come in a multiple of ``workers`` of near-equal size; with
    fewer query chunks than workers, each query chunk's gallery blocks are dealt round-robin to
    ``parts`` lanes whose candidates are merged at the end.
    """
    n_chunks = -(-nb // cq)
    parts = 1
    if workers > 1:
        if n_chunks >= workers:
            n_chunks = -(-n_chunks // workers) * workers
        else:
            parts = min(workers // n_chunks, n_db)
            if n_db < parts * cg:
                cg = -(-n_db // parts)
    cq = -(-nb // n_chunks)
    return list(range(0, nb, cq)), parts, cq, min(cg, n_db)


def _candidates_torch(q, g, q0, q1, kp, full, cq, cg, dev):
    """float32 scores and gallery ids of the top-``kp`` (or all, ``full``) items per query, by score."""
    n_db = g.shape[0]
    qn = _normalize_torch(q, q0, q1, dev)
    nb = q1 - q0
    if full:
        scores = torch.empty((nb, n_db), dtype=torch.float32, device=dev)
        for g0 in range(0, n_db, cg):
            g1 = min(n_db, g0 + cg)
            torch.matmul(qn, _normalize_torch(g, g0, g1, dev).T, out=scores[:, g0:g1])
        v, i = torch.sort(scores, dim=1, descending=True)
        return v.cpu().numpy(), i.cpu().numpy()
    workers = torch.get_num_threads() if dev.type == "cpu" else 1
    starts, parts, cq, cg = _lanes(nb, n_db, cq, cg, workers)
    lanes = [(b, p) for b in range(len(starts)) for p in range(parts)]
    runs: list = [None] * len(lanes)
    span = cg if dev.type != "cpu" else max(cg, _SPAN_BYTES // (4 * g.shape[1]) // cg * cg)
    # one reused score block per thread: a fresh 16 MiB block per matmul comes from mmap and is
    # page-faulted in every time (the matmul then ran ~1.3x slower than with a reused block)
    buffers = [torch.empty(cq * cg, device=dev) for _ in range(min(workers, len(lanes)))]

    def run_lanes(thread: int, s0: int, s1: int, gn: torch.Tensor) -> None:
        buf = buffers[thread]
        for lane in range(thread, len(lanes), len(buffers)):
            b, p = lanes[lane]
            qc = qn[starts[b] : starts[b] + cq]
            run = runs[lane]
            for c0 in range(s0 + p * cg, s1, parts * cg):
                gc = gn[c0 - s0 : c0 - s0 + cg]
                sim = torch.matmul(qc, gc.T, out=buf[: qc.shape[0] * gc.shape[0]].view(qc.shape[0], -1))
                run = _chunk_topk(sim, c0, kp, run)
            runs[lane] = run

    # CPU: each thread owns whole lanes (a query chunk and a share of the gallery) and runs its matmuls
    # and selections single-threaded, so a score block is selected by the core that computed it, with no
    # barrier between matmul and selection; threads meet once per gallery span (normalised once)
    pool = ThreadPoolExecutor(len(buffers)) if len(buffers) > 1 else None
    try:
        with _one_torch_thread(dev):
            for s0 in range(0, n_db, span):
                s1 = min(n_db, s0 + span)
                gn = _normalize_torch(g, s0, s1, dev)
                if pool is None:
                    run_lanes(0, s0, s1, gn)
                else:
                    list(pool.map(functools.partial(run_lanes, s0=s0, s1=s1, gn=gn), range(len(buffers))))
                del gn
    finally:
        if pool is not None:
            pool.shutdown()
    merged = []
    for b in range(len(starts)):
        run = None
        for p in range(parts):
            part = runs[b * parts + p]
            if part is not None:
                run = part if run is None else _merge(run, *part, kp)
        merged.append(run)
    v = torch.cat([r[0] for r in merged])
    i = torch.cat([r[1] for r in merged])
    return _sorted_desc(v, i)


def _faiss_index(dim: int, dev: torch.device, k: int):
    import faiss

    if dev.type == "cuda" and k <= _FAISS_GPU_MAX_K and faiss_gpu_available():
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = dev.index or 0
        return faiss.GpuIndexFlatIP(res, dim, cfg)
    return faiss.IndexFlatIP(dim)


def _candidates_faiss(q, g, q0, q1, kp, full, cq, cg, dev):
    n_db, dim = g.shape
    qn = _normalize64(_rows64(q, slice(q0, q1)))
    if full:
        index = _faiss_index(dim, dev, n_db)
        for g0 in range(0, n_db, cg):
            index.add(_normalize64(_rows64(g, slice(g0, min(n_db, g0 + cg)))))
        v, i = index.search(qn, n_db)
        return v, i.astype(np.int64, copy=False)
    run = None
    for g0 in range(0, n_db, cg):
        g1 = min(n_db, g0 + cg)
        index = _faiss_index(dim, dev, min(kp, g1 - g0))
        index.add(_normalize64(_rows64(g, slice(g0, g1))))
        v, i = index.search(qn, min(kp, g1 - g0))
        run = _merge(run, torch.from_numpy(v), torch.from_numpy(i.astype(np.int64, copy=False)) + g0, kp)
    return _sorted_desc(*run)


# ------------------------------------------------------------------------------------------------------------
# stage 2: exact order
# ------------------------------------------------------------------------------------------------------------


def _canonical_scores(qn: np.ndarray, g, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """float64 ``<qn[rows], g_hat[items]>`` with ``qn`` the canonical query unit vectors (float32 values) and
    ``g_hat`` the canonical gallery ones; one einsum row per pair, so independent of grouping and chunking."""
    out = np.empty(rows.size)
    for s in range(0, rows.size, _RESCORE_ROWS):
        sl = slice(s, s + _RESCORE_ROWS)
        gg = _unit64(_rows64(g, items[sl]))
        np.copyto(gg, gg.astype(np.float32))  # round to the canonical float32 values
        out[sl] = np.einsum("ij,ij->i", qn[rows[sl]].astype(np.float64), gg)
    return out


def _exact_order(qn, g, approx, cand, k, eps):
    """First ``k`` of each row of ``cand`` (sorted by float32 ``approx``, descending) in canonical order.

    Neighbours whose float32 gap is ``<= eps`` form clusters; members are rescored and re-sorted by
    (-canonical score, gallery id); order between clusters is already exact.
    """
    b, n = cand.shape
    if n == 0 or b == 0:
        return cand[:, :k]
    near = (approx[:, :-1] - approx[:, 1:]) <= eps
    cid = np.zeros((b, n), dtype=np.int64)
    np.cumsum(~near, axis=1, out=cid[:, 1:])
    # columns that can reach the first k after re-sorting: the cluster holding column k-1, and all before it
    width = int((cid <= cid[:, k - 1 : k]).sum(axis=1).max())
    cid, near, cand_w = cid[:, :width], near[:, : width - 1], cand[:, :width]
    member = np.zeros((b, width), dtype=bool)
    member[:, :-1] |= near
    member[:, 1:] |= near
    if not member.any():
        return cand_w[:, :k]
    # only cluster members move: a cluster occupies consecutive columns of its row, so sorting the members by
    # (row, cluster, -canonical score, gallery id) and writing them back into the member cells in row-major
    # order re-sorts every cluster in place (the members are a few % of the candidates)
    r, c = np.nonzero(member)
    items = cand_w[r, c]
    neg = -_canonical_scores(qn, g, r, items)
    order = np.lexsort((items, neg, cid[r, c], r))
    out = cand_w.copy()
    out[r, c] = items[order]
    return out[:, :k]


def _redo_exact(q, g, qn, rows, thresholds, k, eps, cg, dev):
    """Exact top-k for ``rows`` (block-local) whose candidate margin was too small: every item with float32
    score >= (its k-th score) - eps is a candidate."""
    n_db = g.shape[0]
    qt = torch.from_numpy(qn[rows]).to(dev)
    # float32 bound rounded down, so nothing at or above the real threshold is missed
    lo = np.nextafter((thresholds.astype(np.float64) - eps).astype(np.float32), np.float32(-np.inf))
    lo = torch.from_numpy(lo).to(dev)[:, None]
    vals: list[list[np.ndarray]] = [[] for _ in rows]
    ids: list[list[np.ndarray]] = [[] for _ in rows]
    for g0 in range(0, n_db, cg):
        g1 = min(n_db, g0 + cg)
        sim = qt @ _normalize_torch(g, g0, g1, dev).T
        rr, cc = torch.nonzero(sim >= lo, as_tuple=True)
        v = sim[rr, cc].cpu().numpy()
        rr, cc = rr.cpu().numpy(), cc.cpu().numpy() + g0
        for j in np.unique(rr):
            sel = rr == j
            vals[j].append(v[sel])
            ids[j].append(cc[sel])
    out = np.empty((len(rows), k), dtype=np.int64)
    for j, row in enumerate(rows):
        v = np.concatenate(vals[j])
        i = np.concatenate(ids[j])
        order = np.argsort(-v, kind="stable")
        out[j] = _exact_order(qn[row : row + 1], g, v[order][None], i[order][None], k, eps)[0]
    return out


def _exact_rows(q, g, qn, approx, cand, k, eps, full, cg, dev, s: int, n: int) -> np.ndarray:
    """Stage 2 for the block-local query rows ``[s, s + n)``: ``int64[rows, k]`` in canonical order."""
    sl = slice(s, s + n)
    res = _exact_order(qn[sl], g, approx[sl], cand[sl], k, eps)
    if not full:
        a64 = approx[sl].astype(np.float64)
        bad = np.flatnonzero(a64[:, -1] >= a64[:, k - 1] - eps)
        if bad.size:
            res[bad] = _redo_exact(q, g, qn[sl], bad, a64[bad, k - 1], k, eps, cg, dev)
    return res


# ------------------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------------------


def _search(query, gallery, topk, backend, chunk_size, device) -> tuple[np.ndarray, np.ndarray, object]:
    q, g = _validate(query, gallery)
    nq, dim = q.shape
    n_db = g.shape[0]
    if topk is None:
        k = n_db
    else:
        k = int(topk)
        if k < 0:
            raise EvaluationError(f"topk must be >= 0 or None, got {topk}")
        k = min(k, n_db)
    out = np.empty((nq, k), dtype=np.int64)
    if nq == 0 or k == 0:
        return out, np.empty((nq, dim), np.float32), g
    backend, dev = _resolve(backend, device, q, g)
    cq, cg = _chunks(chunk_size, nq, n_db, dim, dev, backend)
    kp = k + max(_MIN_MARGIN, k // 8)
    full = kp >= n_db
    eps = 2.5 * (dim + 8) * 2.0**-24
    # queries per block: full rankings hold [block, n_db] scores and stage-2 arrays (~64 bytes per entry);
    # top-k blocks hold [block, kp] candidates
    block = max(1, _FULL_BLOCK_BYTES // (64 * n_db)) if full else max(cq, 65536)
    candidates = _candidates_faiss if backend == "faiss" else _candidates_torch
    qn_all = np.empty((nq, dim), np.float32)
    with _exact_fp32_matmul(), torch.no_grad():
        for q0 in range(0, nq, block):
            q1 = min(nq, q0 + block)
            qn = _normalize64(_rows64(q, slice(q0, q1)))
            qn_all[q0:q1] = qn
            approx, cand = candidates(q, g, q0, q1, kp, full, cq, cg, dev)
            n_slices = 1 if full else -(-(q1 - q0) // _STAGE2_ROWS)
            threads = min(torch.get_num_threads(), n_slices) if dev.type == "cpu" else 1
            if threads > 1:  # as many slices per thread (NumPy releases the GIL in the heavy calls)
                n_slices = -(-n_slices // threads) * threads
            step = -(-(q1 - q0) // n_slices)
            exact = functools.partial(_exact_rows, q, g, qn, approx, cand, k, eps, full, cg, dev)
            starts = range(0, q1 - q0, step)
            if threads > 1:
                with ThreadPoolExecutor(threads) as pool:
                    slices = list(pool.map(exact, starts, [step] * len(starts)))
            else:
                slices = [exact(s, step) for s in starts]
            out[q0:q1] = np.concatenate(slices) if len(slices) > 1 else slices[0]
    return out, qn_all, g


def rank(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    topk: int | None = None,
    *,
    backend: str = "torch",
    chunk_size: int | tuple[int, int] | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Rank the gallery for every query by cosine similarity.

    Args:
        query: ``float[n_queries, D]`` (NumPy array or torch tensor, any device).
        gallery: ``float[n_db, D]``; need not be normalised (both inputs are L2-normalised here).
        topk: ranking depth ``k``; None = full ranking (``k = n_db``); values above ``n_db`` are clamped.
        backend: ``"torch"`` (matmul + topk), ``"faiss"`` (``IndexFlatIP``; on GPU when faiss-gpu is
            present and ``device`` is CUDA) or ``"auto"`` (faiss-gpu if available, else torch). All give
            identical rankings.
        chunk_size: gallery rows per chunk (int), or ``(query rows, gallery rows)``; None = automatic
            (bounded memory: float32 score blocks of 512 x 8192 on CPU, 8192 x 32768 on CUDA).
        device: torch device for stage 1; None = CUDA if the inputs live there or CUDA is available, else CPU.

    Returns:
        ``int64[n_queries, k]``, rows = queries, best first; ties (equal canonical scores) by lower gallery
        index, i.e. a stable sort on -similarity (module docstring).

    Raises:
        EvaluationError: non-2-D inputs, NaN/inf rows (names the input and the count), dimension mismatch,
        empty gallery, unknown backend.
    """
    return _search(query, gallery, topk, backend, chunk_size, device)[0]


def similarity_topk(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    topk: int | None = None,
    *,
    backend: str = "torch",
    chunk_size: int | tuple[int, int] | None = None,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`rank`, also returning the scores: ``(float64[n_queries, k] canonical cosine similarities,
    int64[n_queries, k] gallery ids)``; scores are non-increasing along each row."""
    ids, qn, g = _search(query, gallery, topk, backend, chunk_size, device)
    nq, k = ids.shape
    if ids.size == 0:
        return np.empty((nq, k)), ids
    rows = np.repeat(np.arange(nq), k)
    scores = _canonical_scores(qn, g, rows, ids.ravel()).reshape(nq, k)
    return scores, ids
