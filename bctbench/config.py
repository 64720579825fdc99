"""Frozen benchmark protocol: ``BenchmarkSpec`` loaded from ``benchmarks/<name>.yaml``.

A spec pins everything a fair comparison needs (data split, backbones, embedding size, image size and resize
policy, epochs, batch, optimiser, augmentation, old model, eval sets, tuning budget). Methods choose only their
own hyperparameters; protocol keys cannot be overridden from the command line (:func:`split_overrides`).

The spec's sha256 (of its resolved, canonical JSON form) goes into every result.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from bctbench._layout import subpackage_dir
from bctbench.errors import ConfigError

#: The shipped specs and pinned old models: the folder of the ``bctbench.benchmarks`` package (package data of
#: an installed wheel; ``benchmarks/`` of the repository in a checkout or an editable install).
BENCHMARKS_DIR = subpackage_dir("bctbench.benchmarks")

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
GLDV2_USAGES = ("public", "private")
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
    old gallery. ``pinned_from`` names another benchmark whose committed old models this one shares (a pair
    with another new backbone on the same data and allocation): the files come from
    ``benchmarks/old_models/<pinned_from>/``, still checked against this spec's pins, data and split."""

    epochs: int
    checkpoint: str | None = None
    pinned: dict[int, str] = field(default_factory=dict)
    pinned_from: str | None = None


@dataclass(frozen=True)
class EvalSetSpec:
    """One eval set: ``kind`` picks the loader; ``root`` is relative to the data root. ``usage`` (GLDv2 only:
    ``public`` | ``private``) keeps that split's queries only; null keeps both."""

    name: str
    kind: str
    root: str
    usage: str | None = None


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
    """Hyperparameter search budget (0: defaults only) and the eval sets tuning may read
    (``validation_sets``; the test sets of ``evaluation.eval_sets`` are sealed while tuning)."""

    budget: int = 0
    validation_sets: tuple[EvalSetSpec, ...] = ()
    #: the seed of every trial (its new model and the old model it trains against)
    seed: int = 0
    #: take ``--preset tuned`` from this benchmark's presets (None: this benchmark's own)
    preset_source: str | None = None


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
        # keys added after results were published are left out while unset: the sha256 of every existing
        # spec stays what its results record
        for section, key in _LATER_KEYS:
            if d[section].get(key) is None:
                d[section].pop(key)
        return d

    @property
    def sha256(self) -> str:
        return _canonical_sha256(self.to_dict())

    def tuning_dict(self) -> dict[str, Any]:
        """What a tuned preset depends on: the spec without its list of seeds and without the pins of seeds
        other than ``tuning.seed`` (pinning old models for more seeds leaves a tuning valid)."""
        d = self.to_dict()
        d.pop("seeds")
        pins = d["old_model"]["pinned"]
        d["old_model"]["pinned"] = {k: v for k, v in pins.items() if int(k) == self.tuning.seed}
        return d

    @property
    def tuning_sha256(self) -> str:
        """sha256 of :meth:`tuning_dict` (recorded by ``bctbench tune``, checked by ``--preset tuned``)."""
        return _canonical_sha256(self.tuning_dict())


def _canonical_sha256(d: dict[str, Any]) -> str:
    """sha256 of ``d`` as canonical JSON (sorted keys, no spaces): the digest every spec identity uses."""
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


#: (section, key) pairs added to the spec format later; omitted from :meth:`BenchmarkSpec.to_dict` when unset
_LATER_KEYS = (("old_model", "pinned_from"),)

_SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "models": ModelSpec,
    "training": TrainingSpec,
    "old_model": OldModelSpec,
    "evaluation": EvaluationSpec,
    "tuning": TuningSpec,
}

NECKS = ("linear_bn",)
#: Lightning's ``precision`` strings (``lightning.fabric.plugins.precision.precision``).
PRECISIONS = (
    "64-true",
    "32-true",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "transformer-engine",
    "transformer-engine-float16",
    "64",
    "32",
    "16",
    "bf16",
)
#: Seeds go to NumPy and Lightning, which take 32-bit unsigned seeds only.
SEED_LIMIT = 2**32


