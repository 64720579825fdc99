"""Tests of bctbench.losses: hand-computed cases, limits, gradchecks, robustness (docs/methods.md §4–§9, §14).

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bctbench.layers import Discriminator
from bctbench.losses import (
    adversarial_discriminator_loss,
    arcface_logits,
    build_influence_table,
    elastic_p2s_loss,
    elastic_radius,
    influence_loss,
    influence_row_index,
    lce_losses,
    point_to_point_loss,
    ract_loss,
    synthesized_rows,
)

T64 = torch.float64


def _lse(*xs: float) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _unit(*angles: float) -> torch.Tensor:
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=T64)


# ---------------------------------------------------------------------------------------------------------------
# §4 influence loss
# ---------------------------------------------------------------------------------------------------------------


def test_influence_row_index_and_synthesized_rows() -> None:
    old_label = torch.tensor([2, -1, 0, -1, 1])
    rows = influence_row_index(old_label, 3)
    assert rows.tolist() == [2, 3, 0, 4, 1]
    means = torch.arange(10.0).reshape(5, 2)
    syn = synthesized_rows(means, old_label)
    assert syn.tolist() == [[2.0, 3.0], [6.0, 7.0]]  # classes 1 and 3, in new-label order
    w_old = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    table = build_influence_table(w_old, syn)
    assert table.shape == (5, 2)
    # row_index[k] of a synthesized class points at its own mean
    for k in (1, 3):
        assert torch.equal(table[rows[k]], means[k])
    with pytest.raises(ValueError):
        influence_row_index(torch.tensor([0, 5]), 3)


def test_build_influence_table_match_scale() -> None:
    w_old = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1 -> mean 3
    syn = torch.tensor([[0.3, 0.4], [0.0, 0.0]])
    table = build_influence_table(w_old, syn, syn_row_scale="match")
    torch.testing.assert_close(table[2], torch.tensor([1.8, 2.4]))
    assert torch.equal(table[3], torch.zeros(2))
    assert not table.requires_grad


def test_influence_loss_hand_computed() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=T64)
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=T64)
    targets = torch.tensor([0, 2])
    # row 0 logits [1, 0, 1] target 0; row 1 logits [0, 2, 2] target 2
    l0 = _lse(1, 0, 1) - 1
    l1 = _lse(0, 2, 2) - 2
    out = influence_loss(emb, targets, table)
    assert out.item() == pytest.approx((l0 + l1) / 2, rel=1e-12)
    masked = influence_loss(emb, torch.tensor([0, -1]), table, valid_mask=torch.tensor([True, False]))
    assert masked.item() == pytest.approx(l0, rel=1e-12)


def test_influence_loss_bct_ract_extra_negatives() -> None:
    emb = torch.tensor([[1.0, 0.0]], dtype=T64)
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=T64)
    new_logits = torch.tensor([[0.5, 2.0, -1.0]], dtype=T64)
    out = influence_loss(emb, torch.tensor([0]), table, new_logits=new_logits, new_labels=torch.tensor([1]))
    # logits [1, 0, 0.5, 2 - 1e9, -1], target 0
    assert out.item() == pytest.approx(_lse(1, 0, 0.5, -1) - 1, rel=1e-12)


def test_influence_loss_perfect_table_is_near_zero() -> None:
    table = 20.0 * torch.eye(4)
    emb = torch.eye(4)[[3, 0, 2, 1]]
    assert influence_loss(emb, torch.tensor([3, 0, 2, 1]), table).item() < 1e-6


def test_influence_loss_empty_subset_is_graph_connected_zero() -> None:
    emb = torch.randn(3, 4, requires_grad=True)
    table = torch.randn(5, 4)
    out = influence_loss(emb, torch.tensor([-1, -1, -1]), table, valid_mask=torch.zeros(3, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert emb.grad is not None and torch.equal(emb.grad, torch.zeros_like(emb))


def test_influence_loss_gradcheck() -> None:
    emb = torch.randn(4, 3, dtype=T64, requires_grad=True)
    table = torch.randn(6, 3, dtype=T64)
    targets = torch.tensor([0, 5, 2, 2])
    mask = torch.tensor([True, False, True, True])
    assert torch.autograd.gradcheck(lambda e: influence_loss(e, targets, table, valid_mask=mask), (emb,))


# ---------------------------------------------------------------------------------------------------------------
# §5 point-to-point
# ---------------------------------------------------------------------------------------------------------------


def test_l2_hand_computed() -> None:
    new = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=T64)
    old = torch.tensor([[0.0, 1.0], [0.6, 0.8]], dtype=T64)
    out = point_to_point_loss(new, old, torch.tensor([0, 1]), kind="l2")
    assert out.item() == pytest.approx((1 + 1 + 0 + 0) / 4)


def test_contra_hand_computed_with_same_class_mask() -> None:
    new = _unit(0.0, 0.5, 2.0)
    old = _unit(0.2, 0.9, 1.5)
    labels = torch.tensor([0, 0, 1])
    tau = 0.5
    out = point_to_point_loss(new, old, labels, kind="contra", temperature=tau, topk_neg=2)

    def cos(a: float, b: float) -> float:
        return math.cos(a - b)

    # row 0: pos cos(0-0.2); valid negative only column 2 (columns 0, 1 same class -> -1e9 -> exp = 0)
    r0 = _lse(cos(0, 0.2) / tau, cos(0, 1.5) / tau) - cos(0, 0.2) / tau
    r1 = _lse(cos(0.5, 0.9) / tau, cos(0.5, 1.5) / tau) - cos(0.5, 0.9) / tau
    # row 2 (class 1): negatives columns 0, 1, both valid, top-2 = both
    r2 = _lse(cos(2.0, 1.5) / tau, cos(2.0, 0.2) / tau, cos(2.0, 0.9) / tau) - cos(2.0, 1.5) / tau
    assert out.item() == pytest.approx((r0 + r1 + r2) / 3, rel=1e-10)


def test_contra_topk_selects_hardest() -> None:
    new = _unit(0.0)
    old = _unit(0.1)
    gathered_old = _unit(0.1, 0.3, 1.0, 2.0)
    gl = torch.tensor([7, 1, 2, 3])
    tau = 0.1
    out = point_to_point_loss(
        new,
        old,
        torch.tensor([7]),
        kind="contra",
        gathered_old=gathered_old,
        gathered_labels=gl,
        temperature=tau,
        topk_neg=2,
    )
    pos = math.cos(0.1) / tau
    expected = _lse(pos, math.cos(0.3) / tau, math.cos(1.0) / tau) - pos
    assert out.item() == pytest.approx(expected, rel=1e-10)


def test_triplet_hand_computed() -> None:
    new = _unit(0.0, 1.0)
    old = _unit(0.3, 1.2)
    gathered_old = torch.cat([_unit(2.5), old])  # local rows at columns 1, 2
    gl = torch.tensor([5, 0, 1])
    margin = 0.8

    def dist(a: float, b: float) -> float:
        return math.sqrt(2 - 2 * math.cos(a - b))

    out = point_to_point_loss(
        new,
        old,
        torch.tensor([0, 1]),
        kind="triplet",
        gathered_old=gathered_old,
        gathered_labels=gl,
        local_offset=1,
        topk_neg=2,
        margin=margin,
    )
    # row 0: d+ = dist(0, .3); negatives: columns 0 (2.5) and 2 (1.2)
    h = [
        max(0.0, dist(0, 0.3) - dist(0, 2.5) + margin),
        max(0.0, dist(0, 0.3) - dist(0, 1.2) + margin),
        max(0.0, dist(1, 1.2) - dist(1, 2.5) + margin),
        max(0.0, dist(1, 1.2) - dist(1, 0.3) + margin),
    ]
    assert out.item() == pytest.approx(sum(h) / 4, rel=1e-8)


def test_topk_clamps_to_available_columns() -> None:
    new = F.normalize(torch.randn(3, 4), dim=1)
    old = F.normalize(torch.randn(3, 4), dim=1)
    labels = torch.tensor([0, 1, 2])
    for kind in ("contra", "triplet"):
        out = point_to_point_loss(new, old, labels, kind=kind, topk_neg=50)
        assert torch.isfinite(out)
    assert torch.isfinite(ract_loss(new, old, labels, topk=50))


@pytest.mark.parametrize("kind", ["contra", "triplet"])
def test_gathered_equals_full_batch(kind: str) -> None:
    torch.manual_seed(0)
    new = F.normalize(torch.randn(8, 5, dtype=T64), dim=1)
    old = F.normalize(torch.randn(8, 5, dtype=T64), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 3, 1, 4, 5])
    full = point_to_point_loss(new, old, labels, kind=kind, topk_neg=3)
    halves = [
        point_to_point_loss(
            new[s : s + 4],
            old[s : s + 4],
            labels[s : s + 4],
            kind=kind,
            gathered_old=old,
            gathered_labels=labels,
            local_offset=s,
            topk_neg=3,
        )
        for s in (0, 4)
    ]
    torch.testing.assert_close(full, (halves[0] + halves[1]) / 2)
    with pytest.raises(ValueError):
        point_to_point_loss(
            new[:4], old[:4], labels[:4], kind=kind, gathered_old=old, gathered_labels=labels, local_offset=6
        )


def test_contra_new_equals_old_well_separated_is_zero() -> None:
    feats = torch.eye(6)
    labels = torch.arange(6)
    assert point_to_point_loss(feats, feats, labels, kind="contra").item() < 1e-20
    assert point_to_point_loss(feats, feats, labels, kind="triplet").item() == 0.0  # d+ = 0 < sqrt(2) - 0.8
    assert point_to_point_loss(feats, feats, labels, kind="l2").item() == 0.0


@pytest.mark.parametrize("kind", ["l2", "contra", "triplet"])
def test_point_to_point_gradcheck(kind: str) -> None:
    torch.manual_seed(1)
    new = torch.randn(4, 3, dtype=T64, requires_grad=True)
    old = torch.randn(4, 3, dtype=T64)
    labels = torch.tensor([0, 1, 0, 2])
    # triplet: random (non-normalised) inputs keep all distances away from the 1e-12 clamp; hinge kinks are
    # avoided by a large margin (every pair active)
    assert torch.autograd.gradcheck(
        lambda x: point_to_point_loss(x, old, labels, kind=kind, temperature=0.5, topk_neg=2, margin=10.0),
        (new,),
    )


def test_point_to_point_old_side_gets_no_gradient() -> None:
    new = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    old = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    for kind in ("l2", "contra", "triplet"):
        point_to_point_loss(new, old, torch.tensor([0, 1, 2, 3]), kind=kind).backward()
    assert old.grad is None
    assert new.grad is not None


# ---------------------------------------------------------------------------------------------------------------
# §8 RACT
# ---------------------------------------------------------------------------------------------------------------


def test_ract_hand_computed() -> None:
    new = _unit(0.0, 0.4, 2.0)
    old = _unit(0.1, 0.6, 2.2)
    labels = torch.tensor([0, 0, 1])
    tau = 0.5

    def c(a: float, b: float) -> float:
        return math.cos(a - b) / tau

    out = ract_loss(new, old, labels, temperature=tau, topk=1)
    # row 0: pos c(0,.1); new->old negatives: col 2 only; new->new negatives: col 2 only
    r0 = _lse(c(0, 0.1), c(0, 2.2), c(0, 2.0)) - c(0, 0.1)
    r1 = _lse(c(0.4, 0.6), c(0.4, 2.2), c(0.4, 2.0)) - c(0.4, 0.6)
    # row 2: top-1 over columns 0, 1: old -> max(cos(2-.1), cos(2-.6)) = col 1; new -> col 1 (0.4)
    r2 = _lse(c(2.0, 2.2), c(2.0, 0.6), c(2.0, 0.4)) - c(2.0, 2.2)
    assert out.item() == pytest.approx((r0 + r1 + r2) / 3, rel=1e-10)


def test_ract_new_equals_old_well_separated_is_zero() -> None:
    feats = torch.eye(8)
    assert ract_loss(feats, feats, torch.arange(8)).item() < 1e-20


def test_ract_gradient_only_through_local_anchor() -> None:
    torch.manual_seed(2)
    base = F.normalize(torch.randn(5, 4, dtype=T64), dim=1)
    old = F.normalize(torch.randn(5, 4, dtype=T64), dim=1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 1, 3])
    a = base.clone().requires_grad_()
    ract_loss(a, old, labels, temperature=0.5, topk=2).backward()
    b = base.clone().requires_grad_()
    ract_loss(b, old.detach(), labels, gathered_new=base.clone(), temperature=0.5, topk=2).backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert old.grad is None
    # gradcheck w.r.t. the anchors (gathered copies are constants)
    assert torch.autograd.gradcheck(
        lambda x: ract_loss(x, old.detach(), labels, gathered_new=base, temperature=0.5, topk=2),
        (base.clone().requires_grad_(),),
    )


def test_ract_gathered_equals_full_batch() -> None:
    torch.manual_seed(3)
    new = F.normalize(torch.randn(6, 4, dtype=T64), dim=1)
    old = F.normalize(torch.randn(6, 4, dtype=T64), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 3, 1])
    full = ract_loss(new, old, labels, topk=3)
    parts = [
        ract_loss(
            new[s : s + 3],
            old[s : s + 3],
            labels[s : s + 3],
            gathered_new=new,
            gathered_old=old,
            gathered_labels=labels,
            local_offset=s,
            topk=3,
        )
        for s in (0, 3)
    ]
    torch.testing.assert_close(full, (parts[0] + parts[1]) / 2)


# ---------------------------------------------------------------------------------------------------------------
# §7 ArcFace
# ---------------------------------------------------------------------------------------------------------------


def test_arcface_hand_computed() -> None:
    emb = _unit(0.3, 1.0)
    w = torch.eye(2, dtype=T64)
    out = arcface_logits(emb, w, torch.tensor([0, -1]), scale=2.0, margin=0.2)
    expected = torch.tensor(
        [[2 * math.cos(0.5), 2 * math.sin(0.3)], [2 * math.cos(1.0), 2 * math.sin(1.0)]], dtype=T64
    )
    torch.testing.assert_close(out, expected)


def test_arcface_clamped_at_cos_one_is_finite() -> None:
    w = F.normalize(torch.randn(5, 8), dim=1)
    emb = w[[0, 3]].clone().requires_grad_()  # cos = 1 exactly (up to rounding) for the target
    logits = arcface_logits(emb, w, torch.tensor([0, 3]), scale=30.0, margin=0.3)
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    assert torch.isfinite(logits).all() and torch.isfinite(emb.grad).all()
    assert logits[0, 0].item() == pytest.approx(30 * math.cos(0.3), abs=1e-2)  # acos(1 - 1e-7) ~ 5e-4


def test_arcface_gradcheck_away_from_clamp() -> None:
    emb = F.normalize(torch.randn(3, 4, dtype=T64), dim=1).requires_grad_()
    w = F.normalize(torch.randn(5, 4, dtype=T64), dim=1).requires_grad_()
    labels = torch.tensor([1, 4, 0])
    assert torch.autograd.gradcheck(
        lambda e, ww: arcface_logits(e, ww, labels, scale=3.0, margin=0.3), (emb, w)
    )


# ---------------------------------------------------------------------------------------------------------------
# §6 LCE
# ---------------------------------------------------------------------------------------------------------------


def test_lce_official_hand_computed() -> None:
    w = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=T64)
    centers = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=T64)
    b = torch.tensor([0.9, 0.95], dtype=T64)
    emb = torch.tensor([[3.0, 4.0]], dtype=T64)
    out = lce_losses(emb, torch.tensor([1]), w, centers, b, variant="official")
    assert out["align"].item() == pytest.approx((2 - math.sqrt(2)) / (2 * 2))
    assert out["bound"].item() == pytest.approx(0.95 - 0.8)
    raw = lce_losses(emb, torch.tensor([1]), w, centers, b, variant="official", bound_on_raw_feature=True)
    assert raw["bound"].item() == 0.0  # <g, C> = 4 clamped to 1 >= 0.95
    masked = lce_losses(
        emb, torch.tensor([1]), w, centers, b, variant="official", class_mask=torch.tensor([True, False])
    )
    assert masked["align"].item() == pytest.approx((2 - math.sqrt(2)) / 2)
    assert masked["bound"].item() == 0.0


def test_lce_advbct_hand_computed() -> None:
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=T64)
    centers = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=T64)
    theta = torch.tensor([0.1, 0.5], dtype=T64)
    emb = torch.tensor([[3.0, 4.0], [10.0, 0.0]], dtype=T64)
    out = lce_losses(emb, torch.tensor([1, 0]), w, centers, theta, variant="advbct")
    # sample 0: angle acos(0.8) to C_1 = (0, 1); sample 1: angle 0 to C_0 -> inside
    assert out["bound"].item() == pytest.approx((math.acos(0.8) - 0.5 + 0.0) / 2, rel=1e-6)
    assert out["align"].item() == pytest.approx((1 - 1 / math.sqrt(2) + 0.0) / 2)
    only1 = lce_losses(
        emb, torch.tensor([1, 0]), w, centers, theta, variant="advbct", class_mask=torch.tensor([False, True])
    )
    assert only1["align"].item() == pytest.approx(1 - 1 / math.sqrt(2))


def test_lce_no_valid_class_gives_connected_zero() -> None:
    emb = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(5, 3, requires_grad=True)
    for variant in ("official", "advbct"):
        out = lce_losses(
            emb,
            torch.tensor([0, 1, 2, 3]),
            w,
            torch.randn(5, 3),
            torch.rand(5),
            variant=variant,
            class_mask=torch.zeros(5, dtype=torch.bool),
        )
        total = out["align"] + out["bound"]
        assert total.item() == 0.0
        total.backward()
        assert torch.isfinite(emb.grad).all() and torch.isfinite(w.grad).all()


def test_lce_advbct_gradcheck() -> None:
    emb = torch.randn(3, 4, dtype=T64, requires_grad=True)
    w = torch.randn(3, 4, dtype=T64, requires_grad=True)
    centers = torch.randn(3, 4, dtype=T64)
    theta = torch.zeros(3, dtype=T64)  # every sample outside (away from the hinge kink)
    labels = torch.tensor([0, 2, 1])

    def f(e, ww):
        out = lce_losses(e, labels, ww, centers, theta, variant="advbct")
        return out["align"] + out["bound"]

    assert torch.autograd.gradcheck(f, (emb, w))


# ---------------------------------------------------------------------------------------------------------------
# §9 AdvBCT p2s and adversarial loss
# ---------------------------------------------------------------------------------------------------------------


def test_elastic_radius_cases() -> None:
    r_max = torch.tensor([0.3, 1.2], dtype=T64)
    w = torch.tensor([0.0, 0.0], dtype=T64)
    r, delta = elastic_radius(r_max, w, threshold=1.0)
    torch.testing.assert_close(delta, torch.tensor([0.35, 0.1], dtype=T64))
    torch.testing.assert_close(r, torch.tensor([0.65, 1.1], dtype=T64))
    r_off, d_off = elastic_radius(r_max, None)
    torch.testing.assert_close(r_off, r_max.float())
    assert torch.equal(d_off, torch.zeros(2))


def test_p2s_hand_computed() -> None:
    centers = torch.tensor([[0.5, 0.0], [0.0, 0.9], [0.0, 0.0], [0.9, 0.0]], dtype=T64)
    r_max = torch.tensor([0.3, 0.2, 0.1, 0.3], dtype=T64)
    has_meta = torch.tensor([True, True, False, True])
    f = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], dtype=T64)
    labels = torch.tensor([0, 1, 2, 3])
    h0 = 0.5 - 0.3
    h1 = math.sqrt(0.36 + 0.01) - 0.2
    # sample 2: class without metadata (skipped); sample 3: distance 0.1 inside radius 0.3 -> 0
    out = elastic_p2s_loss(f, labels, centers, r_max, has_meta)
    assert out.item() == pytest.approx((h0 + h1) / 2)
    batch = elastic_p2s_loss(f, labels, centers, r_max, has_meta, reduction="batch")
    assert batch.item() == pytest.approx((h0 + h1) / 3)
    w = torch.zeros(4, dtype=T64)
    el = elastic_p2s_loss(f, labels, centers, r_max, has_meta, elastic_logits=w, threshold=1.0)
    # radii 0.3 + 0.35 = 0.65 (sample 0 now inside), 0.2 + 0.4 = 0.6
    assert el.item() == pytest.approx(math.sqrt(0.37) - 0.6)
    tight = elastic_p2s_loss(f, labels, centers, r_max, has_meta, elastic_logits=w, tightness=0.1)
    assert tight.item() == pytest.approx(math.sqrt(0.37) - 0.6 + 0.1 * (0.35 + 0.4 + 0.35) / 3)


def test_p2s_zero_inside_radius_connected() -> None:
    centers = torch.tensor([[0.9, 0.0], [0.0, 0.9]])
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    w = torch.zeros(2, requires_grad=True)
    out = elastic_p2s_loss(
        f,
        torch.tensor([0, 1]),
        centers,
        torch.tensor([0.2, 0.2]),
        torch.tensor([True, True]),
        elastic_logits=w,
    )
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(f.grad, torch.zeros_like(f)) and torch.equal(w.grad, torch.zeros_like(w))


def test_p2s_gradcheck_away_from_kink() -> None:
    torch.manual_seed(4)
    f = torch.randn(5, 3, dtype=T64, requires_grad=True)
    w = torch.randn(4, dtype=T64, requires_grad=True)
    centers = 0.1 * torch.randn(4, 3, dtype=T64)
    r_max = torch.tensor([0.05, 0.02, 1.05, 0.1], dtype=T64)  # below and above T; all samples violate
    has_meta = torch.tensor([True, True, True, False])
    labels = torch.tensor([0, 1, 2, 3, 2])
    assert torch.autograd.gradcheck(
        lambda x, ww: elastic_p2s_loss(x, labels, centers, r_max, has_meta, elastic_logits=ww), (f, w)
    )


def test_adversarial_loss_value_and_reversal() -> None:
    torch.manual_seed(5)
    disc = Discriminator(6, 5, 2, batch_norm=False).double()
    new = torch.randn(4, 6, dtype=T64, requires_grad=True)
    old = torch.randn(3, 6, dtype=T64)
    alpha = 0.7
    loss = adversarial_discriminator_loss(disc, new, old, alpha=alpha)
    expected = -disc(new)[:, 0].mean() - disc(old)[:, 1].mean()
    torch.testing.assert_close(loss, expected)
    (g_rev,) = torch.autograd.grad(loss, new)
    new2 = new.detach().clone().requires_grad_()
    (g_plain,) = torch.autograd.grad(-disc(new2)[:, 0].mean(), new2)
    torch.testing.assert_close(g_rev, -alpha * g_plain)
    # joint forward without BN is the same function
    joint = adversarial_discriminator_loss(disc, new, old, alpha=alpha, joint_forward=True)
    torch.testing.assert_close(joint, loss)
    # the discriminator itself gets the ordinary (un-reversed) gradient
    disc.zero_grad()
    adversarial_discriminator_loss(disc, new, old, alpha=alpha).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())


def test_adversarial_loss_bn_modes_differ() -> None:
    torch.manual_seed(6)
    disc = Discriminator(6, 5, 2)
    new = torch.randn(8, 6) + 3.0
    old = torch.randn(8, 6)
    per = adversarial_discriminator_loss(disc, new, old, alpha=1.0)
    joint = adversarial_discriminator_loss(disc, new, old, alpha=1.0, joint_forward=True)
    l2 = adversarial_discriminator_loss(disc, new, old, alpha=1.0, normalize_inputs=True)
    assert torch.isfinite(per) and torch.isfinite(joint) and torch.isfinite(l2)
    assert not torch.allclose(per, joint)


# ---------------------------------------------------------------------------------------------------------------
# robustness: NaN/inf, degenerate batches, autocast
# ---------------------------------------------------------------------------------------------------------------


def _all_losses(
    new_raw: torch.Tensor, old_raw: torch.Tensor, labels: torch.Tensor, params: dict
) -> torch.Tensor:
    new_n = F.normalize(new_raw, dim=1)
    old_n = F.normalize(old_raw, dim=1)
    c = params["centers"].shape[0]
    terms = [
        influence_loss(new_raw, labels, params["table"]),
        influence_loss(new_raw, labels, params["table"], valid_mask=labels < 2),
        influence_loss(
            new_raw, labels, params["table"], valid_mask=torch.zeros_like(labels, dtype=torch.bool)
        ),
        ract_loss(new_n, old_n, labels),
        F.cross_entropy(
            arcface_logits(new_n, F.normalize(params["protos"], dim=1), labels, scale=30.0, margin=0.3),
            labels,
        ),
        elastic_p2s_loss(
            new_n, labels, params["centers"], params["r_max"], params["has_meta"], elastic_logits=params["w"]
        ),
        adversarial_discriminator_loss(params["disc"], new_raw, old_raw, alpha=0.5),
    ]
    for kind in ("l2", "contra", "triplet"):
        terms.append(point_to_point_loss(new_n, old_n, labels, kind=kind))
    for variant in ("official", "advbct"):
        out = lce_losses(
            new_raw,
            labels,
            params["W"],
            params["centers"],
            params["bnd"],
            variant=variant,
            class_mask=params["has_meta"],
        )
        terms += [out["align"], out["bound"]]
    assert all(t.dim() == 0 and t.dtype == torch.float32 for t in terms) and c > 0
    return torch.stack(terms)


def _params(c: int, d: int) -> dict:
    torch.manual_seed(7)
    return {
        "table": torch.randn(c, d),
        "protos": torch.randn(c, d),
        "centers": 0.8 * F.normalize(torch.randn(c, d), dim=1),
        "r_max": torch.rand(c) * 0.5,
        "has_meta": torch.tensor([True, False] * (c // 2)),
        "w": torch.zeros(c, requires_grad=True),
        "W": torch.randn(c, d, requires_grad=True),
        "bnd": torch.rand(c),
        "disc": Discriminator(d, 7, 2),
    }


@pytest.mark.parametrize(
    "case",
    ["random", "duplicates", "one_class", "singletons", "new_equals_old"],
)
@pytest.mark.parametrize("autocast", [False, True])
def test_no_nan_or_inf(case: str, autocast: bool) -> None:
    torch.manual_seed(8)
    b, d, c = 6, 8, 6
    new = torch.randn(b, d)
    old = torch.randn(b, d)
    labels = torch.tensor([0, 1, 2, 0, 1, 3])  # classes 4, 5 absent from the batch
    if case == "duplicates":
        new = new[[0, 0, 0, 1, 1, 1]].clone()
        old = new.clone()
    elif case == "one_class":
        labels = torch.zeros(b, dtype=torch.long)  # no negatives at all: only masked columns in the top-k
    elif case == "singletons":
        labels = torch.arange(b)
    elif case == "new_equals_old":
        old = new.clone()
    params = _params(c, d)
    new.requires_grad_()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        terms = _all_losses(new, old, labels, params)
    assert torch.isfinite(terms).all(), terms
    terms.sum().backward()
    assert torch.isfinite(new.grad).all()
    assert torch.isfinite(params["W"].grad).all() and torch.isfinite(params["w"].grad).all()


def test_bf16_inputs_under_autocast_keep_fp32_logits() -> None:
    new = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    old = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ract_loss(new, old, torch.tensor([0, 1, 2, 3]))
        ref = ract_loss(new.float(), old.float(), torch.tensor([0, 1, 2, 3]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_empty_batch_is_connected_zero() -> None:
    new = torch.zeros(0, 4, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    for kind in ("l2", "contra", "triplet"):
        assert point_to_point_loss(new, new, labels, kind=kind).item() == 0.0
    assert ract_loss(new, new, labels).item() == 0.0
    assert influence_loss(new, labels, torch.randn(3, 4)).item() == 0.0
