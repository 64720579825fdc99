"""Single runs: fit one method against the old model of a seed, evaluate, write the RunResult; and the loop
over methods × seeds."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bctbench.config import (
    method_annotations,
    parse_set_options,
    split_overrides,
)
from bctbench.errors import BCTBenchError, ConfigError
from bctbench.pipeline.context import (
    RunContext,
    Runtime,
    _jsonable,
    _primary_process,
    _workers,
    check_writable,
    isolated_rng,
)
from bctbench.pipeline.dataset import (
    _check_dataset_unchanged,
    build_datamodule,
    dataset_fingerprint,
    ensure_dataset,
    load_eval_sets,
    split_sha256,
)
from bctbench.pipeline.method_setup import (
    _build_method,
    _check_old_unchanged,
    _eval_variants,
    _flags,
    _identities,
    artifact_store,
    evaluate_method,
    method_hparams_digest,
    method_parameters,
)
from bctbench.pipeline.old_model import ensure_old_model
from bctbench.pipeline.sequential import run_sequential
from bctbench.pipeline.trainer import (
    _callbacks,
    _commit,
    _cpu_threads,
    _fit,
    _prepare_work,
    _trainer,
    training_logger,
    training_precision,
    wandb_dir,
)

log = logging.getLogger("bctbench")


@dataclass
class TrainedRun:
    """A method trained against old model ``seed`` (what :func:`train_method` returns on rank 0)."""

    cls: type
    model: Any
    seed: int
    old_ref: Any
    dataset_sha256: str | None
    hparams: dict[str, Any]
    digest: str
    run_dir: Path
    work: Path
    ckpt_path: str | None
    logger: Any
    wandb_dir: Path
    eval_sets: list
    timings: dict[str, float] = field(default_factory=dict)


def resolve_method(
    ctx: RunContext,
    method_name: str,
    *,
    seed: int,
    overrides: list[str] | None,
    runtime: Runtime,
    preset: str | None = None,
) -> tuple[type, dict[str, Any], int, Runtime]:
    """``(method class, its keyword hyperparameters, seed, runtime)`` from a name, ``--set`` options and a
    preset (which cannot be combined with hyperparameter ``--set`` options). Fails before any work."""
    from bctbench import presets
    from bctbench.registry import get_method

    cls = get_method(method_name)  # unknown names fail here, before any work
    params = method_parameters(cls)
    method_kw, runtime_kw = split_overrides(
        parse_set_options(overrides), params, cls.name, method_annotations(cls)
    )
    if preset is not None:
        if method_kw:
            raise ConfigError(
                f"--preset {preset} and hyperparameter --set options ({', '.join(sorted(method_kw))}) cannot be "
                "combined: a preset row holds exactly the preset's hyperparameters"
            )
        method_kw = presets.resolve(ctx.spec, cls, preset)
    if "seed" in runtime_kw:
        seed = int(runtime_kw.pop("seed"))
    return cls, method_kw, seed, runtime.apply(runtime_kw)


def train_method(
    ctx: RunContext,
    cls: type,
    method_kw: dict[str, Any],
    *,
    seed: int,
    runtime: Runtime,
    preset: str | None = None,
    eval_sets_loader: Callable[[RunContext], list] = load_eval_sets,
    run_dir: Path | None = None,
    wandb_job: str | None = None,
) -> TrainedRun | None:
    """Train ``cls`` with ``method_kw`` against old model ``seed`` in ``<run dir>.partial`` (resumable);
    return the :class:`TrainedRun` on rank 0 (None on other ranks). ``eval_sets_loader`` loads, and so
    validates, the sets the run will be scored on before any training; ``run_dir`` defaults to the run's cache
    folder; ``wandb_job`` (None: the method's name) is the W&B job type (no old-model run is logged for a
    job other than the method's)."""
    import lightning.pytorch as pl

    from bctbench import tracking
    from bctbench.results import run_label

    spec = ctx.spec
    timings: dict[str, float] = {}
    t0 = time.time()
    check_writable(ctx.results_root, ctx.cache_root)
    ensure_dataset(ctx)
    dataset_sha256 = dataset_fingerprint(ctx)
    eval_sets = eval_sets_loader(ctx)  # every input is validated before training
    _cpu_threads(ctx, runtime)
    old_ref = ensure_old_model(ctx, runtime, seed=seed)  # seed k trains against old model k
    timings["old_model"] = time.time() - t0

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = build_datamodule(ctx, "new", runtime, seed)
    dm.prepare_data()
    dm.setup("fit")
    model = _build_method(ctx, cls, method_kw, dm, old_ref, spec.models.old_backbone)
    t0 = time.time()
    if cls.required_artifacts:
        with isolated_rng():  # cold and warm artefact caches leave the same random state for training
            model.prepare_artifacts(artifact_store(ctx, model, dm, runtime))
    timings["artifacts"] = time.time() - t0

    hparams = {k: v for k, v in model.hparams.items() if k != "setup"}
    digest = method_hparams_digest(cls, hparams)
    run_dir = run_dir if run_dir is not None else ctx.run_dir(cls.name, seed, digest, preset)
    provenance = {
        "method": cls.name,
        "seed": seed,
        "old_identity": old_ref.identity,
        "benchmark_sha256": spec.sha256,
        "dataset_sha256": dataset_sha256,
        "split_sha256": split_sha256(ctx),
        "hparams_digest": digest,
    }
    work, ckpt_path = _prepare_work(run_dir, runtime.resume, provenance)
    config = {
        "benchmark": spec.name,
        "benchmark_sha256": spec.sha256,
        "method": cls.name,
        "preset": preset,
        "seed": seed,
        "method_hparams": hparams,
        "hparams_digest": digest,
        "old_identity": old_ref.identity,
        "dataset_sha256": dataset_sha256,
        "split_sha256": provenance["split_sha256"],
        "spec": spec.to_dict(),
    }
    if _primary_process():
        (work / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if runtime.wandb and _primary_process() and wandb_job is None:
        tracking.log_old_model(spec.name, seed, old_ref.path, old_ref.identity, wandb_dir(ctx))
    logger = training_logger(
        ctx,
        runtime,
        cls,
        seed,
        config,
        work,
        label=run_label(cls.name, digest, preset),
        digest=digest,
        old_model=(old_ref.path, old_ref.identity),
        job_type=wandb_job,
    )
    from bctbench.resume import ResumeState

    callbacks = [*_callbacks(work, with_lr_monitor=True), ResumeState(provenance)]
    if runtime.validate_every > 0 and spec.tuning.validation_sets:
        from bctbench.pipeline.dataset import load_validation_sets, test_transform
        from bctbench.validation_monitor import validation_monitor

        callbacks.append(
            validation_monitor(load_validation_sets(ctx), test_transform(ctx), runtime.validate_every)
        )
    trainer = _trainer(
        ctx,
        runtime,
        max_epochs=spec.training.epochs,
        default_root_dir=work,
        logger=logger,
        callbacks=callbacks,
    )
    t0 = time.time()
    _fit(trainer, model, dm, ckpt_path)
    timings["fit"] = time.time() - t0
    _check_old_unchanged(model.old, old_ref)
    if trainer.global_rank != 0 and trainer.world_size > 1:
        return None
    return TrainedRun(
        cls,
        model,
        seed,
        old_ref,
        dataset_sha256,
        hparams,
        digest,
        run_dir,
        work,
        ckpt_path,
        logger,
        wandb_dir(ctx),
        eval_sets,
        timings,
    )


def run(
    ctx: RunContext,
    method_name: str,
    *,
    seed: int = 0,
    overrides: list[str] | None = None,
    runtime: Runtime | None = None,
    preset: str | None = None,
):
    """Train, evaluate and record one (method, seed) run; returns the written :class:`RunResult`.

    ``preset``: a named hyperparameter preset (``tuned`` or a method variant, :mod:`bctbench.presets`); the
    run is then its own leaderboard row ``method:<preset>``."""
    from bctbench import tracking
    from bctbench.results import RunResult, collect_provenance, write_result

    cls, method_kw, seed, runtime = resolve_method(
        ctx, method_name, seed=seed, overrides=overrides, runtime=runtime or Runtime(), preset=preset
    )
    spec = ctx.spec
    if spec.sequential_steps > 1:
        return run_sequential(ctx, cls, method_kw, seed=seed, runtime=runtime, preset=preset)
    tr = train_method(ctx, cls, method_kw, seed=seed, runtime=runtime, preset=preset)
    if tr is None:
        return None
    timings = tr.timings
    t0 = time.time()
    encoders = tr.model.encoders()
    report = evaluate_method(ctx, runtime, tr.model, encoders, eval_sets=tr.eval_sets)
    timings["evaluate"] = time.time() - t0
    _check_dataset_unchanged(ctx, tr.dataset_sha256)

    prov = collect_provenance()
    wandb_on = tr.logger.__class__.__name__ == "WandbLogger"
    result = RunResult(
        benchmark=spec.name,
        method=cls.name,
        seed=seed,
        metrics=report.rows,
        curves={"backfill": report.curves, "backfill_mode": cls.backfill_mode},
        primary=report.primary,
        method_hparams=_jsonable(tr.hparams),
        flags=_flags(cls, tr.hparams, spec),
        benchmark_sha256=spec.sha256,
        old_identity=tr.old_ref.identity,
        split_sha256=split_sha256(ctx),
        hparams_digest=tr.digest,
        per_query=report.per_query,
        git=prov.get("git", {}),
        env={
            **prov.get("env", {}),
            "num_workers": _workers(ctx, runtime),
            "precision": training_precision(ctx, runtime),
        },
        eval_variants={**_eval_variants(spec, tr.dataset_sha256), "encoders": _identities(encoders)},
        wandb_run=getattr(tr.logger, "version", None) if wandb_on else None,
        timings=timings,
        resumed=tr.ckpt_path is not None,
        preset=preset,
    )
    path = write_result(result, ctx.results_root)
    _commit(tr.work, tr.run_dir)
    log.info("result written: %s", path)
    if wandb_on:
        tracking.log_run_result(
            result,
            path,
            save_dir=tr.wandb_dir,
            board=board_summary(ctx, result),
            checkpoint=tr.run_dir / "checkpoints" / "last.ckpt",
        )
    return result


def board_summary(ctx: RunContext, result) -> dict:
    """This run's P-metrics and verdicts among the comparable results of its benchmark (reference results +
    the results root), for the W&B summary; ``{}`` when the board cannot be read (a run never fails here)."""
    from bctbench.comparability import REFERENCE, YOURS
    from bctbench.leaderboard import load_board
    from bctbench.leaderboard.dashboard import run_summary
    from bctbench.paths import REFERENCE_ROOT, is_reference_root

    mine = is_reference_root(ctx.results_root)
    try:
        board = load_board(ctx.results_root, ctx.spec.name, None if mine else REFERENCE_ROOT)
        return run_summary(board.entries, result.label, result.seed, REFERENCE if mine else YOURS)
    except BCTBenchError as exc:
        log.warning("W&B summary without leaderboard figures: %s", exc)
        return {}


def run_all(
    ctx: RunContext,
    *,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    runtime: Runtime | None = None,
    jobs: int | None = 1,
    force: bool = False,
    preset: str | None = None,
) -> list[str]:
    """Run every (method, seed); a failing run is reported and the others go on. Returns failed run names.

    ``jobs == 1`` (default): in this process, one run after the other, every run redone (``force`` is
    implied). ``jobs`` > 1, or None (automatic: one per GPU, else per CPU core): the subprocess queue of
    :func:`bctbench.run_queue.run_queue`, which skips runs whose result exists with the current identities
    (unless ``force``) and resumes interrupted ones."""
    from bctbench.registry import list_methods

    if jobs != 1:
        from bctbench.run_queue import run_queue

        return run_queue(
            ctx,
            methods=methods,
            seeds=seeds,
            overrides=overrides,
            runtime=runtime,
            jobs=jobs,
            force=force,
            preset=preset,
        )
    failed = []
    for name in methods or list_methods():
        for seed in seeds or list(ctx.spec.seeds):
            try:
                run(ctx, name, seed=seed, overrides=overrides, runtime=runtime, preset=preset)
            except BCTBenchError as exc:
                log.error("error: %s seed %d: %s", name, seed, exc)
                failed.append(f"{name}/seed{seed}")
    return failed


def render_leaderboard(ctx: RunContext) -> str:
    """The leaderboard of the run's benchmark: the results root's runs beside the reference results."""
    from bctbench.leaderboard import render
    from bctbench.paths import REFERENCE_ROOT, is_reference_root

    reference = None if is_reference_root(ctx.results_root) else REFERENCE_ROOT
    return render(ctx.results_root, ctx.spec.name, fmt="md", reference_root=reference)
