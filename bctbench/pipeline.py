"""The benchmark pipeline: prepare data → train or reuse the old model → train the new model with a method
→ evaluate with the shared evaluator → write the RunResult → (W&B) → leaderboard.

Nothing here knows any method by name: methods come from the registry and talk through the plugin contract.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bctbench.config import (
    BenchmarkSpec,
    load_benchmark,
    method_annotations,
    parse_set_options,
    split_overrides,
)
from bctbench.errors import BCTBenchError, CheckpointError, ConfigError, describe
from bctbench.paths import resolve_cache_root, resolve_data_root, resolve_results_root

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


@dataclass
class Runtime:
    """Execution options that are not part of the protocol (devices, workers, logging)."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int | None = None
    wandb: bool = True
    resume: bool = False
    progress: bool = False
    profiler: Any = None  # a Lightning profiler (benchmarks/perf/run_profile.py); not a protocol setting

    def apply(self, options: dict[str, Any]) -> Runtime:
        """Return a copy with ``--set`` runtime options applied (``wandb=false`` etc.)."""
        fields = {f.name for f in dataclasses.fields(self)}
        updates = {k: v for k, v in options.items() if k in fields}
        return dataclasses.replace(self, **updates)


@dataclass
class OldModelRef:
    """An old model's checkpoint file and its content identity."""

    path: Path
    identity: str


