"""The method plugin contract: :class:`CompatibilityMethod`, a LightningModule template.

A plugin subclasses :class:`CompatibilityMethod`, declares metadata and keyword-only typed hyperparameters
with reference defaults, and implements :meth:`CompatibilityMethod.compatibility_loss`. The base class builds
the new model and the frozen old model, runs the training step (new forward; old forward under ``no_grad``
only when ``needs_old_forward``), sums and logs the named loss terms, builds the optimiser from the frozen
benchmark recipe and exposes the encoders that the evaluator uses.

Tensor conventions: images ``float[B, 3, H, W]``; ``labels`` ``int64[B]`` in the new label space;
``old_labels`` ``int64[B]`` in the old label space (−1 when the old model has no such class); embeddings
``float[B, d]`` raw neck output (not normalised); ``embedding_normed`` is L2-normalised.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from bctbench.errors import BCTBenchError, ConfigError
from bctbench.identity import module_identity
from bctbench.models import EmbeddingModel
from bctbench.old_model import load_old_model

Batch = dict[str, torch.Tensor]


class NonFiniteLossError(BCTBenchError):
    """A loss term became NaN or infinite during training."""


@dataclass(frozen=True)
class MethodSetup:
    """What the benchmark gives a method (primitives only, so it round-trips through checkpoints)."""

    backbone_new: str
    backbone_old: str
    embed_dim: int
    num_classes_new: int
    num_classes_old: int
    old_checkpoint: str
    old_identity: str | None = None
    optimizer: dict[str, Any] = field(
        default_factory=lambda: {
            "name": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "milestones": [],
            "gamma": 0.1,
            "warmup_epochs": 0,
        }
    )
    max_epochs: int = 1
    image_size: int = 64
    pretrained_weights: str | None = None
    artifact_store: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodSetup:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ModelOutput:
    """One model's output on a batch: ``embedding[B, d]`` (raw), ``embedding_normed[B, d]``, ``logits[B, C]``."""

    embedding: torch.Tensor
    embedding_normed: torch.Tensor
    logits: torch.Tensor | None = None

    @classmethod
    def from_embedding(cls, embedding: torch.Tensor, logits: torch.Tensor | None = None) -> ModelOutput:
        return cls(embedding, F.normalize(embedding.float(), dim=1), logits)


class Encoder(nn.Module):
    """An evaluation encoder: ``forward(images[B, 3, H, W]) -> float32[B, D]``, unit-norm rows.

    ``identity`` is a string that changes whenever the weights change (feature-cache key).
    """

    def __init__(self, net: nn.Module, identity: str) -> None:
        super().__init__()
        self.net = net
        self.identity = identity

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(images)
        if isinstance(out, tuple):
            out = out[0]
        return F.normalize(out.float(), dim=1)


class LiveEncoder(nn.Module):
    """An :class:`Encoder` over a model that is being trained, for a method's own pass over training images
    (e.g. ``store.embed_new_training_set``): ``to()`` is a no-op, so the live (possibly DDP-wrapped) model is
    never moved; inputs go to the model's device. ``forward(images[B, 3, H, W]) -> float32[B, D]`` unit rows."""

    def __init__(self, net: nn.Module, identity: str) -> None:
        super().__init__()
        self.net = net
        self.identity = identity
        self.train(net.training)

    def to(self, *args, **kwargs) -> LiveEncoder:  # noqa: D102 - intentionally a no-op
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.net.parameters()).device
        return F.normalize(self.net(images.to(device)).float(), dim=1)


def module_digest(module: nn.Module) -> str:
    """Short (16 hex) content identity of a module's parameters and buffers (names, dtypes, shapes, bytes;
    :func:`bctbench.identity.module_identity`)."""
    return module_identity(module)[:16]


