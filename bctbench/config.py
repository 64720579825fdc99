"""Frozen benchmark protocol: ``BenchmarkSpec`` loaded from ``benchmarks/<name>.yaml``.

A spec pins everything a fair comparison needs (data split, backbones, embedding size, image size and resize
policy, epochs, batch, optimiser, augmentation, old model, eval sets, tuning budget). Methods choose only their
own hyperparameters; protocol keys cannot be overridden from the command line (:func:`split_overrides`).

The spec's sha256 (of its resolved, canonical JSON form) goes into every result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bctbench.errors import ConfigError

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"

DATASETS = ("synthetic", "gldv2")
ALLOCATIONS = (
    "class30to100",
    "data30to100",
    "openclass30to70",
    "opendata30to70",
    "seq_data10to30to100",
    "seq_class10to30to100",
)
EVAL_KINDS = ("revisited", "gldv2")
RESIZE_POLICIES = ("squash", "short_side")
AUGMENTATIONS = ("rrc_flip", "none")
PAIRS = ("old-old", "new-old", "new-new", "old-new")

#: Keys a user may set on the command line besides method hyperparameters (not part of the protocol).
RUNTIME_KEYS = ("seed", "devices", "num_nodes", "strategy", "accelerator", "num_workers", "wandb")


@dataclass(frozen=True)
class DataSpec:
    """Training data: dataset kind, folder (relative to the data root) and old/new allocation."""

    dataset: str
    root: str
    allocation: str
    ratio: float = 0.3
    label_list: str = "train_clean"
    synthetic_size: str | None = None  # "default" | "tiny" for dataset == synthetic
    synthetic_seed: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """Backbones (timm names or the built-in ``tinycnn``), embedding neck and weights policy."""

    old_backbone: str
    new_backbone: str
    embed_dim: int
    neck: str = "linear_bn"
    pretrained_weights: str | None = None  # local file; never downloaded
    sync_bn: bool = True


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (5, 10, 20)
    gamma: float = 0.1
    warmup_epochs: int = 0
    schedule: str = "multistep"  # multistep (milestones, gamma) | cosine (per epoch, to 0 at the last epoch)


@dataclass(frozen=True)
class TrainingSpec:
    """Recipe shared by the old model and every method's new model."""

    epochs: int
    batch_size: int  # per device
    image_size: int
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    precision: str = "32-true"
    resize: str = "squash"
    augmentation: str = "rrc_flip"
    sampler: str | None = None
    m_per_class: int = 4
    num_workers: int = 2
    drop_last: bool = True
    cache_decoded_images: bool = False


@dataclass(frozen=True)
class OldModelSpec:
    """The old models, one per seed: old model k is trained with seed k and ``epochs`` of the recipe on the
    old split, or given as ``checkpoint`` (``{seed}`` in the path is replaced by k).

    ``pinned`` maps a seed to the content identity (:func:`bctbench.identity.state_identity`) of its old
    model. A pinned seed's model is the committed file ``benchmarks/old_models/<benchmark>/seed<k>.pt`` (or the
    given checkpoint), verified against the identity on every use, so every machine runs against the same
    old gallery."""

    epochs: int
    checkpoint: str | None = None
    pinned: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSetSpec:
    """One eval set: ``kind`` picks the loader; ``root`` is relative to the data root."""

    name: str
    kind: str
    root: str


BACKFILL_MODES = ("mixed", "merge")


@dataclass(frozen=True)
class EvaluationSpec:
    eval_sets: tuple[EvalSetSpec, ...]
    query_crop: bool = True
    pairs: tuple[str, ...] = PAIRS
    backfill_fractions: int = 11
    backfill_orders: tuple[str, ...] = ("random",)
    backfill_seeds: tuple[int, ...] = (0,)
    backfill_modes: tuple[str, ...] = ("mixed", "merge")
    batch_size: int = 128


@dataclass(frozen=True)
class TuningSpec:
    budget: int = 0
    validation: str = "none"


