"""Old-model stage: the pinned per-seed old models, training and caching an old model, registering a given
checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from bctbench.config import (
    BenchmarkSpec,
)
from bctbench.errors import CheckpointError, ConfigError
from bctbench.pipeline.context import OldModelRef, RunContext, Runtime, _read_json, _write_json
from bctbench.pipeline.dataset import build_datamodule, dataset_fingerprint, ensure_dataset, split_sha256
from bctbench.pipeline.trainer import _cpu_threads, _fit, _trainer

log = logging.getLogger("bctbench")


# ----------------------------------------------------------------------------------------- old model
OLD_INIT_SEED_OFFSET = 100_003


def old_init_seed(seed: int) -> int:
    """The seed of old model ``seed``'s initial weights (its data order still follows ``seed``)."""
    return OLD_INIT_SEED_OFFSET + int(seed)


def pinned_old_model_path(spec: BenchmarkSpec, seed: int) -> Path:
    """The committed file of a pinned old model: ``<specs folder>/old_models/<benchmark>/seed<k>.pt``, where
    ``<benchmark>`` is ``old_model.pinned_from`` when the spec shares another benchmark's old models."""
    from bctbench.config import BENCHMARKS_DIR

    base = Path(spec.source).parent if spec.source else BENCHMARKS_DIR
    return base / "old_models" / (spec.old_model.pinned_from or spec.name) / f"seed{int(seed)}.pt"


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
    # the old model's initial weights come from their own seed: with seed k for both, old model k and a new
    # model of seed k started from the same weights and ended partially compatible without any BCT loss
    pl.seed_everything(old_init_seed(seed), workers=True, verbose=False)
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

    if ctx.spec.old_model.pinned_from:
        raise ConfigError(
            f"{ctx.spec.source}: benchmark '{ctx.spec.name}' shares the old models of "
            f"'{ctx.spec.old_model.pinned_from}' (old_model.pinned_from); pin them there"
        )
    ref = ensure_old_model(ctx, runtime, seed=seed, retrain=True)
    target = pinned_old_model_path(ctx.spec, seed)
    atomic_write_bytes(target, ref.path.read_bytes())
    if sidecar_path(ref.path).is_file():  # timings and machine of the training, beside the weights
        atomic_write_bytes(sidecar_path(target), sidecar_path(ref.path).read_bytes())
    return OldModelRef(target, ref.identity)
