"""Plugin code cannot change the frozen old model unnoticed: tricks that would change it either cannot reach
it (optimiser, train mode) or fail the run with one line before anything is evaluated or cached."""

from __future__ import annotations

import pytest
import torch

from bctbench import registry
from bctbench.config import load_benchmark
from bctbench.results import read_result
from tests.reliability.conftest import assert_clean_error, run_cli, snapshot

L2 = registry.get_method("l2")


class ToggleInLoss(L2):  # test-only: switches the old model to training mode inside the loss
    name = "trick_toggle"

    def compatibility_loss(self, batch, new, old):
        self.old.model.train()
        return super().compatibility_loss(batch, new, old)


class EditWeights(L2):  # test-only: edits the old weights in place
    name = "trick_edit"

    def compatibility_loss(self, batch, new, old):
        with torch.no_grad():
            next(self.old.parameters()).mul_(1.01)
        return super().compatibility_loss(batch, new, old)


class RequiresGrad(L2):  # test-only: makes the old weights trainable
    name = "trick_grad"

    def __init__(self, setup, **kwargs) -> None:
        super().__init__(setup, **kwargs)
        self.old.requires_grad_(True)


class BatchStartTrain(L2):  # test-only: replaces the guard hook and puts the old model in training mode
    name = "trick_hook"

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.old.model.train()


@pytest.fixture(autouse=True)
def _registered():
    for cls in (ToggleInLoss, EditWeights, RequiresGrad, BatchStartTrain):
        registry.register_method(cls.name)(cls)
    yield
    for cls in (ToggleInLoss, EditWeights, RequiresGrad, BatchStartTrain):
        registry.unregister_method(cls.name)


def _run(world, method: str):
    return run_cli("run", "-b", "smoke", "-m", method, "--no-wandb", "--quiet", *world.args())


@pytest.mark.parametrize(
    ("method", "needles"),
    [
        ("trick_toggle", ("frozen old model", "training mode")),
        ("trick_edit", ("frozen old model changed during training", "result not written")),
    ],
)
def test_tricks_that_would_change_the_old_model_fail_the_run(world, method, needles) -> None:
    before = snapshot(world.results, world.cache / "features")
    assert_clean_error(_run(world, method), *needles)
    assert snapshot(world.results, world.cache / "features") == before  # nothing written, nothing cached
    assert not (world.results / "smoke" / method).exists()


@pytest.mark.parametrize("method", ["trick_grad", "trick_hook"])
def test_tricks_that_cannot_reach_the_old_model_leave_it_unchanged(world, method) -> None:
    res = _run(world, method)
    assert res.code == 0, res.err[-2000:]
    result = read_result(world.results / "smoke" / method / "seed0.json")
    clean = read_result(world.results / "smoke" / "independent" / "seed0.json")
    assert result.old_identity == load_benchmark("smoke").old_model.pinned[0]
    old_rows = [r for r in result.metrics if r["query_model"] == r["gallery_model"] == "old"]
    assert old_rows == [r for r in clean.metrics if r["query_model"] == r["gallery_model"] == "old"]
