"""The ``bctbench`` console script. Subcommands are thin wrappers over :mod:`bctbench.pipeline`.

User errors (:class:`bctbench.errors.BCTBenchError`) print one line ``error: ...`` and exit with status 2; so do
bad values of the numeric options (``--seed``, ``--seeds``, ``--num-workers``, ``--num-nodes``, ``--devices``),
which are checked after parsing. Output cut short by a closed pipe (``bctbench methods | head -1``) ends
quietly with status 141.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bctbench.errors import BCTBenchError, ConfigError

log = logging.getLogger("bctbench")


def _add_roots(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="data root (default: $BCTBENCH_DATA or ./data)")
    p.add_argument("--cache-root", default=None, help="cache root (default: $BCTBENCH_CACHE or ./cache)")
    p.add_argument(
        "--results-root", default=None, help="results root (default: $BCTBENCH_RESULTS or ./results)"
    )


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method hyperparameter or runtime option (repeatable); protocol keys are rejected",
    )
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    p.add_argument(
        "--devices", default="auto", help="Lightning devices: auto, a count (e.g. 4) or indices (e.g. 0,1)"
    )
    p.add_argument("--num-nodes", default="1", metavar="N", help="number of nodes (>= 1)")
    p.add_argument("--strategy", default="auto", help="Lightning strategy (auto, ddp, ...)")
    p.add_argument(
        "--num-workers", default=None, metavar="N", help="data loader workers, >= 0 (default: the spec's)"
    )
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    p.add_argument("--resume", action="store_true", help="resume the new model from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--validate-every",
        default="0",
        metavar="N",
        help="log the new model's validation mAP@100 (torchmetrics) every N epochs (0: off; a monitor only)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bctbench",
        description="Benchmark suite for backward-compatible training (BCT) of retrieval embeddings.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("methods", help="list the registered methods with their papers")
    p.add_argument("--all", action="store_true", help="import every plugin and flag broken ones")
    p.add_argument(
        "--params",
        default=None,
        metavar="METHOD",
        help="list METHOD's hyperparameters (--set name=value) with types, defaults, search space and docs",
    )

    p = sub.add_parser("benchmarks", help="list the benchmark specs")

    p = sub.add_parser("make-synthetic", help="generate the embedded synthetic landmark dataset")
    p.add_argument("--data-root", default=None)
    p.add_argument("--name", default="synth", help="folder under the data root (default: synth)")
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--seed", default="0", metavar="SEED", help="integer in [0, 2**32)")
    p.add_argument("--force", action="store_true", help="regenerate even if a valid copy exists")

    p = sub.add_parser("prepare-data", help="validate a benchmark's dataset and write its split files")
    p.add_argument("--benchmark", "-b", required=True)
    _add_roots(p)

    p = sub.add_parser(
        "train-old", help="train, reuse (pinned) or register the benchmark's old model per seed"
    )
    p.add_argument("--benchmark", "-b", required=True)
    p.add_argument(
        "--checkpoint", default=None, help="register this checkpoint for the seed instead of training"
    )
    p.add_argument("--seeds", nargs="+", default=None, metavar="SEED", help="default: the spec's seeds")
    p.add_argument(
        "--pin",
        action="store_true",
        help="train afresh and write benchmarks/old_models/<benchmark>/seed<k>.pt (maintainers)",
    )
    _add_roots(p)
    _add_runtime(p)

    p = sub.add_parser("run", help="train a method's new model, evaluate it, write its result")
    p.add_argument("--benchmark", "-b", required=True)
    p.add_argument("--method", "-m", required=True)
    _add_preset(p)
    p.add_argument("--seed", default="0", metavar="SEED", help="integer in [0, 2**32) (default: 0)")
    _add_reference(p)
    _add_roots(p)
    _add_runtime(p)

    p = sub.add_parser(
        "run-all",
        help="run every registered method for several seeds (parallel subprocess jobs), then the leaderboard",
    )
    p.add_argument("--benchmark", "-b", required=True)
    p.add_argument("--seeds", nargs="+", default=None, metavar="SEED", help="default: the spec's seeds")
    p.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    _add_preset(p)
    p.add_argument(
        "--jobs",
        "-j",
        default=None,
        metavar="N",
        help="runs at a time, each its own `bctbench run` process (default: auto = one per GPU, else one per "
        "CPU core, at most the number of runs); logs in <cache root>/queue/<benchmark>/",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="rerun runs whose result already exists with the same spec, old model and dataset",
    )
    _add_reference(p)
    _add_roots(p)
    _add_runtime(p)

    p = sub.add_parser(
        "tune",
        help="tune a method on the benchmark's validation sets (same budget for every method) and write its "
        "tuned preset benchmarks/presets/<benchmark>/<method>.yaml",
    )
    p.add_argument("--benchmark", "-b", required=True)
    p.add_argument("--method", "-m", required=True)
    p.add_argument(
        "--budget",
        default=None,
        metavar="N",
        help="trials (default: the spec's tuning.budget, the same for all)",
    )
    p.add_argument("--force", action="store_true", help="redo trials already recorded in the preset file")
    p.add_argument(
        "--out", default=None, help="write the preset here instead (experiments; not the committed file)"
    )
    _add_roots(p)
    _add_runtime(p)

    p = sub.add_parser("evaluate", help="evaluate a saved new-model checkpoint against the old model")
    p.add_argument("--benchmark", "-b", required=True)
    p.add_argument("--checkpoint", required=True)
    _add_roots(p)
    _add_runtime(p)

    p = sub.add_parser(
        "reevaluate", help="re-score finished runs with the current evaluation protocol (no retraining)"
    )
    p.add_argument("--benchmark", "-b", required=True)
    p.add_argument("--methods", nargs="+", default=None, help="default: every method with a result")
    p.add_argument(
        "--seeds", nargs="+", default=None, metavar="SEED", help="default: every seed with a result"
    )
    _add_roots(p)
    _add_runtime(p)

    p = sub.add_parser("leaderboard", help="render the leaderboard of a benchmark from results/ alone")
    p.add_argument("--benchmark", "-b", required=True)
    p.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    p.add_argument("--out", default=None, help="write to this file instead of stdout")
    p.add_argument(
        "--plots",
        default=None,
        help="folder for the figures, each as PDF and PNG (default: <results root>/<benchmark>/plots)",
    )
    p.add_argument(
        "--curve-methods",
        nargs="+",
        default=None,
        help="methods of an extra headline backfilling figure per eval set (backfill_<eval_set>_headline_selected.pdf/.png)",
    )
    p.add_argument(
        "--results-root", default=None, help="your runs (default: $BCTBENCH_RESULTS or ./results/local)"
    )
    p.add_argument(
        "--reference-root",
        default=None,
        help="reference results shown beside yours (default: results/reference)",
    )
    p.add_argument("--no-reference", action="store_true", help="show only the results root")
    p.add_argument(
        "--wandb",
        action="store_true",
        help="also publish the board to W&B: a table (one row per method), the figures, the Markdown "
        "(offline without an API key: run files under <results root>/../wandb-runs for `wandb sync`)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) instead of listing results that are not comparable",
    )
    return parser


def _add_reference(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        action="store_true",
        help="write into the committed reference results (clean git tree only; maintainers)",
    )


def _cmd_methods(args: argparse.Namespace) -> int:
    from bctbench.registry import describe_parameters, get_method, list_methods, load_all_methods

    if args.params is not None:
        import textwrap

        cls = get_method(args.params)
        rows = describe_parameters(cls)
        print(f"{cls.name}: {cls.paper.splitlines()[0]}")
        print(f"hyperparameters ({len(rows)}; set with --set name=value):")
        for row in rows:
            search = f"  search: {row['search']}" if row["search"] is not None else ""
            print(f"  {row['name']} : {row['type']} = {row['default']!r}{search}")
            if row["doc"]:
                print(
                    textwrap.fill(row["doc"], width=100, initial_indent="      ", subsequent_indent="      ")
                )
        variants = getattr(cls, "variants", None) or {}
        print("presets (--preset NAME): tuned (per benchmark, written by `bctbench tune`)")
        for name, values in sorted(variants.items()):
            print(f"  {name}: " + " ".join(f"{k}={v}" for k, v in values.items()))
        return 0
    if args.all:
        loaded = load_all_methods()
        for name in list_methods():
            cls = loaded.get(name)
            status = cls.paper.split("\n")[0] if cls is not None else "BROKEN (see warning)"
            print(f"{name:16s} {status}")
        return 0
    for name in list_methods():
        try:
            paper = get_method(name).paper.split("\n")[0]
        except Exception as exc:  # noqa: BLE001 - listing never crashes
            paper = f"BROKEN: {exc}"
        print(f"{name:16s} {paper}")
    return 0


def _cmd_benchmarks(args: argparse.Namespace) -> int:
    from bctbench.config import list_benchmarks, load_benchmark

    for name in list_benchmarks():
        print(f"{name:32s} {load_benchmark(name).description}")
    return 0


def _cmd_make_synthetic(args: argparse.Namespace) -> int:
    from bctbench.datamodules.synthetic import SyntheticConfig, make_synthetic
    from bctbench.paths import resolve_data_root

    config = SyntheticConfig.tiny() if args.size == "tiny" else SyntheticConfig()
    path = make_synthetic(
        resolve_data_root(args.data_root), name=args.name, seed=args.seed, config=config, force=args.force
    )
    print(f"synthetic dataset ready: {path}")
    return 0


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    from bctbench import pipeline

    ctx = pipeline.RunContext.create(args.benchmark, args.data_root, args.cache_root, args.results_root)
    info = pipeline.prepare_data(ctx)
    for key, value in info.items():
        print(f"{key}: {value}")
    return 0


def _runtime_from_args(args: argparse.Namespace):
    from bctbench import pipeline

    return pipeline.Runtime(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        num_workers=args.num_workers,
        wandb=not args.no_wandb,
        resume=args.resume,
        progress=not args.quiet and sys.stderr.isatty(),
        validate_every=getattr(args, "validate_every", 0),
    )


def _cmd_train_old(args: argparse.Namespace) -> int:
    from bctbench import pipeline

    ctx = pipeline.RunContext.create(args.benchmark, args.data_root, args.cache_root, args.results_root)
    runtime = _runtime_from_args(args)
    seeds = args.seeds if args.seeds is not None else list(ctx.spec.seeds)
    if args.checkpoint and len(seeds) != 1:
        raise ConfigError("--checkpoint registers one old model: give exactly one --seeds value")
    pins = {}
    for seed in seeds:
        if args.pin:
            old = pipeline.pin_old_model(ctx, seed, runtime)
            pins[seed] = old.identity
        else:
            old = pipeline.ensure_old_model(ctx, runtime, checkpoint=args.checkpoint, seed=seed)
        print(f"old model {seed}: {old.path} (identity {old.identity})")
    if pins:
        print(f"add to {ctx.spec.source} under old_model:")
        print("  pinned:")
        for seed, ident in pins.items():
            print(f"    {seed}: {ident}")
    return 0


def _add_preset(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="named hyperparameters: 'tuned' (benchmarks/presets/<benchmark>/<method>.yaml, from `bctbench "
        "tune`) or a method's paper variant (`bctbench methods --params M` lists them); the row is "
        "'method:NAME'",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from bctbench import pipeline

    ctx = pipeline.RunContext.create(
        args.benchmark, args.data_root, args.cache_root, args.results_root, reference=args.reference
    )
    pipeline.run(
        ctx,
        args.method,
        seed=args.seed,
        overrides=args.overrides,
        runtime=_runtime_from_args(args),
        preset=args.preset,
    )
    print(pipeline.render_leaderboard(ctx))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from bctbench import pipeline
    from bctbench.pipeline.tuning import tune

    budget = None
    if args.budget is not None:
        try:
            budget = int(args.budget)
        except ValueError:
            raise ConfigError(f"--budget: expected an integer, got {args.budget!r}") from None
    ctx = pipeline.RunContext.create(args.benchmark, args.data_root, args.cache_root, args.results_root)
    doc = tune(
        ctx,
        args.method,
        budget=budget,
        runtime=_runtime_from_args(args),
        force=args.force,
        out_path=Path(args.out) if args.out else None,
    )
    print(f"{doc['method']} on {doc['benchmark']}: {len(doc['trials'])} trials, {doc['selected_by']}")
    for t in doc["trials"]:
        sc = t["scores"]
        mark = "*" if t["trial"] == doc["chosen_trial"] else " "
        p1 = f"P_1 {sc['P_1']:6.2f}" if "P_1" in sc else "paragon"
        ok = "" if "compatible" not in sc else ("compatible" if sc["compatible"] else "not compatible")
        print(f" {mark} trial {t['trial']:2d}  {p1}  {ok:15s} {t['hparams'] or '(defaults)'}")
    return 0


def _cmd_run_all(args: argparse.Namespace) -> int:
    from bctbench import pipeline
    from bctbench.run_queue import QueueInterrupted, check_jobs, run_queue

    jobs = check_jobs(args.jobs, "--jobs")
    ctx = pipeline.RunContext.create(
        args.benchmark, args.data_root, args.cache_root, args.results_root, reference=args.reference
    )
    try:  # always the queue (also for --jobs 1): finished runs are skipped, interrupted ones resumed
        failed = run_queue(
            ctx,
            methods=args.methods,
            seeds=args.seeds,
            overrides=args.overrides,
            runtime=_runtime_from_args(args),
            jobs=jobs,
            force=args.force,
            preset=args.preset,
        )
    except QueueInterrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130
    print(pipeline.render_leaderboard(ctx))
    if failed:
        print("error: failed runs: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from bctbench import pipeline

    ctx = pipeline.RunContext.create(args.benchmark, args.data_root, args.cache_root, args.results_root)
    report = pipeline.evaluate_checkpoint(ctx, args.checkpoint, runtime=_runtime_from_args(args))
    print(report.to_frame().to_string(index=False))
    return 0


def _cmd_reevaluate(args: argparse.Namespace) -> int:
    from bctbench import pipeline
    from bctbench.errors import BCTBenchError
    from bctbench.results import read_results, run_label

    ctx = pipeline.RunContext.create(args.benchmark, args.data_root, args.cache_root, args.results_root)
    runs = sorted(
        (r.method, r.hparams_digest, r.seed)
        for r in read_results(ctx.results_root, ctx.spec.name)
        if (args.methods is None or r.method in args.methods) and (args.seeds is None or r.seed in args.seeds)
    )
    if not runs:
        print(f"error: no results of {ctx.spec.name} under {ctx.results_root} match", file=sys.stderr)
        return 1
    failed = []
    for method, digest, seed in runs:
        label = run_label(method, digest)
        try:
            pipeline.reevaluate(ctx, method, seed=seed, runtime=_runtime_from_args(args), digest=digest)
            print(f"re-evaluated {label} seed {seed}")
        except BCTBenchError as exc:
            print(f"error: {label} seed {seed}: {exc}", file=sys.stderr)
            failed.append(f"{label}/seed{seed}")
    print(pipeline.render_leaderboard(ctx))
    if failed:
        print("error: not re-evaluated: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from bctbench.leaderboard import render
    from bctbench.paths import REFERENCE_ROOT, resolve_results_root

    root = resolve_results_root(args.results_root)
    reference = None if args.no_reference else Path(args.reference_root or REFERENCE_ROOT)
    plots = args.plots if args.plots is not None else root / args.benchmark / "plots"
    text = render(
        root,
        args.benchmark,
        fmt=args.format,
        out=args.out,
        plots_dir=plots,
        curve_methods=args.curve_methods,
        reference_root=reference,
        strict=args.strict,
    )
    if args.out is None:
        print(text)
    else:
        print(f"wrote {args.out}")
    if args.wandb:
        from bctbench.leaderboard.render import publish
        from bctbench.tracking import wandb_mode

        mode = wandb_mode()
        _, run_id, folder = publish(
            root,
            args.benchmark,
            root.parent / "wandb-runs",
            plots,
            args.curve_methods,
            reference_root=reference,
            strict=args.strict,
        )
        if run_id is None:
            print(f"W&B: nothing published (mode {mode})")
        elif mode == "offline":
            print(f"W&B (offline): run {run_id} in {folder}; upload with `wandb sync {folder}`")
        else:
            print(f"W&B: published run {run_id}")
    return 0


COMMANDS = {
    "methods": _cmd_methods,
    "benchmarks": _cmd_benchmarks,
    "make-synthetic": _cmd_make_synthetic,
    "prepare-data": _cmd_prepare_data,
    "train-old": _cmd_train_old,
    "run": _cmd_run,
    "run-all": _cmd_run_all,
    "tune": _cmd_tune,
    "evaluate": _cmd_evaluate,
    "reevaluate": _cmd_reevaluate,
    "leaderboard": _cmd_leaderboard,
}


def _check_args(args: argparse.Namespace) -> None:
    """Coerce and check the numeric options in place; a bad value is a one-line :class:`ConfigError`."""
    from bctbench.config import check_runtime_option, parse_devices

    if getattr(args, "seed", None) is not None:
        args.seed = check_runtime_option("seed", args.seed, "--seed")
    if getattr(args, "seeds", None) is not None:
        seeds = [check_runtime_option("seed", s, "--seeds") for s in args.seeds]
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            raise ConfigError(f"--seeds: seed {dup[0]} given twice")
        args.seeds = seeds
    if getattr(args, "num_workers", None) is not None:
        args.num_workers = check_runtime_option("num_workers", args.num_workers, "--num-workers")
    if getattr(args, "validate_every", None) is not None:
        args.validate_every = check_runtime_option("validate_every", args.validate_every, "--validate-every")
    if getattr(args, "num_nodes", None) is not None:
        args.num_nodes = check_runtime_option("num_nodes", args.num_nodes, "--num-nodes")
    if getattr(args, "devices", None) is not None:
        args.devices = parse_devices(args.devices, "--devices")


def _silence_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so that the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests' StringIO)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from bctbench import progress

    progress.configure(not getattr(args, "quiet", False))
    try:
        _check_args(args)
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:  # `bctbench methods | head -1`: the reader is gone; end quietly like `yes | head`
        _silence_stdout()
        return 141
    except BCTBenchError as exc:
        if args.verbose or os.environ.get("BCTBENCH_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or vanished path while writing: one line, exit 2
        if args.verbose or os.environ.get("BCTBENCH_TRACEBACK"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
