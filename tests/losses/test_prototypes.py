"""Tests of bctbench.prototypes (docs/methods.md §2.1, §2.2, §7.2, §10.1).

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bctbench.prototypes import (
    EMAPrototypeBank,
    advbct_class_meta,
    class_means,
    iqr_filtered_stats,
    knn_graph,
    refine_prototypes,
)

T64 = torch.float64


# ---------------------------------------------------------------------------------------------------------------
# class means
# ---------------------------------------------------------------------------------------------------------------


def test_class_means_vs_naive_loop() -> None:
    torch.manual_seed(0)
    feats = torch.randn(50, 6) * 3
    labels = torch.randint(0, 7, (50,))
    labels[labels == 5] = 6  # class 5 absent
    means, counts = class_means(feats, labels, 8, chunk_size=7)
    for k in range(8):
        rows = [F.normalize(feats[i], dim=0) for i in range(50) if labels[i] == k]
        assert counts[k].item() == len(rows)
        expected = torch.stack(rows).mean(0) if rows else torch.zeros(6)
        torch.testing.assert_close(means[k], expected)
    assert torch.equal(means[5], torch.zeros(6)) and torch.equal(means[7], torch.zeros(6))
    assert (means.norm(dim=1) <= 1 + 1e-6).all()  # not re-normalised


def test_class_means_float16_cache() -> None:
    feats = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float16)
    means, counts = class_means(feats, torch.tensor([0, 0, 1]), 2)
    assert means.dtype == torch.float32
    torch.testing.assert_close(means, torch.tensor([[0.3, 0.9], [1.0, 0.0]]))
    assert counts.tolist() == [2, 1]


# ---------------------------------------------------------------------------------------------------------------
# 1.5-IQR statistics
# ---------------------------------------------------------------------------------------------------------------


def _naive_iqr(vals: list[float]) -> list[float]:
    v = sorted(vals)
    n = len(v)
    if n < 4:
        return v
    q1, q3 = v[n // 4], v[(3 * n) // 4]
    iqr = q3 - q1
    kept = [x for x in v if q1 - 1.5 * iqr <= x <= q3 + 1.5 * iqr]
    return kept or v


def test_iqr_golden_small_cases() -> None:
    groups = {
        0: [100.0, 3.0, 1.0, 4.0, 2.0],  # n=5: q1 = v[1] = 2, q3 = v[3] = 4, keep [-1, 7] -> [1, 2, 3, 4]
        1: [5.0, 7.0, 6.0],  # n < 4: keep all
        3: [10.0, 0.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0],  # q1 = q3 = 10, IQR 0 -> seven 10s
        4: [10.0, 0.0, 2.0, 1.0],  # floor: q1 = v[1] = 1, q3 = v[3] = 10 -> keep all (interpolation drops 10)
        5: [7.5],  # singleton
    }
    values, labels = [], []
    # interleave classes so the sort is exercised
    for i in range(8):
        for k, vs in groups.items():
            if i < len(vs):
                values.append(vs[i])
                labels.append(k)
    stats = iqr_filtered_stats(torch.tensor(values, dtype=T64), torch.tensor(labels), 7)
    assert stats.n_kept.tolist() == [4, 3, 0, 7, 4, 1, 0]
    assert stats.v_min.tolist() == [1.0, 5.0, 0.0, 10.0, 0.0, 7.5, 0.0]
    assert stats.v_max.tolist() == [4.0, 7.0, 0.0, 10.0, 10.0, 7.5, 0.0]
    assert stats.v_med.tolist() == [2.5, 6.0, 0.0, 10.0, 1.5, 7.5, 0.0]


def test_iqr_vs_naive_random() -> None:
    torch.manual_seed(1)
    n, c = 400, 23
    labels = torch.randint(0, c, (n,))
    values = torch.rand(n, dtype=T64) ** 3 * torch.where(torch.rand(n) < 0.05, 20.0, 1.0).double()
    stats = iqr_filtered_stats(values, labels, c)
    for k in range(c):
        vals = values[labels == k].tolist()
        kept = _naive_iqr(vals) if vals else []
        assert stats.n_kept[k].item() == len(kept)
        if kept:
            m = len(kept)
            med = (kept[(m - 1) // 2] + kept[m // 2]) / 2
            assert stats.v_min[k].item() == kept[0]
            assert stats.v_max[k].item() == kept[-1]
            assert stats.v_med[k].item() == pytest.approx(med)


def test_iqr_empty_input() -> None:
    stats = iqr_filtered_stats(torch.zeros(0), torch.zeros(0, dtype=torch.long), 3)
    assert stats.n_kept.tolist() == [0, 0, 0] and stats.v_max.tolist() == [0.0, 0.0, 0.0]


def test_advbct_class_meta_hand_case() -> None:
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    meta = advbct_class_meta(feats, torch.tensor([0, 0, 1]), 3)
    torch.testing.assert_close(meta["centers"][0], torch.tensor([0.5, 0.5]))
    r = math.sqrt(0.5)
    assert meta["r_max"][0].item() == pytest.approx(r)
    assert meta["r_min"][0].item() == pytest.approx(r)
    assert meta["r_med"][0].item() == pytest.approx(r)
    assert meta["theta_max"][0].item() == pytest.approx(math.pi / 4, abs=1e-6)
    assert meta["n_kept"].tolist() == [2, 1, 0]
    assert meta["has_meta"].tolist() == [True, False, False]
    assert meta["r_max"][1].item() == pytest.approx(0.0, abs=1e-6)  # singleton: f == c
    assert torch.isfinite(meta["theta_max"]).all()


def test_advbct_class_meta_vs_naive() -> None:
    torch.manual_seed(2)
    n, d, c = 120, 5, 9
    feats = torch.randn(n, d, dtype=T64)
    labels = torch.randint(0, c - 1, (n,))  # last class absent
    meta = advbct_class_meta(feats, labels, c)
    for k in range(c - 1):
        f = F.normalize(feats[labels == k].float(), dim=1)
        if f.shape[0] == 0:
            continue
        center = f.mean(0)
        radii = _naive_iqr((f - center).norm(dim=1).tolist())
        cosv = (f @ (center / center.norm())).clamp(max=1.0)
        angles = _naive_iqr(torch.acos(cosv).tolist())
        torch.testing.assert_close(meta["centers"][k], center)
        assert meta["r_max"][k].item() == pytest.approx(radii[-1], abs=1e-6)
        assert meta["r_min"][k].item() == pytest.approx(radii[0], abs=1e-6)
        assert meta["theta_max"][k].item() == pytest.approx(angles[-1], abs=1e-5)
        assert meta["n_kept"][k].item() == len(radii)
        assert meta["has_meta"][k].item() == (len(radii) > 1)
    assert not meta["has_meta"][c - 1]


# ---------------------------------------------------------------------------------------------------------------
# UniBCT refinement
# ---------------------------------------------------------------------------------------------------------------


def _naive_refine(xo: torch.Tensor, xn: torch.Tensor, lam: float, tau: float, row: bool) -> torch.Tensor:
    xo = F.normalize(xo.double(), dim=1)
    xn = F.normalize(xn.double(), dim=1)
    n = xo.shape[0]
    s = xn @ xn.T / tau
    s.fill_diagonal_(-1e9)
    a = torch.softmax(s, dim=1 if row else 0)
    inv = torch.linalg.inv(torch.eye(n, dtype=T64) - lam * a)
    pi = (1 - lam) / n * inv.sum(0)  # 1^T (I - lam A)^-1
    return F.normalize(pi @ xo, dim=0).float()


@pytest.mark.parametrize("affinity_norm", ["row", "column"])
def test_refine_vs_naive_per_class(affinity_norm: str) -> None:
    torch.manual_seed(3)
    sizes = {0: 1, 1: 2, 2: 3, 3: 5, 4: 9, 6: 17}  # several padding buckets; class 5 absent
    labels = torch.cat([torch.full((n,), k) for k, n in sizes.items()])
    perm = torch.randperm(labels.numel())
    labels = labels[perm]
    xo = torch.randn(labels.numel(), 4)
    xn = torch.randn(labels.numel(), 4)
    protos = torch.randn(7, 4)
    res = refine_prototypes(protos, xo, xn, labels, affinity_norm=affinity_norm, max_batch_elements=64)
    for k in sizes:
        m = labels == k
        torch.testing.assert_close(
            res.prototypes[k], _naive_refine(xo[m], xn[m], 0.9, 0.05, affinity_norm == "row")
        )
    torch.testing.assert_close(res.prototypes[5], protos[5])  # absent class unchanged
    assert res.counts.tolist() == [1, 2, 3, 5, 9, 0, 17]
    assert res.entropy[5].item() == 0.0 and res.entropy[0].item() == pytest.approx(0.0, abs=1e-6)
    assert res.entropy[1].item() == pytest.approx(math.log(2))


def test_refine_limits() -> None:
    torch.manual_seed(4)
    xo = torch.randn(7, 3)
    xn = torch.randn(7, 3)
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    protos = torch.zeros(3, 3)
    res = refine_prototypes(protos, xo, xn, labels)
    torch.testing.assert_close(res.prototypes[0], F.normalize(xo[0], dim=0))  # n = 1 -> x_o
    pair = F.normalize(xo[1:3], dim=1).mean(0)
    torch.testing.assert_close(res.prototypes[1], F.normalize(pair, dim=0))  # n = 2 -> pi = (1/2, 1/2)
    col = refine_prototypes(protos, xo, xn, labels, affinity_norm="column")
    plain = F.normalize(F.normalize(xo[3:], dim=1).mean(0), dim=0)
    torch.testing.assert_close(col.prototypes[2], plain)  # column normalisation = plain mean (§7.1)


def test_refine_downweights_outlier() -> None:
    # four tight samples and one outlier (same image in both spaces): the row-normalised refinement moves the
    # prototype toward the cluster compared with the plain mean
    base = torch.tensor([[1.0, 0.0, 0.0]])
    feats = torch.cat(
        [
            base + 0.05 * torch.randn(4, 3, generator=torch.Generator().manual_seed(0)),
            torch.tensor([[0.0, 1.0, 0.0]]),
        ]
    )
    labels = torch.zeros(5, dtype=torch.long)
    row = refine_prototypes(torch.zeros(1, 3), feats, feats, labels).prototypes[0]
    col = refine_prototypes(torch.zeros(1, 3), feats, feats, labels, affinity_norm="column").prototypes[0]
    target = F.normalize(base[0], dim=0)
    assert row @ target > col @ target


def test_refine_subset_cap_is_seeded() -> None:
    torch.manual_seed(5)
    labels = torch.tensor([0] * 20 + [1] * 3)
    xo, xn = torch.randn(23, 4), torch.randn(23, 4)
    a = refine_prototypes(torch.zeros(2, 4), xo, xn, labels, max_per_class=8)
    b = refine_prototypes(torch.zeros(2, 4), xo, xn, labels, max_per_class=8)
    assert a.counts.tolist() == [8, 3]
    assert torch.equal(a.prototypes, b.prototypes)
    c = refine_prototypes(torch.zeros(2, 4), xo, xn, labels, max_per_class=8, seed=1)
    assert not torch.equal(a.prototypes[0], c.prototypes[0])
    torch.testing.assert_close(a.prototypes[1], c.prototypes[1])


# ---------------------------------------------------------------------------------------------------------------
# kNN graph and EMA bank
# ---------------------------------------------------------------------------------------------------------------


def test_knn_graph_vs_brute_force() -> None:
    torch.manual_seed(6)
    p = torch.randn(11, 5)
    idx, sims = knn_graph(p, 3, chunk_size=4)
    pn = F.normalize(p, dim=1)
    full = pn @ pn.T
    for i in range(11):
        order = sorted((j for j in range(11) if j != i), key=lambda j: -full[i, j].item())[:3]
        assert idx[i].tolist() == order
        torch.testing.assert_close(sims[i], full[i, order])
    idx_all, _ = knn_graph(p[:3], 10)
    assert idx_all.shape == (3, 2)  # k clamped to C - 1, self excluded
    for i in range(3):
        assert i not in idx_all[i].tolist()


def test_ema_bank_semantics() -> None:
    bank = EMAPrototypeBank(4, 2, momentum=0.9)
    feats = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    updated = bank.update(feats, torch.tensor([0, 1, 1]))
    assert updated.tolist() == [0, 1]
    torch.testing.assert_close(bank.bank[0], torch.tensor([1.0, 0.0]))  # first sight: batch mean of f_hat
    torch.testing.assert_close(bank.bank[1], torch.tensor([0.0, 1.0]))
    assert bank.seen.tolist() == [True, True, False, False]
    bank.update(torch.tensor([[0.0, 5.0], [3.0, 4.0]]), torch.tensor([0, 2]))
    torch.testing.assert_close(bank.bank[0], torch.tensor([0.9, 0.1]))  # 0.9 * (1, 0) + 0.1 * (0, 1)
    torch.testing.assert_close(bank.bank[1], torch.tensor([0.0, 1.0]))  # absent: unchanged
    torch.testing.assert_close(bank.bank[2], torch.tensor([0.6, 0.8]))
    protos = bank.prototypes()
    assert torch.equal(protos[3], torch.zeros(2))  # unseen: zero row, not NaN
    torch.testing.assert_close(protos[0], F.normalize(torch.tensor([0.9, 0.1]), dim=0))
    sd = bank.state_dict()
    assert set(sd) == {"bank", "seen"}
    other = EMAPrototypeBank(4, 2)
    other.load_state_dict(sd)
    assert torch.equal(other.bank, bank.bank)


def test_ema_bank_gather_fn() -> None:
    # simulate 2 ranks: gather_fn returns [R, B, ...] (Lightning all_gather layout); every rank sees the same
    rank_feats = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    rank_labels = [torch.tensor([0]), torch.tensor([0])]

    def make_gather(parts):
        return lambda t: torch.stack(parts[0] if t.is_floating_point() else parts[1])

    banks = []
    for r in range(2):
        bank = EMAPrototypeBank(2, 2, gather_fn=make_gather((rank_feats, rank_labels)))
        bank.update(rank_feats[r], rank_labels[r])
        banks.append(bank.bank.clone())
    assert torch.equal(banks[0], banks[1])
    torch.testing.assert_close(banks[0][0], torch.tensor([0.5, 0.5]))


def test_prototype_math_ignores_autocast() -> None:
    torch.manual_seed(7)
    feats = torch.randn(16, 8)
    labels = torch.randint(0, 5, (16,))
    plain = EMAPrototypeBank(5, 8)
    plain.update(feats, labels)
    idx, sims = knn_graph(feats, 3)
    cast = EMAPrototypeBank(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast.update(feats, labels)
        idx_c, sims_c = knn_graph(feats, 3)
    assert torch.equal(plain.bank, cast.bank)
    assert torch.equal(idx, idx_c) and torch.equal(sims, sims_c) and sims_c.dtype == torch.float32