@dataclass(frozen=True)
class BenchmarkSpec:
    """A frozen benchmark protocol (see module docstring)."""

    name: str
    description: str
    data: DataSpec
    models: ModelSpec
    training: TrainingSpec
    old_model: OldModelSpec
    evaluation: EvaluationSpec
    tuning: TuningSpec = field(default_factory=TuningSpec)
    seeds: tuple[int, ...] = (0, 1, 2)
    sequential_steps: int = 1
    source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


_SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "models": ModelSpec,
    "training": TrainingSpec,
    "old_model": OldModelSpec,
    "evaluation": EvaluationSpec,
    "tuning": TuningSpec,
}


def _build(cls: type, raw: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``raw`` with exact-key validation; errors name ``where.key``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "source"}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (valid: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key '{name}'")
            continue
        value = raw[name]
        if name == "optimizer":
            value = _build(OptimizerSpec, value, key)
        elif name == "eval_sets":
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{key}: expected a non-empty list")
            value = tuple(_build(EvalSetSpec, v, f"{key}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, (list, tuple)):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the key checks above
        raise ConfigError(f"{where}: {exc}") from None


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def validate_spec(spec: BenchmarkSpec, where: str) -> None:
    """Check value ranges and enumerations; raises :class:`ConfigError` naming ``where`` and the key."""
    d, m, t, o, e = spec.data, spec.models, spec.training, spec.old_model, spec.evaluation
    _require(d.dataset in DATASETS, f"{where}: data.dataset", f"'{d.dataset}' not in {DATASETS}")
    _require(
        d.allocation in ALLOCATIONS, f"{where}: data.allocation", f"'{d.allocation}' not in {ALLOCATIONS}"
    )
    _require(0.0 < d.ratio < 1.0, f"{where}: data.ratio", f"{d.ratio} not in (0, 1)")
    if d.dataset == "synthetic":
        _require(
            d.synthetic_size in ("default", "tiny"), f"{where}: data.synthetic_size", "must be default|tiny"
        )
    _require(m.embed_dim > 0, f"{where}: models.embed_dim", "must be positive")
    _require(t.epochs > 0 and o.epochs > 0, f"{where}: training.epochs/old_model.epochs", "must be positive")
    _require(isinstance(o.pinned, dict), f"{where}: old_model.pinned", "expected a mapping seed -> identity")
    for seed, ident in o.pinned.items():
        _require(
            isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
            f"{where}: old_model.pinned",
            f"key {seed!r} is not a seed (integer >= 0)",
        )
        _require(
            isinstance(ident, str) and len(ident) == 64 and all(c in "0123456789abcdef" for c in ident),
            f"{where}: old_model.pinned.{seed}",
            "expected a 64-character hex identity",
        )
    _require(t.batch_size > 1, f"{where}: training.batch_size", "must be > 1")
    _require(t.image_size >= 16, f"{where}: training.image_size", "must be >= 16")
    _require(
        t.resize in RESIZE_POLICIES, f"{where}: training.resize", f"'{t.resize}' not in {RESIZE_POLICIES}"
    )
    _require(
        t.augmentation in AUGMENTATIONS,
        f"{where}: training.augmentation",
        f"'{t.augmentation}' not in {AUGMENTATIONS}",
    )
    _require(
        t.sampler in (None, "class_balanced"), f"{where}: training.sampler", "must be null|class_balanced"
    )
    _require(t.optimizer.name in ("sgd", "adamw"), f"{where}: training.optimizer.name", "must be sgd|adamw")
    _require(
        t.optimizer.schedule in ("multistep", "cosine"),
        f"{where}: training.optimizer.schedule",
        "multistep|cosine",
    )
    for i, es in enumerate(e.eval_sets):
        _require(
            es.kind in EVAL_KINDS,
            f"{where}: evaluation.eval_sets[{i}].kind",
            f"'{es.kind}' not in {EVAL_KINDS}",
        )
    names = [es.name for es in e.eval_sets]
    _require(len(set(names)) == len(names), f"{where}: evaluation.eval_sets", "duplicate eval-set names")
    bad = [p for p in e.pairs if p not in PAIRS]
    _require(not bad, f"{where}: evaluation.pairs", f"unknown pairs {bad} (valid: {PAIRS})")
    _require(e.backfill_fractions >= 2, f"{where}: evaluation.backfill_fractions", "must be >= 2")
    bad = [m for m in e.backfill_modes if m not in BACKFILL_MODES]
    _require(not bad, f"{where}: evaluation.backfill_modes", f"unknown modes {bad} (valid: {BACKFILL_MODES})")
    _require(len(spec.seeds) >= 1, f"{where}: seeds", "at least one seed")
    _require(
        (spec.sequential_steps > 1) == d.allocation.startswith("seq_"),
        f"{where}: sequential_steps",
        "must be > 1 exactly for seq_* allocations",
    )


def spec_from_dict(raw: Any, where: str = "<spec>") -> BenchmarkSpec:
    """Build and validate a spec from a parsed YAML mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    top = {f.name for f in dataclasses.fields(BenchmarkSpec) if f.name != "source"}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (valid: {', '.join(sorted(top))})")
    for key in ("name", "description", *_SECTIONS):
        if key not in raw and key != "tuning":
            raise ConfigError(f"{where}: missing required key '{key}'")
    kwargs: dict[str, Any] = {"name": raw["name"], "description": raw["description"], "source": where}
    for key, cls in _SECTIONS.items():
        if key in raw:
            kwargs[key] = _build(cls, raw[key], f"{where}: {key}")
    for key in ("seeds",):
        if key in raw:
            kwargs[key] = tuple(raw[key])
    if "sequential_steps" in raw:
        kwargs["sequential_steps"] = int(raw["sequential_steps"])
    spec = BenchmarkSpec(**kwargs)
    validate_spec(spec, where)
    return spec


def list_benchmarks(directory: Path = BENCHMARKS_DIR) -> list[str]:
    """Names of the benchmark specs shipped in ``benchmarks/*.yaml``."""
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def load_benchmark(name_or_path: str | Path, directory: Path = BENCHMARKS_DIR) -> BenchmarkSpec:
    """Load ``benchmarks/<name>.yaml`` (or a path to a YAML file) into a validated :class:`BenchmarkSpec`."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(directory) / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown benchmark '{name_or_path}': no file {path} (available: {', '.join(list_benchmarks(directory))})"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    spec = spec_from_dict(raw, str(path))
    if spec.name != path.stem:
        raise ConfigError(f"{path}: name '{spec.name}' must equal the file name '{path.stem}'")
    return spec


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """Parse ``--set key=value`` strings; values are YAML scalars (``1e-3``, ``true``, ``[1, 2]``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key] = parsed
    return out


def split_overrides(
    overrides: dict[str, Any], method_params: dict[str, Any], method_name: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``--set`` overrides into (method hyperparameters, runtime options).

    Protocol keys (anything in the benchmark spec) are rejected; so are keys that are neither a method
    hyperparameter (``method_params``: name -> default) nor a runtime key.
    """
    protocol = _protocol_keys()
    method_kw: dict[str, Any] = {}
    runtime: dict[str, Any] = {}
    for key, value in overrides.items():
        head = key.split(".", 1)[0]
        if key in method_params:
            method_kw[key] = value
        elif head in RUNTIME_KEYS:
            runtime[key] = value
        elif key in protocol or head in protocol:
            raise ConfigError(
                f"--set {key}: '{key}' is a protocol key of the benchmark spec and cannot be overridden "
                "(make a new benchmark spec instead)"
            )
        else:
            valid = ", ".join(sorted(method_params)) or "(none)"
            raise ConfigError(f"--set {key}: unknown key for method '{method_name}' (valid: {valid})")
    return method_kw, runtime


def _protocol_keys() -> set[str]:
    keys = {f.name for f in dataclasses.fields(BenchmarkSpec)}
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            keys.add(f.name)
            keys.add(f"{section}.{f.name}")
    keys |= {f.name for f in dataclasses.fields(OptimizerSpec)}
    keys -= {"source"}
    return keys
