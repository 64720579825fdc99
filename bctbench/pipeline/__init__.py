"""The benchmark pipeline, one module per stage: ``context`` (roots, runtime, spec) → ``dataset`` →
``old_model`` → ``method_setup`` + ``trainer`` → ``run`` (one method × seed; ``sequential`` for upgrade
chains) → results → leaderboard; ``reevaluate`` re-scores finished runs.

Nothing here knows any method by name: methods come from the registry and talk through the plugin
contract. The names below are the pipeline's API (the CLI, the run queue and the tests use them)."""

from bctbench.pipeline.context import OldModelRef, RunContext, Runtime, check_writable, isolated_rng
from bctbench.pipeline.dataset import (
    build_datamodule,
    dataset_fingerprint,
    ensure_dataset,
    load_eval_sets,
    load_validation_sets,
    prepare_data,
    split_sha256,
    test_transform,
    training_images,
    validation_only,
)
from bctbench.pipeline.method_setup import (
    artifact_store,
    build_evaluator,
    evaluate_checkpoint,
    evaluate_method,
    method_hparams_digest,
    method_parameters,
)
from bctbench.pipeline.old_model import (
    ensure_old_model,
    expected_old_classes,
    pin_old_model,
    pinned_old_model_path,
)
from bctbench.pipeline.reevaluation import reevaluate
from bctbench.pipeline.sequential import run_sequential, train_generation
from bctbench.pipeline.single_run import (
    TrainedRun,
    render_leaderboard,
    resolve_method,
    run,
    run_all,
    train_method,
)
from bctbench.pipeline.trainer import cpu_has_bf16, partial_dir, training_precision

__all__ = [
    "Runtime",
    "OldModelRef",
    "RunContext",
    "check_writable",
    "isolated_rng",
    "ensure_dataset",
    "dataset_fingerprint",
    "build_datamodule",
    "split_sha256",
    "training_images",
    "test_transform",
    "load_eval_sets",
    "load_validation_sets",
    "validation_only",
    "prepare_data",
    "cpu_has_bf16",
    "training_precision",
    "partial_dir",
    "pinned_old_model_path",
    "expected_old_classes",
    "ensure_old_model",
    "pin_old_model",
    "method_parameters",
    "build_evaluator",
    "artifact_store",
    "method_hparams_digest",
    "evaluate_method",
    "evaluate_checkpoint",
    "train_generation",
    "run_sequential",
    "run",
    "run_all",
    "TrainedRun",
    "resolve_method",
    "train_method",
    "render_leaderboard",
    "reevaluate",
]
