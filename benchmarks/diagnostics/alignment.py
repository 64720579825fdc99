"""Why is a trained method (in)compatible? Alignment and weight-scale statistics of a finished run.

    python benchmarks/diagnostics/alignment.py --benchmark synth_class30to100 --method contra --seed 0 \
        [--compare independent bct] [--batches 8]

For each run (the method's ``last.ckpt`` under the cache root) it prints, on the first ``--batches`` training
batches of the new split with the models in eval mode:

* ``pos cos``: mean cosine between the new and the old embedding of the *same* image (1 = identical
  direction, 0 = unrelated). Cross-test retrieval needs this to be large.
* ``hard-neg cos``: mean over images of the largest cosine between the new embedding and the old embedding of
  an image of *another* class in the batch. ``pos cos − hard-neg cos`` is the margin the point-to-point
  losses act on; a contrastive loss at temperature τ is satisfied once that margin is a few τ.
* ``new→old top-1``: share of images whose nearest old embedding in the batch (other images only) has the
  same label.
* ``BN running var``: range of the running variances of the new model's BatchNorm layers, next to the old
  model's. Values orders of magnitude above the old model's mean the pre-BN weights grew (BN makes them
  scale-invariant, so large weights shrink the effective learning rate).

Read-only: nothing is trained or written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bctbench.pipeline import RunContext, Runtime, build_datamodule  # noqa: E402
from bctbench.registry import get_method  # noqa: E402


def bn_running_var_range(module: torch.nn.Module) -> tuple[float, float]:
    variances = [
        m.running_var for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    if not variances:
        return float("nan"), float("nan")
    allv = torch.cat([v.flatten() for v in variances])
    return float(allv.min()), float(allv.max())


@torch.no_grad()
def alignment(method, batches: list[dict]) -> dict[str, float]:
    """``method.new`` / ``method.old`` map ``images[B, 3, H, W]`` to ``(embedding[B, d], logits)``."""
    method.eval()
    pos, hard_neg, top1, n = 0.0, 0.0, 0.0, 0
    for batch in batches:
        images, labels = batch["images"], batch["labels"]
        new = F.normalize(method.new(images)[0].float(), dim=1)
        old = F.normalize(method.old(images)[0].float(), dim=1)
        sim = new @ old.T  # [B, B]: row = new embedding of image i, column = old embedding of image j
        same = labels[:, None] == labels[None, :]
        pos += float(sim.diagonal().sum())
        hard_neg += float(sim.masked_fill(same, -2.0).amax(dim=1).clamp(min=-1.0).sum())
        others = sim.clone().fill_diagonal_(-2.0)
        top1 += float(same.gather(1, others.argmax(dim=1, keepdim=True)).float().sum())
        n += labels.numel()
    return {"pos cos": pos / n, "hard-neg cos": hard_neg / n, "new→old top-1": top1 / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="synth_class30to100")
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", nargs="*", default=[], help="more methods of the same benchmark and seed")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--data-root")
    p.add_argument("--cache-root")
    args = p.parse_args()
    torch.manual_seed(0)
    ctx = RunContext.create(args.benchmark, args.data_root, args.cache_root)
    dm = build_datamodule(ctx, "new", Runtime(num_workers=0), args.seed)
    dm.prepare_data()
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) >= args.batches:
            break
    print(f"{args.benchmark}, seed {args.seed}, {sum(b['labels'].numel() for b in batches)} training images")
    header = (
        f"{'method':<14}{'pos cos':>9}{'hard-neg cos':>14}{'new→old top-1':>15}  BN running var new | old"
    )
    print(header)
    for name in [args.method, *args.compare]:
        ckpt = ctx.run_dir(name, args.seed) / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            print(f"{name:<14}no checkpoint at {ckpt}")
            continue
        method = get_method(name).load_from_checkpoint(ckpt, map_location="cpu")
        stats = alignment(method, batches)
        lo_n, hi_n = bn_running_var_range(method.new)
        lo_o, hi_o = bn_running_var_range(method.old)
        print(
            f"{name:<14}{stats['pos cos']:>9.3f}{stats['hard-neg cos']:>14.3f}{stats['new→old top-1']:>15.3f}"
            f"  {lo_n:.3g}–{hi_n:.3g} | {lo_o:.3g}–{hi_o:.3g}"
        )


if __name__ == "__main__":
    main()