@dataclass
class RunContext:
    """A benchmark spec plus the roots it reads and writes."""

    spec: BenchmarkSpec
    data_root: Path
    cache_root: Path
    results_root: Path

    @classmethod
    def create(
        cls, benchmark: str, data_root=None, cache_root=None, results_root=None, *, reference: bool = False
    ) -> RunContext:
        """Resolve the roots. ``reference``: write into the committed reference results (clean tree only);
        otherwise the results root must not be the reference folder."""
        from bctbench.paths import REFERENCE_ROOT, is_reference_root

        if reference:
            if results_root is not None and not is_reference_root(results_root):
                raise ConfigError("--reference writes to the reference folder; do not pass --results-root")
            _require_clean_tree()
            results = REFERENCE_ROOT
        else:
            results = resolve_results_root(results_root)
            if is_reference_root(results):
                raise ConfigError(
                    f"{results}: the reference results are written only by `--reference` runs from a clean "
                    "tree; choose another --results-root"
                )
        return cls(
            load_benchmark(benchmark), resolve_data_root(data_root), resolve_cache_root(cache_root), results
        )

    @property
    def gldv2_root(self) -> Path:
        return self.data_root / self.spec.data.root

    def run_dir(self, method: str, seed: int, digest: str = "default") -> Path:
        from bctbench.results import run_label

        return self.cache_root / "runs" / self.spec.name / run_label(method, digest) / f"seed{seed}"

    def old_key(self) -> str:
        """Hash of everything the old model depends on (not the eval protocol)."""
        s = self.spec
        blob = json.dumps(
            [
                dataclasses.asdict(s.data),
                s.models.old_backbone,
                s.models.embed_dim,
                s.models.neck,
                s.models.pretrained_weights,
                {
                    k: v for k, v in dataclasses.asdict(s.training).items() if k != "epochs"
                },  # new-model epochs
                {
                    k: v for k, v in dataclasses.asdict(s.old_model).items() if k != "pinned"
                },  # pins: not inputs
            ],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def old_dir(self) -> Path:
        return self.cache_root / "old" / self.spec.name / self.old_key()


def _require_clean_tree() -> None:
    """Reference results come from a committed state: refuse when tracked files differ from HEAD."""
    from bctbench.results import collect_provenance

    git = collect_provenance().get("git", {})
    if git.get("sha") is None:
        raise ConfigError("--reference needs a git checkout (the result records the commit)")
    if git.get("dirty"):
        raise ConfigError("--reference needs a clean tree: commit or stash the changes first (git status)")


# ----------------------------------------------------------------------------------------------- data
def ensure_dataset(ctx: RunContext) -> None:
    """Generate the embedded synthetic dataset on first use (no-op for real data)."""
    d = ctx.spec.data
    if d.dataset == "synthetic":
        from datamodules.synthetic import ensure_synthetic, synthetic_size

        name = Path(d.root).parts[0]
        ensure_synthetic(
            ctx.data_root, name=name, seed=d.synthetic_seed, config=synthetic_size(d.synthetic_size)
        )


def dataset_fingerprint(ctx: RunContext) -> str | None:
    """sha256 that identifies the dataset's bytes: the synthetic manifest's tree sha256 (None for real data,
    whose split lock sha256 is recorded separately)."""
    if ctx.spec.data.dataset != "synthetic":
        return None
    manifest = ctx.data_root / Path(ctx.spec.data.root).parts[0] / "manifest.json"
    try:
        return json.loads(manifest.read_text())["tree_sha256"]
    except (OSError, ValueError, KeyError):
        return None


def build_datamodule(ctx: RunContext, stage: str, runtime: Runtime, seed: int, step: int | None = None):
    """Training data of ``stage`` ("old" | "new"); ``step`` = k selects the upgrade k -> k+1 of a sequential
    allocation (required there, None otherwise)."""
    from datamodules.gldv2 import GLDv2DataModule

    t = ctx.spec.training
    workers = _workers(ctx, runtime)
    return GLDv2DataModule(
        ctx.gldv2_root,
        ctx.spec.data.allocation,
        stage=stage,
        image_size=t.image_size,
        batch_size=t.batch_size,
        num_workers=workers,
        sampler=t.sampler,
        m_per_class=t.m_per_class,
        seed=seed,
        ratio=ctx.spec.data.ratio,
        drop_last=t.drop_last,
        augmentation=t.augmentation,
        resize=t.resize,
        cache_decoded=t.cache_decoded_images,
        step=step,
    )


def split_sha256(ctx: RunContext) -> str:
    """sha256 of the benchmark's split CSV, as recorded in its lock file."""
    from datamodules.gldv2 import split_paths

    _, lock_path, _ = split_paths(ctx.gldv2_root, ctx.spec.data.allocation)
    return json.loads(lock_path.read_text())["csv_sha256"]


def training_images(dm, stage: str):
    """:class:`~bctbench.artifacts.TrainingImages` of the ``stage`` ("old" | "new") training set of ``dm``."""
    from bctbench.artifacts import TrainingImages

    items = dm.train_image_paths_and_labels(stage)
    num_classes = dm.num_old_classes if stage == "old" else dm.num_new_classes
    return TrainingImages(
        items.paths, torch.as_tensor(items.labels), torch.as_tensor(items.old_labels), num_classes
    )


def test_transform(ctx: RunContext):
    from bctbench.data import build_test_transform

    return build_test_transform(ctx.spec.training.image_size, resize=ctx.spec.training.resize)


def load_eval_sets(ctx: RunContext) -> list:
    from datamodules.gldv2 import load_gldv2_eval_set
    from datamodules.revisited import load_revisited_eval_set

    out = []
    for es in ctx.spec.evaluation.eval_sets:
        root = ctx.data_root / es.root
        if es.kind == "revisited":
            out.append(load_revisited_eval_set(root, es.name, query_crop=ctx.spec.evaluation.query_crop))
        else:
            out.append(load_gldv2_eval_set(root, name=es.name))
    return out


def _check_dataset_unchanged(ctx: RunContext, dataset_sha256: str | None) -> None:
    """Refuse to write a result when the dataset's tree sha256 changed since the run started."""
    now = dataset_fingerprint(ctx)
    if now != dataset_sha256:
        raise BCTBenchError(
            f"dataset under {ctx.data_root} was regenerated while this run used it (tree sha256 "
            f"{dataset_sha256} -> {now}); result not written, run again"
        )


def prepare_data(ctx: RunContext) -> dict[str, Any]:
    """Validate the dataset, write split files (with lock) and load the eval sets; return a summary."""
    from datamodules.gldv2 import load_split, prepare_split

    ensure_dataset(ctx)
    prepare_split(ctx.gldv2_root, ctx.spec.data.allocation, ratio=ctx.spec.data.ratio)
    split = load_split(ctx.gldv2_root, ctx.spec.data.allocation)
    info: dict[str, Any] = {
        "benchmark": ctx.spec.name,
        "gldv2_root": str(ctx.gldv2_root),
        "allocation": ctx.spec.data.allocation,
        "split_rows": len(split),
        "old_images": int(split["in_old"].sum()) if "in_old" in split else None,
        "new_images": int(split["in_new"].sum()) if "in_new" in split else None,
        "split_sha256": split_sha256(ctx),
    }
    for es in load_eval_sets(ctx):
        info[f"eval/{es.name}"] = f"{len(es.query_paths)} queries x {len(es.gallery_paths)} gallery"
    return info


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

    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator=runtime.accelerator,
        devices=runtime.devices,
        num_nodes=runtime.num_nodes,
        strategy=runtime.strategy,
        precision=training_precision(ctx, runtime),
        default_root_dir=str(default_root_dir),
        logger=logger if logger is not None else False,
        callbacks=callbacks or [],
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
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))


def _device(runtime: Runtime) -> str:
    if runtime.accelerator in ("gpu", "cuda") or (
        runtime.accelerator == "auto" and torch.cuda.is_available()
    ):
        return "cuda"
    return "cpu"


