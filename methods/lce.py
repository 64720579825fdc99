"""``lce`` — Learning Compatible Embeddings: align the new classifier with the old class centres and keep new
features inside the old class boundaries.

Paper: Meng, Zhang, Xu, Zhou, "Learning Compatible Embeddings", ICCV 2021, https://arxiv.org/abs/2108.01958
(docs/methods.md §6).

Reference code:

* ``variant="official"`` (default) — IrvingMeng/LCE ``main.py`` (``save_lcefeat``, ``train``) [official code,
  partial: "core modules" on Market-1501]. Offline, old features of the **new** training set
  (artefact ``old_features_new``): C_k = normalise(mean_{i: y_i=k} f̂_o,i), boundary b_k = min_i ⟨f̂_o,i, C_k⟩
  (no outlier filter). L = CE + λ_a·Σ_k ‖normalise(W_n[k]) − C_k‖²/(C·d) + λ_b·mean_i max(0, b_y − ⟨g_i, C_y⟩),
  λ_a = 100, λ_b = 1 (argparse defaults, ``train_lce.sh``).
* ``variant="advbct"`` — Ashespt/AdvBCT ``trainer/trainer.py`` branch ``lce``, ``configs/new_LCE.yml``
  [third-party]: angle file of §2.1 (artefact ``advbct_meta``, over the **old** training set), C_k = normalise(c_k),
  θ_k = θ_max,k (1.5-IQR); L = CE + mean_V max(acos⟨C_y, f̂_n⟩ − θ_y, 0) + mean_V (1 − ⟨C_y, normalise(W_n[y])⟩),
  V = samples whose class has metadata with n_kept > 1. Weights 1 and 1.

The loss math is :func:`bctbench.losses.lce_losses` (shared, tested). Centres and boundaries are computed once
in :meth:`LCE.prepare_artifacts` (vectorised: ``index_add``/``scatter_reduce`` over the cached features, no
per-class loop) and kept as non-persistent buffers (recomputed from the artefact cache on every run).

Configuration mapping: official ``--lambda_a``/``--lambda_b`` → ``align_weight``/``bound_weight`` (``None`` =
the variant's default: 100/1 for ``official``, 1/1 for ``advbct``); AdvBCT ``COMP_LOSS.TYPE lce`` →
``variant="advbct"``.

Deviations and readings (each with its flag):

* ``bound_on_raw_feature=True`` (default, as the official code): the boundary term uses the **raw** BN feature
  g_i = φ_n (clamped dot product). ``False`` uses the normalised f̂_n instead, as the paper states the
  constraint as an angle on normalised features (docs/methods.md §6.1). Variant ``advbct`` has no raw-feature
  bound: set ``bound_on_raw_feature=false`` with it (the ``advbct_reimpl`` preset does).
* Official RBT transformation modules and the ArcFace(s = 16, m = 0.1) ReID head are not used: the protocol
  pins d_new = d_old and softmax CE (no flag; ``handles_dim_mismatch`` stays False).
* ``variant="advbct"``: the metadata is indexed by **old** label; it is mapped to new labels through
  ``class_means_new["old_label_of_class"]`` (never ``label < C_old``). Classes without an old label or with
  n_kept ≤ 1 are excluded explicitly by a class mask; an empty V gives a graph-connected 0 (the reference
  divides by zero). ``acos`` inputs are clamped to [−1+10⁻⁷, 1−10⁻⁷] (the reference is unclamped → NaN).
* ``variant="official"`` reading: the class mask holds every class with at least one sample in the new training
  set (the old model embeds the images of new classes too, so they get centres, as in the official code, which
  aligns the whole classifier); classes without samples (possible only with a subsampled list) are excluded
  instead of contributing a zero centre.
* No per-batch old forward (``needs_old_forward=False``): the AdvBCT trainer runs one anyway and discards it.

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bctbench import (
    Batch,
    CompatibilityMethod,
    ConfigError,
    MethodSetup,
    ModelOutput,
    losses,
    register_method,
)

_VARIANT_WEIGHTS = {"official": (100.0, 1.0), "advbct": (1.0, 1.0)}


def official_centres_and_boundaries(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, chunk_size: int = 262144
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official LCE centres C_k = normalise(class mean of f̂) and boundaries b_k = min_i ⟨f̂_i, C_k⟩.

    Args:
        features: ``Tensor[N, d]`` old features (any float dtype, e.g. the float16 cache); normalised here.
        labels: ``int64[N]`` new labels in ``0..num_classes-1``.
        num_classes: C.
        chunk_size: rows converted to float32 at a time.

    Returns:
        ``(centres float32[C, d], boundary float32[C], present bool[C])``; classes without samples get a zero
        centre, boundary 0 and ``present=False``.
    """
    from bctbench.prototypes import class_means

    labels = labels.long()
    means, counts = class_means(features, labels, num_classes, chunk_size=chunk_size)
    centres = F.normalize(means, dim=1, eps=1e-12)
    boundary = torch.full((num_classes,), float("inf"), dtype=torch.float32, device=features.device)
    for start in range(0, features.shape[0], chunk_size):
        f = F.normalize(features[start : start + chunk_size].float(), dim=1, eps=1e-12)
        lab = labels[start : start + chunk_size]
        cos = (f * centres[lab]).sum(dim=1)
        boundary.scatter_reduce_(0, lab, cos, reduce="amin", include_self=True)
    present = counts > 0
    boundary = torch.where(present, boundary, torch.zeros_like(boundary))
    return centres, boundary, present


