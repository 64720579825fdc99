"""Class prototypes and old-model artefacts: class means, 1.5-IQR statistics, UniBCT refinement, kNN graph, EMA bank.

All functions are vectorised across samples and classes (sorting + per-class offsets, ``index_add``, batched
solves); there is no Python loop over classes except over the few classes that exceed the UniBCT subset cap.
Features are rows: ``Tensor[N, d]``; labels are ``int64[N]`` in ``0..C-1``; per-class buffers are dense ``[C]``
or ``[C, d]``.
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
    """Dense per-class statistics of the 1.5-IQR-kept list (``methods.md`` §2.1 step 4–5).

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
def knn_graph(prototypes: Tensor, k: int, *, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Exact cosine k-nearest-neighbour graph of prototypes, self excluded (prepares §10–11 [reconstruction]).

    Args:
        prototypes: ``Tensor[C, d]`` (normalised here; zero rows give similarity 0 to everything).
        k: neighbours per class, clamped to C − 1.
        chunk_size: query rows per matmul (memory bound ``chunk_size × C``).

    Returns:
        ``(indices, sims)``: ``int64[C, k]`` neighbour ids sorted by decreasing cosine and ``float32[C, k]``
        the cosines s_kj = ⟨p̂_k, p̂_j⟩. Duplicate prototypes of other classes are **not** removed (consumers
        skip degenerate directions).
    """
    if prototypes.dim() != 2:
        raise ValueError("prototypes must be [C, d]")
    num = prototypes.shape[0]
    k = max(0, min(int(k), num - 1))
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
