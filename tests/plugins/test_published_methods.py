"""Behavioural tests of the published-method plugins ``lce``, ``unibct``, ``hot_refresh`` and ``advbct`` on the
tiny fixtures of ``conftest.py`` (the contract tests cover the generic parts: metadata, old model bit-identical,
encoders, checkpoint round trip)."""

from __future__ import annotations

import dataclasses

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bctbench import layers, prototypes
from bctbench.method import ModelOutput
from bctbench.registry import get_method
from tests.plugins.conftest import C_NEW, C_OLD, EMBED, IMAGE, FakeArtifactStore, quiet_trainer


def _trainer(tmp_path, **kw):
    return quiet_trainer(tmp_path, **kw)


def _build(name, setup, store=None, **hparams):
    model = get_method(name)(setup, **hparams)
    store = store if store is not None else FakeArtifactStore(model.old)
    model.prepare_artifacts(store)
    return model, store


def _first_batch(loader):
    return next(iter(loader))


def _outputs(model, batch):
    model.train()
    return model.forward_new(batch["images"]), model.forward_old(batch["images"])


# ------------------------------------------------------------------------------------------------------ lce
def test_lce_official_centres_and_boundaries_match_a_per_class_loop(setup):
    model, store = _build("lce", setup)
    data = store.get("old_features_new")
    f = F.normalize(data["features"].float(), dim=1)
    for k in range(C_NEW):
        rows = f[data["labels"] == k]
        centre = F.normalize(rows.mean(0), dim=0)
        assert torch.allclose(model.centers[k], centre, atol=1e-6)
        assert torch.allclose(model.boundary[k], (rows @ centre).min(), atol=1e-6)
    assert model.class_mask.all()
    assert (model.align_weight, model.bound_weight) == (100.0, 1.0)


def test_lce_advbct_class_mask_excludes_new_classes(setup, loader):
    model, store = _build("lce", setup, variant="advbct", bound_on_raw_feature=False)
    assert (model.align_weight, model.bound_weight) == (1.0, 1.0)
    meta = store.get("advbct_meta")
    assert model.class_mask.tolist() == [True] * C_OLD + [False] * (C_NEW - C_OLD)
    assert torch.equal(model.centers[:C_OLD], meta["centers"])  # old label k == new class k in the fixture
    assert torch.equal(model.boundary[:C_OLD], meta["theta_max"])
    assert (model.centers[C_OLD:] == 0).all()
    batch = _first_batch(loader)
    new, _ = _outputs(model, batch)
    only_new = batch["labels"] >= C_OLD
    sub = {k: v[only_new] for k, v in batch.items()}
    terms = model.compatibility_loss(sub, ModelOutput.from_embedding(new.embedding[only_new]), None)
    assert terms["align"].item() == 0.0 and terms["bound"].item() == 0.0
    terms["align"].backward()  # graph-connected zero
    # samples of old classes do count
    terms = model.compatibility_loss(batch, new, None)
    assert terms["align"].item() > 0.0


def test_lce_bound_on_raw_feature_flag_changes_the_boundary_term(setup, loader):
    torch.manual_seed(0)
    a, _ = _build("lce", setup, bound_on_raw_feature=False)
    b, _ = _build("lce", setup)  # default: raw feature, as the official code
    b.new.load_state_dict(a.new.state_dict())
    batch = _first_batch(loader)
    ta = a.compatibility_loss(batch, _outputs(a, batch)[0], None)
    tb = b.compatibility_loss(batch, _outputs(b, batch)[0], None)
    assert torch.allclose(ta["align"], tb["align"])
    assert not torch.allclose(ta["bound"], tb["bound"])


# --------------------------------------------------------------------------------------------------- unibct
class RefiningStore(FakeArtifactStore):
    """Fake store with ``embed_new_training_set``: embeds one random image per cached row with the encoder."""

    def __init__(self, old) -> None:
        super().__init__(old)
        self.calls: list[dict] = []

    def embed_new_training_set(self, encoder):
        labels = self.data["old_features_new"]["labels"]
        g = torch.Generator().manual_seed(100 + len(self.calls))
        images = torch.randn(labels.numel(), 3, IMAGE, IMAGE, generator=g)
        was_training = encoder.training
        encoder.eval().to("cpu")  # as extract_features does
        with torch.no_grad():
            feats = encoder(images)
        self.calls.append({"eval_mode": not encoder.net.training, "features": feats})
        encoder.train(was_training)
        return {"features": feats, "labels": labels.clone()}


