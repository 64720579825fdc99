"""Behavioural tests of the ``online_backfill`` plugin (docs/methods.md §12.1, a reconstruction) on the tiny
fixtures of ``conftest.py``: backbone = ``independent``, ψ fitted at the end of training on cached features,
merge-mode encoders, checkpoints."""

from __future__ import annotations

import dataclasses

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from bctbench import BCTBenchError, losses
from bctbench.methods.online_backfill import OnlineBackfill, pk_batches
from bctbench.registry import get_method
from tests.plugins.conftest import EMBED, IMAGE, EmbeddingArtifactStore, RandomImages, quiet_trainer

FAST = {"psi_hidden": 64}


class BackfillStore(EmbeddingArtifactStore):
    """Fake store whose ``old_features_new`` are the frozen old model's unit-norm features (float16, as cached)
    of the same fixed images that ``embed_new_training_set`` embeds."""

    def __init__(self, old) -> None:
        super().__init__(old)
        with torch.no_grad():
            feats = F.normalize(old.model.embedder(self.images).float(), dim=1)
        self.data["old_features_new"]["features"] = feats.half()


def _build(setup, store=True, seed=0, **hparams):
    torch.manual_seed(seed)
    model = get_method("online_backfill")(setup, **{**FAST, **hparams})
    if store:
        model.prepare_artifacts(BackfillStore(model.old))
    return model


def _trainer(tmp_path, max_epochs=1, callbacks=None):
    return quiet_trainer(
        tmp_path, max_epochs=max_epochs, enable_checkpointing=bool(callbacks), callbacks=callbacks or []
    )


def _rev_on_store(model) -> float:
    """L_rev of the current ψ (eval mode) over every row of the store."""
    store = model._store
    with torch.no_grad():
        f = F.normalize(model.new.embedder.eval()(store.images).float(), dim=1)
        q = F.normalize(model.psi.eval()(f), dim=1)
    g = store.get("old_features_new")["features"].float()
    return float(losses.reverse_transform_loss(q, F.normalize(g, dim=1)))


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- metadata
def test_plugin_registers_as_a_merge_mode_reconstruction():
    import bctbench.methods.online_backfill as module

    cls = get_method("online_backfill")
    assert cls is OnlineBackfill
    assert cls.backfill_mode == "merge"
    assert cls.handles_dim_mismatch and not cls.needs_old_forward
    assert cls.required_artifacts == frozenset({"old_features_new"})
    assert "2301.03767" in cls.paper and "RECONSTRUCTION" in module.__doc__


def test_backbone_is_independent_and_heads_leave_the_global_rng_alone(setup):
    torch.manual_seed(0)
    indep = get_method("independent")(setup)
    after_indep = torch.rand(3)
    model = _build(setup, store=False)
    after_ob = torch.rand(3)
    assert torch.equal(after_indep, after_ob), "building ψ consumed the global RNG"
    assert _equal_states(_state(indep.new), _state(model.new))
    batch = next(iter(DataLoader(RandomImages(), batch_size=8)))
    assert model.compatibility_loss(batch, model.forward_new(batch["images"]), None) == {}


def test_backbone_optimizer_excludes_psi_and_h(setup):
    for learn_h in (False, True):
        model = _build(setup, store=False, learn_new_embedding=learn_h)
        heads = [model.psi] + ([model.h] if learn_h else [])
        head_ids = {id(p) for m in heads for p in m.parameters()}
        assert head_ids
        opt = model.configure_optimizers()["optimizer"]
        opt_ids = {id(p) for group in opt.param_groups for p in group["params"]}
        assert not (opt_ids & head_ids)
        assert opt_ids == {id(p) for p in model.new.parameters()}
        assert not any(p.requires_grad for m in heads for p in m.parameters())  # DDP never waits for them


