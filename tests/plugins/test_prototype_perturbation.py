"""Behavioural tests of the ``ndpp`` and ``odpp`` plugins (docs/methods.md §10–11, reconstructions) on the
tiny fixtures of ``conftest.py``; the contract tests cover metadata, the frozen old model, encoders and the
checkpoint round trip. The math itself is tested in ``tests/losses/test_perturbation.py``."""

from __future__ import annotations

import dataclasses

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from bctbench import prototypes
from bctbench.errors import BCTBenchError, ConfigError
from bctbench.method import ModelOutput
from bctbench.registry import get_method
from tests.plugins.conftest import C_NEW, EMBED, FakeArtifactStore, quiet_trainer

METHODS = ["ndpp", "odpp"]


class ClusteredStore(FakeArtifactStore):
    """Old features of all classes packed around one direction (high old cosines between class prototypes);
    class 6 is a singleton (one image)."""

    def __init__(self, old, seed: int = 3) -> None:
        super().__init__(old)
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(C_NEW).repeat_interleave(6)
        labels = labels[(labels != 6) | (torch.arange(labels.numel()) % 6 == 0)]  # class 6: a single image
        base = torch.randn(EMBED, generator=g)
        centres = F.normalize(base + 0.6 * base.norm() * torch.randn(C_NEW, EMBED, generator=g) / EMBED**0.5)
        feats = F.normalize(centres[labels] + 0.15 * torch.randn(labels.numel(), EMBED, generator=g), dim=1)
        means, counts = prototypes.class_means(feats, labels, C_NEW)
        self.data["old_features_new"] = {
            **self.data["old_features_new"],
            "features": feats.half(),
            "labels": labels,
            "old_labels": self.data["class_means_new"]["old_label_of_class"][labels],
        }
        self.data["class_means_new"] = {**self.data["class_means_new"], "means": means, "counts": counts}


def _trainer(tmp_path, **kw):
    return quiet_trainer(tmp_path, **kw)


def _build(name, setup, store_cls=FakeArtifactStore, **hparams):
    model = get_method(name)(setup, **hparams)
    store = store_cls(model.old)
    model.prepare_artifacts(store)
    return model, store


def _separating_bank(model, seed: int = 0) -> None:
    """Fill the bank with independent random directions (new model separates the old neighbours better)."""
    g = torch.Generator().manual_seed(seed)
    model.bank.bank.copy_(F.normalize(torch.randn(C_NEW, EMBED, generator=g), dim=1))
    model.bank.seen.fill_(True)


@pytest.mark.parametrize("name", METHODS)
def test_prepare_artifacts_builds_inputs_and_starts_at_the_old_prototypes(name, setup):
    model, store = _build(name, setup, ClusteredStore)
    means = store.get("class_means_new")
    feats = store.get("old_features_new")
    expected = prototypes.perturbation_inputs(
        means["means"], means["counts"], feats["features"], feats["labels"], k=10, epsilon=0.1, rho=0.5
    )
    torch.testing.assert_close(model.old_prototypes, F.normalize(means["means"], dim=1))
    assert torch.equal(model.neighbors, expected.neighbors) and model.neighbors.shape == (C_NEW, C_NEW - 1)
    torch.testing.assert_close(model.bounds, expected.bounds)
    assert float(model.bounds[6]) == 0.0  # singleton
    assert (model.bounds[:6] > 0).all() and (model.bounds <= 0.1).all()
    assert torch.equal(model.pseudo_prototypes, model.old_prototypes)
    assert model.proto_columns.tolist() == list(range(C_NEW))


@pytest.mark.parametrize("name", METHODS)
def test_update_perturbation_respects_bounds_and_unseen_classes(name, setup):
    model, _ = _build(name, setup, ClusteredStore)
    _separating_bank(model)
    model.bank.seen[3] = False
    model.bank.bank[3] = 0.0
    stats = model.update_perturbation()
    norms = model.delta.norm(dim=1)
    assert (norms <= model.bounds + 1e-6).all()
    assert torch.equal(model.delta[3], torch.zeros(EMBED))  # unseen
    assert torch.equal(model.delta[6], torch.zeros(EMBED))  # singleton: ε = 0
    assert stats["delta_norm"] > 0 and 0.0 <= stats["on_bound"] <= 1.0 and stats["mean_gain"] > 0
    torch.testing.assert_close(
        model.pseudo_prototypes, F.normalize(model.old_prototypes + model.delta, dim=1)
    )
    assert not torch.equal(model.pseudo_prototypes, model.old_prototypes)
    if name == "odpp":
        assert stats["objective_after"] <= stats["objective_before"]
        assert len(model.last_history) == 21


@pytest.mark.parametrize("name", METHODS)
def test_no_gain_means_no_perturbation(name, setup):
    model, _ = _build(name, setup, ClusteredStore)
    model.bank.bank.copy_(model.old_prototypes)  # new model = old model: no pair is separated better
    model.bank.seen.fill_(True)
    stats = model.update_perturbation()
    assert torch.equal(model.delta, torch.zeros_like(model.delta))
    torch.testing.assert_close(model.pseudo_prototypes, model.old_prototypes, rtol=0, atol=1e-7)
    assert stats["delta_norm"] == 0.0 and stats["mean_gain"] == 0.0


def test_ndpp_update_matches_the_shared_math(setup):
    model, _ = _build("ndpp", setup, ClusteredStore, eta=0.5, tau_nb=0.2)
    _separating_bank(model, seed=1)
    model.update_perturbation()
    _, _, gains = prototypes.neighbour_gains(
        model.old_prototypes, model.bank.prototypes(), model.bank.seen, model.neighbors
    )
    expected = prototypes.ndpp_perturbation(
        model.old_prototypes, model.neighbors, gains, model.bounds, tau_nb=0.2, eta=0.5
    )
    assert torch.equal(model.delta, expected)


