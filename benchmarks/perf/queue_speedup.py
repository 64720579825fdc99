"""Runs per hour of ``bctbench run-all --jobs 1`` against ``--jobs N`` (default 2) on one benchmark.

Every timed pass is a real ``bctbench run-all`` subprocess into a *fresh* results root (nothing is skipped),
sharing one warm data and cache root: the dataset, the old models and the shared old-model caches exist before
the first timed pass (an untimed warm-up pass of the same queue writes them), so the passes differ only in how
many jobs run at a time. With several rounds the order of the passes alternates. Prints the wall time of each
pass, runs per hour (jobs x 3600 / wall seconds) and the ratio of each ``--jobs`` value to ``--jobs 1``; with
several rounds, also each ratio paired within a round (median and range over the rounds).

Run it on an otherwise idle machine (the load average is printed before and after: other CPU-bound processes
change the ratio).

    python benchmarks/perf/queue_speedup.py [--benchmark smoke] [--methods independent bct l2 lce] [--seeds 0]
        [--jobs 1 2] [--rounds 1] [--data-root DIR --cache-root DIR] [--no-warmup] [--keep] [--one-core-base]

``--one-core-base`` adds a pass of ``--jobs 1`` confined to one core (``sched_setaffinity``): run-all then sees
one core and runs one job with one thread, the per-core base of "two jobs on two cores".
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _one_core() -> None:
    """Child-process hook: confine the pass to the first core this process may use (``taskset -c``)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _queue(
    args: argparse.Namespace, jobs: int, results: Path, data: Path, cache: Path, one_core: bool = False
) -> float:
    """Wall seconds of one ``run-all`` pass (``one_core``: confined to one core, so run-all sees one core and
    runs one job with one thread); raises SystemExit when it fails."""
    argv = [sys.executable, "-m", "bctbench.cli", "run-all", "-b", args.benchmark, "--methods", *args.methods]
    argv += ["--seeds", *map(str, args.seeds), "--jobs", str(jobs), "--no-wandb", "--quiet"]
    argv += ["--data-root", str(data), "--cache-root", str(cache), "--results-root", str(results)]
    start = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, preexec_fn=_one_core if one_core else None
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"run-all --jobs {jobs} failed with exit status {proc.returncode}")
    written = list((results / Path(args.benchmark).stem).glob("*/seed*.json"))
    expected = len(args.methods) * len(args.seeds)
    if len(written) != expected:
        raise SystemExit(f"run-all --jobs {jobs} wrote {len(written)} results, expected {expected}")
    return wall


def paired_ratios(times: dict[str, list[float]], base: str) -> dict[str, tuple[float, float, float]]:
    """Per-round speed-up of each pass over ``base``, paired within a round (both passes ran minutes apart, so
    the machine's drift between rounds cancels): ``{pass: (median, min, max)}`` of ``t_base[r] / t_pass[r]``
    over the rounds, the pass's runs per hour over the base's. ``times[name]`` holds one wall time per round."""
    out = {}
    for name, walls in times.items():
        if name == base:
            continue
        ratios = [b / t for b, t in zip(times[base], walls, strict=True)]
        out[name] = (statistics.median(ratios), min(ratios), max(ratios))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", default="smoke")
    p.add_argument("--methods", nargs="+", default=["independent", "bct", "l2", "lce"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument(
        "--jobs", nargs="+", type=int, default=[1, 2], help="--jobs values to time (1 is the base)"
    )
    p.add_argument("--rounds", type=int, default=1, help="timed passes per --jobs value (order alternates)")
    p.add_argument("--data-root", default=None, help="shared data root (default: a temporary folder)")
    p.add_argument("--cache-root", default=None, help="shared cache root (default: a temporary folder)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up pass")
    p.add_argument(
        "--one-core-base",
        action="store_true",
        help="also time --jobs 1 confined to one core (one job per core: the base of runs per core-hour)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = p.parse_args(argv)
    if 1 not in args.jobs:
        args.jobs = [1, *args.jobs]
    if any(j < 1 for j in args.jobs) or args.rounds < 1:
        p.error("--jobs values and --rounds must be >= 1")

    work = Path(tempfile.mkdtemp(prefix="bctbench-queue-speedup-"))
    data = Path(args.data_root) if args.data_root else work / "data"
    cache = Path(args.cache_root) if args.cache_root else work / "cache"
    n_runs = len(args.methods) * len(args.seeds)
    print(f"benchmark {args.benchmark}: {n_runs} runs ({' '.join(args.methods)} x seeds {args.seeds})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores")
    print(f"load average before: {_load()}")
    try:
        if not args.no_warmup:
            wall = _queue(args, max(args.jobs), work / "results-warmup", data, cache)
            print(f"warm-up pass (--jobs {max(args.jobs)}, untimed): {wall:.1f} s")
        passes: list[tuple[str, int, bool]] = [(str(j), j, False) for j in args.jobs]
        if args.one_core_base:
            passes.insert(0, ("1 on one core", 1, True))
        times: dict[str, list[float]] = {name: [] for name, _, _ in passes}
        for r in range(args.rounds):
            order = passes if r % 2 == 0 else list(reversed(passes))
            for name, jobs, one_core in order:
                results = work / f"results-r{r}-j{name.replace(' ', '-')}"
                wall = _queue(args, jobs, results, data, cache, one_core)
                times[name].append(wall)
                print(f"round {r + 1}: --jobs {name}: {wall:.1f} s")
        print(f"load average after: {_load()}")
        print()
        rate = {name: n_runs * 3600 / min(t) for name, t in times.items()}
        bases = ["1", *(["1 on one core"] if args.one_core_base else [])]
        print("| --jobs | wall s (best) | runs/hour | " + " | ".join(f"× --jobs {b}" for b in bases) + " |")
        print("|---:|---:|---:|" + "---:|" * len(bases))
        for name, _, _ in passes:
            ratios = " | ".join(f"{rate[name] / rate[b]:.2f}" for b in bases)
            print(f"| {name} | {min(times[name]):.1f} | {rate[name]:.0f} | {ratios} |")
        if args.rounds > 1:
            print()
            print(f"paired by round ({args.rounds} rounds): speed-up median [min, max]")
            for b in bases:
                for name, (med, lo, hi) in paired_ratios(times, b).items():
                    print(f"  --jobs {name} over --jobs {b}: {med:.2f} [{lo:.2f}, {hi:.2f}]")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
