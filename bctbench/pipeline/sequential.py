"""Sequential upgrades (old → g1 → g2 ...): one generation trained against the previous one, then the chain's
AC/AA result."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from bctbench.config import (
    BenchmarkSpec,
)
from bctbench.errors import BCTBenchError
from bctbench.pipeline.context import (
    OldModelRef,
    RunContext,
    Runtime,
    _jsonable,
    _read_json,
    _workers,
    _write_json,
)
from bctbench.pipeline.dataset import (
    _check_dataset_unchanged,
    build_datamodule,
    dataset_fingerprint,
    ensure_dataset,
    split_sha256,
)
from bctbench.pipeline.method_setup import (
    _build_method,
    _eval_variants,
    _flags,
    artifact_store,
    build_evaluator,
    method_hparams_digest,
)
from bctbench.pipeline.old_model import ensure_old_model
from bctbench.pipeline.trainer import (
    _callbacks,
    _cpu_threads,
    _fit,
    _resume_path,
    _trainer,
    training_logger,
    wandb_dir,
)
from bctbench.results import run_label

log = logging.getLogger("bctbench")


# ------------------------------------------------------------------------------------ sequential
def _old_backbone_of(spec: BenchmarkSpec, generation: int) -> str:
    """Backbone of generation ``generation``: the old backbone for g0, the new backbone after."""
    return spec.models.old_backbone if generation == 0 else spec.models.new_backbone


def _generation_key(
    ctx: RunContext, method: str, method_kw: dict[str, Any], seed: int, step: int, old_sha: str
):
    blob = json.dumps(
        [ctx.spec.sha256, method, _jsonable(method_kw), int(seed), int(step), old_sha], sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_generation(
    ctx: RunContext,
    cls: type,
    method_kw: dict[str, Any],
    *,
    seed: int,
    step: int,
    old_ref: OldModelRef,
    runtime: Runtime,
    preset: str | None = None,
) -> tuple[OldModelRef, dict[str, Any]]:
    """Train generation ``step`` (>= 1) of a sequential benchmark with method ``cls``, the frozen generation
    ``step - 1`` (``old_ref``) as its old model, on the upgrade ``step - 1 -> step`` of the allocation.

    The new model is saved in the old-model checkpoint format (it is the next step's old model) under
    ``<cache>/runs/<benchmark>/<method>/seed<k>/gen<step>-<key>/``, ``key`` = hash of (spec, method,
    hyperparameters, seed, step, predecessor sha256); a finished generation with the same key is reused.
    Returns the checkpoint reference and the generation's provenance (``old_sha256``, ``old_digest_before`` /
    ``old_digest_after`` of the frozen predecessor, ``new_digest``, ``sha256``, ``hparams``, ``seconds``).
    ``preset``: the named preset of ``method_kw`` (it names the W&B run, ``method:<preset>``).
    Raises :class:`BCTBenchError` when the frozen predecessor changed during training.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from bctbench import tracking
    from bctbench.errors import CheckpointError as _CkptError
    from bctbench.method import module_digest
    from bctbench.old_model import load_old_model, save_old_checkpoint

    spec = ctx.spec
    key = _generation_key(ctx, cls.name, method_kw, seed, step, old_ref.identity)
    gen_dir = ctx.run_dir(cls.name, seed) / f"gen{step}-{key}"
    meta_path = gen_dir / "generation.json"
    ckpt = gen_dir / f"gen{step}.pt"
    if meta_path.is_file() and ckpt.is_file():
        info = _read_json(meta_path)
        try:
            load_old_model(ckpt, info.get("identity") or "?")
        except _CkptError:
            log.warning("generation %d: %s does not match %s; retraining", step, ckpt, meta_path)
        else:
            log.info("generation %d of %s seed %d: cached %s", step, cls.name, seed, ckpt)
            return OldModelRef(ckpt, info["identity"]), {**info, "path": str(ckpt.resolve())}

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = build_datamodule(ctx, "new", runtime, seed, step=step - 1)
    dm.prepare_data()
    dm.setup("fit")
    model = _build_method(ctx, cls, method_kw, dm, old_ref, _old_backbone_of(spec, step - 1))
    start = time.time()
    if cls.required_artifacts:  # recomputed for this predecessor: the store keys on its sha256
        model.prepare_artifacts(artifact_store(ctx, model, dm, runtime))
    old_before = module_digest(model.old.model)

    gen_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "benchmark": spec.name,
        "benchmark_sha256": spec.sha256,
        "method": cls.name,
        "seed": seed,
        "generation": step,
        "old_identity": old_ref.identity,
        "method_hparams": _jsonable({k: v for k, v in model.hparams.items() if k != "setup"}),
    }
    digest = method_hparams_digest(cls, config["method_hparams"])
    logger = training_logger(
        ctx,
        runtime,
        cls,
        seed,
        config,
        gen_dir,
        label=run_label(cls.name, digest, preset),
        digest=digest,
        suffix=f"g{step}",
    )
    trainer = _trainer(
        ctx,
        runtime,
        max_epochs=spec.training.epochs,
        default_root_dir=gen_dir,
        logger=logger,
        callbacks=_callbacks(gen_dir, with_lr_monitor=True),
    )
    ckpt_path = _resume_path(gen_dir, runtime.resume)
    log.info(
        "training generation %d of %s (seed %d) on upgrade %d -> %d", step, cls.name, seed, step - 1, step
    )
    try:
        _fit(trainer, model, dm, ckpt_path)
    finally:
        if not isinstance(logger, CSVLogger):
            tracking.finish_logger(logger)  # one W&B run per generation
    old_after = module_digest(model.old.model)
    if old_after != old_before:
        raise BCTBenchError(
            f"generation {step}: the frozen generation {step - 1} changed during training "
            f"({old_before} -> {old_after}); result not written"
        )
    info = {
        "step": step,
        "method": cls.name,
        "seed": seed,
        "key": key,
        "old_identity": old_ref.identity,
        "old_digest_before": old_before,
        "old_digest_after": old_after,
        "new_digest": module_digest(model.new),
        "hparams": _jsonable({k: v for k, v in model.hparams.items() if k != "setup"}),
        "seconds": time.time() - start,
    }
    if trainer.global_rank == 0:
        info["identity"] = save_old_checkpoint(
            model.new,
            ckpt,
            backbone=spec.models.new_backbone,
            meta={"benchmark": spec.name, "generation": step, "method": cls.name, "seed": seed, "key": key},
        )
        _write_json(
            meta_path, info
        )  # no absolute paths in cache records: a copied cache stays self-contained
    if trainer.world_size > 1:
        trainer.strategy.barrier("bctbench-generation")
        info = json.loads(meta_path.read_text())
    return OldModelRef(ckpt, info["identity"]), {**info, "path": str(ckpt.resolve())}


