"""Shared, tested compatibility-loss math called by the method plugins.

Conventions (``docs/methods.md`` §0.2, §14):

* Rows are samples. ``*_n`` arguments are **L2-normalised** ``Tensor[B, d]`` features (not re-normalised here);
  ``*_embedding`` arguments are raw post-BN embeddings φ(x).
* Gathered tensors ``[N, d]`` / ``[N]`` (N = B·R) come from ``all_gather(..., sync_grads=False)``; they are
  always detached here. They default to the local batch (single process), with ``local_offset`` the column
  of the local row 0 inside the gathered batch (``rank * B``).
* Similarities, logits and losses are computed in float32 (float64 when the inputs are float64, e.g. for
  ``gradcheck``) with autocast disabled (τ = 0.01 logits overflow fp16/bf16, §14). Returned losses are scalars
  of that dtype.
* Empty subsets give a graph-connected zero (the masked terms still take part in the graph), never NaN.

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bctbench.layers import grad_reverse

__all__ = [
    "MASK_VALUE",
    "ACOS_EPS",
    "influence_row_index",
    "synthesized_rows",
    "build_influence_table",
    "influence_loss",
    "point_to_point_loss",
    "ract_loss",
    "arcface_logits",
    "lce_losses",
    "elastic_radius",
    "elastic_p2s_loss",
    "adversarial_discriminator_loss",
    "prototype_ce_loss",
    "reverse_transform_loss",
    "metric_compatible_loss",
]

MASK_VALUE = 1e9
"""Magnitude of the additive same-class mask (−10⁹ on similarities, +10⁹ on distances), §5, §8."""

ACOS_EPS = 1e-7
"""acos inputs are clamped to [−1 + ACOS_EPS, 1 − ACOS_EPS] (§6.2, §7.3, §14)."""

_NORM_EPS = 1e-12


def _fp32(t: Tensor) -> contextlib.AbstractContextManager:
    """Context that disables autocast on the device type of ``t`` (only for the types autocast knows)."""
    device_type = t.device.type
    if device_type in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _dt(t: Tensor) -> torch.dtype:
    """Compute dtype for ``t``: float64 stays float64, everything else (fp16, bf16, fp32) computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values[mask]``; a graph-connected 0 when the mask is empty (no host sync)."""
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() / mask.sum().clamp(min=1).to(values.dtype)


def _gathered(local: Tensor, gathered: Tensor | None) -> Tensor:
    return (local if gathered is None else gathered).detach()


def _check_gather(batch: int, gathered_rows: int, gathered_labels_rows: int, local_offset: int) -> None:
    if gathered_rows != gathered_labels_rows:
        raise ValueError(
            f"gathered features ({gathered_rows}) and labels ({gathered_labels_rows}) differ in N"
        )
    if local_offset < 0 or local_offset + batch > gathered_rows:
        raise ValueError(
            f"local_offset={local_offset} with B={batch} does not fit in the gathered batch N={gathered_rows}"
        )


# --------------------------------------------------------------------------------------------------------------
# §4 BCT influence loss
# --------------------------------------------------------------------------------------------------------------


def influence_row_index(old_label_of_class: Tensor, num_old_classes: int) -> Tensor:
    """Row of every new class in the influence table W̃_o = [W_o ; S] (§4).

    Mapping: a class with ``old_label >= 0`` uses row ``old_label`` (rows ``0..C_old−1`` are the old classifier,
    indexed by the ``old_label`` column, never by ``label < C_old``); the classes with ``old_label == −1`` get
    rows ``C_old, C_old+1, …`` in increasing new-label order — the same order as :func:`synthesized_rows`.

    Args:
        old_label_of_class: ``int64[C]`` old label of each new class, −1 if the old model has no such class.
        num_old_classes: C_old (rows of W_o).

    Returns:
        ``int64[C]``; per-sample targets are ``row_index[labels]``. For variant ``none`` use only samples with
        ``old_label_of_class[labels] >= 0`` (``valid_mask``) and the table W_o alone.
    """
    old = old_label_of_class.long()
    if old.numel() and int(old.max()) >= num_old_classes:
        raise ValueError("old_label_of_class has entries >= num_old_classes")
    missing = old < 0
    syn_rank = torch.cumsum(missing.long(), 0) - 1
    return torch.where(missing, num_old_classes + syn_rank, old)


def synthesized_rows(class_means: Tensor, old_label_of_class: Tensor) -> Tensor:
    """Synthesized rows S (§4 [third-party: openBCT]): P^o_k of §2.2 for the classes without an old label.

    Args:
        class_means: ``Tensor[C, d]`` means of L2-normalised old features over the new training set
            (:func:`bctbench.prototypes.class_means`), not re-normalised.
        old_label_of_class: ``int64[C]``.

    Returns:
        ``Tensor[K, d]``, K = #{k : old_label_k = −1}, rows in increasing new-label order.
    """
    return class_means[old_label_of_class < 0]


def build_influence_table(
    old_classifier: Tensor, synthesized: Tensor, *, syn_row_scale: str = "none"
) -> Tensor:
    """Influence table W̃_o = [W_o ; S] of shape ``[C_old + K, d]`` (§4 [third-party]); frozen (detached).

    ``syn_row_scale="match"`` rescales every S row to the mean row norm of W_o (§4 pitfall, [reconstruction];
    bctbench reading: each row individually, direction kept). Default ``"none"``.
    """
    if syn_row_scale not in ("none", "match"):
        raise ValueError(f"syn_row_scale must be 'none' or 'match', got {syn_row_scale!r}")
    dt = _dt(old_classifier)
    w = old_classifier.detach().to(dt)
    s = synthesized.detach().to(dt)
    if syn_row_scale == "match" and s.shape[0] > 0:
        target = torch.linalg.vector_norm(w, dim=1).mean()
        s = F.normalize(s, dim=1, eps=_NORM_EPS) * target
    return torch.cat([w, s], dim=0)


def influence_loss(
    new_embedding: Tensor,
    labels_in_old_table: Tensor,
    old_table: Tensor,
    *,
    valid_mask: Tensor | None = None,
    new_logits: Tensor | None = None,
    new_labels: Tensor | None = None,
) -> Tensor:
    """BCT influence loss CE(W̃_o φ_n(x), ỹ) (§4 [third-party]).

    Args:
        new_embedding: ``Tensor[B, d]`` **raw** (un-normalised) new embedding φ_n(x).
        labels_in_old_table: ``int64[B]`` row index ỹ in ``old_table`` (see :func:`influence_row_index`);
            entries of samples excluded by ``valid_mask`` are ignored (may be −1).
        old_table: ``Tensor[R, d]`` frozen table (old classifier rows, then synthesized rows); detached here.
        valid_mask: optional ``bool[B]``: only these samples count (variant ``none``); mean over them,
            graph-connected zero when none.
        new_logits, new_labels: optional ``Tensor[B, C]`` new-classifier logits and ``int64[B]`` new labels
            for ``bct_ract`` (§4 [official code: OpenCompatible]): logits become
            ``[W̃_o φ_n, W_n φ_n − 10⁹·onehot(y)]`` so the other new classes act as extra negatives.

    Returns:
        Scalar: mean CE over the (valid) samples.
    """
    b = new_embedding.shape[0]
    if b == 0:
        return new_embedding.to(_dt(new_embedding)).sum() * 0.0
    dt = _dt(new_embedding)
    with _fp32(new_embedding):
        logits = new_embedding.to(dt) @ old_table.detach().to(dt).T  # [B, R]
        if new_logits is not None:
            if new_labels is None:
                raise ValueError("new_labels is required with new_logits")
            onehot = F.one_hot(new_labels.long(), new_logits.shape[1]).to(dt)
            logits = torch.cat([logits, new_logits.to(dt) - MASK_VALUE * onehot], dim=1)
        targets = labels_in_old_table.long()
        if valid_mask is None:
            return F.cross_entropy(logits, targets)
        valid = valid_mask.bool()
        safe = torch.where(valid, targets, torch.zeros_like(targets))
        per_sample = F.cross_entropy(logits, safe, reduction="none")
        return _masked_mean(per_sample, valid)


# --------------------------------------------------------------------------------------------------------------
# §5 point-to-point family
# --------------------------------------------------------------------------------------------------------------


def point_to_point_loss(
    new_n: Tensor,
    old_n: Tensor,
    labels: Tensor,
    *,
    kind: str,
    gathered_old: Tensor | None = None,
    gathered_labels: Tensor | None = None,
    local_offset: int = 0,
    temperature: float = 0.01,
    topk_neg: int = 10,
    margin: float = 0.8,
) -> Tensor:
    """Point-to-point compatibility losses ``l2``, ``contra``, ``triplet`` (§5 [official code: OpenCompatible]).

    Args:
        new_n: ``Tensor[B, d]`` L2-normalised new features f̂_n (carry the gradient).
        old_n: ``Tensor[B, d]`` L2-normalised old features f̂_o of the same images (detached here).
        labels: ``int64[B]`` local labels.
        kind: ``"l2"``, ``"contra"`` or ``"triplet"``.
        gathered_old: ``Tensor[N, d]`` F_o = gather(f̂_o) (default: ``old_n``), detached.
        gathered_labels: ``int64[N]`` y^G (default: ``labels``).
        local_offset: column of local row 0 in the gathered batch (``rank * B``); the triplet positive of
            row i is column ``local_offset + i`` (always the local diagonal, fixing the reference's
            ``gather_all=False`` bug).
        temperature: τ of ``contra`` (0.01). topk_neg: k (10), clamped to N. margin: triplet margin (0.8).

    Definitions (M_ij = 1[y_i = y^G_j], including the sample itself):

    * ``l2``: mean over B·d elements of (f̂_n − f̂_o)².
    * ``contra``: z_i = [⟨f̂_n,i, f̂_o,i⟩, top-k_j(⟨f̂_n,i, F_o,j⟩ − 10⁹·M_ij)]/τ, CE(z, 0) in fp32.
    * ``triplet``: D_ij = sqrt(max(‖f̂_n,i − F_o,j‖², 10⁻¹²)); d⁺_i = D_{i, local_offset+i}; negatives = the k
      smallest of D_ij + 10⁹·M_ij; mean over B·k of max(0, d⁺_i − d⁻_ij + margin).
    """
    if kind not in ("l2", "contra", "triplet"):
        raise ValueError(f"kind must be 'l2', 'contra' or 'triplet', got {kind!r}")
    b = new_n.shape[0]
    if b == 0:
        return new_n.to(_dt(new_n)).sum() * 0.0
    dt = _dt(new_n)
    with _fp32(new_n):
        fn = new_n.to(dt)
        fo = old_n.detach().to(dt)
        if kind == "l2":
            return F.mse_loss(fn, fo)
        go = _gathered(old_n, gathered_old).to(dt)
        gl = (labels if gathered_labels is None else gathered_labels).to(labels.device)
        _check_gather(b, go.shape[0], gl.shape[0], local_offset)
        same = (labels.unsqueeze(1) == gl.unsqueeze(0)).to(dt)  # [B, N]
        k = min(int(topk_neg), go.shape[0])
        if kind == "contra":
            pos = (fn * fo).sum(dim=1, keepdim=True)  # [B, 1]
            neg = fn @ go.T - MASK_VALUE * same
            logits = torch.cat([pos, torch.topk(neg, k, dim=1).values], dim=1) / temperature
            return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=fn.device))
        # triplet
        sq = (fn * fn).sum(1, keepdim=True) + (go * go).sum(1).unsqueeze(0) - 2.0 * (fn @ go.T)
        dist = torch.sqrt(sq.clamp(min=1e-12))  # [B, N]
        cols = torch.arange(b, device=fn.device) + local_offset
        d_pos = dist.gather(1, cols.unsqueeze(1))  # [B, 1]
        d_neg = torch.topk(dist + MASK_VALUE * same, k, dim=1, largest=False).values  # [B, k]
        return F.relu(d_pos - d_neg + margin).mean()


# --------------------------------------------------------------------------------------------------------------
# §8 Hot-refresh RACT
# --------------------------------------------------------------------------------------------------------------


def ract_loss(
    new_n: Tensor,
    old_n: Tensor,
    labels: Tensor,
    *,
    gathered_new: Tensor | None = None,
    gathered_old: Tensor | None = None,
    gathered_labels: Tensor | None = None,
    local_offset: int = 0,
    temperature: float = 0.01,
    topk: int = 10,
) -> Tensor:
    """Hot-refresh RACT loss (§8 [official code: OpenCompatible ``contra_ract``]).

    pos_i = ⟨f̂_n,i, f̂_o,i⟩; no_ij = ⟨f̂_n,i, F_o,j⟩ − 10⁹·M_ij; nn_ij = ⟨f̂_n,i, F_n,j⟩ − 10⁹·M_ij;
    z_i = [pos_i, top-k_j(no_ij), top-k_j(nn_ij)]/τ ∈ R^{1+2k}; L = mean_i CE(z_i, 0), all in fp32.
    M masks every same-class column, including the anchor's own (so self is never a negative).
    Gradients flow only through the local anchors ``new_n``; ``old_n`` and every gathered copy (including the
    local slice, default ``new_n``/``old_n``) are detached constants, as in the official code.

    Args:
        new_n, old_n: ``Tensor[B, d]`` L2-normalised new / old features of the same images.
        labels: ``int64[B]``.
        gathered_new, gathered_old: ``Tensor[N, d]`` F_n, F_o (default: the local batch).
        gathered_labels: ``int64[N]`` (default: ``labels``).
        local_offset: column of local row 0 in the gathered batch (validated only: self is masked by label).
        temperature: τ (0.01). topk: k per negative block (10), clamped to N.
    """
    b = new_n.shape[0]
    if b == 0:
        return new_n.to(_dt(new_n)).sum() * 0.0
    dt = _dt(new_n)
    with _fp32(new_n):
        fn = new_n.to(dt)
        fo = old_n.detach().to(dt)
        gn = _gathered(new_n, gathered_new).to(dt)
        go = _gathered(old_n, gathered_old).to(dt)
        gl = (labels if gathered_labels is None else gathered_labels).to(labels.device)
        _check_gather(b, go.shape[0], gl.shape[0], local_offset)
        if gn.shape[0] != go.shape[0]:
            raise ValueError("gathered_new and gathered_old must have the same number of rows")
        same = (labels.unsqueeze(1) == gl.unsqueeze(0)).to(dt)
        k = min(int(topk), go.shape[0])
        pos = (fn * fo).sum(dim=1, keepdim=True)
        neg_old = torch.topk(fn @ go.T - MASK_VALUE * same, k, dim=1).values
        neg_new = torch.topk(fn @ gn.T - MASK_VALUE * same, k, dim=1).values
        logits = torch.cat([pos, neg_old, neg_new], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=fn.device))


# --------------------------------------------------------------------------------------------------------------
# §7 ArcFace (UniBCT / AdvBCT form)
# --------------------------------------------------------------------------------------------------------------


def arcface_logits(
    embedding_n: Tensor, weight_n: Tensor, labels: Tensor, *, scale: float, margin: float
) -> Tensor:
    """ArcFace logits s·cos(acos(c_k) + m·1[k = y]) (§7.3 [third-party: AdvBCT ``margin_softmax.py``]).

    c = ``embedding_n @ weight_n.T`` in fp32. Only the target column goes through acos, with c clamped to
    [−1 + 10⁻⁷, 1 − 10⁻⁷] (§14); the other columns are s·c (= s·cos(acos(c)) exactly). No easy margin, no
    threshold: θ + m > π stays non-monotonic, as in the reference.

    Args:
        embedding_n: ``Tensor[B, d]`` L2-normalised features (not re-normalised here).
        weight_n: ``Tensor[C, d]`` L2-normalised prototypes / class weights.
        labels: ``int64[B]`` target column; a negative label adds no margin to its row.
        scale: s (30 for UniBCT). margin: m (0.3).

    Returns:
        ``[B, C]`` logits for ``F.cross_entropy`` (float32; float64 for float64 inputs).
    """
    with _fp32(embedding_n):
        dt = _dt(embedding_n)
        cos = embedding_n.to(dt) @ weight_n.to(dt).T  # [B, C]
        labels = labels.long()
        target = labels.clamp(min=0).unsqueeze(1)
        c_y = cos.gather(1, target).clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS)
        with_margin = torch.cos(torch.acos(c_y) + margin)  # [B, 1]
        is_target = torch.arange(cos.shape[1], device=cos.device).unsqueeze(0) == labels.unsqueeze(1)
        return scale * torch.where(is_target, with_margin, cos)


# --------------------------------------------------------------------------------------------------------------
# §6 LCE
# --------------------------------------------------------------------------------------------------------------


def lce_losses(
    new_embedding: Tensor,
    labels: Tensor,
    classifier_weight: Tensor,
    centers: Tensor,
    boundary: Tensor,
    *,
    variant: str = "official",
    class_mask: Tensor | None = None,
    bound_on_raw_feature: bool = False,
) -> dict[str, Tensor]:
    """LCE alignment and boundary terms, unweighted (§6).

    Args:
        new_embedding: ``Tensor[B, d]`` raw new embedding φ_n (normalised here, except for the official
            boundary with ``bound_on_raw_feature=True``).
        labels: ``int64[B]``.
        classifier_weight: ``Tensor[C, d]`` new classifier W_n (gradient flows into it).
        centers: ``Tensor[C, d]`` old class centres (normalised here: C_k = normalise(c_k)); detached.
        boundary: ``Tensor[C]``: for ``official`` the cosine b_k = min_i ⟨f̂_o,i, C_k⟩; for ``advbct`` the
            angle θ_max,k in radians (§2.1). Detached.
        variant: ``"official"`` (§6.1 [official code: IrvingMeng/LCE]) or ``"advbct"`` (§6.2 [third-party]).
        class_mask: ``bool[C]`` classes that have an old centre / metadata (``advbct``: ``has_meta``, i.e.
            n_kept > 1). Other classes are excluded explicitly; default all classes.
        bound_on_raw_feature: official variant only; True uses the raw φ_n as g_i (official code), False the
            normalised f̂_n (bctbench default, documented deviation).

    Returns:
        ``{"align": L_align, "bound": L_bound}`` scalars (graph-connected zeros when nothing counts).

        * official: L_align = Σ_{k∈mask} ‖normalise(W_n[k]) − C_k‖² / (|mask|·d);
          L_bound = mean over samples with a centre of max(0, b_y − clamp(⟨g_i, C_y⟩, −1, 1)).
          Weights λ_a = 100, λ_b = 1 are applied by the caller.
        * advbct: with V = samples whose class is in the mask, L_bound = mean_V max(acos(⟨C_y, f̂_n⟩) − θ_y, 0)
          (acos input clamped to [−1+10⁻⁷, 1−10⁻⁷]); L_align = mean_V (1 − ⟨C_y, normalise(W_n[y])⟩). Weights 1.
    """
    if variant not in ("official", "advbct"):
        raise ValueError(f"variant must be 'official' or 'advbct', got {variant!r}")
    num_classes, d = classifier_weight.shape
    labels = labels.long()
    with _fp32(new_embedding):
        dt = _dt(new_embedding)
        raw = new_embedding.to(dt)
        f = F.normalize(raw, dim=1, eps=_NORM_EPS)
        c = F.normalize(centers.detach().to(dt), dim=1, eps=_NORM_EPS)
        bnd = boundary.detach().to(dt)
        w = classifier_weight.to(dt)
        mask = (
            torch.ones(num_classes, dtype=torch.bool, device=w.device)
            if class_mask is None
            else class_mask.to(w.device).bool()
        )
        sample_mask = mask[labels]
        c_y = c[labels]
        if variant == "official":
            g = raw if bound_on_raw_feature else f
            dots = (g * c_y).sum(dim=1).clamp(-1.0, 1.0)
            bound = _masked_mean(F.relu(bnd[labels] - dots), sample_mask)
            sq = ((F.normalize(w, dim=1, eps=_NORM_EPS) - c) ** 2).sum(dim=1)  # [C]
            align = torch.where(mask, sq, torch.zeros_like(sq)).sum() / (mask.sum().clamp(min=1) * d).to(dt)
        else:
            cos = (f * c_y).sum(dim=1).clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS)
            bound = _masked_mean(F.relu(torch.acos(cos) - bnd[labels]), sample_mask)
            w_y = F.normalize(w[labels], dim=1, eps=_NORM_EPS)
            align = _masked_mean(1.0 - (c_y * w_y).sum(dim=1), sample_mask)
        return {"align": align, "bound": bound}


# --------------------------------------------------------------------------------------------------------------
# §9 AdvBCT
# --------------------------------------------------------------------------------------------------------------


def elastic_radius(
    r_max: Tensor, elastic_logits: Tensor | None = None, *, threshold: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Elastic boundary radius r_y and its offset Δ'_y (§9.2 [official code: ``ElasticBoundary``]).

    Δ = |r_max − T|, Δ' = Δ·σ(w), r = r_max + Δ' if r_max < T else r_max − Δ' (r lies between r_max and T).
    ``elastic_logits=None`` is the flag ``elastic="off"``: r = r_max, Δ' = 0.

    Args:
        r_max: ``Tensor[C]`` (detached). elastic_logits: learnable ``Tensor[C]`` w (gradient flows).
        threshold: T (1.0).

    Returns:
        ``(radius, delta)``: ``[C]`` each (float32; float64 for float64 ``elastic_logits``).
    """
    dt = (
        torch.float64
        if elastic_logits is not None and elastic_logits.dtype == torch.float64
        else torch.float32
    )
    r = r_max.detach().to(dt)
    if elastic_logits is None:
        return r, torch.zeros_like(r)
    delta = (r - threshold).abs() * torch.sigmoid(elastic_logits.to(dt))
    return torch.where(r < threshold, r + delta, r - delta), delta


