"""Tests of the NDPP/ODPP prototype-perturbation math in bctbench.prototypes and the prototype CE in
bctbench.losses (docs/methods.md §10.1, §11 [reconstruction], §14).

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bctbench.losses import prototype_ce_loss
from bctbench.prototypes import (
    advbct_class_meta,
    class_means,
    class_radii,
    knn_graph,
    ndpp_perturbation,
    neighbour_gains,
    odpp_objective,
    odpp_objective_and_grad,
    perturbation_bounds,
    perturbation_inputs,
    perturbation_stats,
    project_to_balls,
    pseudo_prototypes,
    solve_odpp,
)

T64 = torch.float64


def _problem(num_classes=40, dim=8, k=5, seed=0, dtype=torch.float32, unseen=(3, 7), spread=0.6):
    """Clustered old prototypes (high old cosines) and independent new prototypes (low new cosines), so most
    neighbour pairs have a positive gain. Returns p_old, neighbors, seen, new_sims, gains, p_new."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=g, dtype=dtype)
    p_old = F.normalize(
        base + spread * base.norm() * torch.randn(num_classes, dim, generator=g, dtype=dtype), dim=1
    )
    p_new = F.normalize(torch.randn(num_classes, dim, generator=g, dtype=dtype), dim=1)
    seen = torch.ones(num_classes, dtype=torch.bool)
    seen[list(unseen)] = False
    p_new[~seen] = 0.0  # unseen bank rows are zero
    neighbors, _ = knn_graph(p_old, k)
    _, new_sims, gains = neighbour_gains(p_old, p_new, seen, neighbors)
    return p_old, neighbors, seen, new_sims, gains, p_new


def _naive_objective(delta, p_old, neighbors, gains, new_sims, seen, tau_o, gamma):
    """Per-class loop of the §11 objective (reference for the vectorised, chunked version)."""
    num_classes, num_k = neighbors.shape
    pt = [F.normalize(p_old[c] + delta[c], dim=0) for c in range(num_classes)]
    total = delta.new_zeros(())
    for c in range(num_classes):
        pos = [j for j in range(num_k) if gains[c, j] > 0]
        hinge = delta.new_zeros(())
        for j in pos:
            s = pt[c] @ pt[int(neighbors[c, j])]
            hinge = hinge + gains[c, j] * tau_o * F.softplus((s - new_sims[c, j]) / tau_o)
        total = total + hinge / max(1, len(pos)) + 0.5 * gamma * (delta[c] ** 2).sum()
    return total / max(1, int(seen.sum()))


# ---------------------------------------------------------------------------------------------------------------
# inputs: bounds, radii, graph, gains
# ---------------------------------------------------------------------------------------------------------------


def test_perturbation_bounds_hand_values() -> None:
    r_med = torch.tensor([0.4, 0.1, 0.5, 0.0, 0.3])
    counts = torch.tensor([5, 3, 1, 0, 2])
    b = perturbation_bounds(r_med, counts, epsilon=0.1, rho=0.5)
    # min(0.1, 0.2) | min(0.1, 0.05) | singleton | empty | min(0.1, 0.15)
    torch.testing.assert_close(b, torch.tensor([0.1, 0.05, 0.0, 0.0, 0.1]))
    assert b.dtype == torch.float32
    with pytest.raises(ValueError):
        perturbation_bounds(r_med, counts, epsilon=-0.1, rho=0.5)