def build_optimizer(params: Iterable[Any], spec: Mapping[str, Any], max_epochs: int):
    """Optimiser + per-epoch schedule from a recipe dict (``name``, ``lr``, ``momentum``, ``weight_decay``,
    ``schedule`` = ``multistep`` (``milestones``, ``gamma``) or ``cosine``, ``warmup_epochs`` of linear
    warm-up). Returns Lightning's ``configure_optimizers`` dict."""
    name = spec.get("name", "sgd")
    if name == "sgd":
        opt = torch.optim.SGD(
            params,
            lr=spec["lr"],
            momentum=spec.get("momentum", 0.9),
            weight_decay=spec.get("weight_decay", 0.0),
        )
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=spec.get("weight_decay", 0.0))
    else:
        raise ConfigError(f"optimizer.name: unknown optimiser '{name}'")
    milestones = sorted(int(m) for m in spec.get("milestones", ()))
    gamma = float(spec.get("gamma", 0.1))
    warmup = int(spec.get("warmup_epochs", 0))

    schedule = spec.get("schedule", "multistep")
    if schedule not in ("multistep", "cosine"):
        raise ConfigError(f"optimizer.schedule: unknown schedule '{schedule}'")

    def factor(epoch: int) -> float:
        if schedule == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, max_epochs)))
        else:
            decay = gamma ** sum(epoch >= m for m in milestones)
        return decay * (min(1.0, (epoch + 1) / (warmup + 1)) if warmup else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class CompatibilityMethod(pl.LightningModule):
    """Base class of every compatibility method (see module docstring).

    Subclass metadata: ``name`` (registry key = file name), ``paper`` (citation + URL), ``reference_code``
    (repository + file), ``needs_old_forward``, ``required_artifacts``, ``needs_custom_old_model``,
    ``handles_dim_mismatch``, ``backfill_mode``.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    reference_code: ClassVar[str] = ""
    needs_old_forward: ClassVar[bool] = False
    required_artifacts: ClassVar[frozenset[str]] = frozenset()
    needs_custom_old_model: ClassVar[bool] = False
    #: Named hyperparameter sets the papers compare against (``bctbench run --preset NAME``; row
    #: ``method:NAME``), e.g. ``{"old_classes": {"new_class_rows": "none"}}``; keys must be hyperparameters.
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    #: True if the method handles ``embed_dim != old embed_dim`` itself (e.g. with a learned transform).
    handles_dim_mismatch: ClassVar[bool] = False
    #: The backfilling mode the method is designed for (docs/evaluation.md §6.1): ``"mixed"`` (new queries
    #: against a gallery of old and new embeddings) or ``"merge"`` (distance rank merge of an old-space and a
    #: new-space search). The evaluator computes every mode of the benchmark; this one is the method's
    #: headline curve.
    backfill_mode: ClassVar[str] = "mixed"

    def __init__(self, setup: MethodSetup | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(setup, MethodSetup):
            setup = MethodSetup.from_dict(setup)
        self.method_setup = setup
        self.new = EmbeddingModel(
            setup.backbone_new, setup.embed_dim, setup.num_classes_new, setup.pretrained_weights
        )
        self.old = load_old_model(
            setup.old_checkpoint,
            setup.old_identity,
            expect_backbone=setup.backbone_old,
            expect_num_classes=setup.num_classes_old,
        )
        if self.old.embed_dim != setup.embed_dim and not self.handles_dim_mismatch:
            raise ConfigError(
                f"method '{self.name}': new embedding dim {setup.embed_dim} != old {self.old.embed_dim} and the "
                "method declares no transform between the spaces (handles_dim_mismatch = False)"
            )
        # Top-1 accuracy of the new classifier on training batches (torchmetrics: reduced over DDP ranks;
        # its state is not part of checkpoints).
        self.train_accuracy = MulticlassAccuracy(num_classes=setup.num_classes_new, average="micro")
        # Collects the init arguments of the whole subclass chain (setup + keyword-only hyperparameters).
        self.save_hyperparameters(ignore=["setup"])
        self.hparams["setup"] = dataclasses.asdict(
            setup
        )  # plain types: checkpoints load with weights_only=True

    # ----------------------------------------------------------------------------------------- hooks
    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        """Return named scalar loss terms (added to the classification loss). Override in plugins."""
        raise NotImplementedError

    def classification_loss(self, batch: Batch, new: ModelOutput) -> torch.Tensor:
        """Softmax CE of the new classifier on the new labels (``logits`` computed in fp32)."""
        return F.cross_entropy(new.logits.float(), batch["labels"])

    def loss_weights(self) -> Mapping[str, float]:
        """Optional per-term weights (default 1 for every term)."""
        return {}

    def prepare_artifacts(self, store: Any) -> None:
        """One-off old-model passes before training (e.g. class means); the store caches by content hash."""

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the optimiser updates (default: every parameter with ``requires_grad``, never the frozen
        old model's, even if something switched its ``requires_grad`` on)."""
        frozen = {id(p) for p in self.old.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in frozen]

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        """Tunable hyperparameters: ``{name: list of values}``; keys must be ``__init__`` parameters."""
        return {}

    # ---------------------------------------------------------------------------------- forward paths
    def forward_new(self, images: torch.Tensor) -> ModelOutput:
        embedding, logits = self.new(images)
        return ModelOutput.from_embedding(embedding, logits)

    @torch.no_grad()
    def forward_old(self, images: torch.Tensor) -> ModelOutput:
        embedding, logits = self.old(images)
        return ModelOutput.from_embedding(embedding, logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """New-model embedding ``[B, d]`` (raw)."""
        return self.new.embedder(images)

    def encoders(self) -> dict[str, Encoder]:
        """Evaluation encoders: ``{"old": φ_o, "new": φ_n}``; unit-norm ``float32[B, D]`` outputs."""
        return {
            "old": Encoder(self.old.model.embedder, f"old:{self.old.identity}"),
            "new": Encoder(self.new.embedder, f"{self.name}:{module_digest(self.new.embedder)}"),
        }

    # ------------------------------------------------------------------------------ Lightning hooks
    def train(self, mode: bool = True) -> CompatibilityMethod:
        super().train(mode)
        self.old.eval()  # frozen: BN statistics never update
        return self

    def on_fit_start(self) -> None:
        # channels-last convolutions are 1.3-2x faster on CPUs with oneDNN and on GPUs; the weights' values (and
        # so every identity, computed on contiguous copies) do not change
        self.new.to(memory_format=torch.channels_last)
        self.old.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        # guarded by train(); re-asserted as the contract says, for every submodule (a child switched to training
        # mode directly would update the old BN statistics)
        if any(m.training for m in self.old.modules()):
            raise BCTBenchError(
                "the frozen old model (or one of its submodules) was switched to training mode"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        new = self.forward_new(batch["images"])
        old = self.forward_old(batch["images"]) if self.needs_old_forward else None
        terms = {"cls": self.classification_loss(batch, new)}
        extra = self.compatibility_loss(batch, new, old)
        if "cls" in extra:
            raise BCTBenchError(
                f"method '{self.name}': compatibility_loss must not return a term named 'cls'"
            )
        terms.update(extra)
        weights = self.loss_weights()
        total = sum(weights.get(k, 1.0) * v for k, v in terms.items())
        batch_size = batch["images"].shape[0]
        for key, value in terms.items():
            if not torch.isfinite(value.detach()).all():
                raise NonFiniteLossError(
                    f"method '{self.name}': loss term '{key}' is {value.item()} at epoch {self.current_epoch}, "
                    f"step {self.global_step}"
                )
            self.log(f"train/loss/{key}", value.detach(), batch_size=batch_size, on_step=True, on_epoch=True)
        self.log(
            "train/loss/total",
            total.detach(),
            prog_bar=True,
            batch_size=batch_size,
            on_step=True,
            on_epoch=True,
        )
        if new.logits is not None:
            self.train_accuracy.update(new.logits.detach(), batch["labels"])
            self.log("train/acc", self.train_accuracy, on_step=False, on_epoch=True, batch_size=batch_size)
        return total

    def configure_optimizers(self):
        params = list(self.trainable_parameters())
        frozen = {id(p) for p in self.old.parameters()}
        if any(id(p) in frozen for p in params):
            raise BCTBenchError(f"method '{self.name}': trainable_parameters() includes the frozen old model")
        return build_optimizer(params, self.method_setup.optimizer, self.method_setup.max_epochs)

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs
    ):
        """Lightning's loader, always with ``weights_only=True`` (no code runs from the file); the stored setup
        (a plain dict) is turned back into a :class:`MethodSetup` for the method's ``__init__``."""
        kwargs["weights_only"] = True
        if "setup" not in kwargs:
            payload = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            setup = (
                (payload.get("hyper_parameters") or {}).get("setup") if isinstance(payload, dict) else None
            )
            if isinstance(setup, Mapping):
                kwargs["setup"] = MethodSetup.from_dict(setup)
        return super().load_from_checkpoint(
            checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a checkpoint's weights, except the frozen old model's: it keeps the weights it was built with
        (verified against its pinned identity), whatever the checkpoint holds or lacks for it."""
        own_old = {f"old.{k}": v for k, v in self.old.state_dict().items()}
        state = {k: v for k, v in state_dict.items() if not k.startswith("old.")} | own_old
        return super().load_state_dict(state, strict=strict, assign=assign)

    # ------------------------------------------------------------------------------------ helpers
    def gather_no_grad(self, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        """All-gather ``tensor[B, ...]`` across processes without gradient.

        Returns ``(gathered[N, ...], local_offset)`` with N = B·world and local row 0 at ``local_offset``
        (= rank·B). Single process: ``(tensor.detach(), 0)``.
        """
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensor.detach(), 0
        gathered = self.all_gather(tensor.detach(), sync_grads=False)
        return gathered.reshape(-1, *tensor.shape[1:]), trainer.global_rank * tensor.shape[0]

    def training_progress(self) -> float:
        """Fraction of training done in [0, 1] (for schedules such as DANN's α)."""
        trainer = self._trainer
        if trainer is None or not trainer.max_epochs:
            return 0.0
        per_epoch = max(
            1, int(trainer.num_training_batches) if math.isfinite(trainer.num_training_batches) else 1
        )
        return min(1.0, self.global_step / (per_epoch * trainer.max_epochs))