def elastic_p2s_loss(
    new_n: Tensor,
    labels: Tensor,
    centers: Tensor,
    r_max: Tensor,
    has_meta: Tensor,
    *,
    elastic_logits: Tensor | None = None,
    threshold: float = 1.0,
    reduction: str = "violators",
    tightness: float = 0.0,
) -> Tensor:
    """AdvBCT point-to-set hinge with elastic boundary (§9.2 [official code]).

    h_i = max(‖f̂_n,i − c_{y_i}‖₂ − r_{y_i}, 0) for the eligible samples i (``has_meta[y_i]``; new classes and
    classes with n_kept ≤ 1 are skipped); zero inside the radius. ``reduction="violators"`` (reference):
    Σ_i h_i / #{i : h_i > 0}, a graph-connected 0 when there is no violator; ``"batch"``: Σ_i h_i / #eligible.
    ``tightness`` λ_t > 0 adds λ_t·mean_{eligible} Δ'_{y_i} (flag ``elastic_tightness``, §9.5).
    The distance is sqrt(max(‖·‖², 10⁻¹²)) (finite gradient at 0).

    Args:
        new_n: ``Tensor[B, d]`` L2-normalised new features.
        labels: ``int64[B]``.
        centers: ``Tensor[C, d]`` un-normalised centres c_k (§2.1), detached.
        r_max: ``Tensor[C]``. has_meta: ``bool[C]`` (n_kept > 1).
        elastic_logits: ``Tensor[C]`` learnable w (None → ``elastic="off"``). threshold: T (1.0).
    """
    if reduction not in ("violators", "batch"):
        raise ValueError(f"reduction must be 'violators' or 'batch', got {reduction!r}")
    labels = labels.long()
    with _fp32(new_n):
        dt = _dt(new_n)
        f = new_n.to(dt)
        c_y = centers.detach().to(dt)[labels]
        dist = torch.sqrt(((f - c_y) ** 2).sum(dim=1).clamp(min=1e-12))
        radius, delta = elastic_radius(r_max, elastic_logits, threshold=threshold)
        radius, delta = radius.to(dt), delta.to(dt)
        eligible = has_meta.to(f.device).bool()[labels]
        hinge = F.relu(dist - radius[labels])
        hinge = torch.where(eligible, hinge, torch.zeros_like(hinge))
        if reduction == "violators":
            denom = (hinge > 0).sum()
        else:
            denom = eligible.sum()
        loss = hinge.sum() / denom.clamp(min=1).to(dt)
        if tightness > 0.0:
            loss = loss + tightness * _masked_mean(delta[labels], eligible)
        return loss


