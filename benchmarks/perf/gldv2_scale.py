"""The evaluation path at real GLDv2 / ROxford / RParis size on random features, stage by stage:
``python benchmarks/perf/gldv2_scale.py [--tiny]``.

GLDv2 retrieval (defaults = the real test set sizes): 117,577 query x 761,757 gallery features of dimension
256 (float32 unit rows, generated in chunks from a seeded generator; the gallery alone is ~744 MiB), top-100
search with :func:`bctbench.evaluation.search.rank` (CPU, torch backend unless ``--backend``), then mAP@100
with :func:`bctbench.evaluation.metrics.gldv2_map_at_k` on a synthetic solution: every query has 1-20 relevant
gallery ids and its feature is the normalised mean of theirs plus an equally long random direction, so the
ranking holds real hits and the score is non-trivial. A brute-force float64 search of a few sampled queries
checks the ranking.

Revisited (ROxford5k / RParis6k sizes): 70 queries x 4,993 / 6,322 gallery, full ranking (``topk=None``) and
:func:`~bctbench.evaluation.metrics.revisited_map` for the easy / medium / hard protocols on synthetic
easy/hard/junk sets (5-60 / 5-100 / 10-150 items per query, scaled down for small galleries).

Every stage reports its wall time and its peak resident set: ``VmHWM`` of ``/proc/self/status`` after the
high-water mark was reset to the current resident set (``/proc/self/clear_refs``) at the stage's start, so
the peak is the stage's own (runtime + everything alive + its working memory); ``--tracemalloc`` adds the
peak of Python/NumPy allocations traced during the stage (torch's allocations are not traced). The process
peak is the largest of these; ``getrusage().ru_maxrss`` is printed too (the kernel resets it along with
``VmHWM``, so it is read before each reset and the largest reading is kept).

    python benchmarks/perf/gldv2_scale.py                        # full size, several minutes on 2 cores
    python benchmarks/perf/gldv2_scale.py --tiny                 # seconds
    python benchmarks/perf/gldv2_scale.py --queries 10000 --gallery 100000 --threads 2 --chunk 512,8192
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bctbench.evaluation import metrics, search  # noqa: E402

GLDV2_QUERIES = 117_577
GLDV2_GALLERY = 761_757
ROXFORD_GALLERY = 4_993
RPARIS_GALLERY = 6_322
REVISITED_QUERIES = 70
_GEN_ROWS = 65_536  # rows generated per chunk
_QUERY_ROWS = 8_192  # queries built per chunk (gathers ~10 gallery rows each)


# ------------------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------------------


def _status_mib(name: str) -> float | None:
    """``VmHWM`` / ``VmRSS`` of this process in MiB, None where ``/proc`` is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _ru_maxrss_mib() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current resident set; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    peak_mib: float | None = None
    rss_after_mib: float | None = None
    traced_peak_mib: float | None = None
    note: str = ""


@dataclass
class Recorder:
    trace: bool = False
    stages: list[Stage] = field(default_factory=list)
    process_peak_mib: float = 0.0
    ru_maxrss_mib: float = 0.0
    hwm_reset: bool = True

    def _observe(self) -> None:
        self.ru_maxrss_mib = max(self.ru_maxrss_mib, _ru_maxrss_mib())
        hwm = _status_mib("VmHWM")
        self.process_peak_mib = max(self.process_peak_mib, hwm if hwm is not None else self.ru_maxrss_mib)

    @contextlib.contextmanager
    def stage(self, name: str):
        self._observe()
        self.hwm_reset = _reset_hwm() and self.hwm_reset
        if self.trace:
            tracemalloc.reset_peak()
        st = Stage(name)
        t0 = time.perf_counter()
        try:
            yield st
        finally:
            st.seconds = time.perf_counter() - t0
            hwm = _status_mib("VmHWM")
            st.peak_mib = hwm if hwm is not None else _ru_maxrss_mib()
            st.rss_after_mib = _status_mib("VmRSS")
            if self.trace:
                st.traced_peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
            self._observe()
            self.stages.append(st)
            print(
                f"  {name:<34} {st.seconds:9.2f} s  peak {_mib(st.peak_mib)}  {st.note}",
                flush=True,
            )


