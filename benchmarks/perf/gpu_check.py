"""One-GPU check of the GLDv2 protocol's costs on random inputs (no dataset): ``python benchmarks/perf/gpu_check.py``.

Sections (each one guarded: a failure prints ``FAIL <section>: <error>`` and the script goes on; the exit
code is 1 if any section failed, 0 otherwise; a section that cannot run here prints ``SKIP``):

* ``train:<method>`` for ``independent``, ``bct``, ``advbct`` (``--methods``): the method built through the
  plugin API (``get_method(name)(MethodSetup(...))``, old model = a random ``EmbeddingModel`` saved with
  ``save_old_checkpoint``, artefacts from ``RandomArtifactStore``), then ``--steps`` timed optimiser steps
  after ``--warmup`` (``on_train_batch_start`` + ``training_step`` under ``torch.autocast(bfloat16)`` +
  backward + ``step``, the method's own optimiser) on random batches held on the device; images/s,
  ms/step and peak device memory. ``advbct`` includes the old model's forward on every batch.
* ``extract:new`` / ``extract:old``: feature extraction (eval mode, no grad, autocast, features copied to the
  host as ``extract_features`` does) of the new and the old backbone; images/s.
* ``search:torch``: ``rank(topk)`` of ``--queries`` x ``--gallery`` random unit features (d = ``--dim``,
  NumPy inputs as the evaluator passes them) with the torch backend on the device.
* ``search:faiss``: the same with ``backend="faiss"`` (faiss-gpu on CUDA, skipped where faiss has no GPU
  support; the CPU index when ``--device cpu``); reports whether the ranking equals the torch backend's.
* ``ddp``: a Lightning ``Trainer(strategy="ddp", devices=1)`` fitting ``bct`` for a few steps on a tiny
  random dataset (NCCL on CUDA, gloo on CPU), with one ``all_reduce`` at the end; pass/fail.

Defaults: R18 old -> R50 new (timm, random init), 224 px, batch 256, d = 256, 81,313 new classes (GLDv2-clean)
and 30 % of them old, bf16 autocast on CUDA, search 117,577 x 761,757 top-100. On one H100 the whole script is
meant to take well under 8 minutes. ``--tiny`` makes it CPU-sized (tinycnn backbones, 32 px, a few steps,
2k x 10k search, fp32 unless ``--amp bf16``, DDP over gloo):

    python benchmarks/perf/gpu_check.py                      # one GPU
    python benchmarks/perf/gpu_check.py --tiny --device cpu  # seconds, any machine
    python benchmarks/perf/gpu_check.py --sections train extract --batch-size 128 --steps 30
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from bctbench.artifacts import RandomArtifactStore  # noqa: E402
from bctbench.evaluation import search  # noqa: E402
from bctbench.method import Encoder, MethodSetup  # noqa: E402
from bctbench.models import EmbeddingModel  # noqa: E402
from bctbench.old_model import save_old_checkpoint  # noqa: E402
from bctbench.registry import get_method  # noqa: E402

SECTIONS = ("train", "extract", "search", "faiss", "ddp")
GLDV2_CLASSES = 81_313  # GLDv2-clean training classes


class Skip(Exception):
    """A section that cannot run on this machine (printed as SKIP, not a failure)."""


# ------------------------------------------------------------------------------------------------------------
# set-up
# ------------------------------------------------------------------------------------------------------------


class Context:
    """Old checkpoint, method setup and the label map shared by the sections."""

    def __init__(self, args: argparse.Namespace, tmp: str) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.c_new = args.classes_new
        self.c_old = max(1, int(self.c_new * args.old_ratio))
        self.old_label_of_class = torch.tensor([c if c < self.c_old else -1 for c in range(self.c_new)])
        torch.manual_seed(0)
        self.old_net = EmbeddingModel(args.backbone_old, args.embed_dim, self.c_old)
        ckpt = Path(tmp) / "old.pt"
        identity = save_old_checkpoint(self.old_net, ckpt, backbone=args.backbone_old, meta={})
        self.setup = MethodSetup(
            backbone_new=args.backbone_new,
            backbone_old=args.backbone_old,
            embed_dim=args.embed_dim,
            num_classes_new=self.c_new,
            num_classes_old=self.c_old,
            old_checkpoint=str(ckpt),
            old_identity=identity,
            optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "milestones": []},
            max_epochs=30,
            image_size=args.image_size,
        )
        self.tmp = tmp
        self._store: RandomArtifactStore | None = None

    def autocast(self):
        if self.args.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def build_method(self, name: str, setup: MethodSetup | None = None):
        cls = get_method(name)
        torch.manual_seed(0)
        model = cls(setup or self.setup)
        if cls.required_artifacts:
            if (
                self._store is None
            ):  # one store for every method (same old checkpoint); building it is not free
                self._store = RandomArtifactStore(model.old, self.old_label_of_class)
            model.prepare_artifacts(self._store)
        return model

    def random_batch(self, batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator(device=self.device).manual_seed(seed)
        labels = torch.randint(0, self.c_new, (batch,), device=self.device, generator=g)
        return {
            "images": torch.randn(batch, 3, size, size, device=self.device, generator=g),
            "labels": labels,
            "old_labels": self.old_label_of_class.to(self.device)[labels],
            "index": torch.arange(batch, device=self.device),
        }

    def peak_memory(self) -> str:
        if self.device.type != "cuda":
            return ""
        return f", peak {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)


# ------------------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------------------


def train_section(ctx: Context, name: str) -> str:
    args = ctx.args
    model = ctx.build_method(name).to(ctx.device)
    model.train()
    optimizer = model.configure_optimizers()["optimizer"]
    batches = [ctx.random_batch(args.batch_size, args.image_size, seed) for seed in range(2)]

    def step(i: int) -> None:
        batch = batches[i % len(batches)]
        model.on_train_batch_start(batch, i)
        with ctx.autocast():
            loss = model.training_step(batch, i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(args.warmup):
        step(i)
    ctx.sync()
    ctx.reset_peak()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    ctx.sync()
    dt = time.perf_counter() - t0
    old_fwd = "with old forward" if model.needs_old_forward else "no old forward"
    return (
        f"{args.batch_size * args.steps / dt:8.1f} img/s ({1000 * dt / args.steps:.1f} ms/step, "
        f"{old_fwd}{ctx.peak_memory()})"
    )


def extract_section(ctx: Context, which: str) -> str:
    args = ctx.args
    if which == "new":
        torch.manual_seed(1)
        net = EmbeddingModel(args.backbone_new, args.embed_dim, ctx.c_new)
    else:
        net = ctx.old_net
    encoder = Encoder(net.embedder, which).to(ctx.device).eval()
    images = ctx.random_batch(args.extract_batch_size, args.image_size, 7)["images"]
    outs = []

    def forward() -> None:
        with torch.no_grad(), ctx.autocast():
            out = encoder(images)
        outs.append(out.float().cpu().numpy())

    for _ in range(max(1, args.warmup)):
        forward()
    ctx.sync()
    ctx.reset_peak()
    outs.clear()
    t0 = time.perf_counter()
    for _ in range(args.extract_batches):
        forward()
    ctx.sync()
    dt = time.perf_counter() - t0
    feats = np.concatenate(outs)
    if not np.isfinite(feats).all():
        raise RuntimeError("non-finite features")
    n = args.extract_batch_size * args.extract_batches
    backbone = args.backbone_new if which == "new" else args.backbone_old
    return f"{n / dt:8.1f} img/s ({backbone}, batch {args.extract_batch_size}{ctx.peak_memory()})"


class SearchData:
    """Random unit query / gallery features (float32 NumPy, as the evaluator holds them), made once."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._data: tuple[np.ndarray, np.ndarray] | None = None
        self.torch_ranks: np.ndarray | None = None

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        if self._data is None:
            a, dev = self.ctx.args, self.ctx.device
            g = torch.Generator(device=dev).manual_seed(3)

            def unit(n: int) -> np.ndarray:
                out = np.empty((n, a.dim), np.float32)
                for s in range(0, n, 1 << 16):
                    x = torch.randn(min(1 << 16, n - s), a.dim, device=dev, generator=g)
                    out[s : s + x.shape[0]] = torch.nn.functional.normalize(x, dim=1).cpu().numpy()
                return out

            self._data = unit(a.queries), unit(a.gallery)
        return self._data