@register_method("lce")
class LCE(CompatibilityMethod):
    paper = "Meng et al., Learning Compatible Embeddings, ICCV 2021, https://arxiv.org/abs/2108.01958"
    reference_code = (
        "IrvingMeng/LCE main.py (save_lcefeat, train) [official]; Ashespt/AdvBCT trainer/trainer.py "
        "branch 'lce' [variant='advbct']"
    )
    needs_old_forward = False
    # official: old_features_new; advbct: advbct_meta + class_means_new (old_label_of_class). Fetched lazily.
    required_artifacts = frozenset({"old_features_new", "advbct_meta", "class_means_new"})

    def __init__(
        self,
        setup: MethodSetup,
        *,
        variant: str = "official",
        align_weight: float | None = None,
        bound_weight: float | None = None,
        bound_on_raw_feature: bool = True,
    ) -> None:
        super().__init__(setup)
        if variant not in _VARIANT_WEIGHTS:
            raise ConfigError(f"lce: variant must be 'official' or 'advbct', got {variant!r}")
        if bound_on_raw_feature and variant != "official":
            raise ConfigError(
                "lce: bound_on_raw_feature applies to variant='official' only (with variant='advbct' set "
                "bound_on_raw_feature=false, or run --preset advbct_reimpl)"
            )
        default_a, default_b = _VARIANT_WEIGHTS[variant]
        self.variant = variant
        self.align_weight = default_a if align_weight is None else float(align_weight)
        self.bound_weight = default_b if bound_weight is None else float(bound_weight)
        self.bound_on_raw_feature = bound_on_raw_feature
        c_new, d = setup.num_classes_new, setup.embed_dim
        # Filled by prepare_artifacts (non-persistent: recomputed from the artefact cache on every run).
        self.register_buffer("centers", torch.zeros(c_new, d), persistent=False)
        self.register_buffer("boundary", torch.zeros(c_new), persistent=False)
        self.register_buffer("class_mask", torch.zeros(c_new, dtype=torch.bool), persistent=False)

    def prepare_artifacts(self, store) -> None:
        c_new = self.method_setup.num_classes_new
        if self.variant == "official":
            data = store.get("old_features_new")
            centres, boundary, present = official_centres_and_boundaries(
                data["features"], data["labels"], c_new
            )
        else:
            meta = store.get("advbct_meta")
            old_of_class = store.get("class_means_new")["old_label_of_class"].long()
            known = old_of_class >= 0
            rows = old_of_class.clamp(min=0)
            present = known & meta["has_meta"].bool()[rows]
            centres = torch.where(present.unsqueeze(1), meta["centers"].float()[rows], 0.0)
            boundary = torch.where(present, meta["theta_max"].float()[rows], 0.0)
        device = self.centers.device
        self.centers = centres.to(device)
        self.boundary = boundary.to(device)
        self.class_mask = present.to(device)

    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        terms = losses.lce_losses(
            new.embedding,
            batch["labels"],
            self.new.classifier.weight,
            self.centers,
            self.boundary,
            variant=self.variant,
            class_mask=self.class_mask,
            bound_on_raw_feature=self.bound_on_raw_feature,
        )
        return {"align": self.align_weight * terms["align"], "bound": self.bound_weight * terms["bound"]}

    variants: ClassVar[dict[str, dict[str, Any]]] = {
        # LCE as re-implemented in the AdvBCT repository (its table's ``lce`` rows)
        "advbct_reimpl": {"variant": "advbct", "bound_on_raw_feature": False},
    }

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {"align_weight": [1.0, 10.0, 30.0, 100.0], "bound_weight": [0.25, 0.5, 1.0, 2.0]}
