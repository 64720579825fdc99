"""Class prototypes and old-model artefacts: class means, 1.5-IQR statistics, UniBCT refinement, kNN graph, EMA bank.

NDPP/ODPP prototype perturbation (§10–11): bounds, gains, the neighbour-driven step, the ODPP objective and its
projected Adam solver.

All functions are vectorised across samples and classes (sorting + per-class offsets, ``index_add``, batched
solves); there is no Python loop over classes except over the few classes that exceed the UniBCT subset cap
(the kNN graph and the NDPP/ODPP functions loop over fixed-size blocks of classes only, to bound memory).
Features are rows: ``Tensor[N, d]``; labels are ``int64[N]`` in ``0..C-1``; per-class buffers are dense ``[C]``
or ``[C, d]``.

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "class_means",
    "IQRStats",
    "iqr_filtered_stats",
    "advbct_class_meta",
    "RefinedPrototypes",
    "refine_prototypes",
    "knn_graph",
    "EMAPrototypeBank",
    "DEGENERATE_EPS",
    "class_radii",
    "perturbation_bounds",
    "PerturbationInputs",
    "perturbation_inputs",
    "neighbour_gains",
    "project_to_balls",
    "pseudo_prototypes",
    "ndpp_perturbation",
    "perturbation_stats",
    "odpp_objective_and_grad",
    "odpp_objective",
    "ODPPSolution",
    "solve_odpp",
]

_NORM_EPS = 1e-12


def _no_autocast(t: Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast on ``t``'s device type: prototype math always runs in float32/float64."""
    if t.device.type in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return torch.autocast(device_type=t.device.type, enabled=False)
    return contextlib.nullcontext()


def _check_labels(features: Tensor, labels: Tensor) -> None:
    if features.dim() != 2:
        raise ValueError(f"features must be [N, d], got {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must be [N] with N = {features.shape[0]}, got {tuple(labels.shape)}")


@torch.no_grad()
def class_means(
    features: Tensor, labels: Tensor, num_classes: int, *, chunk_size: int = 262144
) -> tuple[Tensor, Tensor]:
    """Per-class mean of L2-normalised features, **not** re-normalised (§2.1 step 2, §2.2 [official code]).

    Args:
        features: ``Tensor[N, d]`` raw features (any float dtype, e.g. a float16 cache); each row is
            L2-normalised in float32 before averaging.
        labels: ``int64[N]`` in ``0..num_classes-1``.
        num_classes: C.
        chunk_size: rows converted to float32 at a time (bounds memory for large caches).

    Returns:
        ``(means, counts)``: ``float32[C, d]`` (zero rows for classes without samples; norm ≤ 1) and
        ``int64[C]``.
    """
    _check_labels(features, labels)
    d = features.shape[1]
    labels = labels.to(features.device, torch.long)
    sums = torch.zeros(num_classes, d, dtype=torch.float32, device=features.device)
    for start in range(0, features.shape[0], chunk_size):
        f = F.normalize(features[start : start + chunk_size].float(), dim=1, eps=_NORM_EPS)
        sums.index_add_(0, labels[start : start + chunk_size], f)
    counts = torch.bincount(labels, minlength=num_classes)
    means = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
    return means, counts


class IQRStats(NamedTuple):
    """Dense per-class statistics of the 1.5-IQR-kept list (``docs/methods.md`` §2.1 step 4–5).

    ``v_min``/``v_max``/``v_med``: ``[C]`` in the dtype of the values (0 for classes without samples);
    ``n_kept``: ``int64[C]``.
    """

    v_min: Tensor
    v_max: Tensor
    v_med: Tensor
    n_kept: Tensor


