"""Tests of the online-backfilling math (docs/methods.md §12.1): L_rev, L_mc and the ψ module.

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bctbench.layers import ReverseTransform
from bctbench.losses import metric_compatible_loss, reverse_transform_loss


def _unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=1).to(dtype)


def _reference_mc(q_old, g_old, q_new, labels, tau, hard_negatives=None) -> float:
    """Straight loop over the candidate set C_i of §12.1 (float64 Python arithmetic)."""
    q_old, g_old, q_new = (t.double().tolist() for t in (q_old, g_old, q_new))
    labels = labels.tolist()
    b = len(labels)

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    total = 0.0
    for i in range(b):
        cands = []  # (space, sim, positive)
        for j in range(b):
            cands.append(("o", dot(q_old[i], g_old[j]), labels[j] == labels[i]))
        for j in range(b):
            if j != i:
                cands.append(("n", dot(q_new[i], q_new[j]), labels[j] == labels[i]))
        if hard_negatives is not None:
            kept = [c for c in cands if c[2]]
            for space in ("o", "n"):
                negs = sorted((c for c in cands if c[0] == space and not c[2]), key=lambda c: -c[1])
                kept += negs[:hard_negatives]
            cands = kept
        denom = sum(math.exp(s / tau) for _, s, _ in cands)
        pos = [s for _, s, p in cands if p]
        total += -sum(math.log(math.exp(s / tau) / denom) for s in pos) / len(pos)
    return total / b


# ----------------------------------------------------------------------------------------------- L_rev
def test_reverse_transform_loss_hand_case() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # ‖q0 − g0‖² = 2, ‖q1 − g1‖² = 0 -> mean over rows 1 (a per-element mean would give 0.5)
    assert reverse_transform_loss(q, g).item() == pytest.approx(1.0)
    q3, g3 = _unit(5, 3, seed=1), _unit(5, 3, seed=2)
    expected = sum(((q3[i] - g3[i]) ** 2).sum().item() for i in range(5)) / 5
    assert reverse_transform_loss(q3, g3).item() == pytest.approx(expected, rel=1e-6)


def test_reverse_transform_loss_gradient_only_into_queries() -> None:
    q = _unit(4, 3, seed=3, dtype=torch.float64).requires_grad_(True)
    g = _unit(4, 3, seed=4, dtype=torch.float64).requires_grad_(True)
    loss = reverse_transform_loss(q, g)
    loss.backward()
    torch.testing.assert_close(q.grad, 2.0 * (q - g).detach() / 4)
    assert g.grad is None
    assert reverse_transform_loss(q[:0], g[:0]).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        reverse_transform_loss(q, g[:3])


# ------------------------------------------------------------------------------------------------ L_mc
def test_metric_compatible_loss_closed_form() -> None:
    e = torch.eye(2)
    # different labels, τ = 1: candidates of anchor 0: (o,0) sim 1 (positive), (o,1) sim 0, (n,1) sim 0
    diff = metric_compatible_loss(e, e, e, torch.tensor([0, 1]), temperature=1.0)
    assert diff.item() == pytest.approx(math.log(1.0 + 2.0 / math.e), rel=1e-6)
    # same labels: all three candidates are positive: −(1/3)[log(e/(e+2)) + 2·log(1/(e+2))]
    same = metric_compatible_loss(e, e, e, torch.tensor([3, 3]), temperature=1.0)
    assert same.item() == pytest.approx(math.log(math.e + 2.0) - 1.0 / 3.0, rel=1e-6)


@pytest.mark.parametrize("tau", [0.05, 0.5])
@pytest.mark.parametrize("dims", [(2, 2), (3, 5)])
def test_metric_compatible_loss_matches_candidate_loop(tau, dims) -> None:
    d_o, d_n = dims
    labels = torch.tensor([0, 1, 0, 2])
    q_old, g_old, q_new = _unit(4, d_o, seed=5), _unit(4, d_o, seed=6), _unit(4, d_n, seed=7)
    got = metric_compatible_loss(q_old, g_old, q_new, labels, temperature=tau)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_reference_mc(q_old, g_old, q_new, labels, tau), rel=1e-5)


@pytest.mark.parametrize("k", [1, 2])
def test_metric_compatible_loss_hard_negatives_match_loop(k) -> None:
    labels = torch.tensor([0, 1, 0, 2, 3, 1])
    q_old, g_old, q_new = _unit(6, 3, seed=8), _unit(6, 3, seed=9), _unit(6, 4, seed=10)
    got = metric_compatible_loss(q_old, g_old, q_new, labels, temperature=0.1, hard_negatives=k)
    expected = _reference_mc(q_old, g_old, q_new, labels, 0.1, hard_negatives=k)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # mining drops negatives from the denominator: the loss can only decrease
    full = metric_compatible_loss(q_old, g_old, q_new, labels, temperature=0.1)
    assert got.item() < full.item()


def test_hard_negatives_at_least_batch_is_the_same_as_none() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1])
    q_old, g_old, q_new = _unit(5, 3, seed=11), _unit(5, 3, seed=12), _unit(5, 3, seed=13)
    full = metric_compatible_loss(q_old, g_old, q_new, labels)
    for k in (5, 6, 100):
        mined = metric_compatible_loss(q_old, g_old, q_new, labels, hard_negatives=k)
        torch.testing.assert_close(mined, full)


def test_identical_features_give_log_of_candidate_count_without_nan() -> None:
    b = 4
    x = F.normalize(torch.ones(b, 3), dim=1).requires_grad_(True)
    for labels in (torch.tensor([0, 1, 2, 3]), torch.zeros(b, dtype=torch.long)):
        loss = metric_compatible_loss(x, x.detach(), x, labels)
        # every candidate has the same similarity: p = 1/|C_i| with |C_i| = 2B − 1
        assert loss.item() == pytest.approx(math.log(2 * b - 1), rel=1e-5)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(grad).all()
    # duplicate rows with mined negatives (ties, and fewer negatives than k)
    loss = metric_compatible_loss(x, x.detach(), x, torch.tensor([0, 0, 0, 1]), hard_negatives=2)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_bf16_inputs_under_autocast_give_finite_fp32_loss() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 2, 0])
    q_old, g_old, q_new = _unit(8, 4, seed=14), _unit(8, 4, seed=15), _unit(8, 4, seed=16)
    bf = [t.bfloat16() for t in (q_old, g_old, q_new)]
    # fp32 reference on the same (bf16-rounded) inputs: the loss itself must not round to bf16 (τ = 0.05 logits)
    ref = metric_compatible_loss(*(t.float() for t in bf), labels)
    ref_rev = reverse_transform_loss(bf[0].float(), bf[1].float())
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = metric_compatible_loss(*bf, labels)
        rev = reverse_transform_loss(bf[0], bf[1])
    assert got.dtype == torch.float32 and rev.dtype == torch.float32
    assert torch.isfinite(got) and torch.isfinite(rev)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert rev.item() == pytest.approx(ref_rev.item(), rel=1e-5)


def test_metric_compatible_loss_gradients() -> None:
    labels = torch.tensor([0, 1, 0, 2])
    q_old = _unit(4, 3, seed=17, dtype=torch.float64).requires_grad_(True)
    g_old = _unit(4, 3, seed=18, dtype=torch.float64).requires_grad_(True)
    q_new = _unit(4, 5, seed=19, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda q: metric_compatible_loss(q, g_old, q_new.detach(), labels, temperature=0.5), (q_old,)
    )
    assert torch.autograd.gradcheck(
        lambda q: metric_compatible_loss(q_old.detach(), g_old, q, labels, temperature=0.5, hard_negatives=1),
        (q_new,),
    )
    loss = metric_compatible_loss(q_old, g_old, q_new, labels)
    assert loss.dtype == torch.float64
    loss.backward()
    assert g_old.grad is None  # the old features are frozen targets
    assert torch.isfinite(q_old.grad).all() and q_new.grad.abs().sum() > 0


def test_metric_compatible_loss_edge_cases() -> None:
    q = _unit(3, 2, seed=20).requires_grad_(True)
    zero = metric_compatible_loss(q[:0], q[:0].detach(), q[:0], torch.zeros(0, dtype=torch.long))
    assert zero.item() == 0.0
    zero.backward()  # graph-connected
    with pytest.raises(ValueError, match="shape mismatch"):
        metric_compatible_loss(q, q[:2], q, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="hard_negatives"):
        metric_compatible_loss(q, q, q, torch.zeros(3, dtype=torch.long), hard_negatives=-1)


# ------------------------------------------------------------------------------------------------- ψ
def test_reverse_transform_shapes_and_skip() -> None:
    x = torch.randn(6, 8)
    same = ReverseTransform(8, 8, hidden=16)
    other = ReverseTransform(8, 5, hidden=16)
    assert same.skip and not other.skip
    assert same(x).shape == (6, 8) and other(x).shape == (6, 5)
    assert [type(m).__name__ for m in same.mlp] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert same.mlp[0].out_features == 16 and ReverseTransform(8, 5).hidden == 1024
    with torch.no_grad():
        same.mlp[3].weight.zero_()
        same.mlp[3].bias.zero_()
        other.mlp[3].weight.zero_()
        other.mlp[3].bias.zero_()
    torch.testing.assert_close(same(x), x)  # identity skip
    assert (other(x) == 0).all()  # no skip across dimensions


def test_reverse_transform_reset_is_deterministic_for_a_generator() -> None:
    a, b = ReverseTransform(4, 3, hidden=8), ReverseTransform(4, 3, hidden=8)
    a.train()
    a(torch.randn(5, 4))  # moves the BN running statistics
    a.reset_parameters(torch.Generator().manual_seed(7))
    b.reset_parameters(torch.Generator().manual_seed(7))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    bound = 1.0 / math.sqrt(4)
    assert a.mlp[0].weight.abs().max() <= bound and a.mlp[3].weight.abs().max() <= 1.0 / math.sqrt(8)
    assert torch.equal(a.mlp[1].running_mean, torch.zeros(8))
    b.reset_parameters(torch.Generator().manual_seed(8))
    assert not torch.equal(a.mlp[0].weight, b.mlp[0].weight)
