"""``l2`` — point-to-point ℓ2 baseline: pull each new embedding onto the old embedding of the same image.

Source: ``BackwardCompatibleLoss`` / ``calculate_loss`` in TencentARC/OpenCompatible ``model/loss.py``
[official code of the Hot-refresh authors' benchmark], copied into Ashespt/AdvBCT ``models/loss.py``
(docs/methods.md §5). L = CE(W_n φ_n, y) + weight · mean_{B·d}(f̂_n − f̂_o)².

Configuration mapping: ``COMP_LOSS.WEIGHT`` → ``weight`` (1.0, faithful). The ℓ2 term is tiny (≤ 4/d);
MixBCT uses λ = 10 "to match loss scale" — set ``--set weight=10`` to reproduce that; the default stays
faithful. openBCT's ``--l2`` trains with ℓ2 only (no CE); bctbench keeps CE + ℓ2 (OpenCompatible form).
Needs an old forward on every batch.
"""

from __future__ import annotations

import torch

from bctbench import Batch, CompatibilityMethod, MethodSetup, ModelOutput, losses, register_method


@register_method("l2")
class L2(CompatibilityMethod):
    paper = "ℓ2 point-to-point baseline (as benchmarked in Zhang et al., Hot-refresh, ICLR 2022, arXiv 2201.09724)"
    reference_code = "TencentARC/OpenCompatible model/loss.py (BackwardCompatibleLoss, type 'l2')"
    needs_old_forward = True

    def __init__(self, setup: MethodSetup, *, weight: float = 1.0) -> None:
        super().__init__(setup)
        self.weight = weight

    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        term = losses.point_to_point_loss(
            new.embedding_normed, old.embedding_normed, batch["labels"], kind="l2"
        )
        return {"l2": self.weight * term}

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {"weight": [0.1, 1.0, 10.0, 100.0]}