# ----------------------------------------------------------------------------------------- old model
def pinned_old_model_path(spec: BenchmarkSpec, seed: int) -> Path:
    """The committed file of a pinned old model: ``<specs folder>/old_models/<benchmark>/seed<k>.pt``."""
    from bctbench.config import BENCHMARKS_DIR

    base = Path(spec.source).parent if spec.source else BENCHMARKS_DIR
    return base / "old_models" / spec.name / f"seed{int(seed)}.pt"


def expected_old_classes(ctx: RunContext) -> int:
    """Number of classes the benchmark's old model must have (from the split, written if missing)."""
    dm = build_datamodule(ctx, "old", Runtime(), 0, step=0 if ctx.spec.sequential_steps > 1 else None)
    dm.prepare_data()
    dm.setup("fit")
    return int(dm.num_classes)


def _old_meta(ctx: RunContext, seed: int) -> dict[str, Any]:
    """What an old model depends on and records inside its checkpoint (deterministic: no timings)."""
    return {
        "benchmark": ctx.spec.name,
        "old_key": ctx.old_key(),
        "seed": int(seed),
        "epochs": ctx.spec.old_model.epochs,
        "dataset_sha256": dataset_fingerprint(ctx),
        "split_sha256": split_sha256(ctx),
    }


def _check_old_data(ctx: RunContext, path: Path, meta: dict[str, Any]) -> None:
    """Refuse an old model trained on other data than the benchmark's (dataset / split digests in its meta)."""
    for key, now in (("dataset_sha256", dataset_fingerprint(ctx)), ("split_sha256", split_sha256(ctx))):
        then = meta.get(key)
        if then is not None and now is not None and then != now:
            raise CheckpointError(
                f"{path}: old model was trained on {key} {then[:12]}, the benchmark's data has {now[:12]} "
                "(regenerated or changed data: pin new old models with `bctbench train-old --pin`)"
            )


def ensure_old_model(
    ctx: RunContext,
    runtime: Runtime | None = None,
    *,
    checkpoint: str | None = None,
    seed: int = 0,
    retrain: bool = False,
) -> OldModelRef:
    """Return old model ``seed`` of the benchmark: given, pinned, cached or freshly trained (in that order).

    * ``checkpoint`` (``--checkpoint``) or the spec's ``old_model.checkpoint`` (``{seed}`` replaced): checked
      against the spec (backbone, embedding size, number of old classes) and, when the seed is pinned, against
      the pinned identity; a copy goes into the cache.
    * A pinned seed (``old_model.pinned``): the committed file, verified against the identity and the data.
    * Otherwise the cache ``<cache>/old/<benchmark>/<old key>/seed<k>/``, else training with seed k.

    ``retrain``: ignore pins and cache and train (``train-old --pin`` uses it). Raises
    :class:`CheckpointError` on any mismatch.
    """
    from bctbench.identity import atomic_write_bytes, short
    from bctbench.old_model import load_old_model, save_old_checkpoint
    from bctbench.results import machine_info

    runtime = runtime or Runtime()
    spec = ctx.spec
    seed = int(seed)
    pinned = spec.old_model.pinned.get(seed)
    seed_dir = ctx.old_dir / f"seed{seed}"
    meta_path = seed_dir / "old_model.json"
    cached = seed_dir / "old_model.pt"
    ensure_dataset(ctx)

    def load(path: Path, identity: str | None):
        return load_old_model(
            path,
            identity,
            expect_backbone=spec.models.old_backbone,
            expect_embed_dim=spec.models.embed_dim,
            expect_num_classes=expected_old_classes(ctx),
        )

    given = checkpoint or (spec.old_model.checkpoint or "").replace("{seed}", str(seed))
    if given and not retrain:
        path = Path(given)
        old = load(path, pinned)
        atomic_write_bytes(cached, path.read_bytes())
        _write_json(meta_path, {"identity": old.identity, "file": cached.name, "source": "registered"})
        log.info("old model %d: registered %s (identity %s)", seed, path, short(old.identity))
        return OldModelRef(cached, old.identity)
    if pinned and not retrain:
        path = pinned_old_model_path(spec, seed)
        if not path.is_file():
            raise CheckpointError(
                f"{path}: the pinned old model of seed {seed} is missing (old_model.pinned in {spec.source})"
            )
        old = load(path, pinned)
        _check_old_data(ctx, path, old.meta)
        return OldModelRef(path, pinned)
    if meta_path.is_file() and cached.is_file() and not retrain:
        meta = _read_json(meta_path)
        identity = meta.get("identity")
        old = load(cached, identity)
        _check_old_data(ctx, cached, old.meta)
        return OldModelRef(cached, old.identity)

    import lightning.pytorch as pl

    from bctbench.training import ClassifierModule

    _cpu_threads(ctx, runtime)
    pl.seed_everything(seed, workers=True, verbose=False)
    # sequential allocations: the old model is generation 0, trained on the first subset
    dm = build_datamodule(ctx, "old", runtime, seed, step=0 if spec.sequential_steps > 1 else None)
    dm.prepare_data()
    dm.setup("fit")
    module = ClassifierModule(
        backbone=spec.models.old_backbone,
        embed_dim=spec.models.embed_dim,
        num_classes=dm.num_classes,
        optimizer=dataclasses.asdict(spec.training.optimizer),
        max_epochs=spec.old_model.epochs,
        pretrained_weights=spec.models.pretrained_weights,
    )
    log.info(
        "training old model %d of %s (%d classes, %d epochs)",
        seed,
        spec.name,
        dm.num_classes,
        spec.old_model.epochs,
    )
    start = time.time()
    trainer = _trainer(ctx, runtime, max_epochs=spec.old_model.epochs, default_root_dir=seed_dir, logger=None)
    _fit(trainer, module, dm)
    identity = save_old_checkpoint(
        module.model,
        cached,
        backbone=spec.models.old_backbone,
        meta=_old_meta(ctx, seed),
        sidecar={"train_seconds": round(time.time() - start, 3), **machine_info()},
    )
    _write_json(meta_path, {"identity": identity, "file": cached.name, "source": "trained"})
    log.info("old model %d saved: %s (identity %s)", seed, cached, short(identity))
    return OldModelRef(cached, identity)


