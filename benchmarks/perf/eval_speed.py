"""Evaluation speed, side by side in one process: ``python benchmarks/perf/eval_speed.py [--quick]``.

(a) Revisited mAP: a straightforward per-query NumPy port of revisitop ``compute_map``/``compute_ap`` (defined
    below, not part of the library) against ``bctbench.evaluation.metrics.revisited_map``, on random
    rankings with random easy/hard/junk sets of realistic sizes; times, speed-up, max abs difference. The
    port takes ``(n_db, n_queries)`` ranks like the reference; it is timed on the reference's native layout
    (C-contiguous ``(n_db, nq)``, as ``np.argsort(-sim, axis=0)`` in revisitop's example produces, so each
    query column is strided) and on a column-contiguous copy (the port's best case). All variants take turns
    in every round (the library a few calls per round, the port one); each keeps its best time.
(b) Search: the raw float32 matmul rate for the block shape that ``rank`` uses (every block written into one
    reused buffer, nothing else done; the faster of torch's multi-threaded matmul and one single-threaded
    matmul per Python thread, both timed every round), then ``rank(..., topk=100)`` (torch and faiss
    backends) and the share of the matmul rate it reaches.
(c) Peak memory of ``rank(topk=100)`` for 10k x 1M at dim 256, in a fresh subprocess: the peak resident set
    ``VmHWM`` of ``/proc/self/status`` (Python + torch runtime + the float32 inputs + search working memory),
    and the peak during the search alone minus the resident set before it (the high-water mark is reset
    through ``/proc/self/clear_refs`` after the inputs are built). ``getrusage().ru_maxrss`` is printed
    too but is not used: on Linux it carries the parent's resident set over ``fork``/``exec``.

``--quick`` scales everything down (seconds). Full sizes take a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bctbench.evaluation import metrics, search  # noqa: E402

# ------------------------------------------------------------------------------------------------------------
# (a) revisited mAP: reference-style per-query port (revisitop python/evaluate.py algorithm, np.isin for in1d)
# ------------------------------------------------------------------------------------------------------------


def port_compute_ap(ranks, nres):
    ap = 0.0
    recall_step = 1.0 / nres
    for j in np.arange(len(ranks)):
        rank = ranks[j]
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def port_compute_map(ranks, gnd, kappas=(1, 5, 10)):
    """ranks: (n_db, n_queries) as in the reference."""
    m_ap = 0.0
    nq = len(gnd)
    aps = np.zeros(nq)
    pr = np.zeros(len(kappas))
    prs = np.zeros((nq, len(kappas)))
    nempty = 0
    for i in np.arange(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            aps[i] = float("nan")
            prs[i, :] = float("nan")
            nempty += 1
            continue
        qgndj = np.array(gnd[i].get("junk", []))
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k = 0
        ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap = port_compute_ap(pos, len(qgnd))
        m_ap = m_ap + ap
        aps[i] = ap
        pos += 1
        for j in np.arange(len(kappas)):
            if len(pos) == 0:  # truncated ranking without positives (the reference would fail on max([]))
                prs[i, j] = 0.0
                continue
            kq = min(max(pos), kappas[j])
            prs[i, j] = (pos <= kq).sum() / kq
        pr = pr + prs[i, :]
    return m_ap / (nq - nempty), aps, pr / (nq - nempty), prs


def make_revisited(nq, n_db, seed=0):
    """Random full rankings (rows = queries), gnd with ROxford-like set sizes; positives ranked high-ish."""
    rng = np.random.default_rng(seed)
    gnd = []
    ranks = np.empty((nq, n_db), dtype=np.int64)
    for i in range(nq):
        n_easy, n_hard, n_junk = rng.integers(5, 60), rng.integers(5, 100), rng.integers(10, 150)
        items = rng.choice(n_db, n_easy + n_hard + n_junk, replace=False)
        gnd.append(
            {
                "easy": items[:n_easy],
                "hard": items[n_easy : n_easy + n_hard],
                "junk": items[n_easy + n_hard :],
            }
        )
        score = rng.random(n_db)
        pos = items[: n_easy + n_hard]
        score[pos] += rng.random(pos.size) * rng.uniform(0.2, 1.0)
        ranks[i] = np.argsort(-score, kind="stable")
    return ranks, gnd


def max_abs_diff(a, b):
    d = [abs(a[0] - b[0])]
    for x, y in zip(a[1:], b[1:], strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert np.array_equal(np.isnan(x), np.isnan(y))
        d.append(float(np.max(np.abs(np.nan_to_num(x) - np.nan_to_num(y)), initial=0.0)))
    return max(d)


def best_of(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def interleaved_best(runs, rounds):
    """Best time and last output of each ``(fn, calls per round)``, the functions taking turns in every round
    (the VM's speed drifts for seconds at a time; turns let both sides of a ratio see the same drift)."""
    best = [(float("inf"), None)] * len(runs)
    for _ in range(rounds):
        for j, (fn, calls) in enumerate(runs):
            t, out = best_of(fn, calls)
            best[j] = (min(best[j][0], t), out)
    return best


def port_runner(ranks_db_nq, gnd):
    return lambda: port_compute_map(ranks_db_nq, gnd)


def bench_revisited(sizes):
    print("\n(a) revisited mAP (medium protocol, kappas 1/5/10): per-query reference port vs library")
    threads = metrics._default_threads()
    print(
        f"  library = revisited_map with its default threads ({threads} here; rankings of at least "
        f"{metrics._THREADED_ENTRIES} entries are scanned by several threads); '1 thread' = threads=1"
    )
    print(
        f"{'nq x n_db':>14} {'library':>10} {'1 thread':>10} {'port native':>12} {'speed-up':>9} "
        f"{'(1 thread)':>10} {'port col-contig':>16} {'speed-up':>9} {'max |diff|':>11}"
    )
    for nq, n_db in sizes:
        ranks, gnd = make_revisited(nq, n_db)
        gnd_m = metrics.revisited_gnd(gnd, "medium")
        small = nq * n_db <= 10**6  # small cases: more rounds, several library calls per round
        # (n_db, nq) C-contiguous, revisitop's own layout; then a view whose columns are contiguous
        native, col = np.ascontiguousarray(ranks.T), ranks.T
        (t_lib, lib), (t_one, one), (t_native, ref), (t_col, ref2) = interleaved_best(
            [
                (lambda: metrics.revisited_map(ranks, gnd_m), 5 if small else 2),  # noqa: B023
                (lambda: metrics.revisited_map(ranks, gnd_m, threads=1), 5 if small else 2),  # noqa: B023
                (port_runner(native, gnd_m), 1),
                (port_runner(col, gnd_m), 1),
            ],
            rounds=10 if small else 3,
        )
        diff = max(max_abs_diff(lib, ref), max_abs_diff(lib, ref2), max_abs_diff(one, ref))
        size = f"{nq} x {n_db}"
        print(
            f"{size:>14} {t_lib * 1e3:>8.1f}ms {t_one * 1e3:>8.1f}ms {t_native * 1e3:>10.1f}ms "
            f"{t_native / t_lib:>8.1f}x {t_native / t_one:>9.1f}x "
            f"{t_col * 1e3:>14.1f}ms {t_col / t_lib:>8.1f}x {diff:>11.2e}"
        )


# ------------------------------------------------------------------------------------------------------------
# (b) search speed
# ------------------------------------------------------------------------------------------------------------


def random_features(n, dim, seed, block=1 << 14):
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, block):
        out[s : s + block] = rng.standard_normal((min(block, n - s), dim), dtype=np.float32)
    return out


