"""Lightning trainer set-up: precision, threads, callbacks, and the work folder a run trains in before it is
committed."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from bctbench.pipeline.context import RunContext, Runtime, _device, _primary_process, _workers, cpu_cores

log = logging.getLogger("bctbench")


# Expected with a frozen old submodule and small synthetic epochs; everything else stays visible.
_QUIET_WARNINGS = (
    r".*module\(s\) in eval mode at the start of training.*",
    r".*smaller than the logging interval.*",
    r".*does not have many workers.*",
    r".*isinstance\(treespec, LeafSpec\).*",
)


def _fit(trainer, module, datamodule, ckpt_path=None) -> None:
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)


# ------------------------------------------------------------------------------------------ trainer
def _trainer(
    ctx: RunContext,
    runtime: Runtime,
    *,
    max_epochs: int,
    default_root_dir: Path,
    logger: Any,
    callbacks: list | None = None,
):
    import lightning.pytorch as pl

    from bctbench import progress

    progress.quiet_lightning_logs()
    callbacks = list(callbacks or [])
    if progress.enabled() and not runtime.progress:  # no live bar (not a terminal): plain lines
        callbacks.append(progress.training_progress_callback())
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=runtime.accelerator,
        devices=runtime.devices,
        num_nodes=runtime.num_nodes,
        strategy=runtime.strategy,
        precision=training_precision(ctx, runtime),
        default_root_dir=str(default_root_dir),
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_progress_bar=runtime.progress,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        use_distributed_sampler=ctx.spec.training.sampler is None,
        profiler=runtime.profiler,
    )


def cpu_has_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX): bf16 autocast is then fast."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def training_precision(ctx: RunContext, runtime: Runtime) -> str:
    """The spec's training precision, except ``bf16-mixed`` on a CPU without native bfloat16, which runs in
    fp32 (``32-true``: emulated bf16 is slower than fp32); the result records which one ran."""
    precision = str(ctx.spec.training.precision)
    if precision.startswith("bf16") and _device(runtime) == "cpu" and not cpu_has_bf16():
        log.warning("this CPU has no native bfloat16: training in 32-true instead of %s", precision)
        return "32-true"
    return precision


def _cpu_threads(ctx: RunContext, runtime: Runtime) -> None:
    """On CPU, give torch the cores the data workers leave free (2 cores + 1 worker -> 1 thread): OpenMP
    threads competing with loader processes for the same cores make every step several times slower."""
    if _device(runtime) != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return
    workers = _workers(ctx, runtime)
    torch.set_num_threads(max(1, cpu_cores() - workers))


def _resume_path(run_dir: Path, resume: bool) -> str | None:
    """The checkpoint to resume from (``--resume``), else None after removing a previous run's checkpoints, so
    that ``last.ckpt`` is always this run's (Lightning would otherwise write ``last-v1.ckpt`` beside it)."""
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume:
        if last.is_file():
            return str(last)
        log.warning("--resume: no checkpoint at %s; training from scratch", last)
    if ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
    return None


def partial_dir(run_dir: Path) -> Path:
    """Where a run trains until it succeeds: ``<run dir>.partial`` (swapped into place by :func:`_commit`)."""
    return run_dir.with_name(run_dir.name + ".partial")


def _prepare_work(run_dir: Path, resume: bool, provenance: dict[str, Any]) -> tuple[Path, str | None]:
    """The folder this run trains in and the checkpoint it resumes from.

    A fresh run trains in an empty ``.partial`` folder (a stale one, left by a killed run, is removed), so a
    failure never touches the previous good run's folder. ``--resume`` continues an interrupted ``.partial``
    run, else a finished run (copied into ``.partial`` first); either checkpoint must carry this run's
    provenance (:func:`bctbench.resume.check_resume`)."""
    from bctbench.resume import check_resume, latest_checkpoint

    work = partial_dir(run_dir)
    if resume:
        for folder in (work, run_dir):
            last = latest_checkpoint(folder)
            if last is not None:
                check_resume(last, provenance)
                if folder == run_dir and _primary_process():
                    if work.exists():
                        shutil.rmtree(work)
                    shutil.copytree(run_dir, work)
                return work, str(work / "checkpoints" / last.name)
        log.warning("--resume: no checkpoint under %s or %s; training from scratch", work, run_dir)
    if _primary_process():
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
    return work, None


def _commit(work: Path, run_dir: Path) -> None:
    """Swap a successful run's folder into place (the previous one is removed only after the swap)."""
    backup = run_dir.with_name(run_dir.name + ".previous")
    if backup.exists():
        shutil.rmtree(backup)
    if run_dir.exists():
        os.replace(run_dir, backup)
    os.replace(work, run_dir)
    shutil.rmtree(backup, ignore_errors=True)


def training_logger(
    ctx: RunContext,
    runtime: Runtime,
    cls: type,
    seed: int,
    config: dict[str, Any],
    log_dir: Path,
    *,
    label: str,
    digest: str,
    suffix: str = "",
    old_model: tuple[Path, str] | None = None,
    job_type: str | None = None,
) -> Any:
    """The Lightning logger of one training job: a W&B run (:func:`bctbench.tracking.make_wandb_logger`,
    files under ``<results root>/../wandb-runs``) or, when W&B is off or fails, a CSV logger in ``log_dir``."""
    from lightning.pytorch.loggers import CSVLogger

    from bctbench import tracking

    logger = tracking.make_wandb_logger(
        cls.name,
        ctx.spec.name,
        seed,
        config,
        wandb_dir(ctx),
        enabled=runtime.wandb,
        suffix=suffix,
        label=label,
        hparams_digest=digest,
        old_model=old_model,
        job_type=job_type,
    )
    return logger if logger is not None else CSVLogger(str(log_dir), name="logs")


def wandb_dir(ctx: RunContext) -> Path:
    """Where W&B keeps its run files: ``wandb-runs`` beside the results root."""
    return ctx.results_root.parent / "wandb-runs"


def _callbacks(run_dir: Path, with_lr_monitor: bool) -> list:
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    cbs: list = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="epoch{epoch:03d}",
            auto_insert_metric_name=False,
            save_last=True,
            save_top_k=-1,
            every_n_epochs=1,
            enable_version_counter=False,
        )
    ]
    if with_lr_monitor:
        cbs.append(LearningRateMonitor(logging_interval="epoch"))
    return cbs
