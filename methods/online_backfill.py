"""``online_backfill`` — metric-compatible training for online backfilling: the new model is trained alone and a
reverse query transformation ψ (new → old) is fitted afterwards so that old-space and new-space search results can
be merged by distance while the gallery is being backfilled.

Paper: Seo, Uzunbas, Han, Cao, Lim, "Metric Compatible Training for Online Backfilling in Large-Scale Retrieval",
WACV 2025, pp. 1537–1545, https://arxiv.org/abs/2301.03767 (v1: "Online Backfilling with No Regret for
Large-Scale Image Retrieval"); ``docs/methods.md`` §12. **No public code**: this plugin is a
**RECONSTRUCTION** (``docs/methods.md`` §12.1, every item tagged [reconstruction]); architecture, sampler,
optimiser, loss weights and the evaluation wiring below are bctbench choices, not the authors'.

What it does:

* **Backbone (φ*).** Trained exactly like ``independent``: CE only, :meth:`compatibility_loss` returns ``{}``.
  ψ (and h) are built without touching the global RNG and are excluded from the backbone optimiser, so φ* is
  the ``independent`` model of the same seed.
* **ψ.** :class:`bctbench.layers.ReverseTransform` Linear(d_n, ``psi_hidden``) → BatchNorm1d → ReLU →
  Linear(``psi_hidden``, d_o), plus an identity skip when d_n = d_o. Its input is the **unit-norm** φ*(x), in
  fitting and in evaluation. Optional h (``learn_new_embedding=True``): the same module d_n → d_n on unit-norm
  φ*(x); its output then replaces φ* as the new embedding (``"new"`` encoder).
* **When.** At the end of the last training epoch (``on_train_epoch_end`` with ``current_epoch ==
  trainer.max_epochs − 1``; Lightning's ModelCheckpoint runs after the module hook, so ``last.ckpt`` holds the
  fitted ψ). A run stopped by ``max_steps`` instead of ``max_epochs`` never fits ψ (call
  :meth:`OnlineBackfill.fit_reverse_transform` yourself). ψ is re-fitted from scratch every time, so a run resumed
  from a mid-training checkpoint fits it at its last epoch; the persistent buffer ``psi_fitted`` plus the digest
  of the φ* it was fitted on (``psi_source``) make :meth:`encoders` raise instead of using a random or stale ψ.
* **Data.** Old features: artefact ``old_features_new`` (unit-norm φ_o of the whole new training set, test
  transform). φ* features: ``store.embed_new_training_set`` with the new embedder in eval mode (same rows).
  Features stay on the CPU; each batch is moved to the model's device.
* **Sampler.** P×K batches: P = ``psi_classes_per_batch`` (64) distinct classes drawn uniformly among the
  classes with ≥ 2 images (all of them when fewer), K = ``psi_samples_per_class`` (4) images per class, without
  replacement when the class has ≥ K images, otherwise all its images plus K − n draws with replacement.
  One epoch = ⌈N / (P·K)⌉ batches (N = all rows); ``psi_epochs`` (10) epochs.
* **Loss.** q^o = normalise(ψ(f)), q^n = normalise(h(f)) or f, g^o = old feature, with f = normalise(φ*(x));
  L = L_rev + ``lambda_mc``·L_mc (:func:`bctbench.losses.reverse_transform_loss`,
  :func:`bctbench.losses.metric_compatible_loss` with τ = ``temperature``, ``hard_negatives``).
* **Optimiser.** Adam(lr ``psi_lr`` = 10⁻³, weight decay ``psi_weight_decay`` = 10⁻⁴ (L2, Adam's coupled form)),
  cosine decay per step from ``psi_lr`` to 0 over all steps; fp32, autocast off.
* **Determinism.** A local ``torch.Generator`` draws ψ/h's initialisation and every batch; its seed is
  ``int(sha256("online_backfill:<run_seed>:<psi_seed>")[:15], 16)`` with ``run_seed = torch.initial_seed()``
  captured when the method is built (the pipeline seeds with the run seed just before). The global RNG is not
  used.
* **DDP.** Every rank embeds its shard (the store gathers), every rank fits, then ψ/h (and the logged statistics)
  are broadcast from rank 0. ψ/h parameters have ``requires_grad=False`` outside fitting, so DDP never waits for
  their gradients.
* **Logs** (when a trainer is attached): ``train/online_backfill/psi_rev_final``, ``psi_mc_final`` (means over
  the last ψ epoch), ``psi_rev_mean``, ``psi_mc_mean`` (means over all ψ steps), ``psi_loss_final``.
* **Encoders.** ``old`` (φ_o), ``new`` (φ*, or h∘φ*), ``new->old`` (ψ∘normalise(φ*)); unit-norm float32 outputs,
  identities are module digests. The evaluator uses ``new->old`` as the old-space query of merge-mode
  backfilling and scores the pair new->old → old (``docs/evaluation.md`` §6). §12.1 mentions an optional
  separate ``new_h`` encoder; here h∘φ* *replaces* ``new`` (the paper's "its output replaces the new model's
  features"), so merge mode and new→new use it; there is no separate ``new_h`` key.

Hyperparameters and defaults: ``lambda_mc=1.0``, ``temperature=0.05``, ``hard_negatives=None`` (§12.1's optional
mining uses 64), ``psi_hidden=1024``, ``psi_epochs=10``, ``psi_classes_per_batch=64``,
``psi_samples_per_class=4``, ``psi_lr=1e-3``, ``psi_weight_decay=1e-4``, ``psi_seed=0``,
``learn_new_embedding=False``.

Bare § numbers in this module refer to ``docs/methods.md``.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from bctbench import (
    Batch,
    BCTBenchError,
    CompatibilityMethod,
    ConfigError,
    Encoder,
    LiveEncoder,
    MethodSetup,
    ModelOutput,
    layers,
    losses,
    module_digest,
    register_method,
)

_LOG = "train/online_backfill"


class _Head(nn.Module):
    """``head(normalise(embedder(x)))`` in float32: the ``new->old`` (head = ψ) and h∘φ* (head = h) encoders."""

    def __init__(self, embedder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.embedder(images)
        if isinstance(f, tuple):
            f = f[0]
        f = F.normalize(f.float(), dim=1)
        with torch.autocast(device_type=f.device.type, enabled=False):
            return self.head(f)


def pk_batches(
    labels: torch.Tensor,
    *,
    classes_per_batch: int,
    samples_per_class: int,
    num_batches: int,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Row indices of ``num_batches`` P×K batches over ``labels`` (``int64[N]``), see the module docstring.

    Returns a list of ``int64[≤ P·K]`` tensors; classes with fewer than 2 rows are never drawn.
    """
    labels = labels.cpu().long()
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    eligible = torch.nonzero(counts >= 2).flatten()
    if eligible.numel() == 0:
        raise BCTBenchError("online_backfill: no class has >= 2 images; cannot fit ψ with L_mc")
    p = min(int(classes_per_batch), eligible.numel())
    k = int(samples_per_class)
    out = []
    for _ in range(num_batches):
        chosen = eligible[torch.randperm(eligible.numel(), generator=generator)[:p]]
        rows = []
        for c in chosen.tolist():
            n, s = int(counts[c]), int(starts[c])
            if n >= k:
                local = torch.randperm(n, generator=generator)[:k]
            else:
                extra = torch.randint(n, (k - n,), generator=generator)
                local = torch.cat([torch.randperm(n, generator=generator), extra])
            rows.append(order[s + local])
        out.append(torch.cat(rows))
    return out


