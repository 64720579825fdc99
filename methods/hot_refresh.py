"""``hot_refresh`` — regression-alleviating compatible training (RACT) for hot-refresh model upgrades.

Paper: Zhang, Ge, Shen, Li, Yuan, Xu, Wang, Shan, "Hot-Refresh Model Upgrades with Regression-Free Compatible
Training in Image Retrieval", ICLR 2022, https://openreview.net/forum?id=HTp-6yLGGX (arXiv 2201.09724 titles it
"Regression-Alleviating") — docs/methods.md §8.

Reference code: TencentARC/OpenCompatible ``model/loss.py`` (``BackwardCompatibleLoss``, ``comp_loss_type
contra_ract``) [official code]; Ashespt/AdvBCT ``hot_refresh`` is identical. Loss (shared, tested:
:func:`bctbench.losses.ract_loss`): z_i = [⟨f̂_n,i, f̂_o,i⟩, top-k_j(⟨f̂_n,i, F_o,j⟩ − 10⁹·M_ij),
top-k_j(⟨f̂_n,i, F_n,j⟩ − 10⁹·M_ij)]/τ, L = CE + λ·mean_i CE(z_i, 0); M masks every same-class column
(including the anchor's own). F_o, F_n and the labels are gathered across processes **without gradient**
(:meth:`~bctbench.method.CompatibilityMethod.gather_no_grad`); gradients flow only through the local anchors,
as in the official ``dist.all_gather``. Logits and the CE are computed in fp32 (τ = 0.01 overflows fp16, §14).

Configuration mapping: ``config.json`` ``temp`` → ``temperature`` (0.01); ``--comp_loss_topk`` → ``topk`` (10,
per negative block); ``comp_loss_weight`` → ``weight`` (1.0). Needs an old forward on every batch.

Backfilling order (docs/evaluation.md §6.2) — :meth:`HotRefresh.backfill_orders` provides ``"uncertainty"``:
descending entropy H(softmax(W_o φ_o(g))) of the frozen old classifier posterior over the gallery, ties by lower
index. The paper's "uncertainty-based backfilling" formula is not public: this order is a **reconstruction**.

Readings and deviations:

* [reconstruction, scale of the old logits] the evaluator passes **L2-normalised** old gallery features, while
  W_o was trained on the raw BN output φ_o (whose norm sets the softmax temperature). bctbench uses
  logits = s·⟨ĝ, W_o[c]⟩ with one global scale s = the mean raw norm ‖φ_o(x)‖ over the training batches seen
  by this run (tracked in the persistent buffers ``old_norm_sum``/``old_norm_count``; the old model is frozen,
  so the statistic is stationary). Before any training batch (count 0) s falls back to the data-free estimate
  s = sqrt(Σ_j γ_j² + β_j²) of the old neck's BatchNorm affine parameters (E‖φ_o‖² in eval mode when the
  running statistics match the data). The per-item raw norm is not available to the evaluator.
* Under DDP each rank tracks the norm of its own shard; DDP broadcasts buffers from rank 0, which evaluates.
* Random backfilling orders (the AdvBCT protocol) are added by the evaluator itself.

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from bctbench import (
    Batch,
    CompatibilityMethod,
    MethodSetup,
    ModelOutput,
    losses,
    order_from_scores,
    register_method,
)


@torch.no_grad()
def posterior_entropy(
    gallery: np.ndarray | torch.Tensor,
    weight: torch.Tensor,
    scale: float,
    *,
    chunk_size: int = 8192,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Entropy H(softmax(scale·ĝ W_oᵀ)) per gallery row (natural log), float64 ``[N]`` on the CPU.

    Args:
        gallery: ``[N, d]`` old gallery features (re-normalised here, so raw or unit rows both work).
        weight: ``Tensor[C_old, d]`` frozen old classifier W_o.
        scale: s, the norm given to every normalised feature before the classifier.
        chunk_size: rows per matmul (memory bound ``chunk_size × C_old``).
        device: compute device (default: CUDA when available, else CPU).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    g_all = (
        torch.as_tensor(np.asarray(gallery, dtype=np.float32)) if isinstance(gallery, np.ndarray) else gallery
    )
    w = weight.detach().to(device=device, dtype=torch.float32)
    out = torch.empty(g_all.shape[0], dtype=torch.float64)
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        for start in range(0, g_all.shape[0], chunk_size):
            g = F.normalize(
                g_all[start : start + chunk_size].to(device=device, dtype=torch.float32), dim=1, eps=1e-12
            )
            logp = torch.log_softmax(scale * (g @ w.T), dim=1).double()
            out[start : start + g.shape[0]] = (-(logp.exp() * logp).sum(dim=1)).cpu()
    return out


@register_method("hot_refresh")
class HotRefresh(CompatibilityMethod):
    paper = (
        "Zhang et al., Hot-Refresh Model Upgrades with Regression-Free Compatible Training in Image "
        "Retrieval, ICLR 2022, https://openreview.net/forum?id=HTp-6yLGGX (arXiv 2201.09724)"
    )
    reference_code = "TencentARC/OpenCompatible model/loss.py (BackwardCompatibleLoss, type 'contra_ract')"
    needs_old_forward = True

    def __init__(
        self, setup: MethodSetup, *, weight: float = 1.0, temperature: float = 0.01, topk: int = 10
    ) -> None:
        super().__init__(setup)
        self.weight = weight
        self.temperature = temperature
        self.topk = topk
        # Mean raw old-embedding norm over the training batches (scale of the uncertainty order; see docstring).
        self.register_buffer("old_norm_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("old_norm_count", torch.zeros((), dtype=torch.float64))

    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        gathered_new, offset = self.gather_no_grad(new.embedding_normed)
        gathered_old, _ = self.gather_no_grad(old.embedding_normed)
        gathered_labels, _ = self.gather_no_grad(labels)
        term = losses.ract_loss(
            new.embedding_normed,
            old.embedding_normed,
            labels,
            gathered_new=gathered_new,
            gathered_old=gathered_old,
            gathered_labels=gathered_labels,
            local_offset=offset,
            temperature=self.temperature,
            topk=self.topk,
        )
        with torch.no_grad():
            norms = torch.linalg.vector_norm(old.embedding.detach().double(), dim=1)
            self.old_norm_sum += norms.sum()
            self.old_norm_count += norms.numel()
        return {"ract": self.weight * term}

    # ------------------------------------------------------------------------------- backfilling
    def uncertainty_scale(self) -> float:
        """s: mean raw ‖φ_o‖ over the training batches, else the BN-affine estimate (module docstring)."""
        if float(self.old_norm_count) > 0:
            return float(self.old_norm_sum / self.old_norm_count)
        bn = self.old.model.embedder.neck[-1]
        return float(torch.sqrt((bn.weight.double() ** 2 + bn.bias.double() ** 2).sum()))

    def backfill_orders(self) -> dict[str, Callable[[object, Mapping[str, np.ndarray]], np.ndarray]]:
        """``{"uncertainty": fn}``; ``fn(eval_set, gallery_feats_by_model)`` orders the gallery by descending
        old-posterior entropy (ties by index), using ``gallery_feats_by_model["old"]`` (unit rows)."""
        weight = self.old.classifier_weight.detach()
        scale = self.uncertainty_scale()

        def uncertainty(eval_set: object, gallery_feats_by_model: Mapping[str, np.ndarray]) -> np.ndarray:
            return order_from_scores(posterior_entropy(gallery_feats_by_model["old"], weight, scale))

        return {"uncertainty": uncertainty}

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {"weight": [0.5, 1.0, 2.0], "temperature": [0.01, 0.03, 0.05, 0.1, 0.2]}