def pin_old_model(ctx: RunContext, seed: int, runtime: Runtime | None = None) -> OldModelRef:
    """Train old model ``seed`` afresh and copy it to its committed place (:func:`pinned_old_model_path`).

    Prints nothing; the caller reports the identity to put under ``old_model.pinned`` in the spec."""
    from bctbench.identity import atomic_write_bytes
    from bctbench.old_model import sidecar_path

    ref = ensure_old_model(ctx, runtime, seed=seed, retrain=True)
    target = pinned_old_model_path(ctx.spec, seed)
    atomic_write_bytes(target, ref.path.read_bytes())
    if sidecar_path(ref.path).is_file():  # timings and machine of the training, beside the weights
        atomic_write_bytes(sidecar_path(target), sidecar_path(ref.path).read_bytes())
    return OldModelRef(target, ref.identity)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from bctbench.identity import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}); delete it to retrain") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object; delete it to retrain")
    return data


# ------------------------------------------------------------------------------------------- methods
def method_parameters(cls: type) -> dict[str, Any]:
    """Keyword-only hyperparameters of a method class: name -> default."""
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_evaluator(
    ctx: RunContext, runtime: Runtime, eval_sets: list | None = None, pairs: list[str] | None = None
):
    from bctbench.evaluation.compatibility import BackfillSettings, CompatibilityEvaluator
    from bctbench.evaluation.features import FeatureCache

    e = ctx.spec.evaluation
    workers = _workers(ctx, runtime)
    return CompatibilityEvaluator(
        eval_sets if eval_sets is not None else load_eval_sets(ctx),
        test_transform(ctx),
        pairs=e.pairs if pairs is None else pairs,
        cache=FeatureCache(ctx.cache_root / "features" / ctx.spec.name),
        variant="crop" if e.query_crop else "advbct_compat",
        batch_size=e.batch_size,
        num_workers=workers,
        device=_device(runtime),
        progress=runtime.progress,
        backfill=BackfillSettings(
            n_fractions=e.backfill_fractions, seeds=e.backfill_seeds, modes=e.backfill_modes
        ),
    )


def _artifact_store(ctx: RunContext, model, dm, runtime: Runtime):
    from bctbench.artifacts import ArtifactStore

    return ArtifactStore(
        ctx.cache_root / "artifacts" / ctx.spec.name,
        model.old,
        split_sha256(ctx),
        new_images=lambda: training_images(dm, "new"),
        old_images=lambda: training_images(dm, "old"),
        transform=test_transform(ctx),
        batch_size=ctx.spec.evaluation.batch_size,
        num_workers=_workers(ctx, runtime),
        device=_device(runtime),
    )


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