# ------------------------------------------------------------------------------------------ typed values
class _Mismatch(Exception):
    """``value`` at ``path`` does not fit the expected type (internal; becomes a :class:`ConfigError`)."""

    def __init__(self, path: str, expected: str, value: Any) -> None:
        super().__init__(path, expected, value)
        self.path, self.expected, self.value = path, expected, value

    def message(self) -> str:
        return f"{self.path}: expected {self.expected}, got {_short_repr(self.value)}"


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def type_name(tp: Any) -> str:
    """Readable name of a type annotation (``int``, ``float | null``, ``list of int``, ``one of 'a', 'b'``)."""
    if tp is Any or tp is inspect.Parameter.empty:
        return "any value"
    if tp is None or tp is type(None):
        return "null"
    origin = get_origin(tp)
    args = get_args(tp)
    if _is_union(tp):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list) or tp in (tuple, list):
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return "list [" + ", ".join(type_name(a) for a in args) + "]"
        return f"list of {type_name(items[0])}" if items else "list"
    if origin is dict or tp is dict:
        return f"mapping {type_name(args[0])} -> {type_name(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _check(value: Any, tp: Any, file: str, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; returns it with lists made tuples where ``tp`` is a tuple.

    ``int`` refuses booleans, ``float`` takes ints (kept as written: the spec's sha256 must not change) but no
    NaN/inf, ``bool`` takes real booleans only. Raises :class:`_Mismatch` naming ``path``."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = get_origin(tp)
    if _is_union(tp):
        for arm in get_args(tp):
            try:
                return _check(value, arm, file, path)
            except _Mismatch:
                continue
        raise _Mismatch(path, type_name(tp), value)
    if origin is Literal:
        for lit in get_args(tp):
            if type(value) is type(lit) and value == lit:
                return value
        raise _Mismatch(path, type_name(tp), value)
    if tp is None or tp is type(None):
        if value is None:
            return None
        raise _Mismatch(path, "null", value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(path, "bool (true or false)", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch(path, "int", value)
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            expected = "float"
            if isinstance(value, str) and _is_float_text(value):
                expected += " (YAML 1.1 reads 1e-3 as a string: write 1.0e-3)"
            raise _Mismatch(path, expected, value)
        if not math.isfinite(value):
            raise _Mismatch(path, "finite float", value)
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(path, "str", value)
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(path, type_name(tp), value)
        args = get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Mismatch(path, type_name(tp), value)
            items = [
                _check(v, a, file, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            ]
        else:
            elem = args[0] if args else Any
            items = [_check(v, elem, file, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch(path, type_name(tp), value)
        key_tp, value_tp = get_args(tp) or (Any, Any)
        out = {}
        for k, v in value.items():
            try:
                k = _check(k, key_tp, file, path)
            except _Mismatch:
                raise _Mismatch(path, f"{type_name(key_tp)} keys", k) from None
            out[k] = _check(v, value_tp, file, f"{path}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            _check_instance(value, file, path)
            return value
        return _build(tp, value, file, path)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch(path, type_name(tp), value)
    return value  # a typing construct this checker does not know: unchecked


def _is_float_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _spec_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "source"}


def _label(file: str, path: str) -> str:
    return f"{file}: {path}" if path else file


def _build(cls: type, raw: Any, file: str, path: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``raw`` with exact keys and typed values; errors name ``file`` and
    the dotted ``path`` of the key (``<file>: training.optimizer.lr: expected float, got 'fast'``)."""
    where = _label(file, path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_short_repr(raw)}")
    fields = _spec_fields(cls)
    unknown = sorted((k for k in raw if k not in fields), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (valid: {', '.join(sorted(fields))})")
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key '{name}'")
            continue
        try:
            kwargs[name] = _check(raw[name], hints[name], file, f"{path}.{name}" if path else name)
        except _Mismatch as exc:
            raise ConfigError(f"{file}: {exc.message()}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the key checks above
        raise ConfigError(f"{where}: {exc}") from None


def _check_instance(obj: Any, file: str, path: str = "") -> None:
    """Type-check the fields of a dataclass instance (a spec built in Python rather than from YAML)."""
    hints = _hints(type(obj))
    for name in _spec_fields(type(obj)):
        _check(getattr(obj, name), hints[name], file, f"{path}.{name}" if path else name)


# ------------------------------------------------------------------------------------------ validation
def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def validate_spec(spec: BenchmarkSpec, where: str) -> None:
    """Check types, value ranges and enumerations; raises :class:`ConfigError` naming ``where`` and the key."""
    try:
        _check_instance(spec, where)
    except _Mismatch as exc:
        raise ConfigError(f"{where}: {exc.message()}") from None

    def req(cond: bool, key: str, msg: str) -> None:
        _require(cond, f"{where}: {key}", msg)

    def seeds_ok(values: tuple[int, ...], key: str, min_count: int = 1) -> None:
        req(len(values) >= min_count, key, f"at least {min_count} seed(s)")
        bad = [s for s in values if not 0 <= s < SEED_LIMIT]
        req(not bad, key, f"seed {bad[0] if bad else ''} not in [0, 2**32)")
        req(len(set(values)) == len(values), key, f"duplicate seeds in {list(values)}")

    d, m, t, o, e = spec.data, spec.models, spec.training, spec.old_model, spec.evaluation
    opt = t.optimizer
    req(bool(spec.name.strip()), "name", "must not be empty")
    # data
    req(d.dataset in DATASETS, "data.dataset", f"'{d.dataset}' not in {DATASETS}")
    req(d.allocation in ALLOCATIONS, "data.allocation", f"'{d.allocation}' not in {ALLOCATIONS}")
    req(0.0 < d.ratio < 1.0, "data.ratio", f"{d.ratio} not in (0, 1)")
    req(bool(d.root.strip()), "data.root", "must not be empty")
    req(bool(d.label_list.strip()), "data.label_list", "must not be empty")
    if d.dataset == "synthetic":
        req(d.synthetic_size in ("default", "tiny"), "data.synthetic_size", "must be default|tiny")
    req(0 <= d.synthetic_seed < SEED_LIMIT, "data.synthetic_seed", f"{d.synthetic_seed} not in [0, 2**32)")
    # models
    req(bool(m.old_backbone.strip()), "models.old_backbone", "must not be empty")
    req(bool(m.new_backbone.strip()), "models.new_backbone", "must not be empty")
    req(m.embed_dim > 0, "models.embed_dim", f"must be positive, got {m.embed_dim}")
    req(m.neck in NECKS, "models.neck", f"'{m.neck}' not in {NECKS}")
    # training
    req(t.epochs > 0, "training.epochs", f"must be positive, got {t.epochs}")
    req(t.batch_size > 1, "training.batch_size", f"must be > 1, got {t.batch_size}")
    req(t.image_size >= 16, "training.image_size", f"must be >= 16, got {t.image_size}")
    req(t.precision in PRECISIONS, "training.precision", f"'{t.precision}' not in {PRECISIONS}")
    req(t.resize in RESIZE_POLICIES, "training.resize", f"'{t.resize}' not in {RESIZE_POLICIES}")
    req(
        t.augmentation in AUGMENTATIONS, "training.augmentation", f"'{t.augmentation}' not in {AUGMENTATIONS}"
    )
    req(t.sampler in (None, "class_balanced"), "training.sampler", "must be null|class_balanced")
    req(t.m_per_class >= 1, "training.m_per_class", f"must be >= 1, got {t.m_per_class}")
    if t.sampler == "class_balanced":
        req(
            t.batch_size % t.m_per_class == 0,
            "training.m_per_class",
            f"must divide training.batch_size ({t.batch_size}), got {t.m_per_class}",
        )
    req(t.num_workers >= 0, "training.num_workers", f"must be >= 0, got {t.num_workers}")
    # training.optimizer
    req(opt.name in ("sgd", "adamw"), "training.optimizer.name", "must be sgd|adamw")
    req(opt.schedule in ("multistep", "cosine"), "training.optimizer.schedule", "multistep|cosine")
    req(opt.lr > 0, "training.optimizer.lr", f"must be > 0, got {opt.lr}")
    req(0 <= opt.momentum < 1, "training.optimizer.momentum", f"{opt.momentum} not in [0, 1)")
    req(opt.weight_decay >= 0, "training.optimizer.weight_decay", f"must be >= 0, got {opt.weight_decay}")
    req(opt.gamma > 0, "training.optimizer.gamma", f"must be > 0, got {opt.gamma}")
    req(opt.warmup_epochs >= 0, "training.optimizer.warmup_epochs", f"must be >= 0, got {opt.warmup_epochs}")
    ms = list(opt.milestones)
    req(
        all(x >= 1 for x in ms) and ms == sorted(set(ms)),
        "training.optimizer.milestones",
        f"must be increasing epochs >= 1, got {ms}",
    )
    # old model
    req(o.epochs > 0, "old_model.epochs", f"must be positive, got {o.epochs}")
    req(o.checkpoint is None or bool(o.checkpoint.strip()), "old_model.checkpoint", "must not be empty")
    req(
        o.pinned_from is None or bool(re.match(r"^[A-Za-z0-9_.-]+$", o.pinned_from)),
        "old_model.pinned_from",
        f"expected a benchmark name, got {o.pinned_from!r}",
    )
    req(
        o.pinned_from is None or bool(o.pinned),
        "old_model.pinned_from",
        "needs old_model.pinned (the identities)",
    )
    for seed, ident in o.pinned.items():
        req(seed >= 0, "old_model.pinned", f"key {seed!r} is not a seed (integer >= 0)")
        req(
            len(ident) == 64 and all(c in "0123456789abcdef" for c in ident),
            f"old_model.pinned.{seed}",
            "expected a 64-character hex identity",
        )
    # evaluation
    req(len(e.eval_sets) >= 1, "evaluation.eval_sets", "expected a non-empty list")
    _check_eval_sets(e.eval_sets, "evaluation.eval_sets", req)
    bad = [p for p in e.pairs if p not in PAIRS]
    req(not bad, "evaluation.pairs", f"unknown pairs {bad} (valid: {PAIRS})")
    req(
        len(e.pairs) >= 1 and len(set(e.pairs)) == len(e.pairs),
        "evaluation.pairs",
        "non-empty, no duplicates",
    )
    req(
        e.backfill_fractions >= 2,
        "evaluation.backfill_fractions",
        f"must be >= 2, got {e.backfill_fractions}",
    )
    req(len(e.backfill_orders) >= 1, "evaluation.backfill_orders", "at least one order")
    seeds_ok(e.backfill_seeds, "evaluation.backfill_seeds")
    bad = [x for x in e.backfill_modes if x not in BACKFILL_MODES]
    req(not bad, "evaluation.backfill_modes", f"unknown modes {bad} (valid: {BACKFILL_MODES})")
    req(len(e.backfill_modes) >= 1, "evaluation.backfill_modes", "at least one mode")
    req(e.batch_size >= 1, "evaluation.batch_size", f"must be >= 1, got {e.batch_size}")
    # tuning and top level
    req(spec.tuning.budget >= 0, "tuning.budget", f"must be >= 0, got {spec.tuning.budget}")
    req(spec.tuning.seed >= 0, "tuning.seed", f"must be >= 0, got {spec.tuning.seed}")
    src = spec.tuning.preset_source
    req(
        src is None or bool(re.fullmatch(r"[A-Za-z0-9_.-]+", src)),
        "tuning.preset_source",
        f"must be a benchmark name, got {src!r}",
    )
    _check_validation_sets(spec.tuning.validation_sets, e.eval_sets, req)
    seeds_ok(spec.seeds, "seeds")
    req(spec.sequential_steps >= 1, "sequential_steps", f"must be >= 1, got {spec.sequential_steps}")
    req(
        (spec.sequential_steps > 1) == d.allocation.startswith("seq_"),
        "sequential_steps",
        "must be > 1 exactly for seq_* allocations",
    )


def _check_eval_sets(sets: tuple[EvalSetSpec, ...], key: str, req) -> None:
    for i, es in enumerate(sets):
        req(bool(es.name.strip()), f"{key}[{i}].name", "must not be empty")
        req(es.kind in EVAL_KINDS, f"{key}[{i}].kind", f"'{es.kind}' not in {EVAL_KINDS}")
        if es.usage is not None:
            req(es.kind == "gldv2", f"{key}[{i}].usage", f"only gldv2 eval sets have a usage, not {es.kind}")
            req(es.usage in GLDV2_USAGES, f"{key}[{i}].usage", f"'{es.usage}' not in {GLDV2_USAGES}")
    names = [es.name for es in sets]
    req(len(set(names)) == len(names), key, "duplicate eval-set names")


def _same_root(a: str, b: str) -> bool:
    return PurePosixPath(a.strip()) == PurePosixPath(b.strip())


def _check_validation_sets(sets: tuple[EvalSetSpec, ...], tests: tuple[EvalSetSpec, ...], req) -> None:
    """Validation sets: typed like eval sets, named apart from the test sets, and never a test set — on the
    root of a GLDv2 test set only its public split (``usage: public``) may serve as validation data."""
    key = "tuning.validation_sets"
    _check_eval_sets(sets, key, req)
    test_names = {t.name for t in tests}
    for i, v in enumerate(sets):
        req(v.name not in test_names, f"{key}[{i}].name", f"'{v.name}' is the name of a test set")
        for t in tests:
            if t.kind != v.kind or not _same_root(t.root, v.root):
                continue
            if v.kind == "revisited":
                req(
                    v.name != t.name,
                    f"{key}[{i}]",
                    f"is test set '{t.name}' (root {t.root}); validation data must be disjoint from it",
                )
            else:
                req(
                    v.usage == "public" and t.usage != "public",
                    f"{key}[{i}].usage",
                    f"on the root of test set '{t.name}' ({t.root}) only its public split may be validation "
                    f"data (usage: public), got {v.usage if v.usage is not None else 'null'}",
                )


def _legacy_tuning(raw: Any, where: str) -> Any:
    """Specs written before ``tuning.validation_sets`` say ``tuning: {validation: none}``; that key is
    dropped (same spec as no validation sets). Any other value is refused."""
    tuning = raw.get("tuning") if isinstance(raw, dict) else None
    if not isinstance(tuning, dict) or "validation" not in tuning:
        return raw
    value = tuning["validation"]
    if value is not None and not (isinstance(value, str) and value.strip().lower() == "none"):
        raise ConfigError(
            f"{where}: tuning.validation: replaced by tuning.validation_sets (a list of eval sets), "
            f"got {_short_repr(value)}"
        )
    return {**raw, "tuning": {k: v for k, v in tuning.items() if k != "validation"}}


def spec_from_dict(raw: Any, where: str = "<spec>") -> BenchmarkSpec:
    """Build and validate a spec from a parsed YAML mapping (every value checked against its annotation)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    raw = _legacy_tuning(raw, where)
    spec = _build(BenchmarkSpec, raw, where)
    spec = dataclasses.replace(spec, source=where)
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
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    spec = spec_from_dict(raw, str(path))
    if spec.name != path.stem:
        raise ConfigError(f"{path}: name '{spec.name}' must equal the file name '{path.stem}'")
    return spec


# ------------------------------------------------------------------------------------------ --set options
class SetOptions(dict):
    """``--set`` options: key -> YAML-parsed value, plus ``text``: key -> the text as typed, from which
    :func:`split_overrides` coerces each value to its annotated type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.text: dict[str, str] = {}


def _yaml_scalar(text: str) -> Any:
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = text
    if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return parsed


def parse_set_options(items: list[str] | None) -> SetOptions:
    """Parse ``--set key=value`` strings; values are YAML scalars (``1e-3``, ``true``, ``[1, 2]``) until
    :func:`split_overrides` coerces them to the method's annotated types (from the text kept in ``.text``)."""
    out = SetOptions()
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        out[key] = _yaml_scalar(value)
        out.text[key] = value
    return out


_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")
_NULL = ("none", "null", "~")
_INT_RE = re.compile(r"[+-]?\d+")
_UINT_RE = re.compile(r"\d+")


def coerce_text(text: str, tp: Any, path: str = "value") -> Any:
    """Coerce command-line ``text`` to annotation ``tp``: ``bool`` from true/false/yes/no/1/0 (any case),
    ``int`` from integer literals, ``float`` from finite numbers, ``X | None`` also from none/null, ``str`` as
    typed (quotes removed), ``Literal`` one of its values, lists and mappings as YAML. Raises
    :class:`_Mismatch` (see :func:`split_overrides` for the message)."""
    s = text.strip()
    if tp is Any or tp is inspect.Parameter.empty:
        return _yaml_scalar(text)
    origin = get_origin(tp)
    if _is_union(tp):
        arms = get_args(tp)
        if type(None) in arms and s.lower() in _NULL:
            return None
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return coerce_text(text, arm, path)
            except _Mismatch:
                continue
        raise _Mismatch(path, type_name(tp), text)
    if origin is Literal:
        for lit in get_args(tp):
            try:
                value = coerce_text(text, type(lit), path)
            except _Mismatch:
                continue
            if type(value) is type(lit) and value == lit:
                return lit
        raise _Mismatch(path, type_name(tp), text)
    if tp is None or tp is type(None):
        if s.lower() in _NULL:
            return None
        raise _Mismatch(path, "null (none)", text)
    if tp is bool:
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise _Mismatch(path, "bool (true/false/yes/no/1/0)", text)
    if tp is int:
        if _INT_RE.fullmatch(s):
            return int(s)
        raise _Mismatch(path, "int", text)
    if tp is float:
        try:
            value = float(s)
        except ValueError:
            raise _Mismatch(path, "float", text) from None
        if not math.isfinite(value):
            raise _Mismatch(path, "finite float", text)
        return value
    if tp is str:
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
            unquoted = _yaml_scalar(s)
            if isinstance(unquoted, str):
                return unquoted
        return s
    parsed = _yaml_scalar(text)
    try:
        return _check(parsed, tp, "--set", path)
    except _Mismatch:
        raise _Mismatch(path, type_name(tp), text) from None


def method_annotations(cls: type) -> dict[str, Any]:
    """Keyword-only ``__init__`` parameters of a method class: name -> resolved annotation (``Any`` where
    missing or unresolvable; ``X | None`` where the default is None)."""
    init = cls.__init__
    params = {
        n: p
        for n, p in inspect.signature(init).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    try:
        hints = get_type_hints(init)
    except Exception:  # noqa: BLE001 - e.g. names imported under TYPE_CHECKING: resolve one by one
        hints = {}
        namespace = vars(sys.modules.get(getattr(init, "__module__", ""), types.ModuleType("_")))
        for name, p in params.items():
            ann = p.annotation
            if isinstance(ann, str):
                try:
                    ann = eval(ann, dict(namespace))  # noqa: S307 - the plugin's own annotation text
                except Exception:  # noqa: BLE001
                    continue
            hints[name] = ann
    out: dict[str, Any] = {}
    for name, p in params.items():
        tp = hints.get(name, Any)
        if p.default is None and tp is not Any and not _accepts_none(tp):
            tp = Union[tp, None]  # noqa: UP007 - built at run time from a resolved annotation
        out[name] = tp
    return out


def _accepts_none(tp: Any) -> bool:
    return tp is None or tp is type(None) or (_is_union(tp) and type(None) in get_args(tp))


def _registered_annotations(method_name: str, method_params: dict[str, Any]) -> dict[str, Any]:
    """Annotations of the registered class ``method_name`` when its parameters are ``method_params``."""
    from bctbench.registry import registered_method

    cls = registered_method(method_name)
    if cls is None:
        return {}
    try:
        annotations = method_annotations(cls)
    except (TypeError, ValueError):  # no inspectable signature
        return {}
    return annotations if set(annotations) == set(method_params) else {}


def check_runtime_option(key: str, value: Any, label: str | None = None) -> Any:
    """Coerce and check a runtime option (``--seed``, ``--set num_workers=2`` ...); ``value`` is the text as
    typed or an already-typed value. Raises :class:`ConfigError` naming ``label`` (default ``--set <key>``)."""
    label = label or f"--set {key}"
    text = value if isinstance(value, str) else None
    if key == "devices":
        return parse_devices(value, label)
    if key in ("seed", "num_workers", "num_nodes", "validate_every"):
        lo, hi, what = {
            "seed": (0, SEED_LIMIT, "an integer in [0, 2**32)"),
            "num_workers": (0, None, "an integer >= 0"),
            "validate_every": (0, None, "an integer >= 0 (epochs; 0: off)"),
            "num_nodes": (1, None, "an integer >= 1"),
        }[key]
        if text is not None:
            number = int(text.strip()) if _INT_RE.fullmatch(text.strip()) else None
        else:
            number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if number is None or number < lo or (hi is not None and number >= hi):
            raise ConfigError(f"{label}: expected {what}, got {_short_repr(value)}")
        return number
    if key == "wandb":
        if isinstance(value, bool):
            return value
        if text is not None and text.strip().lower() in _TRUE + _FALSE:
            return text.strip().lower() in _TRUE
        raise ConfigError(f"{label}: expected bool (true/false/yes/no/1/0), got {_short_repr(value)}")
    if key in ("strategy", "accelerator"):
        if text is None or not text.strip() or any(c.isspace() for c in text.strip()):
            raise ConfigError(f"{label}: expected a name (e.g. auto), got {_short_repr(value)}")
        return text.strip()
    raise ConfigError(f"{label}: unknown runtime option (valid: {', '.join(RUNTIME_KEYS)})")


def parse_devices(value: Any, label: str = "--devices") -> str | int | list[int]:
    """``auto``, a positive number of devices, or a comma list of distinct device indices (``0,1``; ``1,`` is
    device 1 alone) -> ``"auto"``, an int or a list of ints for Lightning."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    s = value.strip() if isinstance(value, str) else None
    if s is not None:
        if s.lower() == "auto":
            return "auto"
        if _UINT_RE.fullmatch(s) and int(s) >= 1:
            return int(s)
        parts = s.split(",")
        if len(parts) > 1 and parts[-1].strip() == "":
            parts = parts[:-1]
        if "," in s and parts and all(_UINT_RE.fullmatch(p.strip()) for p in parts):
            ids = [int(p) for p in parts]
            if len(set(ids)) == len(ids):
                return ids
    raise ConfigError(
        f"{label}: expected auto, a positive number of devices or a comma list of distinct device indices "
        f"(e.g. 0,1), got {_short_repr(value)}"
    )


def split_overrides(
    overrides: dict[str, Any],
    method_params: dict[str, Any],
    method_name: str,
    annotations: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``--set`` overrides into (method hyperparameters, runtime options), each coerced and checked.

    Protocol keys (anything in the benchmark spec) are rejected; so are keys that are neither a method
    hyperparameter (``method_params``: name -> default) nor a runtime key. A hyperparameter's value is coerced
    to its annotation (``annotations``: name -> type, see :func:`method_annotations`; by default those of the
    registered method ``method_name``), from the text as typed when ``overrides`` comes from
    :func:`parse_set_options`.
    """
    protocol = _protocol_keys()
    if annotations is None:
        annotations = _registered_annotations(method_name, method_params)
    texts = getattr(overrides, "text", {})
    method_kw: dict[str, Any] = {}
    runtime: dict[str, Any] = {}
    for key, value in overrides.items():
        head = key.split(".", 1)[0]
        text = texts.get(key, value if isinstance(value, str) else None)
        if key in method_params:
            tp = annotations.get(key, Any)
            try:
                if text is not None:
                    method_kw[key] = coerce_text(text, tp, key)
                else:
                    method_kw[key] = _check(value, tp, "--set", key)
            except _Mismatch as exc:
                shown = text if text is not None else value
                raise ConfigError(
                    f"--set {key}: method '{method_name}' expects {exc.expected}, got {_short_repr(shown)}"
                ) from None
        elif key in RUNTIME_KEYS:
            runtime[key] = check_runtime_option(key, text if text is not None else value)
        elif head in RUNTIME_KEYS:
            raise ConfigError(f"--set {key}: runtime option '{head}' takes no sub-keys")
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