def test_training_equals_independent_and_fits_psi_once_at_the_end(setup, tmp_path):
    setup2 = dataclasses.replace(setup, max_epochs=2)
    torch.manual_seed(0)
    indep = get_method("independent")(setup2)
    pl.seed_everything(5, verbose=False)
    _trainer(tmp_path / "i", max_epochs=2).fit(indep, DataLoader(RandomImages(), batch_size=8, shuffle=True))
    model = _build(setup2)
    old_before = _state(model.old)
    pl.seed_everything(5, verbose=False)
    trainer = _trainer(tmp_path / "o", max_epochs=2)
    trainer.fit(model, DataLoader(RandomImages(), batch_size=8, shuffle=True))
    assert _equal_states(_state(indep.new), _state(model.new)), "φ* differs from independent"
    assert len(model._store.calls) == 1 and model._store.calls[0]["eval_mode"]
    assert bool(model.psi_fitted) and not model.psi.training
    for key in ("psi_rev_final", "psi_mc_final", "psi_rev_mean", "psi_mc_mean"):
        assert f"train/online_backfill/{key}" in trainer.logged_metrics
    assert _equal_states(old_before, _state(model.old)) and not model.old.training


# ------------------------------------------------------------------------------------------- ψ fitting
def test_pk_batches_sample_classes_and_images_as_documented():
    labels = torch.tensor([0] * 6 + [1] * 2 + [2] * 1 + [3] * 5)  # class 2 has a single image
    gen = torch.Generator().manual_seed(0)
    batches = pk_batches(labels, classes_per_batch=2, samples_per_class=4, num_batches=50, generator=gen)
    seen = set()
    for rows in batches:
        assert rows.numel() == 8
        classes = labels[rows].view(2, 4)
        assert (classes == classes[:, :1]).all() and classes[0, 0] != classes[1, 0]
        for block in rows.view(2, 4):
            c = int(labels[block[0]])
            seen.add(c)
            if c in (0, 3):  # enough images: without replacement
                assert block.unique().numel() == 4
            else:  # class 1: both images, then draws with replacement
                assert set(block.tolist()) == {6, 7}
    assert seen == {0, 1, 3}
    again = pk_batches(
        labels,
        classes_per_batch=2,
        samples_per_class=4,
        num_batches=50,
        generator=torch.Generator().manual_seed(0),
    )
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    with pytest.raises(BCTBenchError, match=">= 2 images"):
        pk_batches(torch.arange(4), classes_per_batch=2, samples_per_class=2, num_batches=1, generator=gen)


def test_fitting_reduces_the_loss_and_aligns_psi_with_the_old_space(setup):
    model = _build(setup, psi_epochs=100)
    model.psi.reset_parameters(torch.Generator().manual_seed(0))
    before = _rev_on_store(model)
    model.train()
    stats = model.fit_reverse_transform()
    assert model.new.training and not model.psi.training  # modes restored / ψ left in eval
    after = _rev_on_store(model)
    assert after < 0.25 * before
    hist = model.psi_history
    assert len(hist) == 100 and hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["mc"] < hist[0]["mc"]
    assert stats["psi_rev_final"] == pytest.approx(hist[-1]["rev"])
    assert stats["psi_mc_mean"] == pytest.approx(sum(h["mc"] for h in hist) / 100)


def test_fitting_is_deterministic_for_a_seed(setup):
    a = _build(setup, seed=3)
    b = _build(setup, seed=3)
    assert a.run_seed == b.run_seed == 3
    a.fit_reverse_transform()
    b.fit_reverse_transform()
    assert _equal_states(_state(a.psi), _state(b.psi))
    c = _build(setup, seed=3, psi_seed=1)
    c.fit_reverse_transform()
    assert not torch.equal(c.psi.mlp[0].weight, a.psi.mlp[0].weight)
    # refitting the same φ* reproduces ψ exactly (fresh initialisation from the same generator seed)
    first = _state(a.psi)
    a.fit_reverse_transform()
    assert _equal_states(first, _state(a.psi))


def test_fitting_without_store_is_a_clear_error(setup):
    model = _build(setup, store=False)
    with pytest.raises(BCTBenchError, match="artefact store"):
        model.fit_reverse_transform()


