"""Tuning on validation data with the same budget for every method (``bctbench tune``).

Protocol (docs/evaluation.md, "Tuning"):

* **Trials.** ``N`` = the spec's ``tuning.budget`` (the same for every method; ``--budget`` only for
  experiments). Trial 0 is the method's defaults; trials 1 … N−1 are drawn without replacement, seeded by
  (tuning seed, method name), from the grid of :meth:`search_space` (fewer trials when the grid is smaller).
* **One seed.** Every trial trains with seed ``tuning.seed`` against that seed's (pinned) old model.
* **Validation only.** Trials are scored on the spec's ``tuning.validation_sets``; the test sets cannot be
  opened while tuning (:func:`bctbench.pipeline.dataset.validation_only` refuses them). No backfilling curves.
* **Objective.** Validation P_1 (the F-score of P_up and P_comp, as the leaderboard ranks by) against the
  validation old→old of the same old model and the validation self-test of φ* (``independent`` at its
  defaults, trained once per benchmark and kept as its own preset file). A trial is eligible only if it meets
  the compatibility criterion on every validation set (cross > old→old). The chosen trial is the eligible one
  with the highest P_1 (ties: the earlier trial); with none eligible, the trial with the highest P_1 (P_1
  already counts how far below old→old the cross-test is), and the file says so (``selected_by``).
* **Record.** ``benchmarks/presets/<benchmark>/<method>.yaml`` (:mod:`bctbench.presets`): the chosen
  hyperparameters and every trial (hyperparameters, validation metrics, P-metrics, eligibility, seconds), with
  the identities it was tuned under. It is rewritten after each trial (``complete: false`` until the last), so
  an interrupted tuning continues where it stopped; trials recorded under other identities are redone.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bctbench.errors import ConfigError
from bctbench.pipeline.context import RunContext, Runtime, _jsonable
from bctbench.pipeline.dataset import (
    dataset_fingerprint,
    ensure_dataset,
    load_validation_sets,
    split_sha256,
    validation_only,
)
from bctbench.pipeline.method_setup import build_evaluator, method_hparams_digest, method_parameters
from bctbench.pipeline.old_model import ensure_old_model
from bctbench.pipeline.single_run import resolve_method, train_method
from bctbench.pipeline.trainer import _commit

log = logging.getLogger("bctbench")

PARAGON = "independent"
VAL_PAIRS = ["old-old", "new-old", "new-new"]

__all__ = ["PARAGON", "choose", "plan_trials", "primary_values", "score_trial", "tune"]


def plan_trials(
    space: dict[str, list], budget: int, seed: int, method: str, defaults: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The trials' hyperparameter overrides: ``[{}]`` (the defaults) followed by up to ``budget − 1`` distinct
    grid points of ``space`` in a seeded random order (seed = ``(seed, crc32(method))``), leaving out the grid
    point that equals ``defaults`` (trial 0 already is it)."""
    if budget < 1:
        raise ConfigError(f"tuning budget must be >= 1, got {budget}")
    names = sorted(space)
    grid = (
        [dict(zip(names, v, strict=True)) for v in itertools.product(*(space[n] for n in names))]
        if names
        else []
    )
    defaults = defaults or {}
    grid = [g for g in grid if any(k not in defaults or defaults[k] != v for k, v in g.items())]
    rng = np.random.default_rng([int(seed), zlib.crc32(method.encode())])
    order = rng.permutation(len(grid)) if grid else []
    return [{}] + [grid[int(i)] for i in order][: budget - 1]


def score_trial(rows: list[dict], primary: dict[str, list[str]], paragon_self: dict[str, float]) -> dict:
    """Validation scores of one trial from evaluator ``rows`` (primary protocol/metric of each validation set):
    ``{"sets": {set: {"old_old", "cross", "self"}}, "P_up", "P_comp", "P_1", "compatible"}`` (mAP as fractions,
    P-metrics 0–100; ``paragon_self``: φ*'s validation self-test per set, fractions)."""
    from bctbench.evaluation.metrics import p_scores

    sets = primary_values(rows, primary)
    names = sorted(sets)
    cross = np.array([sets[n]["cross"] for n in names])
    old = np.array([sets[n]["old_old"] for n in names])
    self_ = np.array([sets[n]["self"] for n in names])
    par = np.array([paragon_self.get(n, math.nan) for n in names])
    p = p_scores(self_, cross, old, par)
    return {
        "sets": sets,
        "P_up": float(p["P_up"]),
        "P_comp": float(p["P_comp"]),
        "P_1": float(p["P_beta"]),
        "compatible": bool(np.all(cross > old)),
    }


