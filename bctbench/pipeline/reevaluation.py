"""Re-scoring finished runs from their cached checkpoints with the spec's current evaluation section (no
retraining)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from bctbench.errors import CheckpointError, ConfigError
from bctbench.pipeline.context import RunContext, Runtime, _dt_now
from bctbench.pipeline.dataset import dataset_fingerprint, ensure_dataset
from bctbench.pipeline.method_setup import (
    _eval_variants,
    _identities,
    _load_method_checkpoint,
    _row_key,
    evaluate_method,
)
from bctbench.pipeline.old_model import ensure_old_model
from bctbench.pipeline.trainer import _cpu_threads

log = logging.getLogger("bctbench")


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