def test_perturbation_inputs_match_advbct_radius_statistics() -> None:
    torch.manual_seed(1)
    num_classes, dim = 6, 5
    labels = torch.tensor([0] * 9 + [1] * 4 + [2] * 1 + [4] * 7 + [5] * 2)  # class 3 empty, class 2 singleton
    feats = torch.randn(labels.numel(), dim).half()
    means, counts = class_means(feats, labels, num_classes)
    radii = class_radii(feats, labels, means, chunk_size=5)
    f = F.normalize(feats.float(), dim=1)
    torch.testing.assert_close(radii, (f - means[labels]).norm(dim=1))
    meta = advbct_class_meta(feats.float(), labels, num_classes)
    inp = perturbation_inputs(means, counts, feats, labels, k=3, epsilon=0.1, rho=0.5)
    torch.testing.assert_close(inp.r_med, meta["r_med"])
    expected = torch.minimum(torch.full((num_classes,), 0.1), 0.5 * meta["r_med"])
    expected[[2, 3]] = 0.0  # singleton and empty class
    torch.testing.assert_close(inp.bounds, expected)
    assert inp.present.tolist() == [True, True, True, False, True, True]
    assert torch.equal(inp.old_prototypes[3], torch.zeros(dim))
    torch.testing.assert_close(inp.old_prototypes[inp.present].norm(dim=1), torch.ones(5))
    assert inp.neighbors.shape == (num_classes, 3)
    assert not (inp.neighbors == 3).any()  # the empty class is never a neighbour
    for c in range(num_classes):
        assert c not in inp.neighbors[c].tolist()


def test_knn_graph_mask_clamps_k_and_excludes_candidates() -> None:
    torch.manual_seed(2)
    p = torch.randn(6, 4)
    mask = torch.tensor([True, True, False, True, False, True])
    idx, sims = knn_graph(p, 10, mask=mask, chunk_size=4)
    assert idx.shape == (6, 3)  # 4 candidates -> k = 3
    assert not torch.isin(idx, torch.tensor([2, 4])).any()
    assert torch.isfinite(sims).all()
    pn = F.normalize(p, dim=1)
    for i in range(6):
        cands = [j for j in range(6) if mask[j] and j != i]
        order = sorted(cands, key=lambda j: -float(pn[i] @ pn[j]))[:3]
        assert idx[i].tolist() == order


def test_neighbour_gains_hand_values_and_unseen() -> None:
    p_old = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    p_new = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]])  # class 2 unseen: zero bank row
    seen = torch.tensor([True, True, False])
    neighbors = torch.tensor([[1, 2], [0, 2], [1, 0]])
    s_o, s_n, g = neighbour_gains(p_old, p_new, seen, neighbors)
    torch.testing.assert_close(s_o, torch.tensor([[0.6, 0.0], [0.6, 0.8], [0.8, 0.0]]))
    torch.testing.assert_close(s_n, torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    # only the seen pair (0, 1) has a gain: 0.6 - 0
    torch.testing.assert_close(g, torch.tensor([[0.6, 0.0], [0.6, 0.0], [0.0, 0.0]]))
    assert torch.isfinite(g).all()


def test_project_to_balls() -> None:
    delta = torch.tensor([[0.3, 0.4], [0.03, 0.04], [0.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    bounds = torch.tensor([0.1, 0.1, 0.1, 0.0, 1.0])
    out = project_to_balls(delta, bounds)
    torch.testing.assert_close(out[0], torch.tensor([0.06, 0.08]))  # scaled onto the sphere of radius 0.1
    assert torch.equal(out[1], delta[1])  # inside: unchanged
    assert torch.equal(out[2], torch.zeros(2)) and torch.equal(out[3], torch.zeros(2))  # no NaN, ε = 0
    torch.testing.assert_close(out[4], torch.tensor([0.6, 0.8]))
    active = torch.tensor([True, True, True, True, False])
    assert torch.equal(project_to_balls(delta, bounds, active)[4], torch.zeros(2))


# ---------------------------------------------------------------------------------------------------------------
# NDPP
# ---------------------------------------------------------------------------------------------------------------


def test_ndpp_hand_computed_step() -> None:
    r3 = math.sqrt(3.0)
    # p0 at 0°, p1 at 60°, p2 at 180° (antipodal to p0: degenerate tangent, skipped)
    p_old = torch.tensor([[1.0, 0.0], [0.5, r3 / 2], [-1.0, 0.0]], dtype=T64)
    p_new = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=T64)  # pair (0, 1) now 90° apart
    seen = torch.ones(3, dtype=torch.bool)
    neighbors, _ = knn_graph(p_old, 2)
    assert neighbors.tolist() == [[1, 2], [0, 2], [1, 0]]
    _, _, gains = neighbour_gains(p_old, p_new, seen, neighbors)
    torch.testing.assert_close(gains, torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 0.0]], dtype=T64))
    bounds = torch.tensor([0.1, 1.0, 0.1], dtype=T64)
    delta = ndpp_perturbation(p_old, neighbors, gains, bounds, tau_nb=0.1, eta=1.0)
    # class 0: ω_01 = e^5 / (e^5 + e^-10), u_01 = normalise(0.5·p0 − p1) = (0, −1); ‖d_0‖ ≈ 0.5 > 0.1 -> clipped
    w01 = math.exp(5) / (math.exp(5) + math.exp(-10))
    d0 = torch.tensor([0.0, -w01 * 0.5], dtype=T64)
    torch.testing.assert_close(delta[0], 0.1 * d0 / d0.norm())
    # class 1: ω_10 = e^5 / (e^5 + e^-5), u_10 = normalise(0.5·p1 − p0) = (−√3/2, 1/2); inside its ball of 1.0
    w10 = math.exp(5) / (math.exp(5) + math.exp(-5))
    torch.testing.assert_close(delta[1], w10 * 0.5 * torch.tensor([-r3 / 2, 0.5], dtype=T64))
    assert torch.equal(delta[2], torch.zeros(2, dtype=T64))
    # η scales the step before the clip
    half = ndpp_perturbation(p_old, neighbors, gains, bounds, tau_nb=0.1, eta=0.5)
    torch.testing.assert_close(half[1], 0.5 * delta[1])
    # pseudo-old prototypes: p0 moves below the x-axis, p1 beyond 60° (both away from each other)
    pt = pseudo_prototypes(p_old, delta)
    torch.testing.assert_close(pt[0], F.normalize(torch.tensor([1.0, -0.1], dtype=T64), dim=0))
    assert pt[0] @ pt[1] < p_old[0] @ p_old[1]
    torch.testing.assert_close(pt.norm(dim=1), torch.ones(3, dtype=T64))


