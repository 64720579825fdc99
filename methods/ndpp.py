"""``ndpp`` — Neighbor-Driven Prototype Perturbation: align the new model with *pseudo-old* prototypes, old class
prototypes pushed away from their nearest old neighbours where the new model already separates them better.

Paper: Zhou, Sun, Pei, Li, Wang, "Prototype Perturbation for Relaxing Alignment Constraints in Backward-Compatible
Learning", https://arxiv.org/abs/2503.14824 (docs/methods.md §10). **No public code.**

**This plugin is a RECONSTRUCTION from the paper's abstract** (docs/methods.md §10.1, every item tagged
[reconstruction]). The abstract confirms only the idea: perturb the old class prototypes, align the new feature
space with the pseudo-old space they define, compute the perturbation from the feature distributions of both
the old and the new model, updated along with the new model; NDPP is the neighbour-driven variant. The paper's
formulas, loss and hyperparameters are not public; the definitions and defaults below are bctbench's design, not
the authors'. Results of this plugin must not be reported as a reproduction of the paper.

Definition (§10.1):

* Old prototypes p^o_k = normalise(P^o_k) (artefact ``class_means_new``: mean of normalised old features over the
  new training set, all classes with samples). Old kNN graph N_k: the K nearest other classes by ⟨p^o_k, p^o_j⟩
  (exact search, fixed for the run).
* New prototype bank: EMA of the batch class means of f̂_n, updated at **every** training step from features and
  labels gathered across processes without gradient (``gather_no_grad``), so every rank builds the same bank
  (m_k ← f̄ on first sight, else μ·m_k + (1−μ)·f̄); p^n = normalise(m); v_k = seen mask.
* Bounds ε_k = min(ε, ρ·r_med,k), r_med,k = median of the 1.5-IQR-kept radius list ‖f̂_o − c_k‖ over the new
  training set (artefact ``old_features_new``, computed as in §2.1); ε_k = 0 for classes with one image.
* At the start of every epoch e ≥ ``start_epoch`` (δ = 0 before: plain prototype alignment while the bank fills):
  g_kj = clamp(s^o_kj − s^n_kj, 0, 1)·v_k·v_j; ω_kj = softmax_{j∈N_k}(s^o_kj/τ_nb);
  u_kj = normalise(s^o_kj·p^o_k − p^o_j) (skipped when p^o_j = ±p^o_k); δ_k = η·Σ_j ω_kj·g_kj·u_kj, clipped to
  ‖δ_k‖ ≤ ε_k; p̃_k = normalise(p^o_k + δ_k), kept as a frozen buffer until the next update
  (:func:`bctbench.prototypes.neighbour_gains`, :func:`~bctbench.prototypes.ndpp_perturbation`).
* Loss: L = CE(W_n φ_n, y) + λ_pp·CE(s·P̃ f̂_n, y) over all prototype classes (normalised softmax, no margin,
  fp32; :func:`bctbench.losses.prototype_ce_loss`). Logged as ``train/loss/pp`` (already weighted).
* Logged per update: ``train/ndpp/delta_norm`` (mean ‖δ_k‖ over seen classes with ε_k > 0),
  ``train/ndpp/on_bound`` (fraction of those with ‖δ_k‖ = ε_k) and ``train/ndpp/mean_gain``.

Hyperparameters (docs/methods.md §10.1 symbol → argument, default):

* K → ``k`` (10; clamped to the number of other classes), τ_nb → ``tau_nb`` (0.1), η → ``eta`` (1.0),
  ε → ``epsilon`` (0.1, sweep {0.05, 0.1, 0.2}), ρ → ``rho`` (0.5), μ (EMA) → ``ema`` (0.9),
  s → ``scale`` (30), λ_pp → ``weight`` (1.0), start_epoch → ``start_epoch`` (1).

Readings (no flag): classes without samples in the new training set have no prototype (dropped from the softmax,
never chosen as neighbours); the perturbation is computed identically on every rank and then broadcast from rank 0
(insurance against floating-point drift). Needs no per-batch old forward.

State: the bank (``bank.bank``, ``bank.seen``) and the pseudo-old prototypes ``pseudo_prototypes`` are persistent
buffers (a resumed run keeps them); p^o, the graph and the bounds are rebuilt by :meth:`NDPP.prepare_artifacts`.

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

import torch

from bctbench import (
    ConfigError,
    MethodSetup,
    PseudoOldPrototypeMethod,
    register_method,
)
from bctbench import prototypes as proto_math


@register_method("ndpp")
class NDPP(PseudoOldPrototypeMethod):
    paper = (
        "Zhou et al., Prototype Perturbation for Relaxing Alignment Constraints in Backward-Compatible Learning, "
        "https://arxiv.org/abs/2503.14824 (NDPP; reconstruction from the abstract)"
    )
    reference_code = "none public (reconstruction, docs/methods.md §10)"
    needs_old_forward = False
    required_artifacts = frozenset({"class_means_new", "old_features_new"})

    def __init__(
        self,
        setup: MethodSetup,
        *,
        k: int = 10,
        tau_nb: float = 0.1,
        eta: float = 1.0,
        epsilon: float = 0.1,
        rho: float = 0.5,
        ema: float = 0.9,
        scale: float = 30.0,
        weight: float = 1.0,
        start_epoch: int = 1,
    ) -> None:
        super().__init__(setup)
        if k < 1:
            raise ConfigError("ndpp: k must be >= 1")
        if tau_nb <= 0:
            raise ConfigError("ndpp: tau_nb must be > 0")
        if eta < 0 or epsilon < 0 or rho < 0:
            raise ConfigError("ndpp: eta, epsilon and rho must be >= 0")
        if not 0.0 <= ema <= 1.0:
            raise ConfigError("ndpp: ema must be in [0, 1]")
        if start_epoch < 0:
            raise ConfigError("ndpp: start_epoch must be >= 0")
        self.k = k
        self.tau_nb = tau_nb
        self.eta = eta
        self.epsilon = epsilon
        self.rho = rho
        self.scale = scale
        self.weight = weight
        self.start_epoch = start_epoch
        self._init_pseudo_prototypes(setup, ema=ema, persistent_delta=False)

    @torch.no_grad()
    def update_perturbation(self) -> dict[str, float]:
        """Recompute δ from the current bank (§10.1 steps 1–5); returns and logs the epoch statistics."""
        self._require_prepared()
        seen = self.bank.seen
        _, _, gains = proto_math.neighbour_gains(
            self.old_prototypes, self.bank.prototypes(), seen, self.neighbors
        )
        delta = proto_math.ndpp_perturbation(
            self.old_prototypes, self.neighbors, gains, self.bounds, tau_nb=self.tau_nb, eta=self.eta
        )
        stats = self._apply_delta(delta, gains, seen)
        self.last_stats = stats
        self._log_stats(stats, ("delta_norm", "on_bound", "mean_gain"))
        return stats

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {
            "epsilon": [0.0, 0.05, 0.1, 0.2],
            "rho": [0.25, 0.5, 1.0],
            "weight": [0.5, 1.0, 2.0],
            "tau_nb": [0.05, 0.1, 0.2],
        }