def choose(trials: list[dict[str, Any]], paragon: bool = False) -> tuple[dict[str, Any], str]:
    """``(chosen trial, why)``: the highest validation P_1 among trials meeting the compatibility criterion
    (ties: the earlier trial); without any, the highest P_1 of all; the paragon keeps its defaults."""
    if paragon:
        return trials[0], "defaults (the paragon is not tuned)"
    eligible = [t for t in trials if t["scores"].get("compatible")]
    pool = eligible or trials
    best = max(pool, key=lambda t: (t["scores"]["P_1"], -t["trial"]))
    if eligible:
        return best, "highest validation P_1 among compatible trials"
    return best, "no trial met the compatibility criterion on validation: highest validation P_1"


def primary_values(rows: list[dict], primary: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """``{eval set: {"old_old", "cross", "self"}}``: each set's primary protocol/metric values (fractions)."""
    pick = {("old", "old"): "old_old", ("new", "old"): "cross", ("new", "new"): "self"}
    sets: dict[str, dict[str, float]] = {}
    for r in rows:
        key = pick.get((r["query_model"], r["gallery_model"]))
        if key and [r["protocol"], r["metric"]] == list(primary.get(r["eval_set"], [])):
            sets.setdefault(r["eval_set"], {})[key] = float(r["value"])
    return sets


def _identities(ctx: RunContext, old_identity: str) -> dict[str, Any]:
    return {
        "benchmark_sha256": ctx.spec.sha256,
        "tuning_sha256": ctx.spec.tuning_sha256,
        "dataset_sha256": dataset_fingerprint(ctx),
        "split_sha256": split_sha256(ctx),
        "old_identity": old_identity,
    }


def _same_tuning(then: Any, now: dict[str, Any]) -> bool:
    """Whether trials recorded under identities ``then`` are valid under ``now`` (all but the full spec sha)."""
    if not isinstance(then, dict):
        return False
    return all(then.get(k) == v for k, v in now.items() if k != "benchmark_sha256")


def _code_version() -> dict[str, Any]:
    """``{"sha", "dirty", "torch"}`` of the code that ran the trials (a committed preset should say clean)."""
    from bctbench.results import collect_provenance

    prov = collect_provenance()
    return {**prov.get("git", {}), "torch": prov.get("env", {}).get("torch")}


def _read_log(path: Path) -> dict[str, Any] | None:
    from bctbench.presets import read_preset

    return read_preset(path) if path.is_file() else None


def _write_log(path: Path, doc: dict[str, Any]) -> None:
    from bctbench.identity import atomic_write_bytes

    text = "# written by `bctbench tune`; frozen once complete (see bctbench/pipeline/tuning.py)\n"
    text += yaml.safe_dump(_jsonable(doc), sort_keys=False, allow_unicode=True, width=110)
    atomic_write_bytes(path, text.encode("utf-8"))


def _validation_run(ctx, cls, kw, *, seed, runtime, run_dir) -> tuple[dict, dict, str, float]:
    """Train one trial and score it on the validation sets: ``(rows, primary, old identity, seconds)``."""
    from bctbench.evaluation.compatibility import BackfillSettings

    start = time.time()
    tr = train_method(
        ctx,
        cls,
        kw,
        seed=seed,
        runtime=runtime,
        eval_sets_loader=load_validation_sets,
        run_dir=run_dir,
        wandb_job="tune",
    )
    evaluator = build_evaluator(ctx, runtime, eval_sets=tr.eval_sets, pairs=VAL_PAIRS)
    evaluator.backfill = BackfillSettings(enabled=False)
    report = evaluator.evaluate(tr.model.encoders())
    _commit(tr.work, tr.run_dir)
    if tr.logger.__class__.__name__ == "WandbLogger":
        from bctbench import tracking

        tracking.finish_logger(tr.logger)
    return report.rows, report.primary, tr.old_ref.identity, time.time() - start


def _paragon_self(ctx: RunContext, runtime: Runtime, seed: int, force: bool) -> dict[str, float]:
    """φ*'s validation self-test per validation set (fractions), from its preset file (tuning it if needed)."""
    doc = tune(ctx, PARAGON, runtime=runtime, seed=seed, force=force)
    trial = doc["trials"][0]
    return {name: v["self"] for name, v in trial["scores"]["sets"].items()}


def tune(
    ctx: RunContext,
    method_name: str,
    *,
    budget: int | None = None,
    runtime: Runtime | None = None,
    seed: int | None = None,
    force: bool = False,
    out_path: Path | None = None,
) -> dict[str, Any]:
    """Tune ``method_name`` on ``ctx``'s benchmark (see the module docstring); returns the preset document
    (also written to ``out_path``, default ``benchmarks/presets/<benchmark>/<method>.yaml``).
    ``force``: redo every trial."""
    from bctbench.presets import FORMAT, preset_file

    spec = ctx.spec
    runtime = runtime or Runtime()
    if not spec.tuning.validation_sets:
        raise ConfigError(f"benchmark '{spec.name}' declares no tuning.validation_sets: it cannot be tuned")
    if spec.sequential_steps > 1:
        raise ConfigError(f"benchmark '{spec.name}' is sequential: tune its single-step source benchmark")
    seed = int(spec.tuning.seed if seed is None else seed)
    cls, _, seed, runtime = resolve_method(ctx, method_name, seed=seed, overrides=None, runtime=runtime)
    budget = int(spec.tuning.budget if budget is None else budget)
    space = {} if cls.name == PARAGON else dict(cls.search_space() or {})
    trials = plan_trials(space, max(budget, 1), seed, cls.name, method_parameters(cls))
    if cls.name != PARAGON and budget < 1:
        raise ConfigError(f"benchmark '{spec.name}' has tuning.budget 0: give --budget N")
    path = out_path or preset_file(spec.name, cls.name)
    previous = None if force else _read_log(path)

    paragon = None if cls.name == PARAGON else _paragon_self(ctx, runtime, seed, force=False)
    with validation_only(ctx):
        doc: dict[str, Any] = {
            "format": FORMAT,
            "benchmark": spec.name,
            "method": cls.name,
            "complete": False,
            "budget": budget,
            "seed": seed,
            "search_space": space,
            "objective": (
                "paragon: validation self-test of the defaults"
                if cls.name == PARAGON
                else "max validation P_1 among trials with cross > old->old on every validation set"
            ),
            "validation_sets": [es.name for es in spec.tuning.validation_sets],
            "identities": None,
            "code": _code_version(),
            "chosen": {},
            "chosen_trial": None,
            "trials": [],
        }
        ensure_dataset(ctx)
        identities = _identities(ctx, ensure_old_model(ctx, runtime, seed=seed).identity)
        doc["identities"] = identities
        # the full spec sha may change (more seeds pinned) without touching what the trials depend on
        reusable = previous is not None and _same_tuning(previous.get("identities"), identities)
        done = {json_key(t["hparams"]): t for t in (previous or {}).get("trials", [])} if reusable else {}
        defaults = method_parameters(cls)
        for i, kw in enumerate(trials):
            hparams = {**defaults, **kw}
            if json_key(kw) in done:
                doc["trials"].append({**done[json_key(kw)], "trial": i})
                log.info("tune %s: trial %d/%d recorded already", cls.name, i + 1, len(trials))
                continue
            log.info("tune %s: trial %d/%d %s", cls.name, i + 1, len(trials), kw or "(defaults)")
            digest = method_hparams_digest(cls, hparams)
            run_dir = ctx.cache_root / "tuning" / spec.name / cls.name / f"seed{seed}-{digest}"
            rows, primary, old_identity, seconds = _validation_run(
                ctx, cls, kw, seed=seed, runtime=runtime, run_dir=run_dir
            )
            if old_identity != identities["old_identity"]:
                raise ConfigError(f"{path}: the old model changed during tuning; run tune again")
            if cls.name == PARAGON:
                scores: dict[str, Any] = {"sets": primary_values(rows, primary)}
            else:
                scores = score_trial(rows, primary, paragon or {})
            doc["trials"].append(
                {
                    "trial": i,
                    "hparams": kw,
                    "scores": scores,
                    "seconds": round(seconds, 1),
                    "code": doc["code"].get("sha"),
                }
            )
            _write_log(path, doc)
        best, doc["selected_by"] = choose(doc["trials"], paragon=cls.name == PARAGON)
        doc["chosen"] = dict(best["hparams"])
        doc["chosen_trial"] = best["trial"]
        doc["complete"] = True
        _write_log(path, doc)
    log.info(
        "tune %s: chose trial %d %s -> %s", cls.name, best["trial"], best["hparams"] or "(defaults)", path
    )
    return doc


def json_key(hparams: dict[str, Any]) -> str:
    """A canonical text key of a trial's overrides (order-free)."""
    import json

    return json.dumps(_jsonable(hparams), sort_keys=True)