# --------------------------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("embed_dim", [EMBED, 2 * EMBED])
def test_encoders_expose_old_new_and_new_to_old(setup, embed_dim):
    model = _build(dataclasses.replace(setup, embed_dim=embed_dim))
    assert model.psi.skip == (embed_dim == EMBED)
    model.fit_reverse_transform()
    encoders = model.encoders()
    assert set(encoders) == {"old", "new", "new->old"}
    x = torch.randn(5, 3, IMAGE, IMAGE)
    dims = {"old": EMBED, "new": embed_dim, "new->old": EMBED}
    for key, enc in encoders.items():
        enc.eval()
        out = enc(x)
        assert out.dtype == torch.float32 and out.shape == (5, dims[key]), key
        assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5), key
    model.eval()
    with torch.no_grad():
        expected = F.normalize(model.psi(F.normalize(model.new.embedder(x), dim=1)), dim=1)
    torch.testing.assert_close(encoders["new->old"](x), expected)
    ident = encoders["new->old"].identity
    assert len({e.identity for e in encoders.values()}) == 3
    with torch.no_grad():
        model.psi.mlp[3].bias.add_(0.1)
    assert model.encoders()["new->old"].identity != ident


def test_evaluating_an_unfitted_or_stale_psi_raises(setup, tmp_path):
    model = _build(setup)
    with pytest.raises(BCTBenchError, match="not been fitted"):
        model.encoders()
    model.fit_reverse_transform()
    model.encoders()
    with torch.no_grad():
        next(model.new.embedder.parameters()).add_(0.01)
    with pytest.raises(BCTBenchError, match="different new model"):
        model.encoders()
    model.fit_reverse_transform()
    model.encoders()
    # more backbone training (a run stopped by max_steps never refits): ψ is marked unfitted
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, DataLoader(RandomImages(), batch_size=8))
    assert not bool(model.psi_fitted)
    with pytest.raises(BCTBenchError, match="not been fitted"):
        model.encoders()


def test_learned_new_embedding_replaces_the_new_encoder(setup):
    model = _build(setup, learn_new_embedding=True)
    assert model.h is not None and model.h.skip
    model.fit_reverse_transform()
    assert not model.h.training
    encoders = model.encoders()
    assert set(encoders) == {"old", "new", "new->old"}
    x = torch.randn(4, 3, IMAGE, IMAGE)
    model.eval()
    with torch.no_grad():
        f = F.normalize(model.new.embedder(x), dim=1)
    torch.testing.assert_close(encoders["new"].eval()(x), F.normalize(model.h(f), dim=1))
    plain = _build(setup)
    plain.fit_reverse_transform()
    assert plain.h is None and not torch.allclose(plain.encoders()["new"].eval()(x), encoders["new"](x))


# ------------------------------------------------------------------------------------------- checkpoints
def test_last_checkpoint_holds_the_fitted_psi_and_resume_refits(setup, tmp_path):
    setup2 = dataclasses.replace(setup, max_epochs=2)
    model = _build(setup2)
    ckpt_dir = tmp_path / "checkpoints"
    callback = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="epoch{epoch:03d}",
        auto_insert_metric_name=False,
        save_last=True,
        save_top_k=-1,
        every_n_epochs=1,
    )  # as the pipeline
    loader = DataLoader(RandomImages(), batch_size=8)
    _trainer(tmp_path, max_epochs=2, callbacks=[callback]).fit(model, loader)
    assert bool(model.psi_fitted)
    loaded = OnlineBackfill.load_from_checkpoint(ckpt_dir / "last.ckpt", map_location="cpu")
    assert bool(loaded.psi_fitted)
    assert _equal_states(_state(model.psi), _state(loaded.psi))
    x = torch.randn(3, 3, IMAGE, IMAGE)
    model.eval()
    torch.testing.assert_close(
        loaded.encoders()["new->old"].eval()(x), model.encoders()["new->old"].eval()(x)
    )
    # the first epoch's checkpoint predates the fit: unusable for evaluation, and resuming from it refits
    mid = OnlineBackfill.load_from_checkpoint(ckpt_dir / "epoch000.ckpt", map_location="cpu")
    assert not bool(mid.psi_fitted)
    with pytest.raises(BCTBenchError, match="not been fitted"):
        mid.encoders()
    resumed = _build(setup2)
    _trainer(tmp_path / "resume", max_epochs=2).fit(resumed, loader, ckpt_path=ckpt_dir / "epoch000.ckpt")
    assert bool(resumed.psi_fitted) and len(resumed._store.calls) == 1
    resumed.encoders()