def adversarial_discriminator_loss(
    discriminator: nn.Module,
    new_embedding: Tensor,
    old_embedding: Tensor,
    *,
    alpha: float,
    joint_forward: bool = False,
    normalize_inputs: bool = False,
) -> Tensor:
    """AdvBCT adversarial loss L_adv = NLL(D(R_α(φ_n)), 0) + NLL(D(φ_o), 1) (§9.1 [official code]).

    Domain labels: new = 0, old = 1; each NLL is averaged over its own batch. The old embedding is detached
    (the old model runs under no_grad). ``discriminator`` returns log-probabilities ``[B, 2]``
    (:class:`bctbench.layers.Discriminator`). The caller multiplies by w_e = (E − e + 1)/E.

    Args:
        discriminator: D. new_embedding: raw φ_n ``Tensor[B, d]``. old_embedding: raw φ_o ``Tensor[B', d]``.
        alpha: GRL strength α (:func:`bctbench.layers.dann_alpha`).
        joint_forward: False = two forwards, per-domain BN statistics (reference, flag ``disc_bn="per_domain"``);
            True = one forward of concat[R_α(φ_n); φ_o] (``disc_bn="joint"``).
        normalize_inputs: L2-normalise both inputs first (flag ``disc_input="l2"``).
    """
    new = new_embedding
    old = old_embedding.detach()
    if normalize_inputs:
        new = F.normalize(new, dim=1, eps=_NORM_EPS)
        old = F.normalize(old, dim=1, eps=_NORM_EPS)
    new = grad_reverse(new, alpha)
    b_new = new.shape[0]
    if joint_forward:
        out = discriminator(torch.cat([new, old.to(new.dtype)], dim=0))
        out_new, out_old = out[:b_new], out[b_new:]
    else:
        out_new = discriminator(new)
        out_old = discriminator(old)
    zeros = torch.zeros(out_new.shape[0], dtype=torch.long, device=out_new.device)
    ones = torch.ones(out_old.shape[0], dtype=torch.long, device=out_old.device)
    dt = _dt(out_new)
    return F.nll_loss(out_new.to(dt), zeros) + F.nll_loss(out_old.to(dt), ones)