def test_ndpp_respects_bounds_and_zeroes_unseen_and_singletons() -> None:
    p_old, neighbors, seen, _, gains, _ = _problem(num_classes=60, dim=8, k=6, seed=3)
    bounds = torch.full((60,), 0.1)
    bounds[10:20] = torch.linspace(0.0, 0.3, 10)
    bounds[[5, 6]] = 0.0  # singletons
    delta = ndpp_perturbation(p_old, neighbors, gains, bounds, tau_nb=0.1, eta=1.0, chunk_size=7)
    norms = delta.norm(dim=1)
    assert (norms <= bounds + 1e-6).all()
    assert (norms[seen & (bounds > 0)] > 0).any()
    assert torch.equal(delta[[3, 7]], torch.zeros(2, 8))  # unseen
    assert torch.equal(delta[[5, 6]], torch.zeros(2, 8))  # ε_k = 0
    full = ndpp_perturbation(p_old, neighbors, gains, bounds, tau_nb=0.1, eta=1.0)
    assert torch.equal(delta, full)  # chunking does not change the result
    stats = perturbation_stats(delta, bounds, seen)
    assert 0.0 < stats["delta_norm"] <= 0.3 and 0.0 <= stats["on_bound"] <= 1.0


def test_ndpp_vanishes_without_gain() -> None:
    p_old, neighbors, seen, *_ = _problem(seed=4)
    _, _, gains = neighbour_gains(p_old, p_old, seen, neighbors)  # new model = old model
    assert torch.equal(gains, torch.zeros_like(gains))
    delta = ndpp_perturbation(p_old, neighbors, gains, torch.full((40,), 0.1))
    assert torch.equal(delta, torch.zeros_like(delta))
    # a collapsed new model (every pair separated worse than by the old one): gains clamp to 0 as well
    collapsed = torch.ones(40, 8)
    _, _, gains = neighbour_gains(p_old, collapsed, seen, neighbors)
    assert torch.equal(gains, torch.zeros_like(gains))
    delta = ndpp_perturbation(p_old, neighbors, gains, torch.full((40,), 0.1))
    assert torch.equal(delta, torch.zeros_like(delta))


