"""Backbones, the embedding neck and the classifier.

Embedding (docs/methods.md §1): backbone → global pooled features ``[B, F]`` → ``Linear(F, d, bias=False)`` →
``BatchNorm1d(d)``; the embedding is the BN output, **not** L2-normalised. The classifier is
``Linear(d, C, bias=False)``.

Backbones: any timm model name (``pretrained=False``; weights come only from a local file) or the built-in
``tinycnn*`` family, small enough to train the embedded synthetic benchmark on a 2-core CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from bctbench.errors import CheckpointError, ConfigError

_TINY_RE = re.compile(r"^tinycnn(?:_w(\d+))?$")


class TinyCNN(nn.Module):
    """Four conv-BN-ReLU stages (widths w, 2w, 4w, 8w; 2x2 max-pool between) and global average pooling.

    Input ``float[B, 3, H, W]`` (H, W ≥ 16); output ``float[B, 8w]``. About 15 MFLOPs at 64 px for w = 16.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(widths):
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(True),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.num_features = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def build_backbone(name: str, pretrained_weights: str | Path | None = None) -> nn.Module:
    """Return a backbone with attribute ``num_features`` mapping ``[B, 3, H, W]`` to ``[B, num_features]``.

    ``name``: ``tinycnn`` / ``tinycnn_w<width>`` or a timm model name (created with ``pretrained=False`` and
    ``num_classes=0``). ``pretrained_weights``: optional local state-dict file, loaded strictly.
    """
    match = _TINY_RE.match(name)
    if match:
        backbone: nn.Module = TinyCNN(width=int(match.group(1) or 32))
    else:
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"unknown backbone '{name}' (use tinycnn[_w<width>] or a timm model name)")
        backbone = timm.create_model(name, pretrained=False, num_classes=0)
    if pretrained_weights:
        path = Path(pretrained_weights)
        if not path.is_file():
            raise CheckpointError(f"{path}: pretrained weights file not found (nothing is downloaded)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        result = backbone.load_state_dict(state, strict=False)
        unexpected = [k for k in result.unexpected_keys if not k.startswith(("fc.", "classifier.", "head."))]
        if result.missing_keys or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit backbone '{name}' (missing {result.missing_keys[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
    return backbone


class Embedder(nn.Module):
    """Backbone + neck. ``forward(images[B, 3, H, W]) -> embedding[B, d]`` (raw BN output, not normalised)."""

    def __init__(self, backbone: str, embed_dim: int, pretrained_weights: str | None = None) -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, pretrained_weights)
        self.neck = nn.Sequential(
            nn.Linear(self.backbone.num_features, embed_dim, bias=False), nn.BatchNorm1d(embed_dim)
        )
        self.embed_dim = embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(images))


class EmbeddingModel(nn.Module):
    """Embedder + bias-free linear classifier.

    ``forward(images)`` returns ``(embedding[B, d], logits[B, C])``.
    """

    def __init__(
        self, backbone: str, embed_dim: int, num_classes: int, pretrained_weights: str | None = None
    ):
        super().__init__()
        self.embedder = Embedder(backbone, embed_dim, pretrained_weights)
        self.classifier = nn.Linear(embed_dim, num_classes, bias=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embedder(images)
        return embedding, self.classifier(embedding)