def bench_search(nq, n_db, dim, topk, backends, rounds=3):
    """The matmul-only loop and ``rank`` alternate for ``rounds`` rounds (the machine's load drifts; each
    round's ratio compares neighbours in time); the summary compares the best time of each."""
    print(f"\n(b) search: {nq} queries x {n_db} gallery, dim {dim}, top-{topk} (CPU)")
    q = random_features(nq, dim, 1)
    g = random_features(n_db, dim, 2)
    cq, cg = search._chunks(None, nq, n_db, dim, torch.device("cpu"))
    flops = 2.0 * nq * n_db * dim
    qt = torch.from_numpy(search.l2_normalize(q))
    gt = torch.from_numpy(search.l2_normalize(g))
    threads = torch.get_num_threads()

    def matmul_blocks(q_rows, out):
        """All [cq, cg] score blocks of the query rows ``q_rows`` into one reused buffer."""
        for g0 in range(0, n_db, cg):
            gc = gt[g0 : g0 + cg]
            for s in q_rows:
                qc = qt[s : s + cq]
                torch.matmul(qc, gc.T, out=out[: qc.shape[0] * gc.shape[0]].view(qc.shape[0], -1))

    def matmul_multithreaded():
        """One multi-threaded matmul per block (torch's own parallelism)."""
        matmul_blocks(range(0, nq, cq), torch.empty(cq * cg))

    def matmul_per_thread():
        """One single-threaded matmul per block, the query chunks dealt to ``threads`` Python threads."""
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                starts = range(0, nq, cq)
                jobs = [
                    pool.submit(matmul_blocks, starts[t::threads], torch.empty(cq * cg))
                    for t in range(threads)
                ]
                for job in jobs:
                    job.result()
        finally:
            torch.set_num_threads(threads)

    def matmul_only():
        """Times of both matmul loops in this round: (multi-threaded, per thread)."""
        return best_of(matmul_multithreaded, 1)[0], best_of(matmul_per_thread, 1)[0]

    def rate(t):
        return f"{t:7.2f} s {flops / t / 1e9:7.1f} GFLOP/s"

    matmul_only()  # warm-up (both loops)
    search.rank(q[:64], g[:4096], topk=topk, device="cpu")

    def run(backend):
        return lambda: search.rank(q, g, topk=topk, backend=backend, device="cpu")

    t_mm, t_rank = [], []
    for r in range(rounds):
        t_multi, t_per_thread = matmul_only()
        t_mm.append(min(t_multi, t_per_thread))
        t, ranks = best_of(run("torch"), 1)
        t_rank.append(t)
        print(
            f"  round {r + 1}: matmul only, blocks of {cq} x {cg}: multi-threaded {rate(t_multi)},"
            f" one per thread {rate(t_per_thread)};\n           rank(topk={topk}, torch): {rate(t)}"
            f" = {100 * t_mm[-1] / t:5.1f}% of the faster matmul rate"
        )
    print(
        f"  best of {rounds}: matmul {rate(min(t_mm))}; rank {rate(min(t_rank))}"
        f" = {100 * min(t_mm) / min(t_rank):5.1f}% of the matmul rate"
    )
    for backend in backends:
        if backend == "torch":
            continue
        search.rank(q[:64], g[:4096], topk=topk, backend=backend, device="cpu")  # warm-up
        t, other = best_of(run(backend), 1)
        print(
            f"  rank(topk={topk}, backend={backend!r}), once: {rate(t)}"
            f" = {100 * min(t_mm) / t:5.1f}% of the best matmul rate;"
            f" identical to the torch backend: {np.array_equal(other, ranks)}"
        )


