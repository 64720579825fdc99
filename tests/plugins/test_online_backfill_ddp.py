"""``online_backfill`` under Lightning DDP (2 CPU processes, gloo): ψ's parameters never reach DDP's reducer
(no unused-parameter error), every rank fits ψ at the end of training, and ψ ends up identical on every rank
(broadcast from rank 0) even when the ranks saw different features."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from bctbench.registry import get_method
from tests.plugins.conftest import EmbeddingArtifactStore, RandomImages, quiet_trainer


class RankNoisyStore(EmbeddingArtifactStore):
    """Each rank gets differently perturbed φ* features, so independent fits would give different ψ."""

    def embed_new_training_set(self, encoder):
        out = super().embed_new_training_set(encoder)
        rank = dist.get_rank() if dist.is_initialized() else 0
        g = torch.Generator().manual_seed(1000 + rank)
        out["features"] = torch.nn.functional.normalize(
            out["features"] + 0.5 * torch.randn(out["features"].shape, generator=g), dim=1
        )
        return out


class DumpPsi(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        state = {
            "psi": {k: v.detach().cpu() for k, v in pl_module.psi.state_dict().items()},
            "fitted": bool(pl_module.psi_fitted),
            "source": pl_module.psi_source.cpu(),
            "calls": len(pl_module._store.calls),
        }
        torch.save(state, f"{self.out_dir}/rank{trainer.global_rank}.pt")


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
def test_ddp_fit_is_identical_on_every_rank(setup, tmp_path):
    torch.manual_seed(0)
    model = get_method("online_backfill")(setup, psi_hidden=32)
    model.prepare_artifacts(RankNoisyStore(model.old))
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, devices=2, strategy="ddp_spawn", callbacks=[DumpPsi(str(tmp_path))]
    )
    trainer.fit(model, DataLoader(RandomImages(), batch_size=8))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(r["fitted"] and r["calls"] == 1 for r in ranks)
    assert torch.equal(ranks[0]["source"], ranks[1]["source"])
    for key, value in ranks[0]["psi"].items():
        assert torch.equal(value, ranks[1]["psi"][key]), key