def _mib(v: float | None) -> str:
    return f"{v:9.0f} MiB" if v is not None else "        - MiB"


# ------------------------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------------------------


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    x /= np.maximum(norms, np.float32(1e-12))[:, None]
    return x


def random_unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``float32[n, dim]`` random unit rows, generated ``_GEN_ROWS`` at a time (no float64 temporaries)."""
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, _GEN_ROWS):
        block = out[s : s + _GEN_ROWS]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        _normalize_rows(block)
    return out


def relevant_sets(nq: int, n_db: int, lo: int, hi: int, rng: np.random.Generator):
    """Per query ``lo..hi`` distinct random gallery ids: ``(ids int64[total], counts int64[nq])``, sorted
    by query then id."""
    want = rng.integers(lo, hi + 1, nq)
    flat = rng.integers(0, n_db, int(want.sum()))
    keys = np.unique(np.repeat(np.arange(nq, dtype=np.int64), want) * n_db + flat)  # drops repeats
    return keys % n_db, np.bincount(keys // n_db, minlength=nq)


def queries_near(
    gallery: np.ndarray, ids: np.ndarray, counts: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Query i = normalise(unit mean of its relevant gallery rows + ``noise`` x a random unit direction)."""
    nq, dim = counts.size, gallery.shape[1]
    out = np.empty((nq, dim), np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for s in range(0, nq, _QUERY_ROWS):
        e = min(nq, s + _QUERY_ROWS)
        rows = gallery[ids[starts[s] : starts[e]]]
        mean = np.add.reduceat(rows, starts[s:e] - starts[s], axis=0)
        _normalize_rows(mean)
        if noise:
            mean += np.float32(noise) * random_unit(e - s, dim, rng)
        out[s:e] = _normalize_rows(mean)
    return out


def revisited_case(nq: int, n_db: int, dim: int, noise: float, rng: np.random.Generator):
    """Gallery, queries and revisitop-style gnd (easy/hard/junk) with ROxford-like set sizes."""
    scale = min(1.0, n_db / 5000)
    lo_hi = {"easy": (5, 60), "hard": (5, 100), "junk": (10, 150)}
    sizes = {k: (max(1, int(a * scale)), max(1, int(b * scale))) for k, (a, b) in lo_hi.items()}
    gnd = []
    for _ in range(nq):
        n = {k: int(rng.integers(a, b + 1)) for k, (a, b) in sizes.items()}
        items = rng.choice(n_db, min(n_db, sum(n.values())), replace=False)
        e, h = n["easy"], n["easy"] + n["hard"]
        gnd.append({"easy": items[:e], "hard": items[e:h], "junk": items[h:]})
    gallery = random_unit(n_db, dim, rng)
    ok = [np.concatenate([g["easy"], g["hard"]]) for g in gnd]
    counts = np.array([o.size for o in ok])
    queries = queries_near(gallery, np.concatenate(ok), counts, noise, rng)
    return queries, gallery, gnd


def brute_force_topk(q: np.ndarray, g: np.ndarray, k: int, block: int = _GEN_ROWS) -> np.ndarray:
    """Top-k gallery ids of a few queries by float64 scores (stable on ties), chunked over the gallery."""
    q64 = q.astype(np.float64)
    q64 /= np.linalg.norm(q64, axis=1, keepdims=True)
    scores = np.empty((q.shape[0], g.shape[0]))
    for s in range(0, g.shape[0], block):
        g64 = g[s : s + block].astype(np.float64)
        g64 /= np.maximum(np.linalg.norm(g64, axis=1, keepdims=True), 1e-300)
        scores[:, s : s + block] = q64 @ g64.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


# ------------------------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------------------------


def _chunk_arg(text: str | None):
    if text is None:
        return None
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def run_gldv2(args, rec: Recorder, rng: np.random.Generator, chunk) -> dict:
    nq, n_db, dim, k = args.queries, args.gallery, args.dim, args.topk
    with rec.stage("gldv2: gallery features") as st:
        g = random_unit(n_db, dim, rng)
        st.note = f"{n_db:,} x {dim} float32 = {g.nbytes / 2**20:.0f} MiB"
    with rec.stage("gldv2: query features + solution") as st:
        ids, counts = relevant_sets(nq, n_db, 1, 20, rng)
        q = queries_near(g, ids, counts, args.noise, rng)
        solution = np.split(ids, np.cumsum(counts)[:-1])
        st.note = f"{nq:,} x {dim} = {q.nbytes / 2**20:.0f} MiB; {ids.size:,} relevant ids"
    search.rank(q[:64], g[: min(n_db, 4096)], topk=k, backend=args.backend, device="cpu")  # warm-up
    with rec.stage(f"gldv2: search top-{k} ({args.backend})") as st:
        t = time.perf_counter()
        ranks = search.rank(q, g, topk=k, backend=args.backend, chunk_size=chunk, device="cpu")
        search_s = time.perf_counter() - t
        gflops = 2.0 * nq * n_db * dim / search_s / 1e9
        st.note = f"ranks {ranks.shape}; {gflops:.0f} GFLOP/s of score matmul"
    with rec.stage(f"gldv2: mAP@{k} (gldv2_map_at_k)") as st:
        m_ap = metrics.gldv2_map_at_k(ranks, solution, k=k)
        st.note = f"mAP@{k} = {m_ap:.4f}"
    sample = np.random.default_rng(args.seed + 7).choice(nq, min(nq, args.check_queries), replace=False)
    with rec.stage("gldv2: brute-force check") as st:
        ref = brute_force_topk(q[sample], g, ranks.shape[1])
        same_sets = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(ranks[sample], ref, strict=True))
        same_order = int((ranks[sample] == ref).all(axis=1).sum())
        st.note = f"{len(sample)} sampled queries: same top-k set {same_sets}, same order {same_order}"
    return {
        "queries": nq,
        "gallery": n_db,
        "dim": dim,
        "topk": k,
        "backend": args.backend,
        "search_s": search_s,
        "search_gflops": gflops,
        "map_at_k": m_ap,
        "check_queries": len(sample),
        "check_same_set": int(same_sets),
        "check_same_order": same_order,
    }