@register_method("online_backfill")
class OnlineBackfill(CompatibilityMethod):
    paper = (
        "Seo et al., Metric Compatible Training for Online Backfilling in Large-Scale Retrieval, WACV 2025, "
        "https://arxiv.org/abs/2301.03767 (reconstruction, no public code)"
    )
    reference_code = "none (no public code); reconstruction, docs/methods.md §12.1"
    needs_old_forward = False
    required_artifacts = frozenset({"old_features_new"})
    handles_dim_mismatch = True
    backfill_mode = "merge"

    def __init__(
        self,
        setup: MethodSetup,
        *,
        lambda_mc: float = 1.0,
        temperature: float = 0.05,
        hard_negatives: int | None = None,
        psi_hidden: int = 1024,
        psi_epochs: int = 10,
        psi_classes_per_batch: int = 64,
        psi_samples_per_class: int = 4,
        psi_lr: float = 1e-3,
        psi_weight_decay: float = 1e-4,
        psi_seed: int = 0,
        learn_new_embedding: bool = False,
    ) -> None:
        super().__init__(setup)
        if temperature <= 0:
            raise ConfigError("online_backfill: temperature must be > 0")
        if hard_negatives is not None and hard_negatives < 1:
            raise ConfigError("online_backfill: hard_negatives must be >= 1 or None")
        if psi_epochs < 1 or psi_classes_per_batch < 1 or psi_samples_per_class < 1 or psi_hidden < 1:
            raise ConfigError(
                "online_backfill: psi_epochs, psi_hidden, psi_classes_per_batch, psi_samples_per_class must be >= 1"
            )
        self.lambda_mc = float(lambda_mc)
        self.temperature = float(temperature)
        self.hard_negatives = hard_negatives
        self.psi_epochs = int(psi_epochs)
        self.psi_classes_per_batch = int(psi_classes_per_batch)
        self.psi_samples_per_class = int(psi_samples_per_class)
        self.psi_lr = float(psi_lr)
        self.psi_weight_decay = float(psi_weight_decay)
        self.psi_seed = int(psi_seed)
        self.learn_new_embedding = bool(learn_new_embedding)
        self.run_seed = torch.initial_seed()
        self._store = None
        self._fitting = False
        self.psi_history: list[dict[str, float]] = []  # per ψ epoch: mean rev / mc / loss (last fit)
        d_n, d_o = setup.embed_dim, self.old.embed_dim
        # Built under fork_rng: the global RNG stream (data order, later draws) stays that of `independent`.
        with torch.random.fork_rng(devices=[]):
            self.psi = layers.ReverseTransform(d_n, d_o, psi_hidden)
            self.h = layers.ReverseTransform(d_n, d_n, psi_hidden) if self.learn_new_embedding else None
        for p in self._head_parameters():
            p.requires_grad_(False)
        self.register_buffer("psi_fitted", torch.tensor(False))
        self.register_buffer("psi_source", torch.zeros(8, dtype=torch.uint8))  # digest of φ* at fit time
        self._heads_eval()

    # ------------------------------------------------------------------------------------ backbone
    def compatibility_loss(
        self, batch: Batch, new: ModelOutput, old: ModelOutput | None
    ) -> dict[str, torch.Tensor]:
        return {}

    def _heads(self) -> list[nn.Module]:
        return [self.psi] + ([self.h] if self.h is not None else [])

    def _head_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._heads() for p in m.parameters()]

    def trainable_parameters(self):
        exclude = {id(p) for p in self._head_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in exclude]

    def _heads_eval(self) -> None:
        for m in self._heads():
            m.eval()

    def train(self, mode: bool = True) -> OnlineBackfill:
        super().train(mode)
        if not getattr(self, "_fitting", False):
            self._heads_eval()  # ψ/h only train inside fit_reverse_transform
        return self

    def on_train_epoch_start(self) -> None:
        # the backbone is about to change: a ψ fitted on an earlier φ* is no longer valid
        self.psi_fitted.fill_(False)

    def on_train_epoch_end(self) -> None:
        trainer = self._trainer
        if trainer is not None and trainer.max_epochs is not None and trainer.max_epochs > 0:
            if self.current_epoch == trainer.max_epochs - 1:
                stats = self.fit_reverse_transform()
                for key, value in stats.items():
                    self.log(f"{_LOG}/{key}", value, on_step=False, on_epoch=True)

    # ----------------------------------------------------------------------------------- artefacts
    def prepare_artifacts(self, store) -> None:
        self._store = store

    def _source_digest(self) -> torch.Tensor:
        return torch.tensor(list(bytes.fromhex(module_digest(self.new.embedder))), dtype=torch.uint8)

    def _generator_seed(self) -> int:
        blob = f"online_backfill:{self.run_seed}:{self.psi_seed}".encode()
        return int(hashlib.sha256(blob).hexdigest()[:15], 16)

    # ----------------------------------------------------------------------------------- ψ fitting
    def fit_reverse_transform(self) -> dict[str, float]:
        """Fit ψ (and h) on cached features of the new training set (module docstring); returns the loss
        statistics (logged by ``on_train_epoch_end``), leaves ψ/h in eval mode and marks them fitted for the
        current φ*."""
        store = self._store
        if store is None or not hasattr(store, "embed_new_training_set"):
            raise BCTBenchError(
                "online_backfill: fitting ψ needs the artefact store from prepare_artifacts "
                "(with embed_new_training_set)"
            )
        old = store.get("old_features_new")
        with torch.no_grad():
            current = store.embed_new_training_set(LiveEncoder(self.new.embedder, "online_backfill-fit"))
        if not torch.equal(current["labels"].cpu().long(), old["labels"].cpu().long()):
            raise BCTBenchError(
                "online_backfill: new-feature rows do not match the cached old features (labels)"
            )
        feats_new = F.normalize(current["features"].detach().float().cpu(), dim=1)
        feats_old = F.normalize(old["features"].detach().float().cpu(), dim=1)
        stats = self._fit_heads(feats_new, feats_old, old["labels"].cpu().long())

        trainer = self._trainer
        device = self.psi_fitted.device
        if trainer is not None and trainer.world_size > 1:
            state = {
                "heads": {k: v.detach().cpu() for k, v in self._heads_state().items()},
                "stats": stats,
            }
            state = trainer.strategy.broadcast(state, src=0)
            self._load_heads_state({k: v.to(device) for k, v in state["heads"].items()})
            stats = state["stats"]
            self.psi_source.copy_(trainer.strategy.broadcast(self._source_digest(), src=0).to(device))
        else:
            self.psi_source.copy_(self._source_digest().to(device))
        self.psi_fitted.fill_(True)
        return stats

    def _heads_state(self) -> dict[str, torch.Tensor]:
        state = {f"psi.{k}": v for k, v in self.psi.state_dict().items()}
        if self.h is not None:
            state.update({f"h.{k}": v for k, v in self.h.state_dict().items()})
        return state

    def _load_heads_state(self, state: dict[str, torch.Tensor]) -> None:
        self.psi.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("psi.")})
        if self.h is not None:
            self.h.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("h.")})

    def _fit_heads(
        self, feats_new: torch.Tensor, feats_old: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, float]:
        """Feature-level training of ψ (and h): ``feats_new float32[N, d_n]`` unit-norm φ*,
        ``feats_old float32[N, d_o]`` unit-norm φ_o, ``labels int64[N]`` (CPU tensors, same rows)."""
        n = feats_new.shape[0]
        if feats_old.shape[0] != n or labels.shape[0] != n:
            raise BCTBenchError("online_backfill: feature and label rows differ")
        device = self.psi_fitted.device
        gen = torch.Generator().manual_seed(self._generator_seed())
        for m in self._heads():
            m.reset_parameters(gen)
        params = self._head_parameters()
        per_batch = self.psi_classes_per_batch * self.psi_samples_per_class
        steps_per_epoch = max(1, math.ceil(n / per_batch))
        total = steps_per_epoch * self.psi_epochs
        opt = torch.optim.Adam(params, lr=self.psi_lr, weight_decay=self.psi_weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / total)))
        self.psi_history = []
        rev_all, mc_all = [], []
        self._fitting = True
        for p in params:
            p.requires_grad_(True)
        try:
            for m in self._heads():
                m.train()
            with torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
                for _ in range(self.psi_epochs):
                    batches = pk_batches(
                        labels,
                        classes_per_batch=self.psi_classes_per_batch,
                        samples_per_class=self.psi_samples_per_class,
                        num_batches=steps_per_epoch,
                        generator=gen,
                    )
                    rev_ep, mc_ep = [], []
                    for rows in batches:
                        f = feats_new[rows].to(device)
                        g_old = feats_old[rows].to(device)
                        y = labels[rows].to(device)
                        q_old = F.normalize(self.psi(f), dim=1)
                        q_new = F.normalize(self.h(f), dim=1) if self.h is not None else f
                        rev = losses.reverse_transform_loss(q_old, g_old)
                        mc = losses.metric_compatible_loss(
                            q_old,
                            g_old,
                            q_new,
                            y,
                            temperature=self.temperature,
                            hard_negatives=self.hard_negatives,
                        )
                        loss = rev + self.lambda_mc * mc
                        if not torch.isfinite(loss.detach()):
                            raise BCTBenchError(f"online_backfill: ψ loss became {loss.item()}")
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sched.step()
                        rev_ep.append(float(rev.detach()))
                        mc_ep.append(float(mc.detach()))
                    self.psi_history.append(
                        {
                            "rev": sum(rev_ep) / len(rev_ep),
                            "mc": sum(mc_ep) / len(mc_ep),
                            "loss": (sum(rev_ep) + self.lambda_mc * sum(mc_ep)) / len(rev_ep),
                        }
                    )
                    rev_all += rev_ep
                    mc_all += mc_ep
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
            self._fitting = False
            self._heads_eval()
        last = self.psi_history[-1]
        return {
            "psi_rev_final": last["rev"],
            "psi_mc_final": last["mc"],
            "psi_loss_final": last["loss"],
            "psi_rev_mean": sum(rev_all) / len(rev_all),
            "psi_mc_mean": sum(mc_all) / len(mc_all),
        }

    # ------------------------------------------------------------------------------------ encoders
    def _check_fitted(self) -> None:
        if not bool(self.psi_fitted):
            raise BCTBenchError(
                "online_backfill: ψ (the new->old query transformation) has not been fitted; it is fitted at "
                "the end of the last training epoch (or call fit_reverse_transform())"
            )
        if not torch.equal(self.psi_source.cpu(), self._source_digest()):
            raise BCTBenchError(
                "online_backfill: ψ was fitted on a different new model (the new embedder changed since); "
                "call fit_reverse_transform() again"
            )

    def encoders(self) -> dict[str, Encoder]:
        """``{"old": φ_o, "new": φ* (or h∘φ*), "new->old": ψ∘normalise(φ*)}``; raises if ψ is not fitted."""
        self._check_fitted()
        out = super().encoders()
        if self.h is not None:
            net = _Head(self.new.embedder, self.h)
            out["new"] = Encoder(net, f"{self.name}:new_h:{module_digest(net)}")
        to_old = _Head(self.new.embedder, self.psi)
        out["new->old"] = Encoder(to_old, f"{self.name}:new->old:{module_digest(to_old)}")
        return out

    @classmethod
    def search_space(cls) -> dict[str, list]:
        return {
            "lambda_mc": [0.5, 1.0, 2.0],
            "temperature": [0.02, 0.05, 0.1, 0.2],
            "psi_lr": [3e-4, 1e-3, 3e-3],
        }
