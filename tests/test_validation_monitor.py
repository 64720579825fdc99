"""The validation monitor: torchmetrics mAP@100 logged during training, without changing the run's result."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from bctbench import pipeline
from bctbench.validation_monitor import retrieval_map_at_k


def test_map_at_k_by_hand():
    ranks = np.array([[0, 1, 2], [2, 1, 0], [0, 1, 2]])
    # q0: relevant at rank 2 -> 1/2; q1: relevant at ranks 1 and 3 -> (1 + 2/3) / 2; q2: no relevant: skipped
    got = retrieval_map_at_k(ranks, [{1}, {2, 0}, set()], top_k=3)
    assert got == pytest.approx((0.5 + (1 + 2 / 3) / 2) / 2)


def test_monitor_logs_and_leaves_the_result_unchanged(tmp_path):
    ctx = pipeline.RunContext.create("smoke", tmp_path / "d", tmp_path / "c", tmp_path / "r")
    plain = pipeline.run(ctx, "independent", seed=0, runtime=pipeline.Runtime(wandb=False, accelerator="cpu"))
    ctx2 = pipeline.RunContext.create("smoke", tmp_path / "d", tmp_path / "c2", tmp_path / "r2")
    watched = pipeline.run(
        ctx2,
        "independent",
        seed=0,
        runtime=pipeline.Runtime(wandb=False, accelerator="cpu", validate_every=1),
    )
    assert watched.metrics == plain.metrics  # the monitor does not move training's random streams
    (metrics,) = (ctx2.cache_root / "runs").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    values = [float(r["val/gldv2synth_val/mAP@100"]) for r in rows if r.get("val/gldv2synth_val/mAP@100")]
    assert values and all(0.0 <= v <= 1.0 for v in values)
    assert any(r.get("val/gldv2synth_val/cross_mAP@100") for r in rows)
