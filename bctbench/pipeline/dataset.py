"""Data stage: make sure the dataset exists, fingerprint it, build the DataModule, load the evaluation sets
and write the split files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bctbench.errors import BCTBenchError
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


def load_eval_sets(ctx: RunContext) -> list:
    from bctbench.datamodules.gldv2 import load_gldv2_eval_set
    from bctbench.datamodules.revisited import load_revisited_eval_set

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
    return info
