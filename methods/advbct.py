"""``advbct`` — Adversarial Backward-Compatible Training with an elastic boundary.

Paper: Pan, Xu, Yang, He, Jiang, Guo, Qian, Zhang, Cheng, Yang, Chu, "Boundary-aware Backward-Compatible
Representation via Adversarial Learning in Image Retrieval", CVPR 2023, https://arxiv.org/abs/2305.02610
(docs/methods.md §9).

Reference code [official code]: Ashespt/AdvBCT (MIT) — ``models/base_model.py`` (discriminator, elastic
boundary), ``models/modules.py`` (gradient reversal), ``trainer/trainer.py`` (``adv_compatible``,
``bct_limit``), ``extract_feat.py`` (class metadata), ``configs/new_AdvBct.yml``.

L = CE(W_n φ_n, y) + L_p2s + w_e·L_adv, one SGD step over backbone, classifier, discriminator and elastic
weights (no alternating updates):

* L_adv = NLL(D(R_α(φ_n(x))), 0) + NLL(D(φ_o(x)), 1) (:func:`bctbench.losses.adversarial_discriminator_loss`):
  D = Linear(d, 100) → BN(100) → ReLU → Linear(100, 2) → LogSoftmax (:class:`bctbench.layers.Discriminator`),
  R_α the gradient reversal with the DANN schedule α = 2/(1+exp(−10p)) − 1, p = (it + e·I)/(E·I)
  (it = batch index, e = 0-based epoch, I = batches per epoch of this process, E = ``setup.max_epochs``);
  w_e = (E − e + 1)/E. Raw post-BN embeddings; old = 1, new = 0. α and w_e are logged
  (``train/advbct/alpha``, ``train/advbct/adv_weight``); the term ``adv`` is logged already weighted.
* L_p2s (:func:`bctbench.losses.elastic_p2s_loss`): h_i = max(‖f̂_n,i − c_y‖ − r_y, 0) with the §2.1 radius
  file (artefact ``advbct_meta``: c_y un-normalised mean of normalised old features over the **old** training
  set, r_max,y after the 1.5-IQR filter), r_y = r_max ± |r_max − T|·σ(w_y) toward T = 1.0, w ∈ R^{C_new}
  learnable, initialised U(−1, 1) from the global torch RNG (seeded by ``seed_everything``). Mean over the
  violators only. Samples of classes without metadata (new classes, n_kept ≤ 1) are skipped.

Configuration mapping: ``TRAIN.THRESHOLD`` → ``threshold`` (1.0; the ``defaults.py`` 0.5 is overridden by the
config); ``COMP_LOSS.ELASTIC_BOUNDARY`` → ``elastic`` (``"learnable"``); ``COMP_LOSS.WEIGHT`` is not applied
(as in the reference). Needs an old forward on every batch (D's old input).

Faithful defaults and the flags that turn each known weakness off (docs/methods.md §9.4–9.5):

* ``disc_bn="per_domain"`` (reference: D runs twice, so its BN normalises each domain with its own batch
  statistics, hiding per-unit mean/variance gaps) | ``"joint"`` (one forward of [R_α(φ_n); φ_o]) | ``"none"``
  (D without BN).
* ``disc_input="raw"`` (reference) | ``"l2"`` (normalise both inputs; retrieval uses cosine).
* ``elastic="learnable"`` (reference) | ``"off"`` (r_y = r_max,y; no elastic parameter is created).
  Weakness (not fixed by default): w only ever gets gradient toward a larger radius; weight decay is the only
  counter-force.
* ``elastic_tightness=0.0`` (reference) | λ_t > 0 adds λ_t·mean_i Δ'_{y_i} (pulls r back toward r_max).
* ``elastic_weight_decay=None`` (reference: the elastic weights share the recipe's parameter group, weight
  decay 5e-4) | a float puts them in their own parameter group with that weight decay (e.g. 0.0).
* ``p2s_reduction="violators"`` (reference) | ``"batch"`` (divide by the number of eligible samples).
* ``adv_weight_schedule="decay"`` (reference w_e = (E − e + 1)/E) | ``"constant"`` (w_e = 1).
* Preset ``advbct_fixed`` = {disc_bn: joint, disc_input: l2, elastic_tightness: 0.1, elastic_weight_decay: 0}.

Readings and deviations (no flag):

* Metadata is indexed by **old** label and mapped to new labels through ``class_means_new["old_label_of_class"]``
  (dense buffers, no per-sample JSON lookups); classes without an old label have no metadata.
* The reference's D input dimension is hard-coded 256; here it is ``embed_dim`` (256 in the protocol).
* α and w_e use E = ``setup.max_epochs`` (the protocol's epochs) and I = the trainer's batches per epoch.
* The old model stays frozen in eval mode (bit-identical after every step); the reference's SyncBN conversion
  of D is the Trainer's ``sync_batchnorm`` (D is part of this LightningModule).

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from bctbench import (
    Batch,
    CompatibilityMethod,
    ConfigError,
    MethodSetup,
    ModelOutput,
    build_optimizer,
    layers,
    losses,
    register_method,
)

_CHOICES = {
    "disc_bn": ("per_domain", "joint", "none"),
    "disc_input": ("raw", "l2"),
    "elastic": ("learnable", "off"),
    "p2s_reduction": ("violators", "batch"),
    "adv_weight_schedule": ("decay", "constant"),
}


@register_method("advbct")
class AdvBCT(CompatibilityMethod):
    paper = (
        "Pan et al., Boundary-aware Backward-Compatible Representation via Adversarial Learning in Image "
        "Retrieval, CVPR 2023, https://arxiv.org/abs/2305.02610"
    )
    reference_code = (
        "Ashespt/AdvBCT models/base_model.py, models/modules.py, trainer/trainer.py "
        "(adv_compatible, bct_limit), configs/new_AdvBct.yml"
    )
    needs_old_forward = True
    required_artifacts = frozenset({"advbct_meta", "class_means_new"})

    def __init__(
        self,
        setup: MethodSetup,
        *,
        threshold: float = 1.0,
        disc_hidden: int = 100,
        disc_bn: str = "per_domain",
        disc_input: str = "raw",
        elastic: str = "learnable",
        elastic_tightness: float = 0.0,
        elastic_weight_decay: float | None = None,
        p2s_reduction: str = "violators",
        adv_weight_schedule: str = "decay",
    ) -> None:
        super().__init__(setup)
        given = {
            "disc_bn": disc_bn,
            "disc_input": disc_input,
            "elastic": elastic,
            "p2s_reduction": p2s_reduction,
            "adv_weight_schedule": adv_weight_schedule,
        }
        for key, value in given.items():
            if value not in _CHOICES[key]:
                raise ConfigError(f"advbct: {key} must be one of {_CHOICES[key]}, got {value!r}")
        if elastic_tightness < 0:
            raise ConfigError("advbct: elastic_tightness must be >= 0")
        if elastic_weight_decay is not None and elastic == "off":
            raise ConfigError("advbct: elastic_weight_decay needs elastic='learnable'")
        self.threshold = threshold
        self.disc_bn = disc_bn
        self.disc_input = disc_input
        self.elastic = elastic
        self.elastic_tightness = elastic_tightness
        self.elastic_weight_decay = elastic_weight_decay
        self.p2s_reduction = p2s_reduction
        self.adv_weight_schedule = adv_weight_schedule
        c_new, d = setup.num_classes_new, setup.embed_dim
        self.discriminator = layers.Discriminator(d, disc_hidden, 2, batch_norm=disc_bn != "none")
        if elastic == "learnable":
            self.elastic_logits = nn.Parameter(torch.empty(c_new).uniform_(-1.0, 1.0))
        else:
            self.register_parameter("elastic_logits", None)
        # Radius-file metadata mapped to new labels; non-persistent (recomputed by prepare_artifacts).
        self.register_buffer("centers", torch.zeros(c_new, d), persistent=False)
        self.register_buffer("r_max", torch.zeros(c_new), persistent=False)
        self.register_buffer("has_meta", torch.zeros(c_new, dtype=torch.bool), persistent=False)
        self._batch_idx = 0
        self.last_alpha = 0.0
        self.last_adv_weight = 1.0

    # ----------------------------------------------------------------------------------- artefacts
    def prepare_artifacts(self, store) -> None:
        meta = store.get("advbct_meta")
        old_of_class = store.get("class_means_new")["old_label_of_class"].long()
        rows = old_of_class.clamp(min=0)
        known = (old_of_class >= 0) & meta["has_meta"].bool()[rows]
        device = self.centers.device
        self.centers = torch.where(known.unsqueeze(1), meta["centers"].float()[rows], 0.0).to(device)
        self.r_max = torch.where(known, meta["r_max"].float()[rows], 0.0).to(device)
        self.has_meta = known.to(device)

    # ------------------------------------------------------------------------------- schedules
    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._batch_idx = batch_idx

    def alpha(self) -> float:
        """DANN α at the current (batch index, epoch); 0 without a trainer."""
        trainer = self._trainer
        if trainer is None:
            return 0.0
        per_epoch = trainer.num_training_batches
        per_epoch = int(per_epoch) if per_epoch not in (None, float("inf")) and per_epoch > 0 else 1
        progress = layers.dann_progress(
            self._batch_idx,
            self.current_epoch,
            iters_per_epoch=per_epoch,
            max_epochs=self.method_setup.max_epochs,
        )
        return layers.dann_alpha(progress)

    def adv_weight(self) -> float:
        if self.adv_weight_schedule == "constant":
            return 1.0
        return layers.adv_epoch_weight(
            self.current_epoch if self._trainer is not None else 0, self.method_setup.max_epochs
        )

    # -------------------------------------------------------------------------------------- loss
    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        p2s = losses.elastic_p2s_loss(
            new.embedding_normed,
            labels,
            self.centers,
            self.r_max,
            self.has_meta,
            elastic_logits=self.elastic_logits,
            threshold=self.threshold,
            reduction=self.p2s_reduction,
            tightness=self.elastic_tightness,
        )
        alpha, w_e = self.alpha(), self.adv_weight()
        adv = losses.adversarial_discriminator_loss(
            self.discriminator,
            new.embedding,
            old.embedding,
            alpha=alpha,
            joint_forward=self.disc_bn == "joint",
            normalize_inputs=self.disc_input == "l2",
        )
        self.last_alpha, self.last_adv_weight = alpha, w_e
        if self._trainer is not None:
            self.log("train/advbct/alpha", alpha, on_step=True, on_epoch=False, batch_size=labels.shape[0])
            self.log("train/advbct/adv_weight", w_e, on_step=True, on_epoch=False, batch_size=labels.shape[0])
        return {"p2s": p2s, "adv": w_e * adv}

    # -------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        params = list(self.trainable_parameters())
        if self.elastic_weight_decay is None or self.elastic_logits is None:
            return build_optimizer(params, self.method_setup.optimizer, self.method_setup.max_epochs)
        elastic = self.elastic_logits
        groups = [
            {"params": [p for p in params if p is not elastic]},
            {"params": [elastic], "weight_decay": float(self.elastic_weight_decay)},
        ]
        return build_optimizer(groups, self.method_setup.optimizer, self.method_setup.max_epochs)

    variants: ClassVar[dict[str, dict[str, Any]]] = {
        # AdvBCT with the fixes of docs/methods.md §9.4 (joint discriminator BN on l2-normalised inputs, a
        # tightness term on the elastic boundary, no weight decay on it) [reconstruction]
        "fixed": {
            "disc_bn": "joint",
            "disc_input": "l2",
            "elastic_tightness": 0.1,
            "elastic_weight_decay": 0.0,
        },
    }

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {"threshold": [0.6, 0.8, 1.0, 1.2, 1.5], "elastic_tightness": [0.0, 0.05, 0.1]}