def test_ndpp_and_odpp_no_nan_with_duplicate_prototypes() -> None:
    p_old = torch.tensor(
        [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    )
    present = torch.tensor([True, True, True, True, False])
    p_old = F.normalize(p_old, dim=1)
    neighbors, _ = knn_graph(p_old, 2, mask=present)
    p_new = F.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    seen = present.clone()
    p_new[~seen] = 0.0
    _, new_sims, gains = neighbour_gains(p_old, p_new, seen, neighbors)
    assert gains[0, 0] > 0  # the duplicate pair (0, 1) has a gain, but its tangent is degenerate
    bounds = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.0])
    delta = ndpp_perturbation(p_old, neighbors, gains, bounds)
    assert torch.isfinite(delta).all()
    assert (delta.norm(dim=1) <= bounds + 1e-6).all()
    # class 0's neighbours are its duplicate (skipped) and class 3 (orthogonal): δ_0 is along −p_3 only
    assert abs(float(delta[0, 0])) < 1e-6 and float(delta[0, 1]) <= 0
    sol = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=5)
    assert torch.isfinite(sol.delta).all() and math.isfinite(sol.objective_after)
    assert (sol.delta.norm(dim=1) <= bounds + 1e-6).all()
    assert all(math.isfinite(v) for v in sol.history)
    assert torch.isfinite(pseudo_prototypes(p_old, sol.delta)).all()


# ---------------------------------------------------------------------------------------------------------------
# ODPP
# ---------------------------------------------------------------------------------------------------------------


def test_odpp_objective_and_gradient_vs_naive_loop() -> None:
    p_old, neighbors, seen, new_sims, gains, _ = _problem(num_classes=12, dim=4, k=3, seed=5, dtype=T64)
    delta = 0.05 * torch.randn(12, 4, generator=torch.Generator().manual_seed(9), dtype=T64)
    delta[~seen] = 0.0
    value, grad = odpp_objective_and_grad(
        delta, p_old, neighbors, gains, new_sims, seen, tau_o=0.05, gamma=1.0, chunk_size=5
    )
    ref_delta = delta.clone().requires_grad_(True)
    ref = _naive_objective(ref_delta, p_old, neighbors, gains, new_sims, seen, 0.05, 1.0)
    ref.backward()
    torch.testing.assert_close(value, ref.detach())
    torch.testing.assert_close(grad, ref_delta.grad)
    only = odpp_objective(delta, p_old, neighbors, gains, new_sims, seen, tau_o=0.05, gamma=1.0)
    torch.testing.assert_close(only, value)
    assert value.dtype == T64 and not value.requires_grad


def test_solve_odpp_decreases_objective_within_bounds() -> None:
    p_old, neighbors, seen, new_sims, gains, _ = _problem(num_classes=50, dim=8, k=5, seed=6)
    bounds = torch.full((50,), 0.1)
    bounds[[11, 12]] = 0.0  # singletons
    bounds[20:25] = 0.02
    sol = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=20, lr=0.01, chunk_size=16)
    assert len(sol.history) == 21
    assert sol.objective_after <= sol.objective_before
    assert sol.objective_after < sol.objective_before - 1e-4  # a real decrease on a problem with gains
    torch.testing.assert_close(
        torch.tensor(sol.objective_after),
        odpp_objective(sol.delta, p_old, neighbors, gains, new_sims, seen).float(),
    )
    norms = sol.delta.norm(dim=1)
    assert (norms <= bounds + 1e-6).all()
    assert torch.equal(sol.delta[[3, 7]], torch.zeros(2, 8))  # unseen
    assert torch.equal(sol.delta[[11, 12]], torch.zeros(2, 8))  # singletons
    assert perturbation_stats(sol.delta, bounds, seen)["delta_norm"] > 0
    # the pseudo-old neighbour similarities drop where the gains push them
    pt = pseudo_prototypes(p_old, sol.delta)
    s_before = (p_old.unsqueeze(1) * p_old[neighbors]).sum(-1)
    s_after = (pt.unsqueeze(1) * pt[neighbors]).sum(-1)
    assert float(((s_after - s_before) * gains).sum()) < 0


