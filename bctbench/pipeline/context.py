"""Run context and runtime options: where data, caches and results live, the frozen spec, and small shared
helpers (JSON I/O, isolated RNG, writable roots)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bctbench.config import (
    BenchmarkSpec,
    load_benchmark,
)
from bctbench.errors import CheckpointError, ConfigError
from bctbench.paths import resolve_cache_root, resolve_data_root, resolve_results_root


@dataclass
class Runtime:
    """Execution options that are not part of the protocol (devices, workers, logging)."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int | None = None
    wandb: bool = True
    resume: bool = False
    progress: bool = False
    #: epochs between validation-monitor passes (0: off; see bctbench.validation_monitor)
    validate_every: int = 0
    profiler: Any = None  # a Lightning profiler (benchmarks/perf/run_profile.py); not a protocol setting

    def apply(self, options: dict[str, Any]) -> Runtime:
        """Return a copy with ``--set`` runtime options applied (``wandb=false`` etc.)."""
        fields = {f.name for f in dataclasses.fields(self)}
        updates = {k: v for k, v in options.items() if k in fields}
        return dataclasses.replace(self, **updates)


@dataclass
class OldModelRef:
    """An old model's checkpoint file and its content identity."""

    path: Path
    identity: str


@dataclass
class RunContext:
    """A benchmark spec plus the roots it reads and writes."""

    spec: BenchmarkSpec
    data_root: Path
    cache_root: Path
    results_root: Path

    @classmethod
    def create(
        cls, benchmark: str, data_root=None, cache_root=None, results_root=None, *, reference: bool = False
    ) -> RunContext:
        """Resolve the roots. ``reference``: write into the committed reference results (clean tree only);
        otherwise the results root must not be the reference folder."""
        from bctbench.paths import REFERENCE_ROOT, is_reference_root

        if reference:
            if results_root is not None and not is_reference_root(results_root):
                raise ConfigError("--reference writes to the reference folder; do not pass --results-root")
            _require_clean_tree()
            results = REFERENCE_ROOT
        else:
            results = resolve_results_root(results_root)
            if is_reference_root(results):
                raise ConfigError(
                    f"{results}: the reference results are written only by `--reference` runs from a clean "
                    "tree; choose another --results-root"
                )
        return cls(
            load_benchmark(benchmark), resolve_data_root(data_root), resolve_cache_root(cache_root), results
        )

    @property
    def gldv2_root(self) -> Path:
        return self.data_root / self.spec.data.root

    def run_dir(self, method: str, seed: int, digest: str = "default", preset: str | None = None) -> Path:
        from bctbench.results import run_label

        return self.cache_root / "runs" / self.spec.name / run_label(method, digest, preset) / f"seed{seed}"

    def old_key(self) -> str:
        """Hash of everything the old model depends on (not the eval protocol)."""
        s = self.spec
        blob = json.dumps(
            [
                dataclasses.asdict(s.data),
                s.models.old_backbone,
                s.models.embed_dim,
                s.models.neck,
                s.models.pretrained_weights,
                {
                    k: v for k, v in dataclasses.asdict(s.training).items() if k != "epochs"
                },  # new-model epochs
                {
                    k: v
                    for k, v in dataclasses.asdict(s.old_model).items()
                    if k not in ("pinned", "pinned_from")
                },  # pins: not inputs
            ],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def old_dir(self) -> Path:
        return self.cache_root / "old" / self.spec.name / self.old_key()


def _require_clean_tree() -> None:
    """Reference results come from a committed state: refuse when tracked files differ from HEAD."""
    from bctbench.results import collect_provenance

    git = collect_provenance().get("git", {})
    if git.get("sha") is None:
        raise ConfigError("--reference needs a git checkout (the result records the commit)")
    if git.get("dirty"):
        raise ConfigError("--reference needs a clean tree: commit or stash the changes first (git status)")


def _device(runtime: Runtime) -> str:
    if runtime.accelerator in ("gpu", "cuda") or (
        runtime.accelerator == "auto" and torch.cuda.is_available()
    ):
        return "cuda"
    return "cpu"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from bctbench.identity import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}); delete it to retrain") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object; delete it to retrain")
    return data


def _primary_process() -> bool:
    """False in the extra processes a multi-GPU launcher starts (they re-run the pipeline up to training)."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("LOCAL_RANK", "NODE_RANK"))


def check_writable(*roots: Path) -> None:
    """Refuse, before any work, a root that is a file or cannot be written (one line naming it)."""
    import tempfile

    for root in roots:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root}: exists and is not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise ConfigError(f"{root}: cannot write there ({exc.strerror or exc})") from None


@contextlib.contextmanager
def isolated_rng():
    """Run a block without touching the global random state (Python, NumPy, torch CPU and CUDA)."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()  # noqa: NPY002 - the global state Lightning seeds
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)  # noqa: NPY002


def cpu_cores() -> int:
    """CPU cores this process may run on: its affinity mask (``taskset``, container CPU sets) where the OS has
    one, else ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _workers(ctx: RunContext, runtime: Runtime) -> int:
    return ctx.spec.training.num_workers if runtime.num_workers is None else runtime.num_workers


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _dt_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
