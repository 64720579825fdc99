"""Data stage: make sure the dataset exists, fingerprint it, build the DataModule, load the evaluation sets
(test sets for the report, validation sets for tuning; ``docs/evaluation.md`` §8.1) and write the split
files."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bctbench.errors import BCTBenchError, ConfigError, SealedTestSetError
from bctbench.evaluation.holdout import GroundTruth, is_sealed, sealed
from bctbench.pipeline.context import RunContext, Runtime, _workers


# ----------------------------------------------------------------------------------------------- data
def ensure_dataset(ctx: RunContext) -> None:
    """Generate the embedded synthetic dataset on first use (no-op for real data)."""
    d = ctx.spec.data
    if d.dataset == "synthetic":
        from bctbench.datamodules.synthetic import ensure_synthetic, synthetic_size

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
    from bctbench.datamodules.gldv2 import GLDv2DataModule

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
    from bctbench.datamodules.gldv2 import split_paths

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


def _load_sets(ctx: RunContext, sets) -> list:
    from bctbench.datamodules.gldv2 import load_gldv2_eval_set
    from bctbench.datamodules.revisited import load_revisited_eval_set

    out = []
    for es in sets:
        root = ctx.data_root / es.root
        if es.kind == "revisited":
            out.append(load_revisited_eval_set(root, es.name, query_crop=ctx.spec.evaluation.query_crop))
        else:
            out.append(load_gldv2_eval_set(root, name=es.name, usage=es.usage))
    return out


def load_eval_sets(ctx: RunContext) -> list:
    """The benchmark's test sets (``evaluation.eval_sets``), for the final report. Refused inside
    :func:`validation_only` (while tuning) with :class:`~bctbench.errors.SealedTestSetError`."""
    if is_sealed() and ctx.spec.evaluation.eval_sets:
        name = ctx.spec.evaluation.eval_sets[0].name
        raise SealedTestSetError(f"test set '{name}' opened during tuning; only validation sets may be read")
    return _load_sets(ctx, ctx.spec.evaluation.eval_sets)


def load_validation_sets(ctx: RunContext) -> list:
    """The benchmark's validation sets (``tuning.validation_sets``): the only eval sets tuning and design
    decisions may read. Same loaders and query crop as the test sets; a GLDv2 set with ``usage`` holds that
    split's queries only. One-line :class:`~bctbench.errors.ConfigError` when the spec declares none."""
    sets = ctx.spec.tuning.validation_sets
    if not sets:
        raise ConfigError(
            f"{ctx.spec.source or ctx.spec.name}: tuning.validation_sets: benchmark '{ctx.spec.name}' declares "
            "no validation sets, so it cannot be tuned (the test sets are for the final report only)"
        )
    return _load_sets(ctx, sets)


def _ground_truth(ctx: RunContext, es) -> GroundTruth:
    """Every file the loader of eval set ``es`` may read its ground truth from."""
    root = ctx.data_root / es.root
    if es.kind == "revisited":
        from bctbench.datamodules.revisited import gnd_candidates

        return GroundTruth("revisited", es.name, gnd_candidates(root, es.name))
    from bctbench.datamodules.gldv2 import SOLUTION_CSV, metadata_candidates

    return GroundTruth("gldv2", es.name, metadata_candidates(root, SOLUTION_CSV), es.usage)


@contextlib.contextmanager
def validation_only(ctx: RunContext) -> Iterator[None]:
    """Seal the test sets while tuning: inside the block :func:`load_validation_sets` works, while
    :func:`load_eval_sets` — and any read of a test set's ground truth at the loaders' lowest level (revisited
    ``gnd_*.pkl``, GLDv2 solution CSV), by whatever path or link — raises
    :class:`~bctbench.errors.SealedTestSetError` ("test set '<name>' opened during tuning"). Only the files of
    the spec's validation sets may be read (for a GLDv2 test file: its public rows when a validation set
    declares ``usage: public``)."""
    allowed = [_ground_truth(ctx, es) for es in ctx.spec.tuning.validation_sets]
    tests = [_ground_truth(ctx, es) for es in ctx.spec.evaluation.eval_sets]
    with sealed(allowed, tests):
        yield


def _check_dataset_unchanged(ctx: RunContext, dataset_sha256: str | None) -> None:
    """Refuse to write a result when the dataset's tree sha256 changed since the run started."""
    now = dataset_fingerprint(ctx)
    if now != dataset_sha256:
        raise BCTBenchError(
            f"dataset under {ctx.data_root} was regenerated while this run used it (tree sha256 "
            f"{dataset_sha256} -> {now}); result not written, run again"
        )


def prepare_data(ctx: RunContext) -> dict[str, Any]:
    """Validate the dataset, write split files (with lock) and load the test and validation sets; return a
    summary."""
    from bctbench.datamodules.gldv2 import load_split, prepare_split

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
    if ctx.spec.tuning.validation_sets:
        for es in load_validation_sets(ctx):
            info[f"validation/{es.name}"] = f"{len(es.query_paths)} queries x {len(es.gallery_paths)} gallery"
    return info
