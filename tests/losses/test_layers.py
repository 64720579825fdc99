"""Tests of bctbench.layers (docs/methods.md §9.1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bctbench.layers import (
    Discriminator,
    GradientReversal,
    adv_epoch_weight,
    dann_alpha,
    dann_progress,
    grad_reverse,
)


@pytest.mark.parametrize("alpha", [0.0, 0.37, 1.0, 2.5])
def test_grad_reverse_flips_sign_with_magnitude_alpha(alpha: float) -> None:
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = grad_reverse(x, alpha)
    assert torch.equal(y, x)  # identity forward
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -alpha * w)


def test_gradient_reversal_module_uses_current_alpha() -> None:
    grl = GradientReversal(alpha=0.5)
    x = torch.ones(2, 2, requires_grad=True)
    grl(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2, 2), -0.5))
    x.grad = None
    grl.alpha = 0.25
    grl(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2, 2), -0.25))
    assert "alpha=0.25" in repr(grl)


def test_grad_reverse_gradcheck() -> None:
    # gradcheck compares analytic to numeric Jacobian; the reversed function has Jacobian -alpha*I analytically
    # but +I numerically, so check the composition R(R(x)) (Jacobian alpha^2 * I) against x -> alpha^2 * x.
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    y = grad_reverse(grad_reverse(x, 0.5), 0.5)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.full_like(x, 0.25))


def test_dann_alpha_endpoints_and_formula() -> None:
    assert dann_alpha(0.0) == 0.0
    assert dann_alpha(1.0) == pytest.approx(1.0, abs=1e-4)
    assert dann_alpha(1.0) < 1.0
    p = 0.3
    assert dann_alpha(p) == pytest.approx(2.0 / (1.0 + math.exp(-10 * p)) - 1.0)
    assert dann_alpha(0.5, gamma=2.0) == pytest.approx(2.0 / (1.0 + math.exp(-1.0)) - 1.0)
    values = [dann_alpha(i / 10) for i in range(11)]
    assert values == sorted(values)


def test_dann_progress() -> None:
    assert dann_progress(0, 0, iters_per_epoch=100, max_epochs=30) == 0.0
    assert dann_progress(99, 29, iters_per_epoch=100, max_epochs=30) == pytest.approx(2999 / 3000)
    assert dann_progress(5, 2, iters_per_epoch=10, max_epochs=4) == pytest.approx(25 / 40)
    with pytest.raises(ValueError):
        dann_progress(0, 0, iters_per_epoch=0, max_epochs=1)


def test_adv_epoch_weight() -> None:
    assert adv_epoch_weight(0, 30) == pytest.approx(31 / 30)
    assert adv_epoch_weight(29, 30) == pytest.approx(2 / 30)
    assert adv_epoch_weight(10, 30) == pytest.approx(21 / 30)


def test_discriminator_structure_and_output() -> None:
    d = Discriminator()
    mods = list(d.net)
    assert [type(m) for m in mods] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.LogSoftmax]
    assert (mods[0].in_features, mods[0].out_features) == (256, 100)
    assert mods[1].num_features == 100
    assert (mods[3].in_features, mods[3].out_features) == (100, 2)
    out = d(torch.randn(8, 256))
    assert out.shape == (8, 2)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(8))


def test_discriminator_without_bn() -> None:
    d = Discriminator(16, 8, 2, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in d.modules())
    out = d(torch.randn(1, 16))  # batch of one works without BN
    assert out.shape == (1, 2)
