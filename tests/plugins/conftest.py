"""Fixtures for plugin tests: the tiny world of :mod:`bctbench.testing` (a frozen old model, random image
batches, artefacts with the real shapes; no dataset)."""

from __future__ import annotations

import pytest

from bctbench.artifacts import RandomArtifactStore
from bctbench.testing import (
    BACKBONE,
    C_NEW,
    C_OLD,
    EMBED,
    IMAGE,
    RandomImages,
    TinyArtifactStore,
    make_old_checkpoint,
    old_label_of_class,
    quiet_trainer,
    random_loader,
    tiny_setup,
)

__all__ = [
    "BACKBONE",
    "C_NEW",
    "C_OLD",
    "EMBED",
    "IMAGE",
    "EmbeddingArtifactStore",
    "FakeArtifactStore",
    "RandomImages",
    "old_label_of_class",
    "quiet_trainer",
]

#: Artefacts plus ``embed_new_training_set`` over fixed random images.
EmbeddingArtifactStore = TinyArtifactStore


class FakeArtifactStore(RandomArtifactStore):
    """Artefacts with the real shapes for the tiny fixture label spaces, without ``embed_new_training_set``."""

    def __init__(self, old) -> None:
        super().__init__(old, old_label_of_class(), samples_per_class=8)


@pytest.fixture(scope="session")
def old_checkpoint(tmp_path_factory):
    return make_old_checkpoint(tmp_path_factory.mktemp("old"))


@pytest.fixture
def setup(old_checkpoint):
    path, sha = old_checkpoint
    return tiny_setup(path, sha)


@pytest.fixture
def loader():
    return random_loader()