def search_section(ctx: Context, data: SearchData, backend: str) -> str:
    args = ctx.args
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError as err:
            raise Skip("faiss is not installed") from err
        if ctx.device.type == "cuda" and not search.faiss_gpu_available():
            raise Skip("faiss has no GPU support here (faiss-cpu); pip install faiss-gpu to time it")
    q, g = data.get()
    search.rank(q[:64], g[: min(len(g), 4096)], topk=args.topk, backend=backend, device=ctx.device)  # warm-up
    ctx.sync()
    ctx.reset_peak()
    t0 = time.perf_counter()
    ranks = search.rank(q, g, topk=args.topk, backend=backend, device=ctx.device)
    ctx.sync()
    dt = time.perf_counter() - t0
    gflops = 2.0 * q.shape[0] * g.shape[0] * q.shape[1] / dt / 1e9
    same = ""
    if backend == "torch":
        data.torch_ranks = ranks
    elif data.torch_ranks is not None:
        same = f", identical to torch: {np.array_equal(ranks, data.torch_ranks)}"
    return (
        f"{dt:8.2f} s for {q.shape[0]:,} x {g.shape[0]:,}, d={q.shape[1]}, top-{args.topk} "
        f"({gflops:.0f} GFLOP/s{ctx.peak_memory()}{same})"
    )


