"""Contract checks for method plugins: run them on your own method before you publish it.

On CPU, without a dataset, in a few seconds per method::

    from bctbench.testing import check_method

    check_method("my_method")                # a registered or entry-point name
    check_method(MyMethod)                   # or the class
    check_method("my_pkg.plugin:MyMethod")   # or an import string

or, one pytest test per method::

    from bctbench.testing import check_method, parametrize_methods

    @parametrize_methods(["my_method"])      # no argument: every method that `bctbench methods` lists
    def test_contract(method, tmp_path):
        check_method(method, workdir=tmp_path)

A violated rule raises :class:`AssertionError` with one line per violated rule:
``method 'my_method' breaks rule 'hyperparameters': 'weight' has no type annotation``. The rules
(:data:`RULES`), in order:

* ``metadata`` — a :class:`~bctbench.method.CompatibilityMethod` subclass; ``name`` lower snake case, the name
  the method was asked for (registry key, built-in file name or entry-point name) and not registered by
  another class; ``paper`` and ``reference_code`` non-empty strings; ``needs_old_forward``,
  ``needs_custom_old_model``, ``handles_dim_mismatch`` booleans; ``required_artifacts`` a subset of
  :data:`bctbench.artifacts.KINDS`; ``backfill_mode`` ``"mixed"`` or ``"merge"``.
* ``hyperparameters`` — ``__init__(self, setup, *, ...)``: every hyperparameter keyword-only, with a type
  annotation that resolves and a reference default that fits it (as ``--set name=value`` coerces values), the
  default a plain value (None, bool, int, float, str, or lists, tuples and dicts of them: checkpoints load
  with ``weights_only=True``); no ``*args`` or ``**kwargs``.
* ``search_space`` — :meth:`~bctbench.method.CompatibilityMethod.search_space` returns a dict whose keys are
  hyperparameters and whose values are non-empty lists of values that fit the annotation.
* ``build`` — the method builds from a :class:`~bctbench.method.MethodSetup` of the tiny world below and takes
  its artefacts (:meth:`prepare_artifacts`, when ``required_artifacts`` is not empty).
* ``training`` — ``steps`` training steps of one epoch (Lightning, CPU) on random batches: every loss term
  finite, ``train/loss/cls`` logged, the new model changed; the frozen old model bit-identical (weights and
  buffers, its pinned identity too), in eval mode, and none of its parameters in any optimiser.
* ``checkpoint`` — the trainer's checkpoint loads with ``torch.load(weights_only=True)``;
  ``cls.load_from_checkpoint`` gives the same hyperparameters, the same new-model weights and the same old
  model.
* ``encoders`` — after training, :meth:`encoders` has ``"old"`` and ``"new"``; each maps
  ``images float[B, 3, H, W]`` to finite ``float32[B, D]`` unit-norm rows and has a non-empty ``identity``.

The tiny world: backbone ``tinycnn_w4``, embeddings of :data:`EMBED` dims, :data:`IMAGE` px images, an old
model over :data:`C_OLD` classes and a new label space of :data:`C_NEW` classes (new class k < C_OLD is old
class k; the others are new), batches of 8 random images (:class:`RandomImages`: ``images float[8, 3, 16, 16]``,
``labels int64[8]``, ``old_labels int64[8]`` with −1 for new classes, ``index int64[8]``), artefacts with the
real shapes from random features (:class:`TinyArtifactStore`, with ``embed_new_training_set``).
"""

from __future__ import annotations

import inspect
import math
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from bctbench.artifacts import KINDS, RandomArtifactStore
from bctbench.method import CompatibilityMethod, MethodSetup

BACKBONE = "tinycnn_w4"
EMBED = 16
C_OLD, C_NEW = 5, 8  # new classes 0..4 have old labels 0..4; 5..7 are new-only
IMAGE = 16
BATCH = 8

#: The rules of :func:`check_method`, in the order they are checked.
RULES = ("metadata", "hyperparameters", "search_space", "build", "training", "checkpoint", "encoders")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_P = inspect.Parameter


# ---------------------------------------------------------------------------------------------- tiny world
class RandomImages(Dataset):
    """``n`` random images (``float[3, IMAGE, IMAGE]``, seeded) with labels cycling over the :data:`C_NEW` new
    classes (every class in every batch of 8); ``old_labels`` is −1 for classes the old model does not know."""

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
        self.labels = torch.arange(n) % C_NEW

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        label = self.labels[i]
        return {
            "images": self.images[i],
            "labels": label,
            "old_labels": label if label < C_OLD else torch.tensor(-1),
            "index": torch.tensor(i),
        }


