"""GLDv2DataModule on the tiny tree: label spaces, batches, class-balanced sampling, sequential steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bctbench.datamodules.gldv2 import GLDv2DataModule
from bctbench.errors import ConfigError, DataError


def _dm(tree, allocation="class30to100", stage="new", **kw) -> GLDv2DataModule:
    args = {"image_size": 16, "batch_size": 4, "num_workers": 0, "seed": 0} | kw
    dm = GLDv2DataModule(tree.root, allocation, stage, **args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _check_batch(dm: GLDv2DataModule, batch: dict) -> None:
    split = dm.split
    if "crop_box" in batch:  # raw pixels + crop boxes; augmented batched after the transfer to the device
        assert batch["images"].dtype == torch.uint8 and batch["crop_box"].shape == (4, 4)
        batch = dm.on_after_batch_transfer(batch, 0)
        assert "crop_box" not in batch and batch["images"].is_contiguous(memory_format=torch.channels_last)
    assert batch["images"].shape == (4, 3, 16, 16) and batch["images"].dtype == torch.float32
    for key in ("labels", "old_labels", "index"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (4,)
    rows = batch["index"].numpy()
    col = "old_label" if dm.stage == "old" else "label"
    assert np.array_equal(batch["labels"].numpy(), split[col].to_numpy()[rows])
    assert np.array_equal(batch["old_labels"].numpy(), split["old_label"].to_numpy()[rows])
    assert split["in_old" if dm.stage == "old" else "in_new"].to_numpy()[rows].all()


def test_class30to100_new_stage(gldv2_tree):
    dm = _dm(gldv2_tree)
    assert (dm.num_old_classes, dm.num_new_classes, dm.num_classes) == (3, 10, 10)
    assert dm.train_labels.size == 35
    batches = list(dm.train_dataloader())
    assert len(batches) == 35 // 4  # drop_last
    for b in batches:
        _check_batch(dm, b)
    seen = np.concatenate([b["index"].numpy() for b in batches])
    assert np.unique(seen).size == seen.size


def test_class30to100_old_stage(gldv2_tree):
    dm = _dm(gldv2_tree, stage="old", drop_last=False)
    assert dm.num_classes == 3
    labels = dm.train_labels
    assert labels.min() == 0 and labels.max() == 2
    batches = list(dm.train_dataloader())
    assert sum(len(b["index"]) for b in batches) == labels.size
    for b in batches:
        if len(b["index"]) == 4:
            _check_batch(dm, b)


def test_shuffle_is_seeded(gldv2_tree):
    a = [b["index"].tolist() for b in _dm(gldv2_tree, seed=3).train_dataloader()]
    b = [b["index"].tolist() for b in _dm(gldv2_tree, seed=3).train_dataloader()]
    assert a == b


def test_class_balanced_batches(gldv2_tree):
    dm = _dm(gldv2_tree, allocation="data30to100", sampler="class_balanced", m_per_class=2)
    for batch in dm.train_dataloader():
        _check_batch(dm, batch)
        _, counts = np.unique(batch["labels"].numpy(), return_counts=True)
        assert counts.tolist() == [2, 2]


def test_offline_image_list(gldv2_tree):
    dm = _dm(gldv2_tree, allocation="openclass30to70", stage="new")
    old = dm.train_image_paths_and_labels("old")
    new = dm.train_image_paths_and_labels("new")
    assert len(old.paths) + len(new.paths) == 35
    assert set(old.index.tolist()).isdisjoint(new.index.tolist())
    assert (new.old_labels == -1).all() and (old.labels == old.old_labels).all()
    assert dm.num_classes == 7 and dm.num_old_classes == 3
    assert all(p.endswith(".jpg") for p in old.paths)


def test_sequential_step(gldv2_tree):
    dm0 = _dm(gldv2_tree, allocation="seq_class10to30to100", stage="new", step=0)
    assert (dm0.num_old_classes, dm0.num_new_classes) == (1, 3)
    dm1 = _dm(gldv2_tree, allocation="seq_class10to30to100", stage="old", step=1)
    assert dm1.num_classes == 3
    assert np.array_equal(dm1.train_labels, dm0.train_labels)  # φ1's training set serves both upgrades
    batch = next(iter(dm1.train_dataloader()))
    _check_batch(dm1, batch)


def test_config_errors(gldv2_tree):
    with pytest.raises(ConfigError):
        GLDv2DataModule(gldv2_tree.root, "seq_data10to30to100", "new")
    with pytest.raises(ConfigError):
        GLDv2DataModule(gldv2_tree.root, "class30to100", "new", step=0)
    with pytest.raises(ConfigError):
        GLDv2DataModule(gldv2_tree.root, "class30to100", "newest")


def test_corrupt_training_image(gldv2_tree, helpers):
    dm = _dm(gldv2_tree, allocation="data30to100", drop_last=False)
    victim = dm.split["image_id"][0]
    helpers.gldv2_path(gldv2_tree.root, "train", victim).write_bytes(b"broken")
    with pytest.raises(DataError) as excinfo:
        list(dm.train_dataloader())
    assert "\n" not in str(excinfo.value) and f"{victim}.jpg" in str(excinfo.value)
    dm_skip = _dm(gldv2_tree, allocation="data30to100", drop_last=False, skip_corrupt=True)
    n = sum(len(b["index"]) for b in dm_skip.train_dataloader())
    assert n == 35 and dm_skip.train_dataset.skipped == 1


def test_lightning_fit_consumes_batches(gldv2_tree):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.head = torch.nn.Linear(3, num_classes)
            self.seen: list[dict] = []

        def training_step(self, batch, batch_idx):
            self.seen.append({k: v.shape for k, v in batch.items()})
            return torch.nn.functional.cross_entropy(self.head(batch["images"].mean((2, 3))), batch["labels"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = GLDv2DataModule(
        gldv2_tree.root,
        "class30to100",
        "old",
        image_size=16,
        batch_size=4,
        num_workers=0,
        sampler="class_balanced",
        m_per_class=2,
    )
    dm.prepare_data()
    model = Probe(dm.num_classes)
    trainer = L.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 2 and model.seen[0]["images"] == (4, 3, 16, 16)