class RandomImages(Dataset):
    def __init__(self, n: int, size: int, c_new: int, old_label_of_class: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(5)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, c_new, (n,), generator=g)
        self.old_labels = old_label_of_class[self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "images": self.images[i],
            "labels": self.labels[i],
            "old_labels": self.old_labels[i],
            "index": torch.tensor(i),
        }


def ddp_section(ctx: Context) -> str:
    import lightning.pytorch as pl
    import torch.distributed as dist

    args = ctx.args
    found: dict[str, object] = {}

    class CheckCollective(pl.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            found["initialized"] = dist.is_available() and dist.is_initialized()
            if found["initialized"]:
                t = torch.ones(1, device=pl_module.device)
                dist.all_reduce(t)
                found.update(backend=dist.get_backend(), world=dist.get_world_size(), sum=float(t.item()))

    model = ctx.build_method("bct")
    batch = args.ddp_batch_size
    data = RandomImages(batch * args.ddp_steps, args.ddp_image_size, ctx.c_new, ctx.old_label_of_class)
    trainer = pl.Trainer(
        accelerator="gpu" if ctx.device.type == "cuda" else "cpu",
        devices=[ctx.device.index or 0] if ctx.device.type == "cuda" else 1,
        strategy="ddp",
        precision="bf16-mixed" if args.amp == "bf16" else "32-true",
        max_steps=args.ddp_steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[CheckCollective()],
        default_root_dir=ctx.tmp,
    )
    t0 = time.perf_counter()
    trainer.fit(model, DataLoader(data, batch_size=batch, shuffle=False, drop_last=True))
    dt = time.perf_counter() - t0
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if trainer.global_step != args.ddp_steps:
        raise RuntimeError(f"trained {trainer.global_step} steps, expected {args.ddp_steps}")
    if not found.get("initialized"):
        raise RuntimeError("no process group was initialised")
    if found.get("world") != 1 or found.get("sum") != 1.0:
        raise RuntimeError(f"unexpected collective result {found}")
    return (
        f"pass: {args.ddp_steps} steps of bct in {dt:.1f} s, backend {found['backend']}, world size "
        f"{found['world']}, all_reduce ok"
    )


# ------------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------------


def run_section(name: str, fn: Callable[[], str], rows: list[tuple[str, str, str, float]], ctx) -> None:
    print(f"--- {name}", flush=True)
    t0 = time.perf_counter()
    try:
        result, status = fn(), "ok"
        print(f"    {result.strip()}", flush=True)
    except Skip as err:
        result, status = str(err), "SKIP"
        print(f"SKIP {name}: {err}", flush=True)
    except Exception as err:  # noqa: BLE001 - every failure is reported and the script goes on
        result, status = f"{type(err).__name__}: {err}".splitlines()[0][:300], "FAIL"
        traceback.print_exc(limit=6, file=sys.stderr)
        print(f"FAIL {name}: {result}", flush=True)
    finally:
        gc.collect()
        if ctx is not None and ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    rows.append((name, status, result.strip(), time.perf_counter() - t0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--tiny", action="store_true", help="CPU-sized run (seconds); explicit flags still win")
    p.add_argument("--image-size", type=int, default=None, help="default 224 (tiny: 32)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch, default 256 (tiny: 16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method, default 20 (tiny: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, default 5 (tiny: 1)")
    p.add_argument("--backbone-old", default=None, help="default resnet18 (tiny: tinycnn_w8)")
    p.add_argument("--backbone-new", default=None, help="default resnet50 (tiny: tinycnn_w16)")
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--classes-new", type=int, default=None, help=f"default {GLDV2_CLASSES} (tiny: 100)")
    p.add_argument("--old-ratio", type=float, default=0.3, help="old classes = ratio x new classes")
    p.add_argument("--methods", nargs="+", default=["independent", "bct", "advbct"])
    p.add_argument("--extract-batch-size", type=int, default=None, help="default 256 (tiny: 32)")
    p.add_argument("--extract-batches", type=int, default=None, help="default 20 (tiny: 3)")
    p.add_argument("--queries", type=int, default=None, help="default 117,577 (tiny: 2,000)")
    p.add_argument("--gallery", type=int, default=None, help="default 761,757 (tiny: 10,000)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--topk", type=int, default=100)
    p.add_argument("--amp", choices=["bf16", "fp32"], default=None, help="default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--ddp-steps", type=int, default=None, help="default 4 (tiny: 2)")
    p.add_argument("--ddp-batch-size", type=int, default=None, help="default 16 (tiny: 4)")
    p.add_argument("--ddp-image-size", type=int, default=None, help="default 64 (tiny: 32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = p.parse_args(argv)
    full = {
        "image_size": 224,
        "batch_size": 256,
        "steps": 20,
        "warmup": 5,
        "backbone_old": "resnet18",
        "backbone_new": "resnet50",
        "classes_new": GLDV2_CLASSES,
        "extract_batch_size": 256,
        "extract_batches": 20,
        "queries": 117_577,
        "gallery": 761_757,
        "ddp_steps": 4,
        "ddp_batch_size": 16,
        "ddp_image_size": 64,
    }
    tiny = {
        "image_size": 32,
        "batch_size": 16,
        "steps": 3,
        "warmup": 1,
        "backbone_old": "tinycnn_w8",
        "backbone_new": "tinycnn_w16",
        "classes_new": 100,
        "extract_batch_size": 32,
        "extract_batches": 3,
        "queries": 2_000,
        "gallery": 10_000,
        "ddp_steps": 2,
        "ddp_batch_size": 4,
        "ddp_image_size": 32,
    }
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.amp is None:
        args.amp = "bf16" if torch.device(args.device).type == "cuda" else "fp32"
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step outside a Trainer
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    os.environ.setdefault("WANDB_MODE", "disabled")
    device = torch.device(args.device)
    start = time.perf_counter()
    rows: list[tuple[str, str, str, float]] = []
    print(
        f"device: {device_name(device)} | torch {torch.__version__} | amp {args.amp} | "
        f"{args.backbone_old} -> {args.backbone_new}, {args.image_size} px, batch {args.batch_size}, "
        f"d={args.embed_dim}, classes {args.classes_new} (old {args.old_ratio:g}) | search {args.queries:,} x "
        f"{args.gallery:,} top-{args.topk} | torch threads {torch.get_num_threads()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ctx: Context | None = None
        try:
            ctx = Context(args, tmp)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc(limit=6, file=sys.stderr)
            print(f"FAIL setup: {type(err).__name__}: {err}", flush=True)
            rows.append(("setup", "FAIL", f"{type(err).__name__}: {err}", 0.0))
        if ctx is not None:
            if "train" in args.sections:
                for name in args.methods:
                    run_section(f"train:{name}", lambda n=name: train_section(ctx, n), rows, ctx)
            if "extract" in args.sections:
                for which in ("new", "old"):
                    run_section(f"extract:{which}", lambda w=which: extract_section(ctx, w), rows, ctx)
            data = SearchData(ctx)
            if "search" in args.sections:
                run_section("search:torch", lambda: search_section(ctx, data, "torch"), rows, ctx)
            if "faiss" in args.sections:
                run_section("search:faiss", lambda: search_section(ctx, data, "faiss"), rows, ctx)
            del data
            if "ddp" in args.sections:
                run_section("ddp", lambda: ddp_section(ctx), rows, ctx)
    failed = [r[0] for r in rows if r[1] == "FAIL"]
    print(f"\nSUMMARY gpu_check on {device_name(device)} ({time.perf_counter() - start:.0f} s in all)")
    print(f"{'section':<20} {'status':<6} {'seconds':>8}  result")
    for name, status, result, seconds in rows:
        print(f"{name:<20} {status:<6} {seconds:8.1f}  {result}")
    print(f"RESULT gpu_check: {'FAIL (' + ', '.join(failed) + ')' if failed else 'all sections passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