@torch.no_grad()
def iqr_filtered_stats(values: Tensor, labels: Tensor, num_classes: int) -> IQRStats:
    """1.5-IQR filter per class, as in AdvBCT ``gen_class_meta`` (§2.1 step 4 [official code]).

    Per class k with n_k values sorted ascending (v): if n_k ≥ 4, q1 = v[⌊n_k/4⌋] and q3 = v[⌊3n_k/4⌋]
    (0-based floor index, no interpolation), IQR = q3 − q1, keep q1 − 1.5·IQR ≤ v ≤ q3 + 1.5·IQR; if n_k < 4 keep
    all; if nothing is kept keep all. Vectorised: one lexicographic sort by (label, value) and per-class offsets.

    Args:
        values: ``Tensor[N]`` per-sample values (radii or angles).
        labels: ``int64[N]`` in ``0..num_classes-1``.
        num_classes: C.

    Returns:
        :class:`IQRStats` with ``v_min`` = first kept value, ``v_max`` = last kept value, ``v_med`` = median of
        the kept list (mean of the two middle values when the length is even — bctbench reading, the reference
        never uses a median), ``n_kept`` = length of the kept list. Classes without samples get 0 everywhere.
    """
    if values.dim() != 1 or labels.shape != values.shape:
        raise ValueError("values and labels must both be [N]")
    device = values.device
    labels = labels.to(device, torch.long)
    n = values.shape[0]
    # lexicographic sort by (label, value): stable sort by value, then stable sort by label
    by_value = torch.sort(values, stable=True).indices
    by_label = torch.sort(labels[by_value], stable=True).indices
    order = by_value[by_label]
    v = values[order]
    lab = labels[order]

    counts = torch.bincount(labels, minlength=num_classes)
    offsets = torch.cumsum(counts, 0) - counts
    last = max(n - 1, 0)
    if n == 0:
        zeros = values.new_zeros(num_classes)
        return IQRStats(zeros, zeros.clone(), zeros.clone(), counts.clone())

    q1 = v[(offsets + counts // 4).clamp(max=last)]
    q3 = v[(offsets + (3 * counts) // 4).clamp(max=last)]
    iqr = q3 - q1
    lo = q1 - 1.5 * iqr
    hi = q3 + 1.5 * iqr
    keep = (counts[lab] < 4) | ((v >= lo[lab]) & (v <= hi[lab]))
    kept_per_class = torch.bincount(lab[keep], minlength=num_classes)
    keep = keep | (kept_per_class[lab] == 0)  # nothing kept -> keep all
    n_kept = torch.bincount(lab[keep], minlength=num_classes)

    # The kept values of a class form one contiguous run of the sorted list (an interval filter on sorted
    # values), so the first kept position and n_kept describe the run completely.
    pos = torch.arange(n, device=device)
    big = torch.full((num_classes,), n, dtype=torch.long, device=device)
    start = big.scatter_reduce(0, lab[keep], pos[keep], reduce="amin", include_self=True)
    has = n_kept > 0
    start = torch.where(has, start, torch.zeros_like(start))
    first = v[start.clamp(max=last)]
    lastv = v[(start + n_kept - 1).clamp(min=0, max=last)]
    mid_lo = v[(start + (n_kept - 1).clamp(min=0) // 2).clamp(max=last)]
    mid_hi = v[(start + n_kept // 2).clamp(max=last)]
    med = (mid_lo + mid_hi) / 2
    zero = values.new_zeros(())
    return IQRStats(
        v_min=torch.where(has, first, zero),
        v_max=torch.where(has, lastv, zero),
        v_med=torch.where(has, med, zero),
        n_kept=n_kept,
    )


@torch.no_grad()
def advbct_class_meta(features: Tensor, labels: Tensor, num_classes: int) -> dict[str, Tensor]:
    """AdvBCT class metadata as dense buffers (§2.1 [official code: ``gen_class_meta``, ``gen_class_theta``]).

    f̂_i = normalise(features_i); c_k = mean of f̂ over class k (not re-normalised); radius r_i = ‖f̂_i − c_k‖₂;
    angle θ_i = acos(min(⟨f̂_i, c_k/‖c_k‖⟩, 1)) (also clamped at −1, a no-op except for rounding); then the
    1.5-IQR filter of :func:`iqr_filtered_stats` on each list separately.

    Args:
        features: ``Tensor[N, d]`` raw old-model embeddings φ_o (normalised here).
        labels: ``int64[N]`` class index in the label space of the consumers' buffers.
        num_classes: C.

    Returns:
        dict with ``centers`` float32[C, d], ``r_max``, ``r_min``, ``r_med``, ``theta_max`` float32[C],
        ``n_kept`` int64[C] (length of the kept radius list), ``counts`` int64[C] (all samples) and
        ``has_meta`` bool[C] = ``n_kept > 1`` (consumers skip classes with n_kept ≤ 1). The angle list is
        filtered on its own; n_kept > 1 ⇔ n_k ≥ 2 for both lists, so ``has_meta`` holds for both.
    """
    _check_labels(features, labels)
    labels = labels.to(features.device, torch.long)
    centers, counts = class_means(features, labels, num_classes)
    f = F.normalize(features.float(), dim=1, eps=_NORM_EPS)
    c = centers[labels]
    radii = torch.linalg.vector_norm(f - c, dim=1)
    c_unit = F.normalize(centers, dim=1, eps=_NORM_EPS)[labels]
    angles = torch.acos((f * c_unit).sum(dim=1).clamp(min=-1.0, max=1.0))
    r = iqr_filtered_stats(radii, labels, num_classes)
    t = iqr_filtered_stats(angles, labels, num_classes)
    return {
        "centers": centers,
        "r_max": r.v_max,
        "r_min": r.v_min,
        "r_med": r.v_med,
        "theta_max": t.v_max,
        "n_kept": r.n_kept,
        "counts": counts,
        "has_meta": r.n_kept > 1,
    }


class RefinedPrototypes(NamedTuple):
    """Result of :func:`refine_prototypes`.

    ``prototypes``: float32[C, d] unit rows (classes without samples keep the input row);
    ``entropy``: float32[C] entropy of the centrality weights π (0 for classes without samples; log n_k is the
    uniform maximum); ``counts``: int64[C] samples used per class (after the subset cap).
    """

    prototypes: Tensor
    entropy: Tensor
    counts: Tensor


@torch.no_grad()
def refine_prototypes(
    prototypes: Tensor,
    old_features: Tensor,
    new_features: Tensor,
    labels: Tensor,
    *,
    lam: float = 0.9,
    tau: float = 0.05,
    affinity_norm: str = "row",
    max_per_class: int = 1024,
    seed: int = 666,
    max_batch_elements: int = 1 << 24,
) -> RefinedPrototypes:
    """UniBCT structural prototype refinement, bctbench definition (§7.2 [reconstruction]).

    Per class k with n_k samples (X̂_o, X̂_n row-normalised old/new features):
    S = X̂_n X̂_nᵀ/τ with diagonal −10⁹; A = softmax(S) over rows (``affinity_norm="row"``) or over columns
    (``"column"``, MixBCT's form, which reduces to the plain mean, §7.1); π = ((1−λ)/n_k)·1ᵀ(I − λA)⁻¹ obtained
    by solving (I − λA)ᵀ x = 1 in float64 (never forming the inverse); p_k = normalise(πᵀ X̂_o).
    n_k = 1 gives p_k = x̂_o; n_k = 2 gives π = (½, ½). Classes with more than ``max_per_class`` samples use a
    subset drawn with ``torch.Generator().manual_seed(seed + k)`` (sorted sample order kept).

    Classes are processed in size buckets (padded to the next power of two) with batched solves, so the work is
    vectorised across classes.

    Args:
        prototypes: ``Tensor[C, d]`` current prototypes; rows of classes without samples are returned
            unchanged (cast to float32).
        old_features: ``Tensor[N, d]`` old-model features (raw; normalised here).
        new_features: ``Tensor[N, d]`` current new-model features of the same images (raw; normalised here).
        labels: ``int64[N]`` in ``0..C-1``.
        lam: λ (0.9). tau: τ (0.05). affinity_norm: ``"row"`` (default) or ``"column"``.
        max_per_class: subset cap (1024). seed: base seed of the per-class subset (666).
        max_batch_elements: memory bound on ``G·n_pad²`` per batched solve.
    """
    if affinity_norm not in ("row", "column"):
        raise ValueError(f"affinity_norm must be 'row' or 'column', got {affinity_norm!r}")
    if not 0.0 <= lam < 1.0:
        raise ValueError("lam must be in [0, 1)")
    _check_labels(old_features, labels)
    if new_features.shape != old_features.shape:
        raise ValueError("old_features and new_features must have the same shape")
    num_classes, d = prototypes.shape
    device = old_features.device
    labels = labels.to(device, torch.long)
    out = prototypes.detach().to(device=device, dtype=torch.float32).clone()
    entropy = torch.zeros(num_classes, dtype=torch.float32, device=device)

    # --- select samples (subset cap), then sort by label -------------------------------------------------
    counts_all = torch.bincount(labels, minlength=num_classes)
    selected = torch.ones_like(labels, dtype=torch.bool)
    over = torch.nonzero(counts_all > max_per_class).flatten().tolist()
    for k in over:  # only the (few) classes above the cap
        idx = torch.nonzero(labels == k).flatten()
        g = torch.Generator().manual_seed(seed + int(k))
        drop = torch.randperm(idx.numel(), generator=g)[max_per_class:].to(device)
        selected[idx[drop]] = False
    sel = torch.nonzero(selected).flatten()
    lab = labels[sel]
    order = torch.sort(lab, stable=True).indices
    sel = sel[order]
    lab = lab[order]
    counts = torch.bincount(lab, minlength=num_classes)
    offsets = torch.cumsum(counts, 0) - counts
    xo = F.normalize(old_features[sel].double(), dim=1, eps=_NORM_EPS)
    xn = F.normalize(new_features[sel].double(), dim=1, eps=_NORM_EPS)

    present = torch.nonzero(counts > 0).flatten()
    if present.numel() == 0:
        return RefinedPrototypes(out, entropy, counts)
    sizes = counts[present]
    pad_sizes = torch.pow(2, torch.ceil(torch.log2(sizes.double())).long())
    for n_pad in torch.unique(pad_sizes).tolist():
        bucket = present[pad_sizes == n_pad]
        per_batch = max(1, max_batch_elements // (n_pad * n_pad))
        for b0 in range(0, bucket.numel(), per_batch):
            cls = bucket[b0 : b0 + per_batch]
            n_k = counts[cls]  # [G]
            ar = torch.arange(n_pad, device=device)
            valid = ar.unsqueeze(0) < n_k.unsqueeze(1)  # [G, P]
            idx = (offsets[cls].unsqueeze(1) + ar.unsqueeze(0)).clamp(max=lab.numel() - 1)
            fo = xo[idx] * valid.unsqueeze(-1)  # [G, P, d]
            fn = xn[idx] * valid.unsqueeze(-1)
            pair = valid.unsqueeze(2) & valid.unsqueeze(1)  # [G, P, P]
            s = torch.bmm(fn, fn.transpose(1, 2)) / tau
            eye = torch.eye(n_pad, dtype=torch.bool, device=device).unsqueeze(0)
            s = s.masked_fill(eye, -1e9).masked_fill(~pair, float("-inf"))
            a = torch.softmax(s, dim=2 if affinity_norm == "row" else 1)
            a = torch.where(pair, a, torch.zeros_like(a))  # padded rows/cols (NaN or 0) -> 0
            system = torch.eye(n_pad, dtype=a.dtype, device=device).unsqueeze(0) - lam * a
            rhs = valid.to(a.dtype).unsqueeze(-1)  # 1 on real entries, 0 on padding
            x = torch.linalg.solve(system.transpose(1, 2), rhs).squeeze(-1)  # [G, P]
            pi = (1.0 - lam) / n_k.to(a.dtype).unsqueeze(1) * x
            pi = torch.where(valid, pi, torch.zeros_like(pi))
            p = torch.bmm(pi.unsqueeze(1), fo).squeeze(1)  # [G, d]
            out[cls] = F.normalize(p, dim=1, eps=_NORM_EPS).float()
            plogp = torch.where(pi > 0, pi * torch.log(pi.clamp(min=1e-300)), torch.zeros_like(pi))
            entropy[cls] = (-plogp.sum(dim=1)).float()
    return RefinedPrototypes(out, entropy, counts)


@torch.no_grad()
def knn_graph(
    prototypes: Tensor, k: int, *, chunk_size: int = 1024, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Exact cosine k-nearest-neighbour graph of prototypes, self excluded (prepares §10–11 [reconstruction]).

    Args:
        prototypes: ``Tensor[C, d]`` (normalised here; zero rows give similarity 0 to everything).
        k: neighbours per class, clamped to C − 1 (to M − 1 with a mask of M candidates).
        chunk_size: query rows per matmul (memory bound ``chunk_size × C``).
        mask: optional ``bool[C]`` of candidate neighbours (e.g. classes with samples); other classes are never
            chosen as neighbours (their own rows still get neighbours among the candidates).

    Returns:
        ``(indices, sims)``: ``int64[C, k]`` neighbour ids sorted by decreasing cosine and ``float32[C, k]``
        the cosines s_kj = ⟨p̂_k, p̂_j⟩. Duplicate prototypes of other classes are **not** removed (consumers
        skip degenerate directions).
    """
    if prototypes.dim() != 2:
        raise ValueError("prototypes must be [C, d]")
    num = prototypes.shape[0]
    if mask is not None:
        if mask.shape != (num,):
            raise ValueError(f"mask must be [C] = [{num}], got {tuple(mask.shape)}")
        mask = mask.to(prototypes.device, torch.bool)
    candidates = num if mask is None else int(mask.sum())
    k = max(0, min(int(k), candidates - 1))
    p = F.normalize(prototypes.float(), dim=1, eps=_NORM_EPS)
    idx_out = torch.empty(num, k, dtype=torch.long, device=p.device)
    sim_out = torch.empty(num, k, dtype=torch.float32, device=p.device)
    if k == 0:
        return idx_out, sim_out
    for start in range(0, num, chunk_size):
        q = p[start : start + chunk_size]
        with _no_autocast(p):
            s = q @ p.T
        rows = torch.arange(q.shape[0], device=p.device)
        s[rows, rows + start] = float("-inf")
        if mask is not None:
            s.masked_fill_(~mask.unsqueeze(0), float("-inf"))
        top = torch.topk(s, k, dim=1)
        idx_out[start : start + q.shape[0]] = top.indices
        sim_out[start : start + q.shape[0]] = top.values
    return idx_out, sim_out


class EMAPrototypeBank(nn.Module):
    """EMA bank of per-class mean new features (§10.1 [reconstruction]).

    Buffers (saved in the state dict): ``bank`` float32[C, d] (EMA of batch class means of f̂, not
    re-normalised) and ``seen`` bool[C]. For each class k present in an update batch with batch mean f̄_k:
    m_k ← f̄_k on first sight, else m_k ← μ·m_k + (1 − μ)·f̄_k. Classes absent from the batch are unchanged.

    DDP: pass ``gather_fn`` (e.g. ``lambda t: self.all_gather(t)`` in a LightningModule, no gradient) so that
    every rank applies the update on the same gathered batch; the result may be ``[N, ...]`` or ``[R, B, ...]``
    (flattened). Class means use a one-hot matmul over the sorted unique labels, which is deterministic (no
    atomics), so every rank builds bit-identical banks from identical inputs.
    """

    bank: Tensor
    seen: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        momentum: float = 0.9,
        *,
        gather_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError("momentum must be in [0, 1]")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.gather_fn = gather_fn
        self.register_buffer("bank", torch.zeros(num_classes, dim, dtype=torch.float32))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def _gather(self, t: Tensor) -> Tensor:
        if self.gather_fn is None:
            return t
        g = self.gather_fn(t)
        if g.dim() == t.dim() + 1:
            g = g.flatten(0, 1)
        return g

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> Tensor:
        """Update from a batch: ``features`` ``Tensor[B, d]`` (raw; L2-normalised here), ``labels`` ``int64[B]``.

        Returns the ``int64[U]`` sorted unique classes that were updated.
        """
        features = self._gather(features.detach())
        labels = self._gather(labels.detach())
        _check_labels(features, labels)
        f = F.normalize(features.float(), dim=1, eps=_NORM_EPS).to(self.bank.device)
        labels = labels.to(self.bank.device, torch.long)
        uniq, inverse = torch.unique(labels, sorted=True, return_inverse=True)
        onehot = (inverse.unsqueeze(0) == torch.arange(uniq.numel(), device=f.device).unsqueeze(1)).float()
        with _no_autocast(f):
            means = (onehot @ f) / onehot.sum(dim=1, keepdim=True)
        old = self.bank[uniq]
        mu = self.momentum
        ema = torch.where(self.seen[uniq].unsqueeze(1), mu * old + (1.0 - mu) * means, means)
        self.bank[uniq] = ema
        self.seen[uniq] = True
        return uniq

    def prototypes(self) -> Tensor:
        """Normalised bank p^n = normalise(m): float32[C, d]; unseen classes are zero rows (never NaN)."""
        return F.normalize(self.bank, dim=1, eps=_NORM_EPS)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}"


# ---------------------------------------------------------------------------------------------------------------
# Prototype perturbation: NDPP / ODPP (docs/methods.md §10–11, whole design [reconstruction])
# ---------------------------------------------------------------------------------------------------------------
#
# Shapes: C classes, d dimensions, K neighbours per class. ``neighbors`` int64[C, K] is the fixed old kNN graph
# N_k; per-edge tensors (similarities, gains) are [C, K] with row k, column j ↔ edge (k, neighbors[k, j]).
# Everything runs in float32 (float64 when the perturbation is float64, for tests) with autocast off, chunked
# over classes so that the [chunk, K, d] neighbour gathers stay bounded (C·K·d floats is 0.8 GB for GLDv2).

DEGENERATE_EPS = 1e-6
"""Tangent directions u_kj with a norm below this are skipped (p^o_j = ±p^o_k, duplicate prototypes, §10.1)."""

_CHUNK = 8192


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _edge_dots(a: Tensor, b: Tensor, neighbors: Tensor, chunk_size: int) -> Tensor:
    """``[C, K]`` inner products ⟨a_k, b_{neighbors[k, j]}⟩, chunked over rows (deterministic, no atomics)."""
    out = a.new_empty(neighbors.shape)
    for start in range(0, neighbors.shape[0], chunk_size):
        idx = neighbors[start : start + chunk_size]
        out[start : start + chunk_size] = (a[start : start + chunk_size].unsqueeze(1) * b[idx]).sum(-1)
    return out


@torch.no_grad()
def class_radii(features: Tensor, labels: Tensor, centers: Tensor, *, chunk_size: int = 262144) -> Tensor:
    """Per-sample radius r_i = ‖f̂_i − c_{y_i}‖₂ (§2.1 step 3), chunked so a float16 cache is never copied whole.

    Args:
        features: ``Tensor[N, d]`` raw features (L2-normalised here in float32).
        labels: ``int64[N]``.
        centers: ``Tensor[C, d]`` class centres c_k (§2.1: mean of normalised features, **not** re-normalised).

    Returns:
        ``float32[N]``.
    """
    _check_labels(features, labels)
    labels = labels.to(features.device, torch.long)
    c = centers.to(features.device, torch.float32)
    out = torch.empty(features.shape[0], dtype=torch.float32, device=features.device)
    for start in range(0, features.shape[0], chunk_size):
        f = F.normalize(features[start : start + chunk_size].float(), dim=1, eps=_NORM_EPS)
        out[start : start + chunk_size] = torch.linalg.vector_norm(
            f - c[labels[start : start + chunk_size]], dim=1
        )
    return out


def perturbation_bounds(r_med: Tensor, counts: Tensor, *, epsilon: float, rho: float) -> Tensor:
    """Per-class ball radii ε_k = min(ε, ρ·r_med,k) (§10.1), 0 for classes with fewer than two samples.

    Args:
        r_med: ``Tensor[C]`` median of the 1.5-IQR-kept radius list of each class (old model, new training set).
        counts: ``int64[C]`` images per class (singletons and empty classes get ε_k = 0: no evidence).
        epsilon: ε ≥ 0. rho: ρ ≥ 0.

    Returns:
        ``float32[C]``, every entry in [0, ε].
    """
    if epsilon < 0 or rho < 0:
        raise ValueError("epsilon and rho must be >= 0")
    bound = torch.clamp(rho * r_med.float(), min=0.0, max=float(epsilon))
    return torch.where(counts.to(bound.device) >= 2, bound, torch.zeros_like(bound))


class PerturbationInputs(NamedTuple):
    """Fixed inputs of NDPP/ODPP built once from the old-model artefacts (§10.1).

    ``old_prototypes`` float32[C, d]: p^o_k = normalise(P^o_k), zero rows for classes without samples;
    ``neighbors`` int64[C, K]: the K nearest other classes with samples by old cosine (K clamped to
    #present − 1); ``bounds`` float32[C]: ε_k; ``present`` bool[C]: classes with samples; ``r_med`` float32[C].
    """

    old_prototypes: Tensor
    neighbors: Tensor
    bounds: Tensor
    present: Tensor
    r_med: Tensor


@torch.no_grad()
def perturbation_inputs(
    class_means: Tensor,
    counts: Tensor,
    old_features: Tensor,
    labels: Tensor,
    *,
    k: int,
    epsilon: float,
    rho: float,
) -> PerturbationInputs:
    """Old prototypes, old kNN graph and per-class bounds for NDPP/ODPP (§10.1 inputs).

    Args:
        class_means: ``Tensor[C, d]`` P^o (artefact ``class_means_new``: mean of normalised old features over the
            new training set, not re-normalised); also the centres of the radius list.
        counts: ``int64[C]`` images per class.
        old_features: ``Tensor[N, d]`` old features of the new training set (artefact ``old_features_new``).
        labels: ``int64[N]``.
        k: K. epsilon: ε. rho: ρ.
    """
    num_classes = class_means.shape[0]
    counts = counts.to(class_means.device, torch.long)
    present = counts > 0
    p_old = F.normalize(class_means.float(), dim=1, eps=_NORM_EPS)
    p_old = torch.where(present.unsqueeze(1), p_old, torch.zeros_like(p_old))
    neighbors, _ = knn_graph(p_old, k, mask=present)
    radii = class_radii(old_features, labels, class_means)
    r_med = iqr_filtered_stats(radii, labels.to(radii.device), num_classes).v_med.to(p_old.device)
    bounds = perturbation_bounds(r_med, counts, epsilon=epsilon, rho=rho)
    return PerturbationInputs(p_old, neighbors, bounds, present, r_med)


@torch.no_grad()
def neighbour_gains(
    old_prototypes: Tensor,
    new_prototypes: Tensor,
    seen: Tensor,
    neighbors: Tensor,
    *,
    chunk_size: int = _CHUNK,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-edge similarities and gains (§10.1 step 1).

    s^o_kj = ⟨p^o_k, p^o_j⟩, s^n_kj = ⟨p^n_k, p^n_j⟩, g_kj = clamp(s^o_kj − s^n_kj, 0, 1)·v_k·v_j: how much better
    the new model separates the pair than the old one. Unseen classes (v = 0, zero bank rows) give g = 0.

    Args:
        old_prototypes: ``Tensor[C, d]`` p^o (normalised here). new_prototypes: ``Tensor[C, d]`` bank rows
            (normalised here; zero rows stay zero). seen: ``bool[C]`` v. neighbors: ``int64[C, K]``.

    Returns:
        ``(old_sims, new_sims, gains)``, each ``[C, K]`` float32 (float64 for float64 inputs).
    """
    dt = _work_dtype(old_prototypes)
    with _no_autocast(old_prototypes):
        po = F.normalize(old_prototypes.to(dt), dim=1, eps=_NORM_EPS)
        pn = F.normalize(new_prototypes.to(device=po.device, dtype=dt), dim=1, eps=_NORM_EPS)
        nb = neighbors.to(po.device, torch.long)
        v = seen.to(po.device, dt)
        s_o = _edge_dots(po, po, nb, chunk_size)
        s_n = _edge_dots(pn, pn, nb, chunk_size)
        gains = (s_o - s_n).clamp(min=0.0, max=1.0) * v.unsqueeze(1) * v[nb]
    return s_o, s_n, gains


def project_to_balls(delta: Tensor, bounds: Tensor, active: Tensor | None = None) -> Tensor:
    """Projection onto the balls ‖δ_k‖ ≤ ε_k: δ_k ← δ_k·min(1, ε_k/‖δ_k‖); δ_k ← 0 where ``active`` is False.

    Zero rows and ε_k = 0 give exact zeros (never NaN).

    Args:
        delta: ``Tensor[C, d]``. bounds: ``Tensor[C]`` ε_k ≥ 0. active: optional ``bool[C]`` (e.g. seen classes).
    """
    norm = torch.linalg.vector_norm(delta, dim=1)
    factor = (bounds.to(delta.dtype) / norm.clamp(min=1e-30)).clamp(max=1.0)
    out = delta * factor.unsqueeze(1)
    if active is not None:
        out = torch.where(active.to(delta.device).unsqueeze(1), out, torch.zeros_like(out))
    return out


def pseudo_prototypes(old_prototypes: Tensor, delta: Tensor) -> Tensor:
    """Pseudo-old prototypes p̃_k = normalise(p^o_k + δ_k) (§10.1 step 5); zero rows stay zero."""
    return F.normalize(old_prototypes + delta, dim=1, eps=_NORM_EPS)


@torch.no_grad()
def ndpp_perturbation(
    old_prototypes: Tensor,
    neighbors: Tensor,
    gains: Tensor,
    bounds: Tensor,
    *,
    tau_nb: float = 0.1,
    eta: float = 1.0,
    chunk_size: int = _CHUNK,
) -> Tensor:
    """NDPP perturbation, one shot (§10.1 steps 2–4 [reconstruction]).

    ω_kj = softmax_{j ∈ N_k}(s^o_kj/τ_nb); u_kj = normalise(s^o_kj·p^o_k − p^o_j) (the tangent direction at p^o_k
    pointing away from p^o_j; skipped when its norm is below :data:`DEGENERATE_EPS`, i.e. p^o_j = ±p^o_k);
    d_k = Σ_j ω_kj·g_kj·u_kj; δ_k = η·d_k projected onto ‖δ_k‖ ≤ ε_k.

    Args:
        old_prototypes: ``Tensor[C, d]`` p^o (normalised here). neighbors: ``int64[C, K]`` N_k.
        gains: ``Tensor[C, K]`` g (:func:`neighbour_gains`; already 0 for unseen classes).
        bounds: ``Tensor[C]`` ε_k (:func:`perturbation_bounds`).
        tau_nb: τ_nb > 0. eta: η.

    Returns:
        δ ``[C, d]`` (float32; float64 for float64 inputs).
    """
    if tau_nb <= 0:
        raise ValueError("tau_nb must be > 0")
    dt = _work_dtype(old_prototypes)
    with _no_autocast(old_prototypes):
        po = F.normalize(old_prototypes.to(dt), dim=1, eps=_NORM_EPS)
        nb = neighbors.to(po.device, torch.long)
        g = gains.to(po.device, dt)
        delta = torch.zeros_like(po)
        for start in range(0, po.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            pk = po[rows].unsqueeze(1)  # [c, 1, d]
            pj = po[nb[rows]]  # [c, K, d]
            s = (pk * pj).sum(-1)  # [c, K]
            omega = torch.softmax(s / tau_nb, dim=1)
            u = s.unsqueeze(-1) * pk - pj
            norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
            u = torch.where(norm >= DEGENERATE_EPS, u / norm.clamp(min=DEGENERATE_EPS), torch.zeros_like(u))
            delta[rows] = eta * ((omega * g[rows]).unsqueeze(-1) * u).sum(1)
        return project_to_balls(delta, bounds.to(po.device))


@torch.no_grad()
def perturbation_stats(
    delta: Tensor, bounds: Tensor, seen: Tensor, *, rtol: float = 1e-4
) -> dict[str, float]:
    """Per-epoch diagnostics over the eligible classes (seen and ε_k > 0).

    Returns ``delta_norm`` (mean ‖δ_k‖), ``on_bound`` (fraction with ‖δ_k‖ ≥ (1 − rtol)·ε_k, i.e. a saturated ε),
    ``eligible`` (count); 0.0 when no class is eligible.
    """
    eligible = seen.to(delta.device, torch.bool) & (bounds.to(delta.device) > 0)
    n = int(eligible.sum())
    if n == 0:
        return {"delta_norm": 0.0, "on_bound": 0.0, "eligible": 0.0}
    norm = torch.linalg.vector_norm(delta.float(), dim=1)
    on_bound = (norm >= (1.0 - rtol) * bounds.to(delta.device).float()) & eligible
    return {
        "delta_norm": float(norm[eligible].mean()),
        "on_bound": float(on_bound.sum()) / n,
        "eligible": float(n),
    }


def _odpp_hinge_sum(
    pt: Tensor, neighbors: Tensor, gains: Tensor, new_sims: Tensor, rows: slice, tau_o: float
) -> Tensor:
    """Σ_{k ∈ rows} (1/max(1, |N⁺_k|)) Σ_{j ∈ N⁺_k} g_kj·τ_o·softplus((⟨p̃_k, p̃_j⟩ − s^n_kj)/τ_o)."""
    g = gains[rows]
    s = (pt[rows].unsqueeze(1) * pt[neighbors[rows]]).sum(-1)
    hinge = g * tau_o * F.softplus((s - new_sims[rows]) / tau_o)
    n_pos = (g > 0).sum(1).clamp(min=1).to(hinge.dtype)
    return (hinge.sum(1) / n_pos).sum()


def odpp_objective_and_grad(
    delta: Tensor,
    old_prototypes: Tensor,
    neighbors: Tensor,
    gains: Tensor,
    new_sims: Tensor,
    seen: Tensor,
    *,
    tau_o: float = 0.05,
    gamma: float = 1.0,
    need_grad: bool = True,
    chunk_size: int = _CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """ODPP objective J(Δ) and its gradient (§11 [reconstruction]).

    J(Δ) = (1/C_v) Σ_k [ (1/max(1, |N⁺_k|)) Σ_{j ∈ N⁺_k} g_kj·τ_o·softplus((⟨p̃_k, p̃_j⟩ − s^n_kj)/τ_o)
    + (γ/2)‖δ_k‖² ], p̃ = normalise(p^o + δ), N⁺_k = {j ∈ N_k: g_kj > 0}, C_v = max(1, #seen).

    Memory stays bounded for large C: the hinge is evaluated per chunk of classes against a detached copy of P̃
    (its gradient accumulates chunk by chunk), then pulled back through the normalisation once.

    Args:
        delta: ``Tensor[C, d]`` Δ. old_prototypes: ``Tensor[C, d]`` p^o (unit rows). neighbors: ``int64[C, K]``.
        gains: ``Tensor[C, K]`` g. new_sims: ``Tensor[C, K]`` s^n. seen: ``bool[C]``.
        tau_o: τ_o > 0. gamma: γ ≥ 0. need_grad: False returns ``(J, None)`` without autograd.

    Returns:
        ``(J, grad)``: scalar J (detached) and ∂J/∂Δ ``[C, d]`` (or None), in the work dtype of ``delta``.
    """
    if tau_o <= 0:
        raise ValueError("tau_o must be > 0")
    dt = _work_dtype(delta)
    c_v = max(1, int(seen.sum()))
    with _no_autocast(delta), torch.enable_grad() if need_grad else torch.no_grad():
        d = delta.detach().to(dt).requires_grad_(need_grad)
        po = old_prototypes.detach().to(device=d.device, dtype=dt)
        nb = neighbors.to(d.device, torch.long)
        g = gains.detach().to(d.device, dt)
        s_n = new_sims.detach().to(d.device, dt)
        pt = F.normalize(po + d, dim=1, eps=_NORM_EPS)
        pt_leaf = pt.detach().requires_grad_(need_grad)
        hinge = torch.zeros((), dtype=dt, device=d.device)
        for start in range(0, d.shape[0], chunk_size):
            part = _odpp_hinge_sum(pt_leaf, nb, g, s_n, slice(start, start + chunk_size), tau_o)
            if need_grad and part.requires_grad:
                part.backward()
            hinge = hinge + part.detach()
        reg = 0.5 * gamma * (d.detach() ** 2).sum()
        value = (hinge + reg) / c_v
        if not need_grad:
            return value, None
        grad_pt = pt_leaf.grad if pt_leaf.grad is not None else torch.zeros_like(pt_leaf)
        pt.backward(grad_pt)
        grad = (d.grad + gamma * d.detach()) / c_v
    return value, grad


def odpp_objective(delta: Tensor, *args, **kwargs) -> Tensor:
    """J(Δ) only (see :func:`odpp_objective_and_grad`, same arguments), without autograd."""
    return odpp_objective_and_grad(delta, *args, need_grad=False, **kwargs)[0]


class ODPPSolution(NamedTuple):
    """Result of :func:`solve_odpp`: ``delta`` [C, d] (feasible), J at the start and at the returned Δ, and the
    objective ``history`` (J at the projected start and after every projected step: length steps + 1)."""

    delta: Tensor
    objective_before: float
    objective_after: float
    history: list[float]


@torch.no_grad()
def solve_odpp(
    old_prototypes: Tensor,
    neighbors: Tensor,
    gains: Tensor,
    new_sims: Tensor,
    seen: Tensor,
    bounds: Tensor,
    *,
    init: Tensor | None = None,
    steps: int = 20,
    lr: float = 0.01,
    tau_o: float = 0.05,
    gamma: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    keep_best: bool = True,
    chunk_size: int = _CHUNK,
) -> ODPPSolution:
    """Projected Adam on the ODPP objective (§11 [reconstruction]).

    Full batch over all edges; fresh Adam state per call; after **every** step Δ is projected onto the balls
    ‖δ_k‖ ≤ ε_k and δ_k = 0 where v_k = 0 (:func:`project_to_balls`). ``init`` (warm start, e.g. the previous
    epoch's Δ) is projected first; default zeros.

    Projected Adam is not a descent method, so J can rise on a step. ``keep_best=True`` (bctbench addition, not
    in §11) returns the iterate with the lowest J among the start and all steps, which guarantees
    ``objective_after ≤ objective_before``; ``keep_best=False`` returns the last iterate.

    Args:
        old_prototypes: ``Tensor[C, d]`` p^o. neighbors: ``int64[C, K]``. gains, new_sims: ``Tensor[C, K]``
            (:func:`neighbour_gains`). seen: ``bool[C]``. bounds: ``Tensor[C]`` ε_k.
        init: optional ``Tensor[C, d]``. steps: T. lr: Adam learning rate. tau_o: τ_o. gamma: γ.
    """
    if steps < 0 or lr <= 0:
        raise ValueError("steps must be >= 0 and lr > 0")
    dt = _work_dtype(old_prototypes if init is None else init)
    po = F.normalize(old_prototypes.to(dt), dim=1, eps=_NORM_EPS)
    device = po.device
    seen = seen.to(device, torch.bool)
    bounds = bounds.to(device, dt)
    active = seen & (bounds > 0)
    delta = torch.zeros_like(po) if init is None else init.to(device=device, dtype=dt)
    delta = project_to_balls(delta, bounds, active)
    kw = {"tau_o": tau_o, "gamma": gamma, "chunk_size": chunk_size}
    m = torch.zeros_like(delta)
    v = torch.zeros_like(delta)
    beta1, beta2 = betas
    history: list[float] = []
    best, best_value = delta, float("inf")
    for t in range(1, steps + 1):
        value, grad = odpp_objective_and_grad(delta, po, neighbors, gains, new_sims, seen, **kw)
        value_f = float(value)
        history.append(value_f)
        if value_f < best_value:
            best, best_value = delta, value_f
        m = beta1 * m + (1.0 - beta1) * grad
        v = beta2 * v + (1.0 - beta2) * grad * grad
        m_hat = m / (1.0 - beta1**t)
        v_hat = v / (1.0 - beta2**t)
        delta = project_to_balls(delta - lr * m_hat / (v_hat.sqrt() + adam_eps), bounds, active)
    final = float(odpp_objective(delta, po, neighbors, gains, new_sims, seen, **kw))
    history.append(final)
    result, result_value = delta, final
    if keep_best and best_value < final:
        result, result_value = best, best_value
    return ODPPSolution(result, history[0], result_value, history)