def _primary_process() -> bool:
    """False in the extra processes a multi-GPU launcher starts (they re-run the pipeline up to training)."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("LOCAL_RANK", "NODE_RANK"))


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


def check_writable(*roots: Path) -> None:
    """Refuse, before any work, a root that is a file or cannot be written (one line naming it)."""
    import tempfile

    for root in roots:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root}: exists and is not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise ConfigError(f"{root}: cannot write there ({exc.strerror or exc})") from None


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


def _eval_variants(spec, dataset_sha256: str | None) -> dict:
    """What the evaluation saw, stored with every result: dataset bytes, query crop, input size, resize."""
    return {
        "dataset_sha256": dataset_sha256,
        "query_crop": spec.evaluation.query_crop,
        "image_size": spec.training.image_size,
        "resize": spec.training.resize,
    }


@contextlib.contextmanager
def isolated_rng():
    """Run a block without touching the global random state (Python, NumPy, torch CPU and CUDA)."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()  # noqa: NPY002 - the global state Lightning seeds
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)  # noqa: NPY002


def _hparams_digest(cls: type, hparams: dict[str, Any]) -> str:
    """Digest of the hyperparameters that differ from the method's defaults (``"default"`` if none)."""
    from bctbench.results import hparams_digest

    defaults = method_parameters(cls)
    non_default = {k: v for k, v in hparams.items() if k in defaults and defaults[k] != v}
    return hparams_digest(_jsonable(non_default))


def _check_old_unchanged(old, ref: OldModelRef) -> None:
    """Refuse to evaluate when the frozen old model's weights or buffers changed during training."""
    from bctbench.identity import short

    now = old.current_identity()
    if now != ref.identity:
        raise BCTBenchError(
            f"the frozen old model changed during training (identity {short(ref.identity)} -> {short(now)}); "
            "result not written — a plugin must never modify `self.old`"
        )


def _workers(ctx: RunContext, runtime: Runtime) -> int:
    return ctx.spec.training.num_workers if runtime.num_workers is None else runtime.num_workers


def _build_method(ctx: RunContext, cls, method_kw: dict, dm, old_ref, old_backbone: str):
    """Instantiate method ``cls`` for the data module ``dm`` against the frozen old checkpoint ``old_ref``."""
    from bctbench.method import MethodSetup

    spec = ctx.spec
    setup = MethodSetup(
        backbone_new=spec.models.new_backbone,
        backbone_old=old_backbone,
        embed_dim=spec.models.embed_dim,
        num_classes_new=dm.num_classes,
        num_classes_old=dm.num_old_classes,
        old_checkpoint=str(old_ref.path),
        old_identity=old_ref.identity,
        optimizer=dataclasses.asdict(spec.training.optimizer),
        max_epochs=spec.training.epochs,
        image_size=spec.training.image_size,
        pretrained_weights=spec.models.pretrained_weights,
        artifact_store=str(ctx.cache_root / "artifacts" / spec.name),
    )
    try:
        return cls(setup, **method_kw)
    except BCTBenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's __init__ failing is the plugin's error, named
        where = getattr(cls, "__module__", "?")
        raise ConfigError(f"method '{cls.name}' ({where}) failed to build: {describe(exc)}") from None