def test_solve_odpp_is_deterministic_and_warm_starts() -> None:
    p_old, neighbors, seen, new_sims, gains, _ = _problem(seed=7)
    bounds = torch.full((40,), 0.1)
    a = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=10)
    b = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=10)
    assert torch.equal(a.delta, b.delta) and a.history == b.history
    warm = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=10, init=a.delta)
    assert warm.objective_before == pytest.approx(a.objective_after, rel=1e-6)
    assert warm.objective_after <= a.objective_after
    # an infeasible warm start is projected first (ball and seen mask)
    big = torch.ones(40, 8)
    sol = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=0, init=big)
    assert (sol.delta.norm(dim=1) <= bounds + 1e-6).all() and torch.equal(sol.delta[3], torch.zeros(8))


def test_solve_odpp_keep_best_guarantees_no_increase() -> None:
    p_old, neighbors, seen, new_sims, gains, _ = _problem(seed=8)
    bounds = torch.full((40,), 0.5)
    # a huge step overshoots: the last iterate is worse than the best one
    last = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=6, lr=1.0, keep_best=False)
    best = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=6, lr=1.0, keep_best=True)
    assert last.objective_after == last.history[-1]
    assert best.objective_after == min(best.history) <= best.objective_before
    assert best.history == last.history
    assert last.objective_after > best.objective_after


def test_odpp_vanishes_without_gain() -> None:
    p_old, neighbors, seen, *_ = _problem(seed=9)
    s_o, new_sims, gains = neighbour_gains(p_old, p_old, seen, neighbors)
    assert torch.equal(gains, torch.zeros_like(gains))
    bounds = torch.full((40,), 0.1)
    sol = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=20)
    assert torch.equal(sol.delta, torch.zeros_like(sol.delta))
    assert sol.objective_before == 0.0 and sol.objective_after == 0.0
    # a warm start with no gain decays toward 0 (only the γ term is left)
    init = project_to_balls(torch.ones(40, 8), bounds, seen)
    decay = solve_odpp(p_old, neighbors, gains, new_sims, seen, bounds, steps=20, init=init)
    assert decay.delta.norm(dim=1).max() < init.norm(dim=1).max()
    assert decay.objective_after < decay.objective_before


def test_perturbation_stats() -> None:
    delta = torch.tensor([[0.1, 0.0], [0.05, 0.0], [0.3, 0.0], [0.0, 0.0]])
    bounds = torch.tensor([0.1, 0.1, 0.3, 0.0])
    seen = torch.tensor([True, True, False, True])
    stats = perturbation_stats(delta, bounds, seen)  # eligible: classes 0 and 1
    assert stats["eligible"] == 2.0
    assert stats["delta_norm"] == pytest.approx(0.075)
    assert stats["on_bound"] == pytest.approx(0.5)
    assert perturbation_stats(delta, bounds, torch.zeros(4, dtype=torch.bool))["delta_norm"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# prototype CE
# ---------------------------------------------------------------------------------------------------------------


def test_prototype_ce_loss_hand_case_masking_and_fp32() -> None:
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1, -1])
    loss = prototype_ce_loss(f, protos, targets, scale=30.0)
    expected = math.log(1.0 + math.exp(-30.0))  # both valid rows: logits (30, 0) with the target at 30
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-12)
    loss2 = prototype_ce_loss(f, protos, torch.tensor([1, 1, 0]), scale=2.0)
    logits = 2.0 * f @ protos.T
    torch.testing.assert_close(loss2, F.cross_entropy(logits, torch.tensor([1, 1, 0])))
    # no valid sample: a graph-connected zero
    x = f.clone().requires_grad_(True)
    zero = prototype_ce_loss(x, protos, torch.tensor([-1, -1, -1]), scale=30.0)
    assert float(zero.detach()) == 0.0
    zero.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # autocast does not reach the prototype CE (s = 30 logits stay fp32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = prototype_ce_loss(f, protos, torch.tensor([1, 1, 0]), scale=2.0)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, loss2)
