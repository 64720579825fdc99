"""The old model: checkpoint format, strict identity-checked loading, and the frozen module.

Checkpoint file (``torch.save``, read with ``weights_only=True``): ``{"format": "bctbench-old-model/2",
"backbone", "embed_dim", "num_classes", "identity", "state_dict" (an :class:`~bctbench.models.EmbeddingModel`
state dict), "meta": {...}}``. The file is written deterministically: the same weights and ``meta`` give the
same bytes (no temporary names, no timings; timings go to the sidecar ``<file>.json``). A model's identity is
:func:`bctbench.identity.state_identity` of its state dict, never the file's sha256. Loading is strict
(missing or unexpected keys are errors) and verifies the identity when one is expected. Files of the earlier
format ``bctbench-old-model/1`` load too (their identity is computed from their tensors).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bctbench.errors import CheckpointError, describe
from bctbench.identity import atomic_write_bytes, module_identity, save_deterministic, short, state_identity
from bctbench.models import EmbeddingModel

FORMAT = "bctbench-old-model/2"
FORMATS = ("bctbench-old-model/1", FORMAT)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:  # files of data, not model identities
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_old_checkpoint(
    model: EmbeddingModel,
    path: str | Path,
    *,
    backbone: str,
    meta: dict[str, Any],
    sidecar: dict[str, Any] | None = None,
) -> str:
    """Write an old-model checkpoint deterministically and atomically; return the model's identity.

    ``meta`` goes into the file and must be deterministic (benchmark, seed, dataset digests ...); run-time
    facts (seconds, host) go to ``sidecar``, written beside it as ``<file>.json``.
    """
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    identity = state_identity(state)
    payload = {
        "format": FORMAT,
        "backbone": backbone,
        "embed_dim": model.embedder.embed_dim,
        "num_classes": model.classifier.out_features,
        "identity": identity,
        "state_dict": state,
        "meta": meta,
    }
    save_deterministic(payload, path)
    if sidecar is not None:
        text = json.dumps({"identity": identity, **sidecar}, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(sidecar_path(path), text.encode())
    return identity


def sidecar_path(path: str | Path) -> Path:
    """``<checkpoint>.json``: run-time facts of a checkpoint (timings), kept out of its bytes."""
    path = Path(path)
    return path.with_name(path.name + ".json")


class FrozenOldModel(nn.Module):
    """The old model, frozen: ``requires_grad=False`` and always in eval mode (``train()`` is a no-op).

    ``forward(images[B, 3, H, W]) -> (embedding[B, d_old], logits[B, C_old])``. ``classifier_weight`` is
    the old classifier ``W_o`` as ``float[C_old, d_old]``.
    """

    def __init__(self, model: EmbeddingModel, identity: str, path: str, meta: dict | None = None) -> None:
        super().__init__()
        self.model = model
        self.identity = identity
        self.path = path
        self.meta = dict(meta or {})
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

    def current_identity(self) -> str:
        """Identity of the weights as they are now (equals ``identity`` unless something changed them)."""
        return module_identity(self.model)

    @property
    def classifier_weight(self) -> torch.Tensor:
        return self.model.classifier.weight

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model.training or any(m.training for m in self.model.modules()):
            self.model.eval()  # whatever switched it to training: BN statistics must not move
        return self.model(images)


def load_old_model(
    path: str | Path,
    identity: str | None = None,
    *,
    expect_backbone: str | None = None,
    expect_embed_dim: int | None = None,
    expect_num_classes: int | None = None,
) -> FrozenOldModel:
    """Load an old-model checkpoint strictly; verify its content ``identity`` if given.

    Raises :class:`CheckpointError` (one line, naming the file and the key) for a missing or unreadable file,
    another format, a backbone / embedding size / number of classes other than expected, a state dict that
    does not fit, or weights whose identity differs from ``identity``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: old-model checkpoint not found (run `bctbench train-old`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({describe(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") not in FORMATS:
        raise CheckpointError(f"{path}: not a bctbench old-model checkpoint (key 'format' not in {FORMATS})")
    for key, expected in (
        ("backbone", expect_backbone),
        ("embed_dim", expect_embed_dim),
        ("num_classes", expect_num_classes),
    ):
        if expected is not None and payload.get(key) != expected:
            raise CheckpointError(
                f"{path}: '{key}' is {payload.get(key)!r}, the benchmark expects {expected!r}"
            )
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: key 'state_dict' is missing or not a mapping")
    digest = state_identity(state)
    if identity and digest != identity:
        raise CheckpointError(
            f"{path}: weights have identity {short(digest)}, expected {short(identity)} (another old model)"
        )
    model = EmbeddingModel(payload["backbone"], payload["embed_dim"], payload["num_classes"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: state dict does not fit strictly: {' '.join(first[:2])}") from None
    meta = payload.get("meta") if isinstance(payload.get("meta"), dict) else {}
    return FrozenOldModel(model, digest, str(path), meta)