def run(
    ctx: RunContext,
    method_name: str,
    *,
    seed: int = 0,
    overrides: list[str] | None = None,
    runtime: Runtime | None = None,
):
    """Train, evaluate and record one (method, seed) run; returns the written :class:`RunResult`."""
    import lightning.pytorch as pl

    from bctbench import tracking
    from bctbench.registry import get_method
    from bctbench.results import RunResult, collect_provenance, write_result

    runtime = runtime or Runtime()
    cls = get_method(method_name)  # unknown names fail here, before any work
    params = method_parameters(cls)
    method_kw, runtime_kw = split_overrides(
        parse_set_options(overrides), params, cls.name, method_annotations(cls)
    )
    if "seed" in runtime_kw:
        seed = int(runtime_kw.pop("seed"))
    runtime = runtime.apply(runtime_kw)
    spec = ctx.spec
    if spec.sequential_steps > 1:
        return run_sequential(ctx, cls, method_kw, seed=seed, runtime=runtime)
    timings: dict[str, float] = {}

    t0 = time.time()
    check_writable(ctx.results_root, ctx.cache_root)
    ensure_dataset(ctx)
    dataset_sha256 = dataset_fingerprint(ctx)
    eval_sets = load_eval_sets(ctx)  # every input is validated before training
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
            model.prepare_artifacts(_artifact_store(ctx, model, dm, runtime))
    timings["artifacts"] = time.time() - t0

    hparams = {k: v for k, v in model.hparams.items() if k != "setup"}
    digest = _hparams_digest(cls, hparams)
    run_dir = ctx.run_dir(cls.name, seed, digest)
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
        "seed": seed,
        "method_hparams": hparams,
        "hparams_digest": digest,
        "old_identity": old_ref.identity,
        "spec": spec.to_dict(),
    }
    if _primary_process():
        (work / "config.json").write_text(json.dumps(config, indent=2, default=str))
    logger = tracking.make_wandb_logger(
        cls.name, spec.name, seed, config, ctx.results_root.parent / "wandb-runs", enabled=runtime.wandb
    )
    if logger is None:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(str(work), name="logs")
    from bctbench.resume import ResumeState

    resume_state = ResumeState(provenance)
    trainer = _trainer(
        ctx,
        runtime,
        max_epochs=spec.training.epochs,
        default_root_dir=work,
        logger=logger,
        callbacks=[*_callbacks(work, with_lr_monitor=True), resume_state],
    )
    t0 = time.time()
    _fit(trainer, model, dm, ckpt_path)
    timings["fit"] = time.time() - t0
    _check_old_unchanged(model.old, old_ref)

    if trainer.global_rank != 0 and trainer.world_size > 1:
        return None
    t0 = time.time()
    encoders = model.encoders()
    report = evaluate_method(ctx, runtime, model, encoders, eval_sets=eval_sets)
    timings["evaluate"] = time.time() - t0
    _check_dataset_unchanged(ctx, dataset_sha256)

    prov = collect_provenance()
    result = RunResult(
        benchmark=spec.name,
        method=cls.name,
        seed=seed,
        metrics=report.rows,
        curves={"backfill": report.curves, "backfill_mode": cls.backfill_mode},
        primary=report.primary,
        method_hparams=_jsonable(hparams),
        flags=_flags(cls, hparams, spec),
        benchmark_sha256=spec.sha256,
        old_identity=old_ref.identity,
        split_sha256=split_sha256(ctx),
        hparams_digest=digest,
        per_query=report.per_query,
        git=prov.get("git", {}),
        env={
            **prov.get("env", {}),
            "num_workers": _workers(ctx, runtime),
            "precision": training_precision(ctx, runtime),
        },
        eval_variants={**_eval_variants(spec, dataset_sha256), "encoders": _identities(encoders)},
        wandb_run=getattr(logger, "version", None) if logger.__class__.__name__ == "WandbLogger" else None,
        timings=timings,
        resumed=ckpt_path is not None,
    )
    path = write_result(result, ctx.results_root)
    _commit(work, run_dir)
    log.info("result written: %s", path)
    if logger.__class__.__name__ == "WandbLogger":
        tracking.log_run_result(result, path, save_dir=ctx.results_root.parent / "wandb-runs")
    return result


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
) -> tuple[OldModelRef, dict[str, Any]]:
    """Train generation ``step`` (>= 1) of a sequential benchmark with method ``cls``, the frozen generation
    ``step - 1`` (``old_ref``) as its old model, on the upgrade ``step - 1 -> step`` of the allocation.

    The new model is saved in the old-model checkpoint format (it is the next step's old model) under
    ``<cache>/runs/<benchmark>/<method>/seed<k>/gen<step>-<key>/``, ``key`` = hash of (spec, method,
    hyperparameters, seed, step, predecessor sha256); a finished generation with the same key is reused.
    Returns the checkpoint reference and the generation's provenance (``old_sha256``, ``old_digest_before`` /
    ``old_digest_after`` of the frozen predecessor, ``new_digest``, ``sha256``, ``hparams``, ``seconds``).
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
        model.prepare_artifacts(_artifact_store(ctx, model, dm, runtime))
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
    wandb_logger = tracking.make_wandb_logger(
        cls.name,
        spec.name,
        seed,
        config,
        ctx.results_root.parent / "wandb-runs",
        enabled=runtime.wandb,
        suffix=f"g{step}",
    )
    trainer = _trainer(
        ctx,
        runtime,
        max_epochs=spec.training.epochs,
        default_root_dir=gen_dir,
        logger=wandb_logger or CSVLogger(str(gen_dir), name="logs"),
        callbacks=_callbacks(gen_dir, with_lr_monitor=True),
    )
    ckpt_path = _resume_path(gen_dir, runtime.resume)
    log.info(
        "training generation %d of %s (seed %d) on upgrade %d -> %d", step, cls.name, seed, step - 1, step
    )
    try:
        _fit(trainer, model, dm, ckpt_path)
    finally:
        if wandb_logger is not None:
            tracking.finish_logger(wandb_logger)  # one W&B run per generation
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


def run_sequential(ctx: RunContext, cls: type, method_kw: dict[str, Any], *, seed: int, runtime: Runtime):
    """Sequential benchmark run: g0 (the shared old model), then g1 ... g{T-1} by the method, each with its
    immediate predecessor frozen as the old model; then the compatibility matrix over all generations
    (``g{i} -> g{j}``, ``i >= j``) on every eval set plus AC / AA (``docs/evaluation.md`` §5.3). Writes and
    returns the :class:`RunResult`; the matrix summaries and each generation's provenance are in
    ``curves["sequential"]``."""
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
            ctx, cls, method_kw, seed=seed, step=step, old_ref=refs[-1], runtime=runtime
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
        hparams_digest=_hparams_digest(cls, hparams),
        per_query=report.per_query,
        git=prov.get("git", {}),
        env={**prov.get("env", {}), "num_workers": _workers(ctx, runtime)},
        eval_variants=_eval_variants(spec, dataset_sha256),
        timings=timings,
    )
    path = write_result(result, ctx.results_root)
    log.info("result written: %s", path)
    if runtime.wandb:
        tracking.log_run_result(result, path, save_dir=ctx.results_root.parent / "wandb-runs")
    return result


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _flags(cls: type, hparams: dict[str, Any], spec: BenchmarkSpec) -> list[str]:
    """Non-default hyperparameters and protocol variants, for the leaderboard's marker column."""
    flags = []
    defaults = method_parameters(cls)
    for key, value in sorted(hparams.items()):
        if key in defaults and defaults[key] != value:
            flags.append(f"{key}={value}")
    if not spec.evaluation.query_crop:
        flags.append("advbct_compat")
    if getattr(cls, "needs_custom_old_model", False):
        flags.append("custom_old_model")
    return flags


