"""Where a default run's time goes, and how its wall time compares with another commit's, side by side.

One default run (old model pinned, one job): ``bctbench run`` of ``--method`` on ``--benchmark`` with Lightning's
``SimpleProfiler``; prints the breakdown of the wall time into data (batch fetch: decode + augment + collate),
forward (``training_step``: forward + loss), backward, optimiser (step minus the closure), checkpointing,
logging and other loop work, artefacts and evaluation.

With ``--baseline <commit>`` it also times that commit (checked out into a temporary git worktree) on the same
run, alternating ``--rounds`` times (baseline, current, baseline, current, ...) so that drifts of the
machine's speed hit both alike, each with fresh caches except the shared data root and the pinned old model,
and prints both wall times and their ratio. Each run is a subprocess with ``OMP_NUM_THREADS=--threads``.

    python benchmarks/perf/run_profile.py [--benchmark synth_class30to100] [--method bct] [--baseline 5c214b6]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# SimpleProfiler action names (Lightning 2.x) -> stage
STAGES = {
    "data: fetch (decode + collate)": (r"train_dataloader_next$",),
    "data: augment / layout in the training process": (r"on_after_batch_transfer$",),
    "forward (training_step)": (r"Strategy\.training_step$",),
    "backward": (r"Strategy\.backward$",),
    "optimizer": (r"\.optimizer_step$",),
    "checkpointing": (r"ModelCheckpoint.*on_train_epoch_end", r"^save_checkpoint$", r"on_save_checkpoint$"),
    "logging": (r"LearningRateMonitor", r"log_metrics", r"on_train_batch_end$"),
}


def _one_run(tree: Path, args: argparse.Namespace, work: Path, profile: bool) -> dict:
    """Run one default run in ``tree`` (a checkout) in a subprocess; return its timings."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(tree)!r})
from bctbench import pipeline
kw = {{}}
if {profile!r}:
    from lightning.pytorch.profilers import SimpleProfiler
    kw["profiler"] = SimpleProfiler(dirpath={str(work)!r}, filename="profile")
ctx = pipeline.RunContext.create({args.benchmark!r}, data_root={str(args.data_root)!r},
    cache_root={str(work / "cache")!r}, results_root={str(work / "results")!r})
t = time.time()
res = pipeline.run(ctx, {args.method!r}, seed={args.seed}, runtime=pipeline.Runtime(wandb=False, accelerator="cpu", **kw))
import bctbench
print("RESULT " + json.dumps({{"wall": time.time() - t, "timings": res.timings, "code": bctbench.__file__,
    "precision": res.env.get("precision"), "torch_threads": res.env.get("torch_threads")}}))
"""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(tree),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=3600
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"run in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def _train_old(tree: Path, args: argparse.Namespace, cache: Path) -> None:
    code = f"""
import sys
sys.path.insert(0, {str(tree)!r})
from bctbench import pipeline
ctx = pipeline.RunContext.create({args.benchmark!r}, data_root={str(args.data_root)!r}, cache_root={str(cache)!r},
    results_root={str(cache / "results")!r})
pipeline.ensure_old_model(ctx, pipeline.Runtime(wandb=False, accelerator="cpu"), seed={args.seed})
"""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(tree),
    }
    subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, check=True, timeout=3600
    )


def _breakdown(report: str, fit: float) -> dict[str, float]:
    """Seconds per stage from a SimpleProfiler report (total column)."""
    rows: dict[str, float] = {}
    for line in report.splitlines():
        parts = [p.strip() for p in line.split("|") if p.strip()]
        if len(parts) >= 4:
            try:
                rows[parts[0]] = float(parts[3])  # action | mean | num calls | total | percentage
            except ValueError:
                continue
    out = {stage: 0.0 for stage in STAGES}
    for action, total in rows.items():
        for stage, patterns in STAGES.items():
            if any(re.search(p, action) for p in patterns):
                out[stage] += total
                break
    # the closure (forward + backward) runs inside optimizer_step
    out["optimizer"] = max(0.0, out["optimizer"] - out["forward (training_step)"] - out["backward"])
    out["other loop work"] = max(0.0, fit - sum(out.values()))
    return out


def _profile(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        res = _one_run(REPO, args, work, profile=True)
        report = next(work.glob("*profile*.txt"), None)
        t = res["timings"]
        stages = _breakdown(report.read_text() if report else "", t["fit"])
        stages["artefacts"] = t.get("artifacts", 0.0)
        stages["evaluation"] = t.get("evaluate", 0.0)
        stages["old model (pinned: load + verify)"] = t.get("old_model", 0.0)
        wall = res["wall"]
        print(
            f"\n{args.benchmark} / {args.method} seed {args.seed}: wall {wall:.1f} s, fit {t['fit']:.1f} s "
            f"(precision {res['precision']}, {res['torch_threads']} torch thread(s))"
        )
        print(f"{'stage':<48}{'seconds':>9}{'share':>8}")
        for stage, sec in stages.items():
            print(f"{stage:<48}{sec:>9.1f}{100 * sec / wall:>7.1f}%")


def _compare(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            # "old model cached": trained once for trees that do not pin it, copied into every round's cache
            old_cache = Path(tmp) / "old-cache"
            _train_old(base_tree, args, old_cache)
            walls: dict[str, list[float]] = {"baseline": [], "current": []}
            for r in range(args.rounds):
                for name, tree in (("baseline", base_tree), ("current", REPO)):
                    work = Path(tmp) / f"{name}{r}"
                    if name == "baseline" and (old_cache / "old").is_dir():
                        shutil.copytree(old_cache / "old", work / "cache" / "old")
                    res = _one_run(tree, args, work, profile=False)
                    if not res["code"].startswith(str(tree)):
                        raise SystemExit(f"{name} ran the code of {res['code']}, not of {tree}")
                    walls[name].append(res["wall"])
                    t = res["timings"]
                    print(
                        f"round {r} {name:<8} wall {res['wall']:7.1f} s (fit {t['fit']:.1f}, artefacts "
                        f"{t.get('artifacts', 0):.1f}, evaluate {t.get('evaluate', 0):.1f}; "
                        f"precision {res['precision']})",
                        flush=True,
                    )
                    shutil.rmtree(work, ignore_errors=True)
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False
            )
        b, c = sum(walls["baseline"]) / args.rounds, sum(walls["current"]) / args.rounds
        ratios = [cur / base for base, cur in zip(walls["baseline"], walls["current"], strict=True)]
        print(
            f"\nmean wall: baseline ({args.baseline}) {b:.1f} s, current {c:.1f} s; "
            f"current / baseline = {c / b:.3f} (per round: {', '.join(f'{x:.3f}' for x in ratios)})"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", default="synth_class30to100")
    p.add_argument("--method", default="bct")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the run (one job, one core)")
    p.add_argument("--data-root", type=Path, default=Path(os.environ.get("BCTBENCH_DATA", "data")).resolve())
    p.add_argument("--baseline", default=None, help="commit to time side by side with the current tree")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    started = time.time()
    if args.baseline:
        _compare(args)
    else:
        _profile(args)
    print(f"(script wall {time.time() - started:.0f} s; machine: {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
