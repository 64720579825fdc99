"""Pure metric functions (NumPy only: no torch, no I/O, no logging). Specification: ``docs/evaluation.md``.

Orientation: every ``ranks`` argument is ``int64[n_queries, k]`` -- rows are queries, best first, values are
gallery indices; ``k`` may be smaller than the gallery (truncated rankings). The revisited reference
(revisitop ``compute_map``) takes ``(n_db, n_queries)``; nothing here does.

Contents
* Revisited ROxford5k / RParis6k (§3): :func:`revisited_gnd`, :func:`revisited_map`,
  :func:`revisited_top1_correct`. Vectorised over queries (chunks bound the memory); values agree with the
  reference loop to floating-point rounding (the per-query AP sums its terms in the reference order).
* GLDv2 retrieval mAP@100 (§4): :func:`gldv2_map_at_k`, per query :func:`gldv2_ap_at_k`.
* Compatibility (§5): :func:`compatibility_scores` (AdvBCT P_up / P_comp / P_beta),
  :func:`compatibility_criterion`, :func:`update_gain`, :func:`multi_step_metrics` (AC / AA).
* Backfilling (§6): :func:`backfill_auc`, :func:`relative_auc_gain`, :func:`negative_flip_rate`.

Bare § numbers in this module refer to ``docs/evaluation.md``.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bctbench.errors import EvaluationError

__all__ = [
    "REVISITED_PROTOCOLS",
    "backfill_auc",
    "compatibility_criterion",
    "compatibility_scores",
    "gldv2_ap_at_k",
    "gldv2_map_at_k",
    "multi_step_metrics",
    "negative_flip_rate",
    "relative_auc_gain",
    "revisited_gnd",
    "revisited_map",
    "revisited_top1_correct",
    "update_gain",
]

REVISITED_PROTOCOLS = ("easy", "medium", "hard")

# Work per chunk of queries in revisited_map: bytes of the lookup tables plus gather buffers.
_CHUNK_BYTES = 1 << 25
# Rankings at least this long are gathered query by query (no offset array; the row's table stays in cache).
_PER_ROW_TAKE = 1 << 10
# Rankings with at least this many entries in all are scanned by several threads (memory-bound gather).
_THREADED_ENTRIES = 1 << 22
_MAX_THREADS = 8
# Lookup tables of up to this many cells (two tables of 1 byte per cell) stay allocated per thread between
# calls of revisited_map; larger ones live for one call.
_KEPT_TABLE_CELLS = 1 << 22
_TABLES = threading.local()


# ------------------------------------------------------------------------------------------------------------
# Revisited ROxford5k / RParis6k
# ------------------------------------------------------------------------------------------------------------


_INT64 = np.dtype(np.int64)


def _index_array(values: object) -> np.ndarray:
    if type(values) is np.ndarray and values.dtype is _INT64 and values.ndim == 1:
        return values
    arr = np.asarray(values if values is not None else (), dtype=np.int64)
    return arr.reshape(-1)


def revisited_gnd(gnd: Sequence[Mapping], protocol: str) -> list[dict[str, np.ndarray]]:
    """Per-query positives and ignored items of one revisited protocol (``docs/evaluation.md`` §3.1).

    ``gnd[i]`` holds ``easy``, ``hard`` and ``junk`` (0-based gallery indices; a missing key is empty).
    Returns ``[{"ok": int64[n_ok], "junk": int64[n_junk]}, ...]``, one per query:

    ============  =================  ===============
    protocol      ok                 junk
    ============  =================  ===============
    ``easy``      easy               junk ∪ hard
    ``medium``    easy ∪ hard        junk
    ``hard``      hard               junk ∪ easy
    ============  =================  ===============

    Sets are concatenated as in the reference (no de-duplication), so ``len(ok)`` is the reference ``nres``.
    """
    p = str(protocol).lower()
    if p not in REVISITED_PROTOCOLS:
        raise EvaluationError(
            f"unknown revisited protocol {protocol!r}; expected one of {REVISITED_PROTOCOLS}"
        )
    out = []
    for g in gnd:
        easy, hard, junk = (_index_array(g.get(key)) for key in ("easy", "hard", "junk"))
        if p == "easy":
            ok, ign = easy, np.concatenate([junk, hard])
        elif p == "medium":
            ok, ign = np.concatenate([easy, hard]), junk
        else:
            ok, ign = hard, np.concatenate([junk, easy])
        out.append({"ok": ok, "junk": ign})
    return out


def _as_ranks(ranks: object) -> np.ndarray:
    arr = np.asarray(ranks)
    if arr.ndim != 2:
        raise EvaluationError(f"ranks must be int64[n_queries, k], got shape {tuple(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise EvaluationError(f"ranks must hold integer gallery indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _split_gnd(gnd: Sequence[Mapping], n_queries: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(gnd) != n_queries:
        raise EvaluationError(f"ranks have {n_queries} rows (queries) but gnd has {len(gnd)} entries")
    oks = [_index_array(g["ok"]) for g in gnd]
    junks = [_index_array(g.get("junk")) for g in gnd]
    return oks, junks


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(_MAX_THREADS, cores))


def _special_entries(
    ranks: np.ndarray, oks: list[np.ndarray], junks: list[np.ndarray], threads: int | None = None
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield, per chunk of queries ``[q0, q1)`` in order, every ranking entry that is a positive or junk.

    Returns ``(q0, q1, row, pos, is_ok, is_junk)``: ``row`` (chunk-local query) and ``pos`` (0-based position
    in the ranking) sorted row-major, i.e. by position within each row. An item in both ok and junk has both
    flags (the reference then counts it as a positive *and* as junk for later positives). Negative indices
    never match (as with ``np.isin``).

    Cost: one gather of every ranking entry from a per-chunk boolean lookup table (``np.take``; per query
    for long rankings, so the gathered row stays in cache, else one call per chunk) and one
    ``flatnonzero``; everything after that is vectorised over the chunk and proportional to the number of
    hits. The gather uses ``mode="clip"`` (about 4x cheaper than ``"wrap"``, whose modulo dominates): ids
    above every gnd id clip to the last column, which is always False; negative ids, and in the one-call
    path ids that spill into a neighbouring query's cells, may hit a flagged cell and are verified against
    the actual id and dropped. The scan is bound by memory bandwidth (8 bytes read per entry); chunks are
    independent and NumPy releases the GIL in ``take``/``nonzero``, so with ``threads > 1`` (default: the
    usable cores, at most 8) chunks are scanned concurrently. Results do not depend on ``threads``.
    """
    nq, k = ranks.shape
    threads = _default_threads() if threads is None else max(1, int(threads))
    sizes_ok = np.fromiter((a.size for a in oks), np.int64, nq)
    sizes_junk = np.fromiter((a.size for a in junks), np.int64, nq)
    all_ok = np.concatenate(oks) if sizes_ok.sum() else np.empty(0, np.int64)
    all_junk = np.concatenate(junks) if sizes_junk.sum() else np.empty(0, np.int64)
    max_item = max(int(all_ok.max(initial=-1)), int(all_junk.max(initial=-1)))
    width = max(max_item, 0) + 2  # the last column is always False
    per_row = k >= _PER_ROW_TAKE
    chunk = _CHUNK_BYTES // (2 * width + (1 if per_row else 9) * max(k, 1))
    if threads > 1 and nq * max(k, 1) >= _THREADED_ENTRIES:
        chunk = min(chunk, -(-nq // threads))  # at least one chunk per thread
    else:
        threads = 1
    chunk = max(1, min(nq, chunk))
    starts_ok = np.concatenate([[0], np.cumsum(sizes_ok)])
    starts_junk = np.concatenate([[0], np.cumsum(sizes_junk)])

    # lookup tables: at most this many cells are kept per thread between calls, larger ones for one call
    local = _TABLES if chunk * width <= _KEPT_TABLE_CELLS else threading.local()

    def tables(size: int) -> tuple[np.ndarray, np.ndarray]:
        """This thread's all-zero lookup tables of ``size`` cells (``scan`` resets the cells it sets), reused
        across chunks and calls: fresh ``np.zeros`` tables are page-faulted in every time they are touched."""
        if getattr(local, "size", -1) < size:
            local.flags = np.zeros(size, np.uint8)  # [c, width] flattened: bit 1 = ok, bit 2 = junk
            local.special = np.zeros(size, bool)  # flags != 0 (bool nonzero is NumPy's fast path)
            local.size = size
        return local.flags[:size], local.special[:size]

    def scan(q0: int):
        q1 = min(nq, q0 + chunk)
        c = q1 - q0
        flags, special = tables(c * width)
        touched = []
        try:
            for items, sizes, starts, bit in (
                (all_ok, sizes_ok, starts_ok, 1),
                (all_junk, sizes_junk, starts_junk, 2),
            ):
                items = items[starts[q0] : starts[q1]]
                cells = np.repeat(np.arange(0, c * width, width), sizes[q0:q1]) + items
                cells = cells[items >= 0]
                touched.append(cells)
                special[cells] = True
                if bit == 1:
                    flags[cells] = 1
                else:
                    flags[cells] += 2  # buffered: a repeated junk id still adds 2 once
            block = ranks[q0:q1]
            if per_row:
                gathered = np.empty((c, k), dtype=bool)
                for i in range(c):
                    special[i * width : (i + 1) * width].take(block[i], out=gathered[i], mode="clip")
                hits = np.flatnonzero(gathered)
            else:
                flat = block + np.arange(0, c * width, width, dtype=np.int64)[:, None]
                hits = np.flatnonzero(special.take(flat, mode="clip"))
            # hits are sorted: each row's first hit by one searchsorted (cheaper than divmod over all hits)
            bounds = np.searchsorted(hits, np.arange(c + 1) * k) if k else np.zeros(c + 1, np.int64)
            row = np.repeat(np.arange(c), np.diff(bounds))
            pos = hits - row * k
            item = block.ravel()[hits]
            valid = (item >= 0) & (item < width)
            if not valid.all():
                row, pos, item = row[valid], pos[valid], item[valid]
            f = flags[row * width + item]
        finally:  # back to all-zero tables for the next chunk or call, also after an error
            for cells in touched:
                special[cells] = False
                flags[cells] = 0
        return q0, q1, row, pos, (f & 1).astype(bool), (f & 2).astype(bool)

    chunk_starts = range(0, nq, chunk)
    if threads == 1:
        yield from map(scan, chunk_starts)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        # at most 2 chunks per thread in flight: bounded memory, results consumed in order
        pending: deque = deque()
        for q0 in chunk_starts:
            pending.append(pool.submit(scan, q0))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _exclusive_row_cumsum(row: np.ndarray, mask: np.ndarray, n_rows: int) -> np.ndarray:
    """For entries sorted by ``row``: number of earlier entries of the same row with ``mask`` set."""
    incl = np.cumsum(mask, dtype=np.int64)
    excl = incl - mask
    counts = np.bincount(row, minlength=n_rows)
    starts = np.cumsum(counts) - counts
    # excl at the first entry of each row = number of masked entries in all earlier rows
    base = np.concatenate([[0], incl])[starts]
    return excl - base[row]


def revisited_map(
    ranks: np.ndarray,
    gnd: Sequence[Mapping],
    kappas: Sequence[int] = (1, 5, 10),
    *,
    threads: int | None = None,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Revisited mAP, per-query AP and mP@k, exactly as revisitop ``compute_map``
    (``docs/evaluation.md`` §3.3).

    Args:
        ranks: ``int64[n_queries, k]`` gallery indices, rows = queries, best first; ``k`` may be smaller
            than the gallery (truncated ranking: missing positives contribute 0).
        gnd: per query a mapping with ``ok`` (positives) and optionally ``junk`` (ignored) gallery indices,
            e.g. from :func:`revisited_gnd`.
        kappas: cut-offs of mP@k.
        threads: threads scanning large rankings (default: usable cores, at most 8; 1 = single-threaded).
            The values do not depend on it.

    Returns:
        ``(mAP, aps float[nq], mP_at_k float[len(kappas)], per_query_p_at_k float[nq, len(kappas)])``.
        Junk items are removed from the ranking before scoring; AP is the trapezoidal rule with
        ``n_res = len(ok)``; queries with empty ``ok`` get NaN and are excluded from the means (mAP and mP@k
        are NaN when every query is empty). P@k uses the reference cap ``k_q = min(last positive's 1-based
        cleaned position, k)``; a query with no retrieved positive has AP = P@k = 0.
    """
    ranks = _as_ranks(ranks)
    nq = ranks.shape[0]
    kap = np.asarray(kappas, dtype=np.int64).reshape(-1)
    if kap.size and kap.min() < 1:
        raise EvaluationError(f"kappas must be >= 1, got {list(kap)}")
    oks, junks = _split_gnd(gnd, nq)
    n_res = np.fromiter((a.size for a in oks), np.int64, nq)
    empty = n_res == 0
    aps = np.zeros(nq)
    prs = np.zeros((nq, kap.size))
    for q0, q1, row, pos, is_ok, is_junk in _special_entries(ranks, oks, junks, threads):
        c = q1 - q0
        ok_idx = np.flatnonzero(is_ok)
        qrow = row[ok_idx]
        n_found = np.bincount(qrow, minlength=c)
        ok_start = np.cumsum(n_found) - n_found  # first positive of each row among the positives
        # junk entries before each positive in its row (entries are sorted by row, then position):
        # every entry is ok and/or junk, so entries before e = ok + junk - both before e; rows likewise
        row_first = np.searchsorted(row, np.arange(c))  # index of each row's first entry
        junk_before = (ok_idx - np.arange(qrow.size)) - (row_first - ok_start)[qrow]
        both = is_ok & is_junk
        if both.any():  # an item in ok and junk: rare (the reference counts it as both)
            both_before = np.concatenate([[0], np.cumsum(both)])
            junk_before += both_before[ok_idx] - both_before[row_first][qrow]
        rho = pos[ok_idx] - junk_before  # 0-based position after junk removal
        # index of each positive among the retrieved positives of its query
        j = (np.arange(qrow.size) - ok_start[qrow]).astype(np.float64)
        rho_f = rho.astype(np.float64)
        p0 = np.divide(j, rho_f, out=np.ones_like(j), where=rho != 0)
        p1 = (j + 1.0) / (rho_f + 1.0)
        recall_step = 1.0 / np.maximum(n_res[q0:q1], 1)
        # bincount adds weights in input order: the reference's sequential per-query sum
        aps[q0:q1] = np.bincount(qrow, weights=(p0 + p1) * recall_step[qrow] / 2.0, minlength=c)
        if kap.size:
            found = n_found > 0
            one_based = rho + 1
            p_max = np.zeros(c, np.int64)
            p_max[found] = one_based[(ok_start + n_found - 1)[found]]
            # (row, cleaned position) as one sorted key: positives at or before k_q by one searchsorted
            span = int(one_based.max(initial=0)) + 1
            key = qrow * span + one_based
            for a, kappa in enumerate(kap):
                kq = np.minimum(p_max, kappa)
                hits = np.searchsorted(key, np.arange(c) * span + kq, side="right") - ok_start
                prs[q0:q1, a] = np.divide(hits, kq, out=np.zeros(c), where=found)
    aps[empty] = np.nan
    prs[empty] = np.nan
    n_valid = int(nq - empty.sum())
    if n_valid == 0:
        return float("nan"), aps, np.full(kap.size, np.nan), prs
    m_ap = float(aps[~empty].sum() / n_valid)
    mp = prs[~empty].sum(axis=0) / n_valid
    return m_ap, aps, mp, prs


def revisited_top1_correct(ranks: np.ndarray, gnd: Sequence[Mapping]) -> np.ndarray:
    """``float[n_queries]``: 1.0 if the first non-junk item of the ranking is in ``ok``, else 0.0 (also when
    the truncated ranking holds junk only); NaN for queries with empty ``ok`` (``docs/evaluation.md`` §6.4).

    Junk removal follows :func:`revisited_map` (an item in both ok and junk counts as a positive).
    """
    ranks = _as_ranks(ranks)
    nq, k = ranks.shape
    oks, junks = _split_gnd(gnd, nq)
    # the first non-junk item lies within the first max|junk| + 1 positions
    width = min(k, 1 + max((j.size for j in junks), default=0))
    head = ranks[:, :width]
    out = np.zeros(nq)
    for q0, q1, row, pos, is_ok, is_junk in _special_entries(head, oks, junks):
        c = q1 - q0
        junk_only = is_junk & ~is_ok
        jrow, jpos = row[junk_only], pos[junk_only]
        idx_in_row = _exclusive_row_cumsum(jrow, np.ones(jrow.size, bool), c)
        # junk-only entries at positions 0, 1, 2, ... form the leading run; the first non-junk follows it
        first = np.bincount(jrow[jpos == idx_in_row], minlength=c)
        positive_at = np.zeros((c, width + 1), bool)
        positive_at[row[is_ok], pos[is_ok]] = True
        out[q0:q1] = positive_at[np.arange(c), first]  # column `width` (nothing left) is False
    sizes = np.fromiter((a.size for a in oks), np.int64, nq)
    out[sizes == 0] = np.nan
    return out


# ------------------------------------------------------------------------------------------------------------
# GLDv2 retrieval mAP@100
# ------------------------------------------------------------------------------------------------------------


def _gldv2_ap_loop(prediction: Sequence, relevant: set, k: int, n_relevant: int) -> float:
    """Official DELF ``MeanAveragePrecision`` for one query (used for ragged predictions)."""
    n_expected = min(n_relevant, k)
    n_correct = 0
    precision = 0.0
    seen: set = set()
    for i in range(min(len(prediction), k)):
        item = prediction[i]
        if item not in seen:
            if item in relevant:
                n_correct += 1
                precision += n_correct / (i + 1)
            seen.add(item)
    return precision / n_expected


def _gldv2_ap_array(pred: np.ndarray, sol: list[np.ndarray], n_expected: np.ndarray, span: int) -> np.ndarray:
    """Vectorised :func:`gldv2_ap_at_k`: ``float64[nq]`` for ``int64[nq, <=k]`` predictions (ids < span)."""
    nq, kk = pred.shape
    # first occurrence of each id within its row
    order = np.argsort(pred, axis=1, kind="stable")
    sorted_ = np.take_along_axis(pred, order, axis=1)
    repeated = np.zeros_like(sorted_, dtype=bool)
    repeated[:, 1:] = sorted_[:, 1:] == sorted_[:, :-1]
    first = np.ones_like(pred, dtype=bool)
    np.put_along_axis(first, order, ~repeated, axis=1)
    # relevance through row-keyed ids
    pred_keys = np.arange(nq, dtype=np.int64)[:, None] * span + np.maximum(pred, 0)
    sol_keys = np.concatenate([i * span + s for i, s in enumerate(sol)])
    hit = np.isin(pred_keys, sol_keys) & (pred >= 0) & first
    n_correct = np.cumsum(hit, axis=1)
    prec = np.where(hit, n_correct / np.arange(1, kk + 1), 0.0)
    return prec.sum(axis=1) / n_expected


def _gldv2_ap_and_map(
    predictions: np.ndarray | Sequence[Sequence[int]], solution: Sequence[Sequence[int] | set], k: int
) -> tuple[np.ndarray, float]:
    """``(ap float64[n_queries], mAP)`` of :func:`gldv2_ap_at_k` / :func:`gldv2_map_at_k` in one pass.

    mAP is the mean of ``ap``, reduced as before per path: ``np.sum(ap) / nq`` for 2-D array input, a
    sequential sum for ragged input (the official loop), so values are bit-for-bit unchanged.
    """
    if k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    nq = len(solution)
    if len(predictions) != nq:
        raise EvaluationError(f"{len(predictions)} prediction rows but {nq} solution entries")
    sizes = np.fromiter((len(s) for s in solution), np.int64, nq)  # the official code divides by len(list)
    sol = [np.unique(_index_array(list(s) if isinstance(s, set | frozenset) else s)) for s in solution]
    for i, s in enumerate(sol):
        if s.size == 0:
            raise EvaluationError(f"query {i} has an empty solution set; filter unscored queries first")
    if nq == 0:
        return np.zeros(0, np.float64), float("nan")
    if isinstance(predictions, np.ndarray) and predictions.ndim == 2 and predictions.size:
        pred = _as_ranks(predictions)[:, :k]
        span = int(max(pred.max(), max(int(s.max()) for s in sol))) + 1
        if span * nq < 2**62:  # row-keyed ids fit in int64
            aps = _gldv2_ap_array(pred, sol, np.minimum(sizes, k), span)
            return aps, float(np.sum(aps) / nq)
    aps = np.fromiter(
        (
            _gldv2_ap_loop(np.asarray(p, dtype=np.int64).reshape(-1).tolist(), set(s.tolist()), k, size)
            for p, s, size in zip(predictions, sol, sizes.tolist(), strict=True)
        ),
        np.float64,
        nq,
    )
    return aps, float(np.add.accumulate(aps)[-1] / nq)  # accumulate: the loop's sequential sum


def gldv2_ap_at_k(
    predictions: np.ndarray | Sequence[Sequence[int]], solution: Sequence[Sequence[int] | set], k: int = 100
) -> np.ndarray:
    """Per-query GLDv2 retrieval AP@k, the official DELF definition (``docs/evaluation.md`` §4.2).

    Args:
        predictions: ``int64[n_queries, >=k]`` (rows = queries, best first) or a list of per-query
            sequences (ragged, possibly empty). Only the first ``k`` predictions count; duplicates are
            skipped but keep their position; negative ids (faiss padding) never match.
        solution: per query the relevant gallery ids (non-empty).
        k: cut-off (100 for GLDv2).

    Returns:
        ``float64[n_queries]``, per query
        ``(1 / min(|G_q|, k)) * sum_i [first-occurrence hit at i] n_correct(i) / (i+1)`` (``|G_q|`` =
        ``len(solution[q])``); a query with no predictions scores 0. Its mean is :func:`gldv2_map_at_k`.
    """
    return _gldv2_ap_and_map(predictions, solution, k)[0]


def gldv2_map_at_k(
    predictions: np.ndarray | Sequence[Sequence[int]], solution: Sequence[Sequence[int] | set], k: int = 100
) -> float:
    """GLDv2 retrieval mAP@k, the official DELF definition: the mean over all queries of
    :func:`gldv2_ap_at_k` (same arguments); NaN when there are no queries."""
    return _gldv2_ap_and_map(predictions, solution, k)[1]


# ------------------------------------------------------------------------------------------------------------
# Compatibility metrics
# ------------------------------------------------------------------------------------------------------------


def _sigmoid(x: float) -> float:
    if math.isnan(x):
        return float("nan")
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when den == 0 or either is NaN (the guard of §5.2 / §6.3)."""
    if den == 0 or math.isnan(num) or math.isnan(den):
        return float("nan")
    return num / den


def _same_keys(**maps: Mapping[str, float] | None) -> list[str]:
    given = {name: m for name, m in maps.items() if m is not None}
    names = list(given)
    keys = list(given[names[0]])
    for name in names[1:]:
        if set(given[name]) != set(keys):
            raise EvaluationError(
                f"eval sets differ: {names[0]} has {sorted(keys)}, {name} has {sorted(given[name])}"
            )
    if not keys:
        raise EvaluationError("no eval sets given")
    return keys


def compatibility_scores(
    self_new: Mapping[str, float] | None,
    cross: Mapping[str, float],
    old_self: Mapping[str, float],
    paragon_self: Mapping[str, float],
    beta: float = 1.0,
) -> dict:
    """AdvBCT P_up, P_comp and P_beta (``docs/evaluation.md`` §5.2), from per-eval-set mAPs.

    Each argument maps eval-set name -> mAP (same keys; fractions or percent: the ratios are scale-free):
    ``self_new`` = M(new -> new), ``cross`` = M(new -> old), ``old_self`` = M(old -> old), ``paragon_self`` =
    M(phi* -> phi*). For the paragon's own row pass ``self_new=None``: P_up and P_beta are then NaN.

    Per eval set d: ``u_d = sigmoid((self_new - paragon) / paragon)``,
    ``c_d = sigmoid((cross - old) / (paragon - old))`` (NaN if paragon == old),
    ``F_d = (1 + beta^2) u_d c_d / (beta^2 u_d + c_d)`` (u in the precision position, c in the recall
    position: beta > 1 weights compatibility). Returns ``{"P_up", "P_comp", "P_beta": 100 * mean over d,
    "beta", "u": {d: u_d}, "c": {d: c_d}, "f": {d: F_d}}``; a NaN in any eval set makes the mean NaN.
    """
    keys = _same_keys(cross=cross, old_self=old_self, paragon_self=paragon_self, self_new=self_new)
    b2 = float(beta) ** 2
    u: dict[str, float] = {}
    c: dict[str, float] = {}
    f: dict[str, float] = {}
    for d in keys:
        par, old = float(paragon_self[d]), float(old_self[d])
        c[d] = _sigmoid(_ratio(float(cross[d]) - old, par - old))
        u[d] = float("nan") if self_new is None else _sigmoid(_ratio(float(self_new[d]) - par, par))
        den = b2 * u[d] + c[d]
        f[d] = float("nan") if math.isnan(den) or den == 0 else (1 + b2) * u[d] * c[d] / den

    def mean100(values: dict[str, float]) -> float:
        return 100.0 * float(np.mean(list(values.values())))

    return {
        "P_up": mean100(u),
        "P_comp": mean100(c),
        "P_beta": mean100(f),
        "beta": float(beta),
        "u": u,
        "c": c,
        "f": f,
    }


def p_scores(self_new, cross, old_self, paragon_self, beta: float = 1.0) -> dict[str, np.ndarray]:
    """Vectorised :func:`compatibility_scores`: P_up, P_comp and P_beta over many replicates at once.

    Every argument is ``float[E, ...]`` (eval sets first, any trailing shape, e.g. ``[E, 1 + B]`` for a
    point value and ``B`` bootstrap replicates); ``self_new`` may be None (the paragon's own row: P_up and
    P_beta NaN). Returns ``{"P_up", "P_comp", "P_beta"}``, each ``float[...]``: 100 × the mean over eval sets
    of ``u_d``, ``c_d`` and ``F_d`` as defined there (NaN guards included).
    """
    cross = np.asarray(cross, dtype=np.float64)
    old = np.asarray(old_self, dtype=np.float64)
    par = np.asarray(paragon_self, dtype=np.float64)
    b2 = float(beta) ** 2

    def sig_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = np.where(den == 0, np.nan, num / np.where(den == 0, 1.0, den))
            return 0.5 * (1.0 + np.tanh(0.5 * x))  # the logistic function, stable for large |x|

    c = sig_ratio(cross - old, par - old)
    if self_new is None:
        u = np.full_like(c, np.nan)
    else:
        u = sig_ratio(np.asarray(self_new, dtype=np.float64) - par, par)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = b2 * u + c
        f = np.where(den == 0, np.nan, (1 + b2) * u * c / np.where(den == 0, 1.0, den))
    return {
        "P_up": 100.0 * u.mean(axis=0),
        "P_comp": 100.0 * c.mean(axis=0),
        "P_beta": 100.0 * f.mean(axis=0),
    }


def compatibility_criterion(
    cross: Mapping[str, float], self_new: Mapping[str, float], old_self: Mapping[str, float]
) -> dict:
    """BCT empirical compatibility criterion (``docs/evaluation.md`` §5.1), per eval set and overall.

    (a) ``cross > old_self`` (M(new -> old) beats M(old -> old)); (b) ``self_new > old_self``. Strict
    inequalities; NaN compares False. Returns ``{"per_set": {d: {"a", "b", "a_and_b"}}, "a", "b",
    "a_and_b"}`` where the top-level flags are the conjunctions over all eval sets.
    """
    keys = _same_keys(cross=cross, self_new=self_new, old_self=old_self)
    per_set = {}
    for d in keys:
        a = bool(float(cross[d]) > float(old_self[d]))
        b = bool(float(self_new[d]) > float(old_self[d]))
        per_set[d] = {"a": a, "b": b, "a_and_b": a and b}
    return {
        "per_set": per_set,
        "a": all(v["a"] for v in per_set.values()),
        "b": all(v["b"] for v in per_set.values()),
        "a_and_b": all(v["a_and_b"] for v in per_set.values()),
    }


def update_gain(cross, old_self, paragon_self):
    """Update gain ``(cross - old_self) / (paragon_self - old_self)`` (``docs/evaluation.md`` §5.1).

    Scalars give a float; mappings (eval set -> mAP, same keys) give ``{d: gain}``. NaN when paragon == old.
    """
    if isinstance(cross, Mapping):
        keys = _same_keys(cross=cross, old_self=old_self, paragon_self=paragon_self)
        return {d: update_gain(cross[d], old_self[d], paragon_self[d]) for d in keys}
    return _ratio(float(cross) - float(old_self), float(paragon_self) - float(old_self))


def multi_step_metrics(C) -> dict[str, float]:
    """Average compatibility and accuracy of a sequence of T models (``docs/evaluation.md`` §5.3).

    ``C`` is ``float[T, T]`` with ``C[i][j] = M(phi_i -> phi_j)`` for ``i >= j`` (upper triangle ignored).
    ``AC = #{i > j : C[i][j] > C[j][j]} / (T (T - 1) / 2)`` (NaN for T = 1); ``AA`` = mean of the entries
    ``i >= j``. Returns ``{"AC": .., "AA": ..}``.
    """
    m = np.asarray(C, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise EvaluationError(f"C must be a non-empty square T x T matrix, got shape {m.shape}")
    t = m.shape[0]
    i, j = np.tril_indices(t, k=-1)
    ac = float(np.mean(m[i, j] > np.diag(m)[j])) if i.size else float("nan")
    li, lj = np.tril_indices(t)
    return {"AC": ac, "AA": float(np.mean(m[li, lj]))}


# ------------------------------------------------------------------------------------------------------------
# Backfilling
# ------------------------------------------------------------------------------------------------------------


def backfill_auc(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under a backfilling curve (``docs/evaluation.md`` §6.3), no normalisation.

    ``fractions``: strictly increasing backfilled fractions in [0, 1] (default grid 0, 0.1, ..., 1);
    ``values``: the metric at each fraction. ``AUC = sum_i (t_{i+1} - t_i) (M_i + M_{i+1}) / 2``.
    """
    t = np.asarray(fractions, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if t.size != v.size or t.size < 2:
        raise EvaluationError(
            f"need >= 2 points with one value each, got {t.size} fractions and {v.size} values"
        )
    if np.any(np.diff(t) <= 0) or t[0] < 0 or t[-1] > 1:
        raise EvaluationError(f"fractions must be strictly increasing within [0, 1], got {t.tolist()}")
    return float(np.sum(np.diff(t) * (v[1:] + v[:-1]) / 2.0))


def relative_auc_gain(auc: float, old_self: float, paragon: float) -> float:
    """``(AUC - M(old -> old)) / (M(phi* -> phi*) - M(old -> old))`` (§6.3); NaN when paragon == old."""
    return _ratio(float(auc) - float(old_self), float(paragon) - float(old_self))


def negative_flip_rate(correct_old, correct_new) -> float:
    """Share of queries correct before and wrong after (``docs/evaluation.md`` §6.4).

    ``correct_old``, ``correct_new``: ``float[n]`` of 1.0 / 0.0 (or bool), NaN for queries without positives;
    queries that are NaN in either input are ignored (neither numerator nor denominator). NaN if none is left.
    """
    old = np.asarray(correct_old, dtype=np.float64).reshape(-1)
    new = np.asarray(correct_new, dtype=np.float64).reshape(-1)
    if old.shape != new.shape:
        raise EvaluationError(f"correct_old has {old.size} queries but correct_new has {new.size}")
    valid = ~(np.isnan(old) | np.isnan(new))
    if not valid.any():
        return float("nan")
    flips = (old[valid] > 0.5) & (new[valid] <= 0.5)
    return float(flips.mean())
