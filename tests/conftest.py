"""Shared test set-up: offline, W&B disabled, deterministic, few threads (2-core CI machines)."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_roots(tmp_path_factory, monkeypatch):
    """Every test writes caches and results under a temporary folder, never into the checkout."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("BCTBENCH_CACHE", str(base / "cache"))
    monkeypatch.setenv("BCTBENCH_RESULTS", str(base / "results"))
    monkeypatch.setenv("BCTBENCH_DATA", str(base / "data"))
    yield


def patch_pipeline(monkeypatch, name: str, value) -> None:
    """Replace ``bctbench.pipeline.<name>`` in the package and in every stage module that imported it."""
    import sys

    from bctbench import pipeline

    monkeypatch.setattr(pipeline, name, value)
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("bctbench.pipeline.") and hasattr(mod, name):
            monkeypatch.setattr(mod, name, value)