def run_all(
    ctx: RunContext,
    *,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    runtime: Runtime | None = None,
    jobs: int | None = 1,
    force: bool = False,
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
            ctx, methods=methods, seeds=seeds, overrides=overrides, runtime=runtime, jobs=jobs, force=force
        )
    failed = []
    for name in methods or list_methods():
        for seed in seeds or list(ctx.spec.seeds):
            try:
                run(ctx, name, seed=seed, overrides=overrides, runtime=runtime)
            except BCTBenchError as exc:
                log.error("error: %s seed %d: %s", name, seed, exc)
                failed.append(f"{name}/seed{seed}")
    return failed


def evaluate_method(ctx: RunContext, runtime: Runtime, model, encoders=None, eval_sets: list | None = None):
    """Evaluate a method's encoders (``model.encoders()`` unless given) with the benchmark's evaluator and the
    backfill orders the method declares (``backfill_orders()``, e.g. Hot-refresh's uncertainty order);
    ``eval_sets``: already loaded (and so validated) eval sets, else loaded here."""
    orders = model.backfill_orders() if hasattr(model, "backfill_orders") else None
    return build_evaluator(ctx, runtime, eval_sets=eval_sets).evaluate(
        model.encoders() if encoders is None else encoders, backfill_orders=orders
    )


def evaluate_checkpoint(ctx: RunContext, checkpoint: str, runtime: Runtime | None = None):
    """Evaluate a saved method checkpoint (Lightning ``.ckpt``) against the benchmark's old model."""
    from bctbench.registry import get_method

    runtime = runtime or Runtime()
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    payload = _load_method_checkpoint(path)
    hparams = payload.get("hyper_parameters") or {}
    saved = payload.get("bctbench") if isinstance(payload.get("bctbench"), dict) else {}
    name = saved.get("method") or hparams.get("method_name") or _method_from_path(path)
    cls = get_method(name)
    try:
        model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except BCTBenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - a checkpoint that does not fit the method
        raise CheckpointError(f"{path}: cannot load as method '{name}' ({describe(exc)})") from None
    return evaluate_method(ctx, runtime, model)


def _load_method_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint read with ``weights_only=True`` (no code runs from it); one-line errors."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure (or a refused payload) is a bad checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({describe(exc)})") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return payload