def test_unibct_default_refine_epochs_scale_with_max_epochs():
    from bctbench.methods.unibct import default_refine_epochs

    assert default_refine_epochs(30) == [10, 20]
    assert default_refine_epochs(3) == [1, 2]
    assert default_refine_epochs(2) == [1]
    assert default_refine_epochs(1) == []


def test_unibct_refines_at_scheduled_epochs_and_changes_prototypes(setup, loader, tmp_path):
    setup3 = dataclasses.replace(setup, max_epochs=3)
    torch.manual_seed(0)
    model = get_method("unibct")(setup3)
    store = RefiningStore(model.old)
    model.prepare_artifacts(store)
    initial = model.prototypes.clone()
    means = store.get("class_means_new")["means"]
    assert torch.allclose(initial, F.normalize(means, dim=1))
    assert model.refine_epochs == [1, 2]
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(model, loader)
    assert model.refined_at == [1, 2] and len(store.calls) == 2
    assert all(c["eval_mode"] for c in store.calls)
    assert model.new.training  # restored after the refinement pass
    assert not torch.allclose(model.prototypes, initial, atol=1e-4)
    data = store.get("old_features_new")
    expected = prototypes.refine_prototypes(
        F.normalize(means, dim=1),
        data["features"].float(),
        store.calls[-1]["features"],
        data["labels"],
        lam=0.9,
        tau=0.05,
    )
    assert torch.allclose(model.prototypes, expected.prototypes, atol=1e-5)
    assert "train/unibct/pi_entropy" in trainer.logged_metrics
    h = float(trainer.logged_metrics["train/unibct/pi_entropy"])
    assert 0.0 < h <= float(np.log(64 // C_NEW)) + 1e-5
    # refined prototypes survive a checkpoint (resume), although the buffer is not persistent
    trainer.save_checkpoint(tmp_path / "u.ckpt")
    fresh = get_method("unibct").load_from_checkpoint(tmp_path / "u.ckpt", map_location="cpu")
    assert torch.equal(fresh.prototypes, model.prototypes)
    fresh.prepare_artifacts(FakeArtifactStore(fresh.old))  # pipeline order on resume: artefacts, then restore
    fresh.on_load_checkpoint(torch.load(tmp_path / "u.ckpt", weights_only=True))
    assert torch.equal(fresh.prototypes, model.prototypes)


def test_unibct_column_affinity_reduces_to_the_class_mean(setup):
    model, store = _build("unibct", setup, store=None, affinity_norm="column")
    model._store = RefiningStore(model.old)
    model.refine_now()
    data = store.get("old_features_new")  # the float16 cache, as refinement sees it
    means, _ = prototypes.class_means(data["features"], data["labels"], C_NEW)
    assert torch.allclose(model.prototypes, F.normalize(means, dim=1), atol=1e-5)


def test_unibct_old_prototype_classes_skip_new_class_samples(setup, loader):
    model, _ = _build("unibct", setup, prototype_classes="old")
    assert model.proto_columns.tolist() == list(range(C_OLD))
    assert model.column_of_class[C_OLD:].tolist() == [-1] * (C_NEW - C_OLD)
    batch = _first_batch(loader)
    new, _ = _outputs(model, batch)
    keep = batch["labels"] >= C_OLD
    sub = {k: v[keep] for k, v in batch.items()}
    term = model.compatibility_loss(sub, ModelOutput.from_embedding(new.embedding[keep]), None)["prototype"]
    assert term.item() == 0.0
    full = get_method("unibct")(setup)
    full.prepare_artifacts(FakeArtifactStore(full.old))
    assert full.proto_columns.tolist() == list(range(C_NEW))


def test_unibct_refinement_without_store_is_a_clear_error(setup):
    model = get_method("unibct")(setup)
    with pytest.raises(Exception, match="artefact store"):
        model.refine_now()


# ---------------------------------------------------------------------------------------------- hot_refresh
def _entropy(g, w, s):
    logp = torch.log_softmax(s * torch.as_tensor(g, dtype=torch.float64) @ w.double().T, dim=1)
    return -(logp.exp() * logp).sum(1)


def test_hot_refresh_uncertainty_order_sorts_by_old_posterior_entropy(setup):
    model = get_method("hot_refresh")(setup)
    orders = model.backfill_orders()
    assert set(orders) == {"uncertainty"}
    rng = np.random.default_rng(0)
    g = rng.normal(size=(50, EMBED)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    order = orders["uncertainty"](None, {"old": g, "new": g})
    assert order.dtype == np.int64 and sorted(order.tolist()) == list(range(50))
    h = _entropy(g, model.old.classifier_weight, model.uncertainty_scale()).numpy()
    assert np.all(np.diff(h[order]) <= 1e-9)
    assert h.std() > 1e-3  # the order is informative on this data
    from bctbench import order_from_scores

    assert order_from_scores(np.array([0.5, 2.0, 0.5, 2.0, 1.0])).tolist() == [1, 3, 4, 0, 2]  # ties by index


def test_hot_refresh_scale_is_the_mean_raw_old_norm_seen_in_training(setup, loader, tmp_path):
    model = get_method("hot_refresh")(setup)
    bn = model.old.model.embedder.neck[-1]
    assert model.uncertainty_scale() == pytest.approx(float(torch.sqrt((bn.weight**2 + bn.bias**2).sum())))
    _trainer(tmp_path, max_steps=2).fit(model, loader)
    images = torch.cat([b["images"] for b, _ in zip(loader, range(2), strict=False)])
    with torch.no_grad():
        expected = model.old(images)[0].norm(dim=1).double().mean()
    assert model.uncertainty_scale() == pytest.approx(float(expected), rel=1e-5)


def test_hot_refresh_loss_uses_local_negatives_without_trainer(setup, loader):
    from bctbench import losses

    model = get_method("hot_refresh")(setup)
    batch = _first_batch(loader)
    new, old = _outputs(model, batch)
    term = model.compatibility_loss(batch, new, old)["ract"]
    ref = losses.ract_loss(
        new.embedding_normed, old.embedding_normed, batch["labels"], temperature=0.01, topk=10
    )
    assert torch.equal(term, ref) and term.dtype == torch.float32


# --------------------------------------------------------------------------------------------------- advbct
def test_advbct_alpha_follows_dann_schedule_and_old_model_is_frozen(setup, loader, tmp_path):
    setup2 = dataclasses.replace(setup, max_epochs=2)
    model, _ = _build("advbct", setup2)
    before = {k: v.clone() for k, v in model.old.state_dict().items()}
    seen = []

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((trainer.current_epoch, batch_idx, pl_module.last_alpha, pl_module.last_adv_weight))

    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[Grab()])
    trainer.fit(model, loader)
    iters = len(loader)
    assert len(seen) == 2 * iters
    for epoch, b, alpha, w_e in seen:
        p = layers.dann_progress(b, epoch, iters_per_epoch=iters, max_epochs=2)
        assert alpha == pytest.approx(layers.dann_alpha(p))
        assert w_e == pytest.approx((2 - epoch + 1) / 2)
    assert seen[0][2] == 0.0 and seen[-1][2] > seen[1][2] > 0.0
    assert "train/advbct/alpha" in trainer.logged_metrics
    for k, v in model.old.state_dict().items():
        assert torch.equal(before[k], v), k


def test_advbct_metadata_is_mapped_to_new_labels(setup):
    model, store = _build("advbct", setup)
    meta = store.get("advbct_meta")
    assert model.has_meta.tolist() == [True] * C_OLD + [False] * (C_NEW - C_OLD)
    assert torch.equal(model.centers[:C_OLD], meta["centers"]) and torch.equal(
        model.r_max[:C_OLD], meta["r_max"]
    )
    assert model.elastic_logits.shape == (C_NEW,)
    assert model.elastic_logits.abs().max() <= 1.0


def test_advbct_elastic_weights_get_gradients_from_violators(setup, loader):
    model, _ = _build("advbct", setup)
    model.r_max = torch.full_like(model.r_max, 0.05)  # every eligible sample violates; r_max < T
    batch = _first_batch(loader)
    new, old = _outputs(model, batch)
    model.compatibility_loss(batch, new, old)["p2s"].backward()
    grad = model.elastic_logits.grad
    assert grad is not None
    assert (grad[:C_OLD] < 0).all()  # a larger radius lowers the hinge: gradient toward σ(w) → 1
    assert (grad[C_OLD:] == 0).all()  # new classes have no metadata
    off, _ = _build("advbct", setup, elastic="off")
    assert off.elastic_logits is None


def test_advbct_p2s_reduction_flag(setup, loader):
    batch = _first_batch(loader)
    values = {}
    for reduction in ("violators", "batch"):
        torch.manual_seed(0)
        model, _ = _build("advbct", setup, elastic="off", p2s_reduction=reduction)
        model.r_max = torch.tensor([10.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # classes 2..4 violate
        new, old = _outputs(model, batch)
        values[reduction] = model.compatibility_loss(batch, new, old)["p2s"].item()
    # 8 samples, labels 0..7: eligible = classes 0..4 (5 samples), violators = classes 2..4 (3 samples)
    assert values["batch"] == pytest.approx(values["violators"] * 3 / 5)


def _adv(model, batch, new_emb, old_emb):
    new = ModelOutput.from_embedding(new_emb)
    old = ModelOutput.from_embedding(old_emb)
    return model.compatibility_loss(batch, new, old)["adv"]


def test_advbct_disc_bn_flag_per_domain_hides_a_shift_joint_does_not(setup, loader):
    batch = _first_batch(loader)
    torch.manual_seed(0)
    new_emb = torch.randn(8, EMBED)
    old_emb = torch.randn(8, EMBED)
    shift = torch.linspace(-2, 2, EMBED)
    results = {}
    for disc_bn in ("per_domain", "joint"):
        torch.manual_seed(1)
        model, _ = _build("advbct", setup, disc_bn=disc_bn)
        model.train()
        results[disc_bn] = (
            _adv(model, batch, new_emb, old_emb),
            _adv(model, batch, new_emb, old_emb + shift),
        )
    a, b = results["per_domain"]
    assert torch.allclose(a, b, atol=1e-5)  # per-domain BN normalises the old batch on its own statistics
    a, b = results["joint"]
    assert not torch.allclose(a, b, atol=1e-3)
    none, _ = _build("advbct", setup, disc_bn="none")
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in none.discriminator.modules())


def test_advbct_disc_input_l2_is_scale_invariant(setup, loader):
    batch = _first_batch(loader)
    torch.manual_seed(0)
    new_emb, old_emb = torch.randn(8, EMBED), torch.randn(8, EMBED)
    for disc_input, invariant in (("l2", True), ("raw", False)):
        torch.manual_seed(1)
        model, _ = _build("advbct", setup, disc_input=disc_input, disc_bn="none")
        model.train()
        a, b = _adv(model, batch, new_emb, old_emb), _adv(model, batch, 3.0 * new_emb, old_emb)
        assert torch.allclose(a, b, atol=1e-6) == invariant


def test_advbct_elastic_weight_decay_gets_its_own_param_group(setup):
    model, _ = _build("advbct", setup)
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert len(groups) == 1 and groups[0]["weight_decay"] == pytest.approx(5e-4)
    assert any(p is model.elastic_logits for p in groups[0]["params"])
    model, _ = _build("advbct", setup, elastic_weight_decay=0.0)
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    assert groups[1]["params"] == [model.elastic_logits]
    assert not any(p is model.elastic_logits for p in groups[0]["params"])
    assert any(p is model.discriminator.net[0].weight for p in groups[0]["params"])
