"""Building a method for a run: its hyperparameters and digest, the shared artefacts, the evaluator, and the
checks on the frozen old model."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import torch

from bctbench.config import (
    BenchmarkSpec,
)
from bctbench.errors import BCTBenchError, CheckpointError, ConfigError, describe
from bctbench.pipeline.context import OldModelRef, RunContext, Runtime, _device, _jsonable, _workers
from bctbench.pipeline.dataset import load_eval_sets, split_sha256, test_transform, training_images


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
        backfill=BackfillSettings(
            n_fractions=e.backfill_fractions, seeds=e.backfill_seeds, modes=e.backfill_modes
        ),
    )


def artifact_store(ctx: RunContext, model, dm, runtime: Runtime):
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


def _eval_variants(spec, dataset_sha256: str | None) -> dict:
    """What the evaluation saw, stored with every result: dataset bytes, query crop, input size, resize."""
    return {
        "dataset_sha256": dataset_sha256,
        "query_crop": spec.evaluation.query_crop,
        "image_size": spec.training.image_size,
        "resize": spec.training.resize,
    }


def method_hparams_digest(cls: type, hparams: dict[str, Any]) -> str:
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


def _row_key(row: dict) -> tuple:
    return row["eval_set"], row["protocol"], row["query_model"], row["gallery_model"], row["metric"]


def _identities(encoders) -> dict[str, str]:
    """``{encoder name: identity}`` (identities change with the weights: they pin the evaluated model)."""
    return {name: str(enc.identity) for name, enc in sorted(encoders.items())}


def _method_from_path(path: Path) -> str:
    # <cache>/runs/<benchmark>/<method>/seed<k>/checkpoints/<file>.ckpt
    try:
        return path.resolve().parents[2].name
    except IndexError:
        raise CheckpointError(f"{path}: cannot tell which method wrote this checkpoint") from None
