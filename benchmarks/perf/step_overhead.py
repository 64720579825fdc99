"""Training-step time of every registered method relative to ``independent``, and Lightning's overhead
relative to a plain PyTorch loop of the same model.

Same batch for everyone (random images held in memory, so data loading is excluded), the default
synthetic benchmark's model sizes (``tinycnn`` at 64 px, embedding and class counts from the spec unless
overridden). Each method is timed inside a real ``Trainer`` (per-step wall time between
``on_train_batch_start`` and ``on_train_batch_end``, after warm-up steps). Methods are timed in interleaved
rounds (order rotated each round) so that drifts of the machine's speed hit all of them alike; each round's
ratio uses that round's ``independent``, and the median ratio over rounds is reported with its range.

Targets (issue 4/5): ≤ 1.15× ``independent`` for methods without a per-batch old forward, ≤ 1.6× for those
with one; Lightning vs plain loop ≤ 1.05×.

    python benchmarks/perf/step_overhead.py [--benchmark synth_class30to100] [--steps 15] [--rounds 3] [--methods bct l2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bctbench.artifacts import RandomArtifactStore
from bctbench.config import load_benchmark
from bctbench.method import MethodSetup, build_optimizer
from bctbench.models import EmbeddingModel
from bctbench.old_model import save_old_checkpoint
from bctbench.registry import get_method, list_methods

warnings.filterwarnings("ignore")


class SameBatch(Dataset):
    """``n`` copies of one fixed batch worth of images (indexing returns sample i of that batch)."""

    def __init__(self, batch: dict[str, torch.Tensor], n_batches: int) -> None:
        self.batch, self.n = batch, n_batches * len(batch["labels"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = i % len(self.batch["labels"])
        return {k: v[j] for k, v in self.batch.items()}


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._t = warmup, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._t)


def lightning_step_time(model, loader, steps: int, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        max_steps=steps + warmup,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, loader)
    return statistics.median(timer.times)


def plain_step_time(model: EmbeddingModel, batch, optimizer_spec, steps: int, warmup: int) -> float:
    opt = build_optimizer(model.parameters(), optimizer_spec, 1)["optimizer"]
    model.train()
    times = []
    for i in range(steps + warmup):
        t = time.perf_counter()
        _, logits = model(batch["images"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", default="synth_class30to100")
    p.add_argument("--steps", type=int, default=15, help="timed steps per method and round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; ratios are medians over rounds")
    p.add_argument("--num-classes", type=int, default=720, help="new classes (old: 30%%)")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: as `bctbench run` trains on CPU, cores minus the spec's loader workers)",
    )
    args = p.parse_args()
    spec = load_benchmark(args.benchmark)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - spec.training.num_workers))
    b, s, d = spec.training.batch_size, spec.training.image_size, spec.models.embed_dim
    c_new = args.num_classes
    c_old = int(c_new * spec.data.ratio)
    old_label_of_class = torch.tensor([c if c < c_old else -1 for c in range(c_new)])
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c_new, (b,), generator=g)
    batch = {
        "images": torch.randn(b, 3, s, s, generator=g),
        "labels": labels,
        "old_labels": old_label_of_class[labels],
        "index": torch.arange(b),
    }
    loader = DataLoader(SameBatch(batch, args.steps + args.warmup + 2), batch_size=b, shuffle=False)
    optimizer = {
        "name": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": [],
        "gamma": 0.1,
    }

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        old = EmbeddingModel(spec.models.old_backbone, d, c_old)
        ckpt = Path(tmp) / "old.pt"
        sha = save_old_checkpoint(old, ckpt, backbone=spec.models.old_backbone, meta={})
        setup = MethodSetup(
            backbone_new=spec.models.new_backbone,
            backbone_old=spec.models.old_backbone,
            embed_dim=d,
            num_classes_new=c_new,
            num_classes_old=c_old,
            old_checkpoint=str(ckpt),
            old_identity=sha,
            optimizer=optimizer,
            max_epochs=spec.training.epochs,
            image_size=s,
        )
        print(
            f"machine: {platform.machine()} {platform.processor() or ''} | cpus {os.cpu_count()} | "
            f"torch threads {torch.get_num_threads()} | torch {torch.__version__}"
        )
        print(
            f"benchmark {spec.name}: batch {b}, {s}px, {spec.models.new_backbone}, d={d}, C_new={c_new}, "
            f"C_old={c_old}; {args.rounds} rounds of {args.steps} steps after {args.warmup} warm-up\n"
        )
        names = list(args.methods or list_methods())
        if "independent" not in names:
            names.insert(0, "independent")
        models = {}
        for name in names:
            cls = get_method(name)
            torch.manual_seed(0)
            models[name] = cls(setup)
            if cls.required_artifacts:
                models[name].prepare_artifacts(RandomArtifactStore(models[name].old, old_label_of_class))
        # rounds: every method (and the plain loop) is timed once per round, so a drift of the machine's speed
        # hits all of them alike; each round's ratios use that round's `independent`
        times: dict[str, list[float]] = {n: [] for n in names}
        light, plain = [], []
        for r in range(args.rounds):
            shift = r % len(
                names
            )  # rotate the order so that no method always runs first after the plain loop
            for name in names[shift:] + names[:shift]:
                times[name].append(lightning_step_time(models[name], loader, args.steps, args.warmup))
            torch.manual_seed(0)
            plain.append(
                plain_step_time(
                    EmbeddingModel(spec.models.new_backbone, d, c_new),
                    batch,
                    optimizer,
                    args.steps,
                    args.warmup,
                )
            )
            light.append(times["independent"][-1])
        print(
            f"{'method':14s} {'old fwd':>7s} {'ms/step':>9s} {'× indep.':>9s} {'(min–max)':>13s} {'target':>7s}  ok"
        )
        for name in names:
            ratios = [t / b for t, b in zip(times[name], times["independent"], strict=True)]
            ratio = statistics.median(ratios)
            target = 1.6 if get_method(name).needs_old_forward else 1.15
            print(
                f"{name:14s} {'yes' if get_method(name).needs_old_forward else 'no':>7s} "
                f"{1000 * statistics.median(times[name]):9.1f} {ratio:9.2f} "
                f"{f'{min(ratios):.2f}–{max(ratios):.2f}':>13s} {target:7.2f}  {'✓' if ratio <= target else '✗'}"
            )
        overhead = [t_l / t_p for t_l, t_p in zip(light, plain, strict=True)]
        print(
            f"\nLightning vs plain PyTorch loop (independent): {1000 * statistics.median(light):.1f} ms vs "
            f"{1000 * statistics.median(plain):.1f} ms -> {statistics.median(overhead):.3f}× "
            f"(rounds {min(overhead):.3f}–{max(overhead):.3f}; target ≤ 1.05)"
        )


if __name__ == "__main__":
    main()
