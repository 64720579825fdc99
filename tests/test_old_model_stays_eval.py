"""Regression: computing old-model artefacts must not leave the frozen old model's submodules in training mode
(a fresh Encoder wrapper is in train mode and extract_features restores the wrapper's mode)."""

from __future__ import annotations

import torch

from bctbench.artifacts import ArtifactStore, TrainingImages
from bctbench.models import EmbeddingModel
from bctbench.old_model import load_old_model, save_old_checkpoint


def test_old_features_leave_the_old_model_in_eval_mode(tmp_path):
    from PIL import Image

    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 20), (40 * i, 10, 200 - 30 * i)).save(p)
        paths.append(str(p))
    ckpt = tmp_path / "old.pt"
    save_old_checkpoint(EmbeddingModel("tinycnn_w8", 16, 2), ckpt, backbone="tinycnn_w8", meta={})
    old = load_old_model(ckpt)
    images = TrainingImages(paths, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), 2)
    from bctbench.data import build_test_transform

    store = ArtifactStore(
        tmp_path / "art", old, "s" * 64, lambda: images, lambda: images, build_test_transform(32)
    )
    store.get("old_features_new")
    store.get("advbct_meta")
    assert not any(m.training for m in old.modules())
