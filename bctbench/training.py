"""Training the old model: plain softmax classification with the benchmark recipe (no compatibility)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from bctbench.method import NonFiniteLossError, build_optimizer
from bctbench.models import EmbeddingModel


class ClassifierModule(pl.LightningModule):
    """Trains :class:`EmbeddingModel` (backbone → neck → bias-free classifier) with CE on ``batch["labels"]``."""

    def __init__(
        self,
        *,
        backbone: str,
        embed_dim: int,
        num_classes: int,
        optimizer: dict[str, Any],
        max_epochs: int,
        pretrained_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = EmbeddingModel(backbone, embed_dim, num_classes, pretrained_weights)

    def on_fit_start(self) -> None:
        self.model.to(memory_format=torch.channels_last)  # faster convolutions; identical values

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, logits = self.model(batch["images"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"old model: loss is {loss.item()} at epoch {self.current_epoch}")
        self.log(
            "train/loss/cls",
            loss.detach(),
            prog_bar=True,
            batch_size=batch["images"].shape[0],
            on_step=True,
            on_epoch=True,
        )
        return loss

    def configure_optimizers(self):
        return build_optimizer(self.parameters(), self.hparams.optimizer, self.hparams.max_epochs)
