"""The shared old model: checkpoint format, strict sha256-checked loading, and the frozen module.

Checkpoint file (``torch.save``): ``{"format": "bctbench-old-model/1", "backbone", "embed_dim",
"num_classes", "state_dict" (an :class:`~bctbench.models.EmbeddingModel` state dict), "meta": {...}}``.
Loading is strict (missing or unexpected keys are errors) and verifies the file's sha256 when one is given;
nothing is ever skipped silently.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bctbench.errors import CheckpointError
from bctbench.models import EmbeddingModel

FORMAT = "bctbench-old-model/1"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_old_checkpoint(
    model: EmbeddingModel, path: str | Path, *, backbone: str, meta: dict[str, Any]
) -> str:
    """Write an old-model checkpoint atomically; return its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "backbone": backbone,
        "embed_dim": model.embedder.embed_dim,
        "num_classes": model.classifier.out_features,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return file_sha256(path)


class FrozenOldModel(nn.Module):
    """The old model, frozen: ``requires_grad=False`` and always in eval mode (``train()`` is a no-op).

    ``forward(images[B, 3, H, W]) -> (embedding[B, d_old], logits[B, C_old])``. ``classifier_weight`` is
    the old classifier ``W_o`` as ``float[C_old, d_old]``.
    """

    def __init__(self, model: EmbeddingModel, sha256: str, path: str) -> None:
        super().__init__()
        self.model = model
        self.sha256 = sha256
        self.path = path
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenOldModel:  # noqa: D401 - frozen: stays in eval mode
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return self.model.embedder.embed_dim

    @property
    def num_classes(self) -> int:
        return self.model.classifier.out_features

    @property
    def classifier_weight(self) -> torch.Tensor:
        return self.model.classifier.weight

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images)


def load_old_model(
    path: str | Path,
    sha256: str | None = None,
    *,
    expect_backbone: str | None = None,
    expect_embed_dim: int | None = None,
    expect_num_classes: int | None = None,
) -> FrozenOldModel:
    """Load an old-model checkpoint strictly; verify ``sha256`` if given. Raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: old-model checkpoint not found (run `bctbench train-old`)")
    digest = file_sha256(path)
    if sha256 and digest != sha256:
        raise CheckpointError(f"{path}: sha256 {digest[:12]}… does not match the expected {sha256[:12]}…")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a bctbench old-model checkpoint (key 'format' != '{FORMAT}')")
    for key, expected in (
        ("backbone", expect_backbone),
        ("embed_dim", expect_embed_dim),
        ("num_classes", expect_num_classes),
    ):
        if expected is not None and payload.get(key) != expected:
            raise CheckpointError(
                f"{path}: '{key}' is {payload.get(key)!r}, the benchmark expects {expected!r}"
            )
    model = EmbeddingModel(payload["backbone"], payload["embed_dim"], payload["num_classes"])
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: state dict does not fit strictly: {' '.join(first[:2])}") from None
    return FrozenOldModel(model, digest, str(path))
