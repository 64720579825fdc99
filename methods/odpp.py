"""``odpp`` — Optimization-Driven Prototype Perturbation: align the new model with *pseudo-old* prototypes obtained
by solving a small bounded optimisation problem over perturbations of the old class prototypes.

Paper: Zhou, Sun, Pei, Li, Wang, "Prototype Perturbation for Relaxing Alignment Constraints in Backward-Compatible
Learning", https://arxiv.org/abs/2503.14824 (docs/methods.md §11). **No public code.**

**This plugin is a RECONSTRUCTION from the paper's abstract** (docs/methods.md §11, every item tagged
[reconstruction]). The abstract confirms only the idea: perturb the old class prototypes, align the new feature
space with the pseudo-old space they define, compute the perturbation from the feature distributions of both
the old and the new model, updated along with the new model; ODPP is the optimisation-driven variant. The paper's
objective, solver, loss and hyperparameters are not public; the definitions and defaults below are bctbench's
design, not the authors'. Results of this plugin must not be reported as a reproduction of the paper.

Definition (§11; inputs, loss and bank as ``ndpp``, docs/methods.md §10.1):

* Old prototypes p^o_k = normalise(P^o_k) (artefact ``class_means_new``), fixed old kNN graph N_k (K nearest other
  classes by old cosine), EMA bank of new features updated at every step from features gathered across processes
  without gradient (``gather_no_grad``), seen mask v, gains g_kj = clamp(s^o_kj − s^n_kj, 0, 1)·v_k·v_j, bounds
  ε_k = min(ε, ρ·r_med,k) with r_med from artefact ``old_features_new`` (§2.1 radius list; ε_k = 0 for
  singletons).
* At the start of every epoch e ≥ ``start_epoch`` (δ = 0 before), minimise
  J(Δ) = (1/C_v) Σ_k [ (1/max(1, |N⁺_k|)) Σ_{j∈N⁺_k} g_kj·τ_o·softplus((⟨p̃_k, p̃_j⟩ − s^n_kj)/τ_o) + (γ/2)‖δ_k‖² ]
  s.t. ‖δ_k‖ ≤ ε_k, δ_k = 0 where v_k = 0; p̃ = normalise(p^o + δ), N⁺_k = {j ∈ N_k: g_kj > 0}, C_v = #seen.
  Solver: projected Adam (β = 0.9, 0.999), full batch over all edges, T steps at a fixed learning rate, Adam
  state reset each epoch, projection after **every** step, warm start from the previous epoch's Δ
  (:func:`bctbench.prototypes.solve_odpp`). p̃ is then kept as a frozen buffer until the next update.
* Loss: L = CE(W_n φ_n, y) + λ_pp·CE(s·P̃ f̂_n, y) over all prototype classes (normalised softmax, no margin,
  fp32; :func:`bctbench.losses.prototype_ce_loss`). Logged as ``train/loss/pp`` (already weighted).
* Logged per update: ``train/odpp/objective_before`` / ``objective_after`` (J at the warm start and at the
  returned Δ), ``train/odpp/delta_norm`` (mean ‖δ_k‖ over seen classes with ε_k > 0), ``train/odpp/on_bound``
  (fraction of those on the ball boundary, i.e. a saturated ε) and ``train/odpp/mean_gain``.

Hyperparameters (docs/methods.md §10.1/§11 symbol → argument, default):

* K → ``k`` (10), ε → ``epsilon`` (0.1), ρ → ``rho`` (0.5), μ (EMA) → ``ema`` (0.9), s → ``scale`` (30),
  λ_pp → ``weight`` (1.0), start_epoch → ``start_epoch`` (1) — shared with ``ndpp``;
* T → ``solver_steps`` (20), Adam learning rate → ``solver_lr`` (0.01), τ_o → ``tau_o`` (0.05), γ → ``gamma``
  (1.0); ``warm_start`` (True: Δ from the previous epoch; False: start every epoch from Δ = 0).

Flag beyond §11: ``solver_keep_best=True`` returns the iterate with the lowest J among the warm start and all T
steps (projected Adam is not a descent method, so the last iterate can be worse than the start); this guarantees
``objective_after ≤ objective_before``. ``solver_keep_best=False`` returns the last iterate, as §11 reads.

Readings (no flag): classes without samples in the new training set have no prototype (dropped from the softmax,
never chosen as neighbours); the solver runs identically on every rank in fp32 and Δ is broadcast from rank 0
(the backward pass of the neighbour gather uses atomic adds on GPU, so ranks could otherwise drift apart in the
last bits). Needs no per-batch old forward.

State: the bank, the pseudo-old prototypes ``pseudo_prototypes`` and Δ (``delta``, the warm start) are persistent
buffers (a resumed run keeps them); p^o, the graph and the bounds are rebuilt by :meth:`ODPP.prepare_artifacts`.

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


@register_method("odpp")
class ODPP(PseudoOldPrototypeMethod):
    paper = (
        "Zhou et al., Prototype Perturbation for Relaxing Alignment Constraints in Backward-Compatible Learning, "
        "https://arxiv.org/abs/2503.14824 (ODPP; reconstruction from the abstract)"
    )
    reference_code = "none public (reconstruction, docs/methods.md §11)"
    needs_old_forward = False
    required_artifacts = frozenset({"class_means_new", "old_features_new"})

    def __init__(
        self,
        setup: MethodSetup,
        *,
        k: int = 10,
        epsilon: float = 0.1,
        rho: float = 0.5,
        ema: float = 0.9,
        scale: float = 30.0,
        weight: float = 1.0,
        start_epoch: int = 1,
        solver_steps: int = 20,
        solver_lr: float = 0.01,
        tau_o: float = 0.05,
        gamma: float = 1.0,
        warm_start: bool = True,
        solver_keep_best: bool = True,
    ) -> None:
        super().__init__(setup)
        if k < 1:
            raise ConfigError("odpp: k must be >= 1")
        if epsilon < 0 or rho < 0 or gamma < 0:
            raise ConfigError("odpp: epsilon, rho and gamma must be >= 0")
        if not 0.0 <= ema <= 1.0:
            raise ConfigError("odpp: ema must be in [0, 1]")
        if start_epoch < 0 or solver_steps < 0:
            raise ConfigError("odpp: start_epoch and solver_steps must be >= 0")
        if solver_lr <= 0 or tau_o <= 0:
            raise ConfigError("odpp: solver_lr and tau_o must be > 0")
        self.k = k
        self.epsilon = epsilon
        self.rho = rho
        self.scale = scale
        self.weight = weight
        self.start_epoch = start_epoch
        self.solver_steps = solver_steps
        self.solver_lr = solver_lr
        self.tau_o = tau_o
        self.gamma = gamma
        self.warm_start = warm_start
        self.solver_keep_best = solver_keep_best
        self._init_pseudo_prototypes(setup, ema=ema, persistent_delta=True)
        self.last_history: list[float] = []

    @torch.no_grad()
    def update_perturbation(self) -> dict[str, float]:
        """Re-solve Δ from the current bank (§11); returns and logs the epoch statistics."""
        self._require_prepared()
        seen = self.bank.seen
        _, new_sims, gains = proto_math.neighbour_gains(
            self.old_prototypes, self.bank.prototypes(), seen, self.neighbors
        )
        solution = proto_math.solve_odpp(
            self.old_prototypes,
            self.neighbors,
            gains,
            new_sims,
            seen,
            self.bounds,
            init=self.delta if self.warm_start else None,
            steps=self.solver_steps,
            lr=self.solver_lr,
            tau_o=self.tau_o,
            gamma=self.gamma,
            keep_best=self.solver_keep_best,
        )
        stats = self._apply_delta(solution.delta, gains, seen)
        stats["objective_before"] = solution.objective_before
        stats["objective_after"] = solution.objective_after
        self.last_stats = stats
        self.last_history = list(solution.history)
        self._log_stats(stats, ("objective_before", "objective_after", "delta_norm", "on_bound", "mean_gain"))
        return stats

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {
            "epsilon": [0.0, 0.05, 0.1, 0.2],
            "rho": [0.25, 0.5, 1.0],
            "weight": [0.5, 1.0, 2.0],
            "tau_o": [0.02, 0.05, 0.1],
        }
