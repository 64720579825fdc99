"""Fixtures for plugin contract tests: a tiny frozen old model and random image batches (no dataset)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from bctbench.artifacts import RandomArtifactStore
from bctbench.method import MethodSetup
from bctbench.models import EmbeddingModel
from bctbench.old_model import save_old_checkpoint

BACKBONE = "tinycnn_w4"
EMBED = 16
C_OLD, C_NEW = 5, 8  # new classes 0..4 have old labels 0..4; 5..7 are new-only
IMAGE = 16


class RandomImages(Dataset):
    """``n`` random images with labels cycling over the new classes (every class present per batch of 8)."""

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
        self.labels = torch.arange(n) % C_NEW

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        label = self.labels[i]
        return {
            "images": self.images[i],
            "labels": label,
            "old_labels": label if label < C_OLD else torch.tensor(-1),
            "index": torch.tensor(i),
        }


def old_label_of_class() -> torch.Tensor:
    return torch.tensor([c if c < C_OLD else -1 for c in range(C_NEW)])


class FakeArtifactStore(RandomArtifactStore):
    """Artefacts with the real shapes for the tiny fixture label spaces (no dataset involved)."""

    def __init__(self, old) -> None:
        super().__init__(old, old_label_of_class(), samples_per_class=8)


class EmbeddingArtifactStore(FakeArtifactStore):
    """:class:`FakeArtifactStore` plus ``embed_new_training_set``: every cached row is a fixed random image,
    embedded with the given encoder as ``extract_features`` does (eval mode, the encoder's mode restored)."""

    def __init__(self, old, seed: int = 123) -> None:
        super().__init__(old)
        labels = self.data["old_features_new"]["labels"]
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(labels.numel(), 3, IMAGE, IMAGE, generator=g)
        self.calls: list[dict] = []

    def embed_new_training_set(self, encoder):
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            feats = encoder(self.images)
        self.calls.append({"eval_mode": not encoder.net.training, "features": feats})
        encoder.train(was_training)
        return {"features": feats, "labels": self.data["old_features_new"]["labels"].clone()}


@pytest.fixture(scope="session")
def old_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = EmbeddingModel(BACKBONE, EMBED, C_OLD)
    # give BN non-trivial running stats so that a drift would be visible
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, IMAGE, IMAGE))
    path = tmp_path_factory.mktemp("old") / "old_model.pt"
    sha = save_old_checkpoint(model, path, backbone=BACKBONE, meta={"test": True})
    return path, sha


@pytest.fixture
def setup(old_checkpoint):
    path, sha = old_checkpoint
    return MethodSetup(
        backbone_new=BACKBONE,
        backbone_old=BACKBONE,
        embed_dim=EMBED,
        num_classes_new=C_NEW,
        num_classes_old=C_OLD,
        old_checkpoint=str(path),
        old_identity=sha,
        optimizer={
            "name": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "milestones": [],
            "gamma": 0.1,
            "warmup_epochs": 0,
        },
        max_epochs=1,
        image_size=IMAGE,
    )


@pytest.fixture
def loader():
    return DataLoader(RandomImages(), batch_size=8, shuffle=False, drop_last=True)


def quiet_trainer(tmp_path, **kw) -> pl.Trainer:
    """A CPU Lightning trainer without logger, progress bar, model summary or (unless ``enable_checkpointing``
    is passed) checkpoints, rooted in ``tmp_path``; ``kw`` adds or overrides Trainer arguments."""
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
    }
    return pl.Trainer(**{**options, **kw})
