"""Decode + train-augment throughput of one data-loading worker on the synthetic train tree.

Single process, ``torch.set_num_threads(1)``: what one DataLoader worker delivers. Each image is opened from
the GLDv2 layout (``train/a/b/c/<id>.jpg``), decoded to RGB and passed through the training transform at
64 px (``bctbench.data.build_train_transform`` when importable, else the same composition inline:
RandomResizedCrop(64, scale=(0.5, 1)) + RandomHorizontalFlip + ToTensor + Normalize). Decode-only and
augment-only rows split the cost. Generates the synthetic set first if it is missing.

Target: ≥ 400 images/s per worker.

    python benchmarks/perf/data_throughput.py [--data-root DIR] [--size tiny|default] [--images 2000]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from bctbench.datamodules.synthetic import ensure_synthetic, gldv2_root, synthetic_size  # noqa: E402

TARGET = 400.0


def train_transform(image_size: int):
    try:
        from bctbench.data import build_train_transform

        return build_train_transform(image_size), "bctbench.data.build_train_transform"
    except ImportError:
        import torchvision.transforms as T

        return (
            T.Compose(
                [
                    T.RandomResizedCrop(image_size, scale=(0.5, 1.0)),
                    T.RandomHorizontalFlip(),
                    T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                ]
            ),
            "torchvision (inline fallback)",
        )


def train_paths(root: Path) -> list[Path]:
    with open(root / "train_clean.csv", newline="") as f:
        ids = [iid for row in csv.DictReader(f) for iid in row["images"].split()]
    return [root / "train" / i[0] / i[1] / i[2] / f"{i}.jpg" for i in ids]


def processor_name() -> str:
    name = platform.processor()
    if not name or name == platform.machine():
        try:
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
        except OSError:
            pass
    return name or platform.machine()


def decode(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=os.environ.get("BCTBENCH_DATA", "data"))
    ap.add_argument("--size", choices=("tiny", "default"), default="default")
    ap.add_argument("--images", type=int, default=2000, help="images per measurement (cycled if fewer)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="best of N passes")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    name = "synth" if args.size == "default" else "synth_tiny"
    t0 = time.perf_counter()
    path = ensure_synthetic(Path(args.data_root), name=name, config=synthetic_size(args.size))
    prep = time.perf_counter() - t0
    paths = train_paths(gldv2_root(path))
    n = args.images
    sample = [paths[i % len(paths)] for i in range(n)]
    transform, transform_name = train_transform(args.image_size)
    torch.manual_seed(0)

    for p in sample[:50]:  # warm the page cache and the code paths
        transform(decode(p))

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    decoded = [decode(p) for p in sample]
    t_decode = best(lambda: [decode(p) for p in sample])
    t_aug = best(lambda: [transform(im) for im in decoded])
    t_both = best(lambda: [transform(decode(p)) for p in sample])

    print(
        f"machine: {processor_name()} ({platform.machine()}, {os.cpu_count()} cores), "
        f"python {platform.python_version()}, torch {torch.__version__}, torch threads 1"
    )
    print(
        f"data: {gldv2_root(path)} ({len(paths)} train images, ready in {prep:.1f}s); transform: {transform_name}"
    )
    print(f"{n} images per pass, best of {args.repeats}")
    print(f"{'stage':<20}{'images/s':>12}{'ms/image':>12}")
    for label, t in (("decode", t_decode), ("augment", t_aug), ("decode + augment", t_both)):
        print(f"{label:<20}{n / t:>12.0f}{1000 * t / n:>12.3f}")
    rate = n / t_both
    verdict = "ok" if rate >= TARGET else "BELOW TARGET"
    print(f"per-worker decode + augment: {rate:.0f} images/s (target >= {TARGET:.0f}): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