# --------------------------------------------------------------------------------------------------------------
# §10–11 prototype CE (NDPP / ODPP)
# --------------------------------------------------------------------------------------------------------------


def prototype_ce_loss(embedding_n: Tensor, prototypes_n: Tensor, targets: Tensor, *, scale: float) -> Tensor:
    """Normalised-softmax prototype CE L_pp = CE(s·P̃ f̂, y) (§10.1 [reconstruction]); no margin.

    Logits and CE are computed in float32 (float64 for float64 inputs) with autocast off (s = 30, §14).

    Args:
        embedding_n: ``Tensor[B, d]`` L2-normalised features f̂ (not re-normalised here).
        prototypes_n: ``Tensor[P, d]`` unit prototypes (the columns of the softmax; detached by the caller
            if they are a frozen buffer).
        targets: ``int64[B]`` column of each sample's class in ``prototypes_n``; a negative target excludes the
            sample (mean over the remaining samples; a graph-connected 0 when none remain).
        scale: s.

    Returns:
        scalar loss.
    """
    with _fp32(embedding_n):
        dt = _dt(embedding_n)
        logits = scale * (embedding_n.to(dt) @ prototypes_n.to(dt).T)
        targets = targets.long()
        per_sample = F.cross_entropy(logits, targets.clamp(min=0), reduction="none")
        return _masked_mean(per_sample, targets >= 0)