def reevaluate(
    ctx: RunContext,
    method_name: str,
    *,
    seed: int,
    runtime: Runtime | None = None,
    digest: str = "default",
):
    """Re-score a finished run with the benchmark's current evaluation protocol, without retraining.

    Loads the run's last checkpoint from the cache, checks that everything but the ``evaluation`` section of
    the spec is what the run was trained with and that the old model is the same, evaluates again and rewrites
    ``<results root>/<benchmark>/<label>/seed<k>.json`` (atomically; ``digest``: the run's hyperparameter digest): metrics, curves and ``benchmark_sha256`` are
    replaced, training provenance (git, env, hyperparameters, fit timings) is kept, and
    ``eval_variants["reevaluated"]`` records when, with which code and from which spec sha256.
    """
    from bctbench.registry import get_method
    from bctbench.results import collect_provenance, read_result, result_path, write_result

    runtime = runtime or Runtime()
    spec = ctx.spec
    if spec.sequential_steps > 1:
        raise ConfigError(f"{spec.name}: reevaluate supports single-step benchmarks only")
    cls = get_method(method_name)
    path = result_path(ctx.results_root, spec.name, cls.name, seed, digest)
    if not path.is_file():
        raise CheckpointError(f"{path}: no result to re-evaluate")
    previous = read_result(path)
    run_dir = ctx.run_dir(cls.name, seed, digest)
    ckpt, config_path = run_dir / "checkpoints" / "last.ckpt", run_dir / "config.json"
    if not ckpt.is_file() or not config_path.is_file():
        raise CheckpointError(f"{ckpt}: the run's checkpoint is not in the cache; run it again instead")
    trained = json.loads(config_path.read_text())
    current = json.loads(json.dumps(spec.to_dict(), default=str))
    changed = sorted(
        k
        for k in set(current) | set(trained["spec"])
        if k != "evaluation" and current.get(k) != trained["spec"].get(k)
    )
    if changed:
        raise ConfigError(
            f"{config_path}: the run was trained with a different spec ({', '.join(changed)} changed); "
            "only the evaluation section may differ — run it again instead"
        )
    ensure_dataset(ctx)
    dataset_sha256 = dataset_fingerprint(ctx)
    if previous.eval_variants.get("dataset_sha256") not in (None, dataset_sha256):
        raise ConfigError(f"{path}: the dataset changed since this run (tree sha256); run it again instead")
    old_ref = ensure_old_model(ctx, runtime, seed=seed)
    if previous.old_identity != old_ref.identity:
        raise CheckpointError(
            f"{path}: trained against old model {previous.old_identity}, the benchmark's is {old_ref.identity}"
        )
    _cpu_threads(ctx, runtime)
    _load_method_checkpoint(ckpt)  # refuses a file that would run code or is not a checkpoint
    model = cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    model.eval()
    t0 = time.time()
    encoders = model.encoders()
    recorded = previous.eval_variants.get("encoders")
    if recorded is not None and recorded.get("new") != encoders["new"].identity:
        raise CheckpointError(
            f"{ckpt}: new-model weights ({encoders['new'].identity}) are not those the result was computed with "
            f"({recorded.get('new')}); run it again instead"
        )
    report = evaluate_method(ctx, runtime, model, encoders)
    if recorded is None:  # older results do not record encoder identities: their self-test must reproduce
        before = {
            _row_key(r): r["value"]
            for r in previous.metrics
            if r["query_model"] == "new" == r["gallery_model"]
        }
        after = {_row_key(r): r["value"] for r in report.rows}
        if any(k in after and after[k] != v for k, v in before.items()):
            raise CheckpointError(
                f"{ckpt}: the checkpoint does not reproduce the result's new→new metrics (it is not the model "
                "the result was computed with); run it again instead"
            )
    prior = previous.eval_variants.get("reevaluated", {})
    variants = {**_eval_variants(spec, dataset_sha256), "encoders": _identities(encoders)}
    variants["reevaluated"] = {
        "at": _dt_now(),
        "git": collect_provenance().get("git", {}),
        "trained_with_benchmark_sha256": prior.get(
            "trained_with_benchmark_sha256", previous.benchmark_sha256
        ),
    }
    result = dataclasses.replace(
        previous,
        metrics=report.rows,
        curves={**previous.curves, "backfill": report.curves, "backfill_mode": cls.backfill_mode},
        primary=report.primary,
        per_query=report.per_query,
        benchmark_sha256=spec.sha256,
        eval_variants=variants,
        timings={**previous.timings, "evaluate": time.time() - t0},
    )
    out = write_result(result, ctx.results_root)
    log.info("result re-evaluated: %s", out)
    return result


def _row_key(row: dict) -> tuple:
    return row["eval_set"], row["protocol"], row["query_model"], row["gallery_model"], row["metric"]


def _identities(encoders) -> dict[str, str]:
    """``{encoder name: identity}`` (identities change with the weights: they pin the evaluated model)."""
    return {name: str(enc.identity) for name, enc in sorted(encoders.items())}


def _dt_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _method_from_path(path: Path) -> str:
    # <cache>/runs/<benchmark>/<method>/seed<k>/checkpoints/<file>.ckpt
    try:
        return path.resolve().parents[2].name
    except IndexError:
        raise CheckpointError(f"{path}: cannot tell which method wrote this checkpoint") from None


def render_leaderboard(ctx: RunContext) -> str:
    """The leaderboard of the run's benchmark: the results root's runs beside the reference results."""
    from bctbench.leaderboard import render
    from bctbench.paths import REFERENCE_ROOT, is_reference_root

    reference = None if is_reference_root(ctx.results_root) else REFERENCE_ROOT
    return render(ctx.results_root, ctx.spec.name, fmt="md", reference_root=reference)