def run_revisited(args, rec: Recorder, rng: np.random.Generator, chunk) -> dict:
    out = {}
    for name, n_db in (("roxford", args.oxford_gallery), ("rparis", args.paris_gallery)):
        with rec.stage(f"{name}: features + gnd") as st:
            q, g, gnd = revisited_case(args.revisited_queries, n_db, args.dim, args.noise, rng)
            st.note = f"{q.shape[0]} x {n_db:,}"
        with rec.stage(f"{name}: search (full ranking)") as st:
            ranks = search.rank(q, g, topk=None, backend=args.backend, chunk_size=chunk, device="cpu")
            st.note = f"ranks {ranks.shape}"
        with rec.stage(f"{name}: revisited_map e/m/h") as st:
            maps = {}
            for protocol in ("easy", "medium", "hard"):
                pgnd = metrics.revisited_gnd(gnd, protocol)
                maps[protocol] = metrics.revisited_map(ranks, pgnd, threads=args.threads)[0]
            st.note = "mAP " + " / ".join(f"{v:.4f}" for v in maps.values())
        out[name] = {"queries": q.shape[0], "gallery": n_db, "map": maps}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=GLDV2_QUERIES)
    p.add_argument("--gallery", type=int, default=GLDV2_GALLERY)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--topk", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch / metric threads (default: torch's)")
    p.add_argument(
        "--chunk",
        default=None,
        help="search chunk: gallery rows, or 'Q,G' query x gallery rows (default: the library's)",
    )
    p.add_argument("--backend", default="torch", choices=["torch", "faiss"])
    p.add_argument("--noise", type=float, default=1.0, help="weight of the random part of each query")
    p.add_argument("--revisited-queries", type=int, default=REVISITED_QUERIES)
    p.add_argument("--oxford-gallery", type=int, default=ROXFORD_GALLERY)
    p.add_argument("--paris-gallery", type=int, default=RPARIS_GALLERY)
    p.add_argument("--skip-gldv2", action="store_true")
    p.add_argument("--skip-revisited", action="store_true")
    p.add_argument("--check-queries", type=int, default=8, help="queries checked against brute force")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-gib", type=float, default=24.0, help="memory target for the verdict line")
    p.add_argument("--tracemalloc", action="store_true", help="also trace Python/NumPy allocations")
    p.add_argument("--json", default=None, help="write the figures to this file")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="small sizes (2,000 x 20,000; revisited 20 x 600 / 800), seconds",
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.queries, args.gallery = min(args.queries, 2_000), min(args.gallery, 20_000)
        args.revisited_queries = min(args.revisited_queries, 20)
        args.oxford_gallery, args.paris_gallery = min(args.oxford_gallery, 600), min(args.paris_gallery, 800)
    if args.threads:
        torch.set_num_threads(args.threads)
    chunk = _chunk_arg(args.chunk)
    load_start = os.getloadavg()
    print(
        f"machine: {platform.processor() or platform.machine()} | cpus {os.cpu_count()} | torch threads "
        f"{torch.get_num_threads()} | python {platform.python_version()} | numpy {np.__version__} | "
        f"torch {torch.__version__} | load average at start {tuple(round(v, 2) for v in load_start)}"
    )
    print(
        f"gldv2: {args.queries:,} queries x {args.gallery:,} gallery, d={args.dim}, top-{args.topk}, backend "
        f"{args.backend}, chunk {chunk or 'default'}; revisited: {args.revisited_queries} queries x "
        f"{args.oxford_gallery:,} / {args.paris_gallery:,}\n"
    )
    rec = Recorder(trace=args.tracemalloc)
    if rec.trace:
        tracemalloc.start()
    rng = np.random.default_rng(args.seed)
    results: dict = {"args": vars(args)}
    t0 = time.perf_counter()
    if not args.skip_gldv2:
        results["gldv2"] = run_gldv2(args, rec, rng, chunk)
    if not args.skip_revisited:
        results["revisited"] = run_revisited(args, rec, rng, chunk)
    total = time.perf_counter() - t0
    load_end = os.getloadavg()
    peak_gib = rec.process_peak_mib / 1024

    traced = rec.trace
    print(
        f"\n{'stage':<36} {'seconds':>9} {'peak RSS':>12} {'RSS after':>12}" + (" traced" if traced else "")
    )
    for st in rec.stages:
        line = f"{st.name:<36} {st.seconds:9.2f} {_mib(st.peak_mib)} {_mib(st.rss_after_mib)}"
        if traced:
            line += f" {st.traced_peak_mib:8.0f} MiB"
        print(line + (f"  {st.note}" if st.note else ""))
    within = peak_gib <= args.target_gib
    print(
        f"\nprocess peak RSS (largest stage VmHWM{'' if rec.hwm_reset else ', not reset'}) "
        f"{rec.process_peak_mib:.0f} MiB = {peak_gib:.2f} GiB; ru_maxrss {rec.ru_maxrss_mib:.0f} MiB; "
        f"load average at end {tuple(round(v, 2) for v in load_end)}"
    )
    print(
        f"SUMMARY gldv2_scale: total {total:.1f} s, peak RSS {peak_gib:.2f} GiB, target {args.target_gib:g} GiB: "
        f"{'within' if within else 'EXCEEDED'}"
    )
    results.update(
        stages=[asdict(s) for s in rec.stages],
        total_s=total,
        process_peak_mib=rec.process_peak_mib,
        ru_maxrss_mib=rec.ru_maxrss_mib,
        load_start=load_start,
        load_end=load_end,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
