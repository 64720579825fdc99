"""Small reusable layers: gradient reversal, the DANN schedule, the AdvBCT discriminator head and the online
backfilling reverse transformation.

The first four implement ``docs/methods.md`` §9.1 (AdvBCT adversarial part) **[official code: Ashespt/AdvBCT
``models/modules.py``, ``models/base_model.py``, ``trainer/trainer.py``]**, re-written for bctbench.
:class:`ReverseTransform` is the ψ module of §12.1 **[reconstruction]** (Seo et al. publish no code).

Bare § numbers in this module refer to ``docs/methods.md``.
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
    "ReverseTransform",
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


class ReverseTransform(nn.Module):
    """Reverse query transformation ψ: new space → old space (§12.1 [reconstruction]).

    Linear(in_dim, hidden) → BatchNorm1d(hidden) → ReLU → Linear(hidden, out_dim), plus an identity skip
    (ψ(x) = x + MLP(x)) when ``in_dim == out_dim``. Input ``Tensor[B, in_dim]``, output ``Tensor[B, out_dim]``
    (not normalised). Also used for the optional new-side module h (``in_dim == out_dim``).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden = int(in_dim), int(out_dim), int(hidden)
        self.skip = self.in_dim == self.out_dim
        self.mlp = nn.Sequential(
            nn.Linear(self.in_dim, self.hidden),
            nn.BatchNorm1d(self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, self.out_dim),
        )

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise like PyTorch's defaults (Linear: U(±1/√fan_in) for weight and bias; BN: γ = 1, β = 0,
        fresh running statistics), drawing from ``generator`` (the global RNG when None)."""
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                with torch.no_grad():
                    # CPU generators draw on the CPU, then copy (works for parameters on any device)
                    m.weight.copy_(torch.empty(m.weight.shape).uniform_(-bound, bound, generator=generator))
                    m.bias.copy_(torch.empty(m.bias.shape).uniform_(-bound, bound, generator=generator))
            elif isinstance(m, nn.BatchNorm1d):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        out = self.mlp(x)
        return x + out if self.skip else out

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, hidden={self.hidden}, skip={self.skip}"
