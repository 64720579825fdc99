"""Contract tests run over every registered method (timm style): adding a plugin adds its tests. The rules are
:mod:`bctbench.testing`'s, the same a third-party plugin's author runs."""

from __future__ import annotations

import pytest
import torch

from bctbench.errors import CheckpointError, ConfigError
from bctbench.method import MethodSetup, NonFiniteLossError
from bctbench.registry import get_method
from bctbench.testing import check_method, parametrize_methods
from tests.plugins.conftest import C_NEW, EMBED, quiet_trainer


def _trainer(tmp_path, steps=3):
    return quiet_trainer(tmp_path, max_steps=steps)


@parametrize_methods()
def test_method_keeps_the_plugin_contract(method, tmp_path):
    check_method(method, workdir=tmp_path)


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