def test_odpp_warm_starts_from_the_previous_solution(setup):
    model, _ = _build("odpp", setup, ClusteredStore, solver_steps=5)
    _separating_bank(model, seed=2)
    first = model.update_perturbation()
    second = model.update_perturbation()
    assert second["objective_before"] == pytest.approx(first["objective_after"], rel=1e-5)
    assert second["objective_after"] <= first["objective_after"] + 1e-7
    cold, _ = _build("odpp", setup, ClusteredStore, solver_steps=5, warm_start=False)
    _separating_bank(cold, seed=2)
    a = cold.update_perturbation()
    b = cold.update_perturbation()
    assert a == b  # every solve starts from Δ = 0


@pytest.mark.parametrize("name", METHODS)
def test_loss_is_the_prototype_ce_and_updates_the_bank(name, setup, loader):
    model, _ = _build(name, setup, weight=0.5)
    _separating_bank(model)
    model.update_perturbation()
    batch = next(iter(loader))
    model.train()
    new = model.forward_new(batch["images"])
    model.bank.seen.fill_(False)
    terms = model.compatibility_loss(batch, new, None)
    assert set(terms) == {"pp"}
    logits = 30.0 * new.embedding_normed @ model.pseudo_prototypes.T
    torch.testing.assert_close(terms["pp"], 0.5 * F.cross_entropy(logits, batch["labels"]))
    # first sight after the reset: the bank holds the batch class means of f̂
    assert model.bank.seen.all()
    for c in range(C_NEW):
        torch.testing.assert_close(
            model.bank.bank[c], new.embedding_normed.detach()[batch["labels"] == c].mean(0)
        )
    terms["pp"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.new.embedder.parameters())
    assert not model.pseudo_prototypes.requires_grad


@pytest.mark.parametrize("name", METHODS)
def test_two_epoch_fit_updates_at_start_epoch_and_logs(name, setup, loader, tmp_path):
    setup2 = dataclasses.replace(setup, max_epochs=2)
    model, _ = _build(name, setup2, ClusteredStore)
    initial = model.pseudo_prototypes.clone()
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, loader)
    assert model.updated_at == [1]  # epoch 0 fills the bank (δ = 0)
    assert model.bank.seen.all()
    assert (model.delta.norm(dim=1) <= model.bounds + 1e-6).all()
    torch.testing.assert_close(
        model.pseudo_prototypes, F.normalize(model.old_prototypes + model.delta, dim=1)
    )
    logged = trainer.logged_metrics
    keys = ["delta_norm", "on_bound", "mean_gain"]
    if name == "odpp":
        keys += ["objective_before", "objective_after"]
        assert float(logged["train/odpp/objective_after"]) <= float(logged["train/odpp/objective_before"])
    for key in keys:
        assert f"train/{name}/{key}" in logged, key
    assert "train/loss/pp_epoch" in logged or "train/loss/pp" in logged
    assert torch.isfinite(model.pseudo_prototypes).all()
    assert initial.shape == model.pseudo_prototypes.shape


@pytest.mark.parametrize("name", METHODS)
def test_start_epoch_zero_updates_every_epoch(name, setup, loader, tmp_path):
    setup2 = dataclasses.replace(setup, max_epochs=2)
    model, _ = _build(name, setup2, start_epoch=0)
    _trainer(tmp_path, max_epochs=2).fit(model, loader)
    assert model.updated_at == [0, 1]


@pytest.mark.parametrize("name", METHODS)
def test_training_is_deterministic_for_a_seed(name, setup, loader, tmp_path):
    setup2 = dataclasses.replace(setup, max_epochs=2)
    runs = []
    for i in range(2):
        pl.seed_everything(123, verbose=False)
        model, _ = _build(name, setup2, ClusteredStore)
        _trainer(tmp_path / str(i), max_epochs=2).fit(model, loader)
        runs.append((model.pseudo_prototypes.clone(), model.bank.bank.clone(), model.delta.clone()))
    for a, b in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", METHODS)
def test_perturbation_state_survives_a_checkpoint(name, setup, tmp_path):
    model, _ = _build(name, setup, ClusteredStore)
    _separating_bank(model)
    model.update_perturbation()
    path = tmp_path / "p.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": "2",
        },
        path,
    )
    loaded = get_method(name).load_from_checkpoint(path, map_location="cpu")
    assert torch.equal(loaded.pseudo_prototypes, model.pseudo_prototypes)
    assert torch.equal(loaded.bank.bank, model.bank.bank) and torch.equal(loaded.bank.seen, model.bank.seen)
    if name == "odpp":
        assert torch.equal(loaded.delta, model.delta)  # the warm start


@pytest.mark.parametrize("name", METHODS)
def test_invalid_hyperparameters_and_missing_artefacts_are_clear_errors(name, setup, loader):
    cls = get_method(name)
    for bad in ({"k": 0}, {"epsilon": -0.1}, {"ema": 1.5}, {"start_epoch": -1}):
        with pytest.raises(ConfigError):
            cls(setup, **bad)
    model = cls(setup)
    batch = next(iter(loader))
    with pytest.raises(BCTBenchError, match="prepare_artifacts"):
        model.compatibility_loss(batch, ModelOutput.from_embedding(torch.randn(8, EMBED)), None)
    with pytest.raises(BCTBenchError, match="prepare_artifacts"):
        model.update_perturbation()
