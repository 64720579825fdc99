"""Small reusable layers: gradient reversal, the DANN schedule and the AdvBCT discriminator head.

Everything here implements ``methods.md`` §9.1 (AdvBCT adversarial part) **[official code: Ashespt/AdvBCT
``models/modules.py``, ``models/base_model.py``, ``trainer/trainer.py``]**, re-written for bctbench.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "GradientReversalFunction",
    "grad_reverse",
    "GradientReversal",
    "dann_progress",
    "dann_alpha",
    "adv_epoch_weight",
    "Discriminator",
]


class GradientReversalFunction(torch.autograd.Function):
    """Gradient reversal R_α (§9.1): identity in the forward pass, gradient multiplied by −α backwards."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:  # noqa: D102
        ctx.alpha = float(alpha)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad_output.neg() * ctx.alpha, None


def grad_reverse(x: Tensor, alpha: float = 1.0) -> Tensor:
    """Apply gradient reversal R_α to ``x`` (any shape): forward identity, backward ``-alpha * grad``.

    §9.1 [official code]. ``alpha`` is a Python float (no gradient flows into it).
    """
    return GradientReversalFunction.apply(x, float(alpha))


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`; ``alpha`` is a plain attribute updated by the caller each step."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def dann_progress(batch_idx: int, epoch: int, *, iters_per_epoch: int, max_epochs: int) -> float:
    """Training progress p = (it + e·I)/(E·I) ∈ [0, 1) of the DANN schedule (§9.1 [official code]).

    ``batch_idx`` = it (0-based batch index within the epoch), ``epoch`` = e (0-based).
    """
    if iters_per_epoch <= 0 or max_epochs <= 0:
        raise ValueError("iters_per_epoch and max_epochs must be positive")
    return (batch_idx + epoch * iters_per_epoch) / (max_epochs * iters_per_epoch)


def dann_alpha(progress: float, gamma: float = 10.0) -> float:
    """DANN reversal strength α = 2/(1 + exp(−γ·p)) − 1 (§9.1 [official code], γ = 10).

    ``dann_alpha(0) == 0``; ``dann_alpha(1) ≈ 0.99991`` for γ = 10.
    """
    return 2.0 / (1.0 + math.exp(-gamma * float(progress))) - 1.0


def adv_epoch_weight(epoch: int, max_epochs: int) -> float:
    """AdvBCT adversarial-loss weight w_e = (E − e + 1)/E with 0-based ``epoch`` e (§9.1 [official code]).

    31/30 ≈ 1.033 at e = 0 and 2/30 ≈ 0.067 at e = 29 for E = 30.
    """
    if max_epochs <= 0:
        raise ValueError("max_epochs must be positive")
    return (max_epochs - epoch + 1) / max_epochs


class Discriminator(nn.Module):
    """AdvBCT domain discriminator D (§9.1 [official code]).

    Linear(in_dim, hidden) → BatchNorm1d(hidden) → ReLU → Linear(hidden, out) → LogSoftmax(dim=1).
    Input ``Tensor[B, in_dim]`` (raw post-BN embedding by default), output log-probabilities ``Tensor[B, out]``
    (class 0 = new, 1 = old). ``batch_norm=False`` drops the BN layer (flag ``disc_bn="none"``, §9.5).
    Linear layers keep PyTorch's default bias and initialisation.
    """

    def __init__(
        self, in_dim: int = 256, hidden: int = 100, out: int = 2, *, batch_norm: bool = True
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out), nn.LogSoftmax(dim=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
