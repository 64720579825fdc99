"""``unibct`` — Universal Backward-Compatible Training: a BCT-style influence loss whose targets are
structurally refined old prototypes.

Paper: Zhang, Ge, Shen, Su, Wu, Yuan, Xu, Wang, Shan, "Towards Universal Backward-Compatible Representation
Learning", IJCAI 2022, https://arxiv.org/abs/2203.01583 (docs/methods.md §7). The paper's code pointer
(TencentARC/OpenCompatible) holds no UniBCT code.

Reference code [third-party]: yuleung/MixBCT ``BCT_Methods/UniBCT/refine_prototype.py`` (refinement, citing
Eq. 9/10) and Ashespt/AdvBCT ``trainer/trainer.py`` branch ``uni_bct`` + ``models/margin_softmax.py`` (ArcFace
head over unrefined old-class centres). The bctbench definition is a **reconstruction** (§7.2–7.3):

* Prototypes P ∈ R^{C×d} start at normalise(P^o_k) (artefact ``class_means_new``: mean of normalised old
  features over the new training set).
* Compatibility term: CE over ArcFace logits s·cos(acos(⟨f̂_n, p̂_k⟩) + m·1[k = y]), s = 30, m = 0.3
  (:func:`bctbench.losses.arcface_logits`; acos clamped to [−1+10⁻⁷, 1−10⁻⁷]); the target is the row of the
  sample's own class (influence-style). Weight 1 from epoch 0.
* Refinement (``refine=True``): at the start of each epoch in ``refine_epochs``, the current new model embeds
  the whole new training set (``store.embed_new_training_set``) and
  :func:`bctbench.prototypes.refine_prototypes` recomputes p_k = normalise(πᵀ X̂_o) with
  π = ((1−λ)/n_k)·1ᵀ(I − λA)⁻¹, A = row-softmax(X̂_n X̂_nᵀ/τ) (diagonal −10⁹), λ = 0.9, τ = 0.05, at most 1024
  samples per class (seeded subset). The mean entropy of π over classes is logged (``train/unibct/pi_entropy``,
  and ``pi_entropy_ratio`` = mean H/log n_k over classes with n_k > 1).

Configuration mapping: ArcFace ``s``/``m`` → ``scale``/``margin``; MixBCT ``lambda``/``tau`` →
``refine_lambda``/``refine_tau``; MixBCT refinement epochs 10 and 20 → ``refine_epochs``.

Flags and readings:

* ``refine_epochs=None`` (default) = the epochs ⌊E/3⌋ and ⌊2E/3⌋ of E = ``max_epochs`` (10 and 20 for the
  30-epoch protocol, the reference's epochs 10 and 20), keeping only 1 ≤ e ≤ E−1 (no refinement with an
  untrained model at epoch 0; none for E = 1). An explicit list is used as given (0-based epochs).
* ``affinity_norm="row"`` (default, reconstruction) vs ``"column"`` (MixBCT's form, which reduces exactly to the
  plain class mean, §7.1). Features are row-normalised before the affinity (MixBCT uses raw features).
* ``prototype_classes="all"`` (default: every class with samples in the new training set) vs ``"old"``
  (only classes with an old label, mapped through ``old_label_of_class``; samples of other classes get no
  compatibility term): AdvBCT's ``uni_bct``. Reading: the ``"old"`` prototypes still come from ``class_means_new``
  (old features over the new training set), whereas AdvBCT uses the §2.1 centres over the old training set.
* ``refine=False``: AdvBCT's simplified UniBCT (no refinement). Preset ``advbct_table`` = ``refine=False`` +
  ``prototype_classes="old"``.
* Head: ArcFace as in AdvBCT (MixBCT uses CE(f̂_n Pᵀ) without scale or margin); weight 1 from epoch 0 (MixBCT
  warms up with 0 until epoch 10). No flag: the reproduction targets come from the AdvBCT table.
* Classes without samples in the new training set are dropped from the head (their P^o row is 0).

State: the prototypes are a **non-persistent** buffer rebuilt by :meth:`UniBCT.prepare_artifacts` (so
``load_from_checkpoint`` works without artefacts). Refined prototypes are additionally written to the checkpoint
dict (key ``"unibct_refined_prototypes"``) and restored by ``on_load_checkpoint`` so that resuming after a
refinement epoch keeps them. The refinement pass runs the new embedder in eval mode (no BN statistics update)
on the device it lives on; features are computed under DDP by every rank (sharded by the store) and the refined
prototypes are broadcast from rank 0.

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bctbench import (
    Batch,
    BCTBenchError,
    CompatibilityMethod,
    ConfigError,
    LiveEncoder,
    MethodSetup,
    ModelOutput,
    losses,
    register_method,
)
from bctbench import prototypes as proto_math

_CKPT_KEY = "unibct_refined_prototypes"


def default_refine_epochs(max_epochs: int) -> list[int]:
    """⌊E/3⌋ and ⌊2E/3⌋, keeping 1 ≤ e ≤ E−1 (10 and 20 for E = 30)."""
    return sorted({e for e in (max_epochs // 3, (2 * max_epochs) // 3) if 1 <= e <= max_epochs - 1})


@register_method("unibct")
class UniBCT(CompatibilityMethod):
    paper = (
        "Zhang et al., Towards Universal Backward-Compatible Representation Learning, IJCAI 2022, "
        "https://arxiv.org/abs/2203.01583"
    )
    reference_code = (
        "yuleung/MixBCT BCT_Methods/UniBCT/refine_prototype.py (refinement, third-party); "
        "Ashespt/AdvBCT trainer/trainer.py branch 'uni_bct', models/margin_softmax.py (head)"
    )
    needs_old_forward = False
    required_artifacts = frozenset({"class_means_new", "old_features_new"})

    def __init__(
        self,
        setup: MethodSetup,
        *,
        weight: float = 1.0,
        scale: float = 30.0,
        margin: float = 0.3,
        prototype_classes: str = "all",
        refine: bool = True,
        refine_epochs: list[int] | None = None,
        refine_lambda: float = 0.9,
        refine_tau: float = 0.05,
        affinity_norm: str = "row",
        refine_max_per_class: int = 1024,
    ) -> None:
        super().__init__(setup)
        if prototype_classes not in ("all", "old"):
            raise ConfigError(f"unibct: prototype_classes must be 'all' or 'old', got {prototype_classes!r}")
        if affinity_norm not in ("row", "column"):
            raise ConfigError(f"unibct: affinity_norm must be 'row' or 'column', got {affinity_norm!r}")
        if not 0.0 <= refine_lambda < 1.0:
            raise ConfigError("unibct: refine_lambda must be in [0, 1)")
        self.weight = weight
        self.scale = scale
        self.margin = margin
        self.prototype_classes = prototype_classes
        self.refine = refine
        self.refine_epochs = (
            default_refine_epochs(setup.max_epochs)
            if refine_epochs is None
            else sorted(int(e) for e in refine_epochs)
        )
        self.refine_lambda = refine_lambda
        self.refine_tau = refine_tau
        self.affinity_norm = affinity_norm
        self.refine_max_per_class = refine_max_per_class
        self._store = None
        self.refined_at: list[int] = []  # epochs at which refinement ran in this process (for tests / logs)
        self.last_refine_entropy: torch.Tensor | None = None
        self._restored_refined = False
        c_new, d = setup.num_classes_new, setup.embed_dim
        # Non-persistent: rebuilt from the artefact cache by prepare_artifacts on every run.
        self.register_buffer("prototypes", torch.zeros(c_new, d), persistent=False)
        self.register_buffer("proto_columns", torch.zeros(0, dtype=torch.int64), persistent=False)
        self.register_buffer("column_of_class", torch.full((c_new,), -1, dtype=torch.int64), persistent=False)

    # ----------------------------------------------------------------------------------- artefacts
    def prepare_artifacts(self, store) -> None:
        self._store = store
        data = store.get("class_means_new")
        counts = data["counts"].long()
        include = counts > 0
        if self.prototype_classes == "old":
            include = include & (data["old_label_of_class"].long() >= 0)
        columns = torch.nonzero(include).flatten()
        column_of_class = torch.full_like(counts, -1)
        column_of_class[columns] = torch.arange(columns.numel())
        device = self.prototypes.device
        self.prototypes = F.normalize(data["means"].float(), dim=1, eps=1e-12).to(device)
        self.proto_columns = columns.to(device)
        self.column_of_class = column_of_class.to(device)

    # -------------------------------------------------------------------------------------- loss
    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        target = self.column_of_class[batch["labels"]]
        valid = target >= 0
        weight = self.prototypes[self.proto_columns]
        logits = losses.arcface_logits(
            new.embedding_normed, weight, target, scale=self.scale, margin=self.margin
        )
        per_sample = F.cross_entropy(logits, target.clamp(min=0), reduction="none")
        per_sample = torch.where(valid, per_sample, torch.zeros_like(per_sample))
        term = per_sample.sum() / valid.sum().clamp(min=1).to(per_sample.dtype)
        return {"prototype": self.weight * term}

    # -------------------------------------------------------------------------------- refinement
    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        if self.refine and epoch in self.refine_epochs and epoch not in self.refined_at:
            self.refine_now()
            self.refined_at.append(epoch)

    @torch.no_grad()
    def refine_now(self) -> None:
        """Refine the prototypes with the current new model (§7.2); logs the mean π entropy."""
        store = self._store
        if store is None or not hasattr(store, "embed_new_training_set"):
            raise BCTBenchError(
                "unibct: refinement needs the artefact store from prepare_artifacts "
                "(with embed_new_training_set)"
            )
        encoder = LiveEncoder(self.new.embedder, "unibct-refine")
        current = store.embed_new_training_set(encoder)
        old = store.get("old_features_new")
        if not torch.equal(current["labels"].cpu(), old["labels"].cpu()):
            raise BCTBenchError("unibct: new-feature rows do not match the cached old features (label order)")
        device = self.prototypes.device
        start = F.normalize(store.get("class_means_new")["means"].float(), dim=1, eps=1e-12)
        result = proto_math.refine_prototypes(
            start.to(device),
            old["features"].to(device),
            current["features"].to(device),
            old["labels"].to(device),
            lam=self.refine_lambda,
            tau=self.refine_tau,
            affinity_norm=self.affinity_norm,
            max_per_class=self.refine_max_per_class,
        )
        refined = result.prototypes
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            refined = trainer.strategy.broadcast(refined.cpu(), src=0).to(device)
        self.prototypes = refined.to(device=device, dtype=self.prototypes.dtype)
        present = result.counts > 0
        entropy = result.entropy[present]
        multi = result.counts > 1
        ratio = result.entropy[multi] / torch.log(result.counts[multi].double()).float()
        self.last_refine_entropy = result.entropy.detach().cpu()
        if trainer is not None:
            mean_h = float(entropy.mean()) if entropy.numel() else 0.0
            mean_r = float(ratio.mean()) if ratio.numel() else 0.0
            self.log("train/unibct/pi_entropy", mean_h, on_step=False, on_epoch=True)
            self.log("train/unibct/pi_entropy_ratio", mean_r, on_step=False, on_epoch=True)

    # ------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.refined_at or self._restored_refined:
            checkpoint[_CKPT_KEY] = self.prototypes.detach().cpu().clone()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get(_CKPT_KEY)
        if stored is not None and stored.shape == self.prototypes.shape:
            self.prototypes = stored.to(device=self.prototypes.device, dtype=self.prototypes.dtype)
            self._restored_refined = True

    variants: ClassVar[dict[str, dict[str, Any]]] = {
        # UniBCT as the AdvBCT table ran it: no structural refinement, prototypes of the old classes only
        "advbct_table": {"refine": False, "prototype_classes": "old"},
    }

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {"weight": [0.5, 1.0, 2.0], "margin": [0.1, 0.2, 0.3, 0.5], "scale": [16.0, 30.0, 64.0]}
