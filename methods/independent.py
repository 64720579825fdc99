"""``independent`` — the new model trained without any compatibility term (φ*, the "paragon").

L = CE(W_n φ_n(x), y) (docs/methods.md §3, [official code]: the φ* rows of the AdvBCT table). It is the
reference row of the leaderboard: P_up/P_comp and the update gain are measured against its new→new mAP, and
its new→old mAP shows what "no compatibility" looks like (near chance). Its backfilling mode is ``merge``
(training-free distance rank merge, docs/evaluation.md §6.1): a gallery mixing incompatible spaces is
meaningless.
"""

from __future__ import annotations

from bctbench import Batch, CompatibilityMethod, MethodSetup, ModelOutput, register_method


@register_method("independent")
class Independent(CompatibilityMethod):
    paper = (
        "φ* reference: new model trained alone (Shen et al., CVPR 2020, arXiv 2003.11942, 'independent' rows)"
    )
    reference_code = "Ashespt/AdvBCT trainer/trainer.py (base trainer without COMP_LOSS)"
    needs_old_forward = False
    backfill_mode = "merge"

    def __init__(self, setup: MethodSetup) -> None:
        super().__init__(setup)

    def compatibility_loss(self, batch: Batch, new: ModelOutput, old: ModelOutput | None) -> dict:
        return {}
