"""Shared plugin base of the prototype-perturbation methods (``ndpp``, ``odpp``; docs/methods.md §10–11,
reconstructions): the state, artefacts, loss and epoch hook they have in common. A subclass defines its
hyperparameters in ``__init__`` (calling :meth:`_init_pseudo_prototypes`) and :meth:`update_perturbation`.

State (``C`` = new classes, ``d`` = embedding dim): ``bank`` (EMA of new-model class means, ``[C, d]``),
``pseudo_prototypes`` P̃ ``[C, d]`` (persistent), ``delta`` Δ ``[C, d]`` (persistent when the subclass
warm-starts from it), and, rebuilt by :meth:`prepare_artifacts`, ``old_prototypes`` ``[C, d]``, ``neighbors``
``int64[C, K]``, ``bounds`` ε_k ``[C]``, ``proto_columns`` (classes with a prototype) and ``column_of_class``
(−1 for classes without one).
"""

from __future__ import annotations

import torch

from bctbench import losses
from bctbench import prototypes as proto_math
from bctbench.errors import BCTBenchError
from bctbench.method import Batch, CompatibilityMethod, MethodSetup, ModelOutput

__all__ = ["PseudoOldPrototypeMethod"]


class PseudoOldPrototypeMethod(CompatibilityMethod):
    """Align the new model with pseudo-old prototypes P̃ = normalise(P^o + Δ) by a normalised prototype CE.

    Subclasses set ``k``, ``epsilon``, ``rho``, ``scale``, ``weight`` and ``start_epoch`` and implement
    :meth:`update_perturbation` (recompute Δ and P̃ from the bank at the start of every epoch ≥ ``start_epoch``).
    """

    needs_old_forward = False
    required_artifacts = frozenset({"class_means_new", "old_features_new"})

    def _init_pseudo_prototypes(self, setup: MethodSetup, *, ema: float, persistent_delta: bool) -> None:
        c_new, d = setup.num_classes_new, setup.embed_dim
        self.bank = proto_math.EMAPrototypeBank(c_new, d, momentum=ema)
        # Persistent: the frozen pseudo-old prototypes P̃ (a resumed run keeps the last update).
        self.register_buffer("pseudo_prototypes", torch.zeros(c_new, d))
        self.register_buffer("delta", torch.zeros(c_new, d), persistent=persistent_delta)
        # Rebuilt from the artefacts by prepare_artifacts.
        self.register_buffer("old_prototypes", torch.zeros(c_new, d), persistent=False)
        self.register_buffer("neighbors", torch.zeros(c_new, 0, dtype=torch.int64), persistent=False)
        self.register_buffer("bounds", torch.zeros(c_new), persistent=False)
        self.register_buffer("proto_columns", torch.zeros(0, dtype=torch.int64), persistent=False)
        self.register_buffer("column_of_class", torch.full((c_new,), -1, dtype=torch.int64), persistent=False)
        self._prepared = False
        self.updated_at: list[int] = []  # epochs at which Δ was recomputed in this process
        self.last_stats: dict[str, float] = {}

    # ----------------------------------------------------------------------------------- artefacts
    def prepare_artifacts(self, store) -> None:
        means = store.get("class_means_new")
        feats = store.get("old_features_new")
        inputs = proto_math.perturbation_inputs(
            means["means"].float(),
            means["counts"].long(),
            feats["features"],
            feats["labels"].long(),
            k=self.k,
            epsilon=self.epsilon,
            rho=self.rho,
        )
        device = self.pseudo_prototypes.device
        columns = torch.nonzero(inputs.present).flatten()
        column_of_class = torch.full((inputs.present.numel(),), -1, dtype=torch.int64)
        column_of_class[columns] = torch.arange(columns.numel())
        self.old_prototypes = inputs.old_prototypes.to(device)
        self.neighbors = inputs.neighbors.to(device)
        self.bounds = inputs.bounds.to(device)
        self.proto_columns = columns.to(device)
        self.column_of_class = column_of_class.to(device)
        self.delta = torch.zeros_like(self.old_prototypes)
        self.pseudo_prototypes = self.old_prototypes.clone()
        self._prepared = True

    def _require_prepared(self) -> None:
        if not self._prepared:
            raise BCTBenchError(f"{self.name}: prepare_artifacts(store) must run before training")

    # -------------------------------------------------------------------------------------- loss
    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        self._require_prepared()
        labels = batch["labels"]
        gathered, _ = self.gather_no_grad(new.embedding_normed)
        gathered_labels, _ = self.gather_no_grad(labels)
        self.bank.update(gathered, gathered_labels)
        term = losses.prototype_ce_loss(
            new.embedding_normed,
            self.pseudo_prototypes[self.proto_columns],
            self.column_of_class[labels],
            scale=self.scale,
        )
        return {"pp": self.weight * term}

    # ------------------------------------------------------------------------------ perturbation
    def on_train_epoch_start(self) -> None:
        if self.current_epoch >= self.start_epoch:
            self.update_perturbation()

    def update_perturbation(self) -> dict[str, float]:
        """Recompute Δ and P̃ from the current bank; returns and logs the epoch statistics."""
        raise NotImplementedError

    def _apply_delta(self, delta: torch.Tensor, gains: torch.Tensor, seen: torch.Tensor) -> dict[str, float]:
        """Install Δ ``[C, d]`` (rank 0's copy under DDP) and P̃; returns ``perturbation_stats`` + ``mean_gain``."""
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            delta = trainer.strategy.broadcast(delta.cpu(), src=0).to(self.old_prototypes.device)
        self.delta = delta.to(self.old_prototypes.dtype)
        self.pseudo_prototypes = proto_math.pseudo_prototypes(self.old_prototypes, self.delta)
        stats = proto_math.perturbation_stats(self.delta, self.bounds, seen)
        seen_gains = gains[seen]
        stats["mean_gain"] = float(seen_gains.mean()) if seen_gains.numel() else 0.0
        self.updated_at.append(int(self.current_epoch))
        return stats

    def _log_stats(self, stats: dict[str, float], keys: tuple[str, ...]) -> None:
        if self._trainer is not None:
            for key in keys:
                self.log(f"train/{self.name}/{key}", stats[key], on_step=False, on_epoch=True)