def random_loader(n: int = 32, seed: int = 0) -> DataLoader:
    """Batches of :data:`BATCH` :class:`RandomImages`, in order, without a last partial batch."""
    return DataLoader(RandomImages(n, seed), batch_size=BATCH, shuffle=False, drop_last=True)


def old_label_of_class() -> torch.Tensor:
    """``int64[C_NEW]``: the old label of each new class (−1 for the new-only classes)."""
    return torch.tensor([c if c < C_OLD else -1 for c in range(C_NEW)])


class TinyArtifactStore(RandomArtifactStore):
    """Artefacts with the real shapes for the tiny label spaces (:class:`~bctbench.artifacts.RandomArtifactStore`:
    random unit features, 8 per new class), plus ``embed_new_training_set`` as the real store has it: every
    cached row is a fixed random image (``images float[N, 3, IMAGE, IMAGE]``), embedded with the given encoder
    in eval mode (its mode restored) and returned as ``{"features": float[N, D], "labels": int64[N]}`` in the
    row order of ``old_features_new``. ``calls`` records each pass."""

    def __init__(self, old, seed: int = 123) -> None:
        super().__init__(old, old_label_of_class(), samples_per_class=8)
        labels = self.data["old_features_new"]["labels"]
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(labels.numel(), 3, IMAGE, IMAGE, generator=g)
        self.calls: list[dict] = []

    def embed_new_training_set(self, encoder):
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            feats = encoder(self.images)
        self.calls.append({"eval_mode": not encoder.net.training, "features": feats})
        encoder.train(was_training)
        return {"features": feats, "labels": self.data["old_features_new"]["labels"].clone()}


def make_old_checkpoint(directory: str | Path) -> tuple[Path, str]:
    """Write the tiny frozen old model (seeded; BN running statistics made non-trivial, so that a drift shows)
    to ``directory/old_model.pt``; returns ``(path, identity)``."""
    from bctbench.models import EmbeddingModel
    from bctbench.old_model import save_old_checkpoint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = EmbeddingModel(BACKBONE, EMBED, C_OLD)
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 3, IMAGE, IMAGE))
    path = Path(directory) / "old_model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = save_old_checkpoint(model, path, backbone=BACKBONE, meta={"test": True})
    return path, identity


def tiny_setup(old_checkpoint: str | Path, old_identity: str | None = None, **overrides: Any) -> MethodSetup:
    """The :class:`MethodSetup` of the tiny world against ``old_checkpoint`` (one epoch, SGD lr 0.05);
    ``overrides`` replace fields."""
    fields = {
        "backbone_new": BACKBONE,
        "backbone_old": BACKBONE,
        "embed_dim": EMBED,
        "num_classes_new": C_NEW,
        "num_classes_old": C_OLD,
        "old_checkpoint": str(old_checkpoint),
        "old_identity": old_identity,
        "optimizer": {
            "name": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "milestones": [],
            "gamma": 0.1,
            "warmup_epochs": 0,
        },
        "max_epochs": 1,
        "image_size": IMAGE,
    }
    return MethodSetup(**{**fields, **overrides})


def quiet_trainer(root: str | Path, **kw: Any):
    """A CPU Lightning trainer without logger, progress bar, model summary or (unless ``enable_checkpointing``
    is passed) checkpoints, rooted in ``root``; ``kw`` adds or overrides Trainer arguments."""
    import lightning.pytorch as pl

    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(root),
    }
    return pl.Trainer(**{**options, **kw})


# ------------------------------------------------------------------------------------------------- rules
class _Broken(Exception):
    """One violated rule (internal; :func:`check_method` turns them into one AssertionError)."""


def _require(ok: bool, detail: str) -> None:
    if not ok:
        raise _Broken(detail)


