"""``my_method`` — copy this file to ``methods/<your_method>.py`` to add a method (one file, one name).

Module docstring checklist (reviewers look for it):

* Paper: authors, title, venue, year, URL.
* Reference code: repository and file the defaults come from (or "none; reconstruction").
* Configuration mapping: reference config key -> this plugin's argument.
* Every deviation from the reference, with its reason and the flag that turns it off.

Rules (docs/architecture.md §4, §12):

* Import only the public API: ``from bctbench import ...`` (shared math: ``bctbench.losses``,
  ``bctbench.layers``, ``bctbench.prototypes``). Never import another plugin or a private module.
* Hyperparameters are keyword-only, typed, with the reference defaults; no ``**kwargs``. They are saved by the
  base class (``save_hyperparameters``) and can be set with ``bctbench run ... --set name=value``.
* No data loading, no evaluation, no W&B, no paths: the pipeline does those.
* Files whose name starts with ``_`` (like this one) are not discovered as plugins.

Tensor conventions: ``batch["images"] float[B, 3, H, W]``, ``batch["labels"] int64[B]`` (new label space),
``batch["old_labels"] int64[B]`` (−1 if the old model has no such class). ``ModelOutput.embedding[B, d]`` is
the raw neck output, ``embedding_normed`` its L2-normalised copy, ``logits[B, C]``.
"""

from __future__ import annotations

import torch

from bctbench import Batch, CompatibilityMethod, MethodSetup, ModelOutput, losses, register_method


@register_method("my_method")  # must equal the file name
class MyMethod(CompatibilityMethod):
    paper = "Author et al., 'Title', Venue Year, https://arxiv.org/abs/XXXX.XXXXX"
    reference_code = "owner/repo path/to/file.py"
    # Set True only if compatibility_loss needs old-model features of the batch (costs an old forward).
    needs_old_forward = True
    # Old-model artefacts computed once and cached (see bctbench.artifacts.KINDS); fetch them in prepare_artifacts.
    required_artifacts = frozenset()

    def __init__(self, setup: MethodSetup, *, weight: float = 1.0) -> None:
        super().__init__(setup)
        self.weight = weight

    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        # Return named scalar terms; each is logged as train/loss/<name> and added to the CE loss.
        assert old is not None
        term = losses.point_to_point_loss(
            new.embedding_normed, old.embedding_normed, batch["labels"], kind="l2"
        )
        return {"l2": self.weight * term}

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {"weight": [0.1, 1.0, 10.0]}
