"""``bct`` — Backward-Compatible Training with the influence loss.

Paper: Shen, Xiong, Xia, Soatto, "Towards Backward-Compatible Representation Learning", CVPR 2020,
https://arxiv.org/abs/2003.11942. No official code; defaults follow the first author's non-official
re-implementation YantaoShen/openBCT (``main.py``, ``ClassifierGenerator``) and the benchmark code of
TencentARC/OpenCompatible / Ashespt/AdvBCT (``trainer/trainer.py``) — docs/methods.md §4.

L = CE(W_n φ_n(x), y) + λ · CE(W̃_o φ_n(x), ỹ), W̃_o = [W_o ; S] (frozen old classifier rows, plus synthesized
rows S_k = P^o_k, the mean of L2-normalised old features of class k over the new training set, for classes
the old model does not know). The raw (un-normalised) new embedding feeds W̃_o.

Configuration mapping: ``COMP_LOSS.WEIGHT`` → ``weight`` (λ = 1).

Flags (defaults = paper-faithful reading):

* ``new_class_rows``: ``"synthesized"`` (default) | ``"none"`` (influence loss only on samples of old classes,
  old classifier only: the AdvBCT table's ``bct`` rows, extended-class) | ``"all_old_rows"`` is not offered:
  it needs an old model with a classifier over the full label space (OpenCompatible), which the frozen
  protocol does not train.
* ``syn_row_scale``: ``"none"`` (default) | ``"match"`` rescales S rows to the mean norm of W_o rows
  (reconstruction; the two blocks otherwise live on different scales).
* ``ract_negatives``: OpenCompatible's ``bct_ract`` — the other new classes become extra negatives.

Needs from the old model: W_o and one offline pass for S (no per-batch old forward). In extended-data every
class has an old row, so S is empty and the variants coincide.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bctbench import (
    Batch,
    CompatibilityMethod,
    ConfigError,
    MethodSetup,
    ModelOutput,
    losses,
    register_method,
)


@register_method("bct")
class BCT(CompatibilityMethod):
    paper = "Shen et al., Towards Backward-Compatible Representation Learning, CVPR 2020, arXiv 2003.11942"
    reference_code = "YantaoShen/openBCT main.py (non-official, first author); TencentARC/OpenCompatible trainer/trainer.py"
    needs_old_forward = False
    required_artifacts = frozenset({"class_means_new"})

    def __init__(
        self,
        setup: MethodSetup,
        *,
        weight: float = 1.0,
        new_class_rows: str = "synthesized",
        syn_row_scale: str = "none",
        ract_negatives: bool = False,
    ) -> None:
        super().__init__(setup)
        if new_class_rows not in ("synthesized", "none"):
            raise ConfigError(f"bct: new_class_rows must be 'synthesized' or 'none', got {new_class_rows!r}")
        self.weight = weight
        self.new_class_rows = new_class_rows
        self.syn_row_scale = syn_row_scale
        self.ract_negatives = ract_negatives
        # Filled by prepare_artifacts (not persistent: recomputed from the cached artefact on every run).
        c_new, d = setup.num_classes_new, setup.embed_dim
        self.register_buffer("influence_table", torch.zeros(setup.num_classes_old, d), persistent=False)
        self.register_buffer("row_of_class", torch.full((c_new,), -1, dtype=torch.int64), persistent=False)
        self.register_buffer("has_old_class", torch.zeros(c_new, dtype=torch.bool), persistent=False)

    def prepare_artifacts(self, store) -> None:
        data = store.get("class_means_new")
        old_label_of_class = data["old_label_of_class"]
        w_old = self.old.classifier_weight.detach()
        self.has_old_class = old_label_of_class >= 0
        if self.new_class_rows == "none":
            self.influence_table = w_old.clone()
            self.row_of_class = old_label_of_class.clone()
        else:
            synthesized = losses.synthesized_rows(data["means"], old_label_of_class)
            self.influence_table = losses.build_influence_table(
                w_old, synthesized, syn_row_scale=self.syn_row_scale
            )
            self.row_of_class = losses.influence_row_index(old_label_of_class, w_old.shape[0])

    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        valid = self.has_old_class[labels] if self.new_class_rows == "none" else None
        term = losses.influence_loss(
            new.embedding,
            self.row_of_class[labels],
            self.influence_table,
            valid_mask=valid,
            new_logits=new.logits if self.ract_negatives else None,
            new_labels=labels if self.ract_negatives else None,
        )
        return {"influence": self.weight * term}

    variants: ClassVar[dict[str, dict[str, Any]]] = {
        # the AdvBCT table's ``bct`` rows: influence loss on samples of old classes only
        "old_classes": {"new_class_rows": "none"},
    }

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {"weight": [0.25, 0.5, 1.0, 2.0, 4.0]}