# --------------------------------------------------------------------------------------------------------------
# §12 online backfilling (Seo et al.): reverse query transformation and metric-compatible contrastive loss
# --------------------------------------------------------------------------------------------------------------


def reverse_transform_loss(q_old: Tensor, g_old: Tensor) -> Tensor:
    """Reverse-transformation loss L_rev = (1/B) Σ_i ‖q^o_i − g^o_i‖² (§12.1 [reconstruction]).

    Args:
        q_old: ``Tensor[B, d_o]`` L2-normalised transformed new features normalise(ψ(φ*(x_i))) (carry the
            gradient; not re-normalised here).
        g_old: ``Tensor[B, d_o]`` L2-normalised old features normalise(φ_o(x_i)) of the same rows (detached here).

    Returns:
        Scalar (float32; float64 for float64 inputs), computed with autocast off. A graph-connected 0 for B = 0.
    """
    if q_old.shape != g_old.shape:
        raise ValueError(
            f"q_old {tuple(q_old.shape)} and g_old {tuple(g_old.shape)} must have the same shape"
        )
    dt = _dt(q_old)
    if q_old.shape[0] == 0:
        return q_old.to(dt).sum() * 0.0
    with _fp32(q_old):
        diff = q_old.to(dt) - g_old.detach().to(dt)
        return (diff * diff).sum(dim=1).mean()