def run_sequential(
    ctx: RunContext,
    cls: type,
    method_kw: dict[str, Any],
    *,
    seed: int,
    runtime: Runtime,
    preset: str | None = None,
):
    """Sequential benchmark run: g0 (the seed's pinned old model, shared by every method), then g1 ... g{T-1}
    by the method, each with its immediate predecessor frozen as the old model; then the compatibility matrix
    over all generations (``g{i} -> g{j}``, ``i >= j``) on every eval set plus AC / AA (``docs/evaluation.md``
    §5.3). Writes and returns the :class:`RunResult`; the matrix summaries and each generation's provenance are
    in ``curves["sequential"]``."""
    from bctbench import tracking
    from bctbench.evaluation.sequential import compatibility_matrices, generation_name, sequential_pairs
    from bctbench.method import Encoder, module_digest
    from bctbench.old_model import load_old_model
    from bctbench.results import RunResult, collect_provenance, write_result

    spec = ctx.spec
    steps = spec.sequential_steps
    timings: dict[str, float] = {}
    t0 = time.time()
    ensure_dataset(ctx)
    dataset_sha256 = dataset_fingerprint(ctx)
    _cpu_threads(ctx, runtime)
    refs = [ensure_old_model(ctx, runtime, seed=seed)]
    timings["old_model"] = time.time() - t0
    generations: list[dict[str, Any]] = [
        {"step": 0, "method": None, "identity": refs[0].identity, "path": str(refs[0].path)}
    ]
    for step in range(1, steps):
        t0 = time.time()
        ref, info = train_generation(
            ctx, cls, method_kw, seed=seed, step=step, old_ref=refs[-1], runtime=runtime, preset=preset
        )
        refs.append(ref)
        generations.append(info)
        timings[f"gen{step}"] = time.time() - t0

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None
    t0 = time.time()
    encoders = {}
    for g, ref in enumerate(refs):
        frozen = load_old_model(ref.path, ref.identity, expect_backbone=_old_backbone_of(spec, g))
        embedder = frozen.model.embedder
        identity = f"old:{ref.identity}" if g == 0 else f"{cls.name}:{module_digest(embedder)}"
        encoders[generation_name(g)] = Encoder(embedder, identity)
    evaluator = build_evaluator(ctx, runtime, pairs=sequential_pairs(steps))
    report = evaluator.evaluate(encoders)
    timings["evaluate"] = time.time() - t0
    _check_dataset_unchanged(ctx, dataset_sha256)
    hparams = generations[-1].get("hparams", {}) if steps > 1 else {}
    prov = collect_provenance()
    result = RunResult(
        benchmark=spec.name,
        method=cls.name,
        seed=seed,
        metrics=report.rows,
        curves={
            "sequential": {
                "steps": steps,
                "generations": _jsonable(generations),
                "matrices": compatibility_matrices(report.rows, steps),
            }
        },
        primary=report.primary,
        method_hparams=_jsonable(hparams),
        flags=_flags(cls, hparams, spec),
        benchmark_sha256=spec.sha256,
        old_identity=refs[0].identity,
        split_sha256=split_sha256(ctx),
        hparams_digest=method_hparams_digest(cls, hparams),
        per_query=report.per_query,
        git=prov.get("git", {}),
        env={**prov.get("env", {}), "num_workers": _workers(ctx, runtime)},
        eval_variants=_eval_variants(spec, dataset_sha256),
        timings=timings,
        preset=preset,
    )
    path = write_result(result, ctx.results_root)
    log.info("result written: %s", path)
    if runtime.wandb:
        tracking.log_run_result(result, path, save_dir=wandb_dir(ctx))
    return result