def _plain(value: Any) -> bool:
    """True for values a ``weights_only=True`` checkpoint stores: None, bool, int, float, str, and lists, tuples
    and dicts (string keys) of them."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _fits(value: Any, tp: Any) -> str | None:
    """None if ``value`` fits annotation ``tp`` (the ``--set`` checks), else the expected type in words."""
    from bctbench.config import _check, _Mismatch

    try:
        _check(value, tp, "", "")
    except _Mismatch as exc:
        return exc.expected
    return None


def _hyperparameters(cls: type) -> dict[str, _P]:
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is _P.KEYWORD_ONLY}


def check_metadata(cls: Any, asked_as: str | None = None) -> None:
    """Rule ``metadata`` (module docstring); ``asked_as``: the name the method was resolved from."""
    from bctbench.registry import registered_method

    _require(
        isinstance(cls, type) and issubclass(cls, CompatibilityMethod),
        f"{cls!r} is not a CompatibilityMethod subclass",
    )
    name = getattr(cls, "name", "")
    _require(isinstance(name, str) and bool(_NAME_RE.match(name)), f"name {name!r} is not lower snake case")
    _require(
        asked_as is None or name == asked_as, f"asked for as '{asked_as}', but the class's name is '{name}'"
    )
    other = registered_method(name)
    _require(
        other is None or other is cls,
        f"name '{name}' is registered by another class, {getattr(other, '__module__', '?')}."
        f"{getattr(other, '__qualname__', other)}",
    )
    for attr in ("paper", "reference_code"):
        value = getattr(cls, attr, "")
        _require(isinstance(value, str) and value.strip() != "", f"`{attr}` must be a non-empty string")
    for attr in ("needs_old_forward", "needs_custom_old_model", "handles_dim_mismatch"):
        _require(isinstance(getattr(cls, attr, None), bool), f"`{attr}` must be True or False")
    artifacts = cls.required_artifacts
    _require(
        isinstance(artifacts, set | frozenset) and set(artifacts) <= set(KINDS),
        f"`required_artifacts` must be a (frozen)set of {', '.join(KINDS)}; got {artifacts!r}",
    )
    _require(
        cls.backfill_mode in ("mixed", "merge"),
        f"`backfill_mode` must be 'mixed' or 'merge'; got {cls.backfill_mode!r}",
    )


def check_hyperparameters(cls: type) -> None:
    """Rule ``hyperparameters`` (module docstring)."""
    from bctbench.config import method_annotations

    params = list(inspect.signature(cls.__init__).parameters.values())
    _require(
        len(params) >= 2
        and params[1].name == "setup"
        and params[1].kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD),
        "__init__ must be `__init__(self, setup: MethodSetup, *, <hyperparameters>)`",
    )
    for p in params[2:]:
        _require(p.kind is not _P.VAR_KEYWORD, f"no **{p.name}: every hyperparameter must be named")
        _require(p.kind is not _P.VAR_POSITIONAL, f"no *{p.name}: hyperparameters are keyword-only")
        _require(p.kind is _P.KEYWORD_ONLY, f"hyperparameter '{p.name}' must be keyword-only (after `*`)")
        _require(p.default is not _P.empty, f"hyperparameter '{p.name}' needs a reference default")
        _require(p.annotation is not _P.empty, f"hyperparameter '{p.name}' has no type annotation")
    annotations = method_annotations(cls)
    for name, p in _hyperparameters(cls).items():
        tp = annotations.get(name, Any)
        _require(
            tp is not Any or p.annotation in (Any, "Any", "typing.Any"),
            f"the annotation {p.annotation!r} of '{name}' does not resolve (import what it names at module level)",
        )
        expected = _fits(p.default, tp)
        _require(
            expected is None,
            f"default {p.default!r} of '{name}' does not fit its annotation (expected {expected})",
        )
        _require(
            _plain(p.default),
            f"default {p.default!r} of '{name}' is not a plain value (checkpoints load with weights_only=True)",
        )


def check_search_space(cls: type) -> None:
    """Rule ``search_space`` (module docstring)."""
    from bctbench.config import method_annotations

    space = cls.search_space()
    _require(isinstance(space, dict), f"search_space() must return a dict, got {type(space).__name__}")
    hyper = _hyperparameters(cls)
    annotations = method_annotations(cls)
    for key, values in space.items():
        _require(
            key in hyper,
            f"search_space() key '{key}' is not a hyperparameter (have: {', '.join(hyper) or 'none'})",
        )
        _require(
            isinstance(values, list | tuple) and len(values) > 0,
            f"search_space()['{key}'] must be a non-empty list of values, got {values!r}",
        )
        for value in values:
            expected = _fits(value, annotations.get(key, Any))
            _require(
                expected is None,
                f"search_space()['{key}'] value {value!r} does not fit (expected {expected})",
            )


class _Run:
    """The dynamic rules' shared state: one tiny world, one model trained once."""

    def __init__(self, cls: type, workdir: Path, steps: int) -> None:
        self.cls, self.workdir, self.steps = cls, workdir, steps
        self.model = None
        self.trainer = None

    def build(self) -> None:
        path, identity = make_old_checkpoint(self.workdir / "old")
        self.setup = tiny_setup(path, identity)
        try:
            self.model = self.cls(self.setup)
        except Exception as exc:  # noqa: BLE001 - reported as the violated rule
            raise _Broken(f"{self.cls.__qualname__}(setup) raised {type(exc).__name__}: {exc}") from exc
        if self.cls.required_artifacts:
            self.store = TinyArtifactStore(self.model.old)
            try:
                self.model.prepare_artifacts(self.store)
            except Exception as exc:  # noqa: BLE001
                raise _Broken(f"prepare_artifacts raised {type(exc).__name__}: {exc}") from exc

    def training(self) -> None:
        import lightning.pytorch as pl

        model = self.model
        old_before = {k: v.clone() for k, v in model.old.state_dict().items()}
        new_before = {k: v.clone() for k, v in model.new.state_dict().items()}
        losses: list[float] = []

        class Grab(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                losses.append(float(outputs["loss"]))

        self.trainer = quiet_trainer(
            self.workdir / "trainer", max_epochs=1, limit_train_batches=self.steps, callbacks=[Grab()]
        )
        try:
            self.trainer.fit(model, random_loader(n=max(32, self.steps * BATCH)))
        except Exception as exc:  # noqa: BLE001
            raise _Broken(f"training raised {type(exc).__name__}: {exc}") from exc
        _require(len(losses) == self.steps, f"{len(losses)} of {self.steps} training steps returned a loss")
        _require(all(math.isfinite(v) for v in losses), f"non-finite training loss: {losses}")
        logged = {k: float(v) for k, v in self.trainer.logged_metrics.items() if k.startswith("train/loss/")}
        _require(
            "train/loss/cls_step" in logged or "train/loss/cls" in logged,
            "train/loss/cls was not logged (training_step must log the classification term)",
        )
        bad = sorted(k for k, v in logged.items() if not math.isfinite(v))
        _require(not bad, f"non-finite loss terms: {', '.join(bad)}")
        after = model.old.state_dict()
        _require(old_before.keys() == after.keys(), "the frozen old model's state dict changed its keys")
        changed = [k for k in old_before if not torch.equal(old_before[k], after[k])]
        _require(not changed, f"the frozen old model changed in training: {', '.join(changed[:5])}")
        _require(
            model.old.current_identity() == self.setup.old_identity,
            "the frozen old model's identity changed in training",
        )
        _require(not any(m.training for m in model.old.modules()), "the frozen old model is in training mode")
        frozen = {id(p) for p in model.old.parameters()}
        in_optimiser = [
            p
            for opt in self.trainer.optimizers
            for g in opt.param_groups
            for p in g["params"]
            if id(p) in frozen
        ]
        _require(
            not in_optimiser, f"{len(in_optimiser)} parameters of the frozen old model are in an optimiser"
        )
        _require(
            any(not torch.equal(new_before[k], v) for k, v in model.new.state_dict().items()),
            "the new model did not change in training",
        )

    def checkpoint(self) -> None:
        path = self.workdir / "method.ckpt"
        self.trainer.save_checkpoint(path)
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            text = str(exc)
            found = re.search(r"Unsupported global: [^\n]*", text)  # torch's message: which class is refused
            reason = found.group(0) if found else (text.splitlines() or [""])[0]
            raise _Broken(
                f"the checkpoint does not load with weights_only=True ({type(exc).__name__}: {reason.strip()})"
            ) from exc
        try:
            loaded = self.cls.load_from_checkpoint(path, map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise _Broken(f"load_from_checkpoint raised {type(exc).__name__}: {exc}") from exc
        _require(
            loaded.hparams == self.model.hparams, "the loaded hyperparameters differ from the saved ones"
        )
        new_state = loaded.new.state_dict()
        differ = [k for k, v in self.model.new.state_dict().items() if not torch.equal(v, new_state[k])]
        _require(not differ, f"the loaded new model differs: {', '.join(differ[:5])}")
        _require(loaded.old.identity == self.model.old.identity, "the loaded model has another old model")

    def encoders(self) -> None:
        encoders = self.model.encoders()
        _require(
            isinstance(encoders, dict) and {"old", "new"} <= set(encoders),
            f"encoders() must return a dict with 'old' and 'new', got {sorted(encoders) if isinstance(encoders, dict) else encoders!r}",
        )
        x = torch.randn(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(7))
        for key, enc in encoders.items():
            enc.eval()
            with torch.no_grad():
                out = enc(x)
            _require(
                isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == 4,
                f"encoder '{key}' must return float32[B, D], got {getattr(out, 'shape', type(out).__name__)}",
            )
            _require(out.dtype == torch.float32, f"encoder '{key}' returns {out.dtype}, not float32")
            _require(bool(torch.isfinite(out).all()), f"encoder '{key}' returns non-finite values")
            norms = out.norm(dim=1)
            _require(
                torch.allclose(norms, torch.ones_like(norms), atol=1e-5),
                f"encoder '{key}' rows are not unit-norm (norms {norms.tolist()})",
            )
            identity = getattr(enc, "identity", None)
            _require(
                isinstance(identity, str) and identity != "", f"encoder '{key}' has no `identity` string"
            )


def resolve(method: Any) -> tuple[type, str | None]:
    """``(class, name asked for)`` from a class, a method name or an import string ``pkg.module:Class``."""
    if isinstance(method, str):
        from bctbench.registry import get_method

        return get_method(method), (None if ":" in method else method)
    return method, None


def check_method(
    method: Any,
    *,
    rules: Iterable[str] | None = None,
    workdir: str | Path | None = None,
    steps: int = 3,
) -> None:
    """Check a method plugin against the contract (module docstring); returns None when every rule holds.

    ``method``: the class, a name (registry, built-in or entry point) or an import string. ``rules``: a subset
    of :data:`RULES` (default: all; ``checkpoint`` and ``encoders`` include ``training``, which includes
    ``build``). ``workdir``: where the tiny old model, trainer files and checkpoint go (default: a temporary
    folder, removed afterwards). ``steps``: training steps (batches of 8).

    Raises :class:`AssertionError` naming the method and, one line each, every violated rule; a method that
    cannot be resolved (unknown name, broken plugin, entry-point name other than the class's name) is one
    AssertionError too.
    """
    from bctbench.errors import BCTBenchError

    selected = list(RULES if rules is None else rules)
    unknown = sorted(set(selected) - set(RULES))
    if unknown:
        raise ValueError(f"unknown rules {unknown} (known: {', '.join(RULES)})")
    try:
        cls, asked_as = resolve(method)
    except BCTBenchError as exc:
        raise AssertionError(f"method {method!r} cannot be loaded: {exc}") from None
    label = getattr(cls, "name", None) or getattr(cls, "__qualname__", repr(cls))
    failures: list[str] = []

    def run(rule: str, fn, *args) -> bool:
        try:
            fn(*args)
        except _Broken as exc:
            failures.append(f"method '{label}' breaks rule '{rule}': {exc}")
            return False
        return True

    if "metadata" in selected:
        run("metadata", check_metadata, cls, asked_as)
    if isinstance(cls, type) and issubclass(cls, CompatibilityMethod):
        if "hyperparameters" in selected:
            run("hyperparameters", check_hyperparameters, cls)
        if "search_space" in selected:
            run("search_space", check_search_space, cls)
        # build -> training -> checkpoint / encoders: each needs the ones before it
        chain = ("build", "training", "checkpoint", "encoders")
        last = max((chain.index(r) for r in selected if r in chain), default=-1)
        with tempfile.TemporaryDirectory(prefix="bctbench-check-") as tmp:
            state = _Run(cls, Path(workdir) if workdir is not None else Path(tmp), steps)
            for i, rule in enumerate(chain[: last + 1]):
                if (i < 2 or rule in selected) and not run(rule, getattr(state, rule)):
                    break
    if failures:
        raise AssertionError("\n".join(failures))


def _label(method: Any) -> str:
    if isinstance(method, str):
        return method
    return getattr(method, "name", None) or getattr(method, "__qualname__", repr(method))


def parametrize_methods(methods: Sequence[Any] | None = None, argname: str = "method"):
    """``pytest.mark.parametrize`` over ``methods`` (classes, names or import strings; default: every method
    :func:`bctbench.registry.list_methods` finds), with the method names as test ids."""
    import pytest

    from bctbench.registry import list_methods

    items = list(list_methods() if methods is None else methods)
    return pytest.mark.parametrize(argname, items, ids=[_label(m) for m in items])