def metric_compatible_loss(
    q_old: Tensor,
    g_old: Tensor,
    q_new: Tensor,
    labels: Tensor,
    *,
    temperature: float = 0.05,
    hard_negatives: int | None = None,
) -> Tensor:
    """Metric-compatible supervised contrastive loss L_mc over candidates of both spaces (§12.1 [reconstruction]).

    For anchor i, the candidates are the old-space items (o, j) for **every** j of the batch (j = i included)
    with similarity ⟨q^o_i, g^o_j⟩, and the new-space items (n, j) for j ≠ i with similarity ⟨q^n_i, q^n_j⟩.
    Positives P_i are the candidates with y_j = y_i ((o, i) is always one, so |P_i| ≥ 1). One softmax at
    temperature τ runs over all candidates of both spaces, which makes old-space and new-space similarities
    directly comparable:

        L_mc = (1/B) Σ_i (−1/|P_i|) Σ_{p∈P_i} log[exp(sim_p/τ) / Σ_{c∈C_i} exp(sim_c/τ)].

    Vectorised as ``[B, 2B]`` logits (columns 0..B−1: old space, B..2B−1: new space) with excluded candidates
    set to −inf before the log-softmax (no NaN: every row keeps its (o, i) positive). Computed in float32
    (float64 for float64 inputs) with autocast off.

    Args:
        q_old: ``Tensor[B, d_o]`` L2-normalised anchors in the old space, normalise(ψ(φ*(x_i))) (gradient flows).
        g_old: ``Tensor[B, d_o]`` L2-normalised frozen old features normalise(φ_o(x_j)) (detached here).
        q_new: ``Tensor[B, d_n]`` L2-normalised new features (normalise(h(φ*)) or normalise(φ*)); they are both
            the anchors and the new-space candidates g^n_j = q^n_j, and the gradient flows through both roles.
        labels: ``int64[B]`` class labels y.
        temperature: τ (0.05).
        hard_negatives: k: keep only the k most similar negatives **per space** for every anchor (ties broken
            by ``torch.topk``); all positives are kept. ``None`` (default) keeps every negative; k ≥ B is
            the same as ``None``.

    Returns:
        Scalar loss; a graph-connected 0 for B = 0.
    """
    b = q_old.shape[0]
    if g_old.shape != q_old.shape or q_new.shape[0] != b or labels.shape[0] != b:
        raise ValueError(
            f"shape mismatch: q_old {tuple(q_old.shape)}, g_old {tuple(g_old.shape)}, "
            f"q_new {tuple(q_new.shape)}, labels {tuple(labels.shape)}"
        )
    if hard_negatives is not None and hard_negatives < 0:
        raise ValueError(f"hard_negatives must be >= 0 or None, got {hard_negatives}")
    dt = _dt(q_old)
    if b == 0:
        return q_old.to(dt).sum() * 0.0 + q_new.to(dt).sum() * 0.0
    with _fp32(q_old):
        qo = q_old.to(dt)
        go = g_old.detach().to(dt)
        qn = q_new.to(dt)
        sim = torch.cat([qo @ go.T, qn @ qn.T], dim=1)  # [B, 2B]
        y = labels.to(qo.device).long()
        same = y.unsqueeze(1) == y.unsqueeze(0)  # [B, B]
        eye = torch.eye(b, dtype=torch.bool, device=qo.device)
        valid = torch.cat([torch.ones_like(same), ~eye], dim=1)  # C_i
        positive = torch.cat([same, same & ~eye], dim=1)  # P_i
        if hard_negatives is not None:
            negative = valid & ~positive
            keep_neg = torch.zeros_like(negative)
            k = min(int(hard_negatives), b)
            if k > 0:
                for block in (slice(0, b), slice(b, 2 * b)):
                    neg_sim = sim[:, block].detach().masked_fill(~negative[:, block], float("-inf"))
                    top = torch.topk(neg_sim, k, dim=1).indices
                    chosen = torch.zeros_like(negative[:, block]).scatter_(1, top, True)
                    keep_neg[:, block] = chosen & negative[:, block]
            valid = positive | keep_neg
        logits = (sim / temperature).masked_fill(~valid, float("-inf"))
        log_prob = torch.log_softmax(logits, dim=1)
        pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        return (-pos_log_prob / positive.sum(dim=1).to(dt)).mean()