# ------------------------------------------------------------------------------------------------------------
# (c) peak memory (child process)
# ------------------------------------------------------------------------------------------------------------


def _status_mib(field):
    """``VmHWM`` / ``VmRSS`` of this process in MiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(nq, n_db, dim, topk):
    g = random_features(n_db, dim, 2)
    q = random_features(nq, dim, 1)
    search.rank(q[:8], g[:4096], topk=topk, backend="torch", device="cpu")  # load lazy kernels first
    peak_setup = _status_mib("VmHWM")
    with open("/proc/self/clear_refs", "w") as fh:  # reset the high-water mark to the current RSS
        fh.write("5")
    before = _status_mib("VmRSS")
    t0 = time.perf_counter()
    r = search.rank(q, g, topk=topk, backend="torch", device="cpu")
    t = time.perf_counter() - t0
    out = {
        "setup_peak_mib": peak_setup,
        "before_mib": before,
        "search_peak_mib": _status_mib("VmHWM"),
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": t,
        "shape": list(r.shape),
        "inputs_mib": (q.nbytes + g.nbytes) / 2**20,
    }
    print(json.dumps(out))


def bench_memory(nq, n_db, dim, topk):
    print(
        f"\n(c) peak memory: rank(topk={topk}) for {nq} x {n_db}, dim {dim}, torch backend, fresh subprocess"
    )
    cmd = [sys.executable, __file__, "--memory-child", str(nq), str(n_db), str(dim), str(topk)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    peak = max(res["setup_peak_mib"], res["search_peak_mib"])
    print(
        f"  float32 inputs: {res['inputs_mib']:.0f} MiB; resident before the search (runtime + inputs): "
        f"{res['before_mib']:.0f} MiB"
    )
    working = res["search_peak_mib"] - res["before_mib"]
    print(f"  peak resident set (VmHWM) of the process: {peak:.0f} MiB ({peak / 1024:.2f} GiB)")
    print(
        f"  during the search: peak {res['search_peak_mib']:.0f} MiB, i.e. search working memory"
        f" {working:.0f} MiB; time {res['seconds']:.1f} s; output {res['shape']}"
    )
    print(f"  (ru_maxrss, inflated by the parent's resident set at fork: {res['ru_maxrss_mib']:.0f} MiB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    try:
        import faiss

        faiss_version = faiss.__version__
        backends = ["torch", "faiss"]
    except ImportError:
        faiss_version, backends = "not installed", ["torch"]
    print(
        "machine:",
        f"processor={platform.processor()!r}",
        f"cpu_count={os.cpu_count()}",
        f"torch_threads={torch.get_num_threads()}",
        f"platform={platform.platform()}",
    )
    print(
        f"versions: python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"faiss {faiss_version}; load average at start {os.getloadavg()}"
    )
    if args.quick:
        bench_revisited([(70, 5000), (200, 20000)])
        bench_search(1000, 20000, 256, 100, backends)
        if not args.skip_memory:
            bench_memory(1000, 100000, 256, 100)
    else:
        bench_revisited([(70, 5000), (1000, 100000)])
        bench_search(10000, 100000, 256, 100, backends)
        if not args.skip_memory:
            bench_memory(10000, 1000000, 256, 100)
    print(f"\nload average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
