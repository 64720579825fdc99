"""``contra`` — point-to-point contrastive baseline: the old embedding of the same image is the positive,
the hardest old embeddings of other classes (gathered across processes) are negatives.

Source: TencentARC/OpenCompatible ``model/loss.py`` ``BackwardCompatibleLoss`` type ``contra`` [official
code], copied into Ashespt/AdvBCT ``models/loss.py`` (docs/methods.md §5):
z_i = [⟨f̂_n,i, f̂_o,i⟩, top-k_j(⟨f̂_n,i, F_o,j⟩ − 10⁹·1[y_i = y_j])] / τ, L_comp = CE(z, 0).

Configuration mapping: ``temp`` → ``temperature`` (0.01), ``topk_neg`` → ``topk_neg`` (10), ``weight`` →
``weight`` (1.0); ``gather_all=True`` always (the gathered copies carry no gradient). Logits are computed in
fp32 (τ = 0.01 overflows fp16). Needs an old forward on every batch.
"""

from __future__ import annotations

import torch

from bctbench import Batch, CompatibilityMethod, MethodSetup, ModelOutput, losses, register_method


@register_method("contra")
class Contra(CompatibilityMethod):
    paper = "Contrastive point-to-point baseline (as benchmarked in Zhang et al., Hot-refresh, ICLR 2022, arXiv 2201.09724)"
    reference_code = "TencentARC/OpenCompatible model/loss.py (BackwardCompatibleLoss, type 'contra')"
    needs_old_forward = True

    def __init__(
        self, setup: MethodSetup, *, weight: float = 1.0, temperature: float = 0.01, topk_neg: int = 10
    ) -> None:
        super().__init__(setup)
        self.weight = weight
        self.temperature = temperature
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
            kind="contra",
            gathered_old=gathered_old,
            gathered_labels=gathered_labels,
            local_offset=offset,
            temperature=self.temperature,
            topk_neg=self.topk_neg,
        )
        return {"contra": self.weight * term}

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {"weight": [0.5, 1.0, 2.0], "temperature": [0.01, 0.03, 0.05, 0.1, 0.2]}
