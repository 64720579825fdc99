"""Contract tests run over every registered method (timm style): adding a plugin adds its tests."""

from __future__ import annotations

import inspect

import lightning.pytorch as pl
import pytest
import torch

from bctbench.errors import CheckpointError, ConfigError
from bctbench.method import CompatibilityMethod, MethodSetup, NonFiniteLossError
from bctbench.registry import get_method, list_methods
from tests.plugins.conftest import (
    C_NEW,
    EMBED,
    IMAGE,
    EmbeddingArtifactStore,
    FakeArtifactStore,
    quiet_trainer,
)

METHODS = list_methods()


def _build(name, setup):
    cls = get_method(name)
    model = cls(setup)
    if cls.required_artifacts:
        model.prepare_artifacts(FakeArtifactStore(model.old))
    return cls, model


def _trainer(tmp_path, steps=3):
    return quiet_trainer(tmp_path, max_steps=steps)


def _old_state(model):
    return {k: v.clone() for k, v in model.old.state_dict().items()}


@pytest.mark.parametrize("name", METHODS)
def test_metadata_and_signature(name):
    cls = get_method(name)
    assert issubclass(cls, CompatibilityMethod)
    assert cls.name == name and cls.paper and cls.reference_code
    assert isinstance(cls.needs_old_forward, bool)
    params = inspect.signature(cls.__init__).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), "no **kwargs"
    hyper = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for n in hyper:
        assert params[n].default is not inspect.Parameter.empty, f"{n} needs a reference default"
    assert set(cls.search_space()) <= hyper


@pytest.mark.parametrize("name", METHODS)
def test_training_steps_keep_old_model_bit_identical(name, setup, loader, tmp_path):
    cls, model = _build(name, setup)
    before = _old_state(model)
    new_before = {k: v.clone() for k, v in model.new.state_dict().items()}
    losses = []

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = _trainer(tmp_path)
    trainer.callbacks.append(Grab())
    trainer.fit(model, loader)
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    after = model.old.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"old model changed: {k}"
    assert not model.old.training
    assert any(not torch.equal(new_before[k], v) for k, v in model.new.state_dict().items()), (
        "new model trained"
    )
    logged = trainer.logged_metrics
    assert "train/loss/cls_step" in logged or "train/loss/cls" in logged


@pytest.mark.parametrize("name", METHODS)
def test_encoders_are_unit_norm(name, setup):
    _, model = _build(name, setup)
    if hasattr(model, "fit_reverse_transform"):  # online_backfill fits ψ at the end of training: do it here
        model.prepare_artifacts(EmbeddingArtifactStore(model.old))
        model.fit_reverse_transform()
    encoders = model.encoders()
    assert {"old", "new"} <= set(encoders)
    x = torch.randn(4, 3, IMAGE, IMAGE)
    for key, enc in encoders.items():
        enc.eval()
        out = enc(x)
        assert out.shape == (4, EMBED), key
        assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5), key
        assert isinstance(enc.identity, str) and enc.identity


@pytest.mark.parametrize("name", METHODS)
def test_hparams_round_trip_through_checkpoint(name, setup, loader, tmp_path):
    cls, model = _build(name, setup)
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit(model, loader)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path, map_location="cpu")
    assert loaded.hparams == model.hparams
    for k, v in model.new.state_dict().items():
        assert torch.equal(v, loaded.new.state_dict()[k])


def test_old_checkpoint_sha_mismatch_is_an_error(setup):
    bad = MethodSetup(**{**setup.__dict__, "old_identity": "0" * 64})
    with pytest.raises(CheckpointError, match="another old model"):
        get_method("independent")(bad)


def test_embedding_dim_mismatch_without_transform_is_an_error(setup):
    bad = MethodSetup(**{**setup.__dict__, "embed_dim": EMBED * 2})
    with pytest.raises(ConfigError, match="embedding dim"):
        get_method("independent")(bad)


def test_nan_loss_is_a_clear_error(setup, loader, tmp_path):
    model = get_method("independent")(setup)
    with torch.no_grad():
        model.new.classifier.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss term 'cls' is nan"):
        _trainer(tmp_path, steps=1).fit(model, loader)


def test_labels_cover_new_classes(loader):
    labels = torch.cat([b["labels"] for b in loader])
    assert set(labels.tolist()) == set(range(C_NEW))
