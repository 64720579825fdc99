"""``triplet`` — point-to-point triplet baseline: the new embedding must be closer to the old embedding of
the same image than to the k nearest old embeddings of other classes, by a margin.

Source: TencentARC/OpenCompatible ``model/loss.py`` ``BackwardCompatibleLoss`` type ``triplet`` [official
code], copied into Ashespt/AdvBCT (docs/methods.md §5): D_ij = sqrt(max(‖f̂_n,i − F_o,j‖², 10⁻¹²)); the
positive is the local diagonal; negatives are the k smallest D_ij + 10⁹·1[y_i = y_j];
MarginRankingLoss(margin 0.8).

Configuration mapping: ``triplet_margin`` → ``margin`` (0.8), ``topk_neg`` → ``topk_neg`` (10), ``weight``
(1.0). Deviation: the positive always indexes the local diagonal (rank·B + i in the gathered batch); the
reference points outside the local batch on rank > 0 when ``gather_all=False``. Needs an old forward on
every batch.
"""

from __future__ import annotations

import torch

from bctbench import Batch, CompatibilityMethod, MethodSetup, ModelOutput, losses, register_method


@register_method("triplet")
class Triplet(CompatibilityMethod):
    paper = "Triplet point-to-point baseline (as benchmarked in Zhang et al., Hot-refresh, ICLR 2022, arXiv 2201.09724)"
    reference_code = "TencentARC/OpenCompatible model/loss.py (BackwardCompatibleLoss, type 'triplet')"
    needs_old_forward = True

    def __init__(
        self, setup: MethodSetup, *, weight: float = 1.0, margin: float = 0.8, topk_neg: int = 10
    ) -> None:
        super().__init__(setup)
        self.weight = weight
        self.margin = margin
        self.topk_neg = topk_neg

    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        gathered_old, offset = self.gather_no_grad(old.embedding_normed)
        gathered_labels, _ = self.gather_no_grad(batch["labels"])
        term = losses.point_to_point_loss(
            new.embedding_normed,
            old.embedding_normed,
            batch["labels"],
            kind="triplet",
            gathered_old=gathered_old,
            gathered_labels=gathered_labels,
            local_offset=offset,
            margin=self.margin,
            topk_neg=self.topk_neg,
        )
        return {"triplet": self.weight * term}

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {"weight": [0.5, 1.0, 2.0], "margin": [0.1, 0.2, 0.4, 0.8]}
