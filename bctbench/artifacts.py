"""Old-model artefacts, computed once per (old checkpoint, split) and cached by content hash.

Kinds (docs/methods.md §2, §13):

* ``old_classifier`` — ``weight: float[C_old, d]`` (W_o, frozen).
* ``old_features_new`` — old embeddings of every image of the new training set, L2-normalised, stored as
  ``float16[N_new, d]`` with ``labels``/``old_labels`` ``int64[N_new]`` (test transform, eval mode).
* ``class_means_new`` — ``means: float[C_new, d]`` (P^o_k: mean of normalised old features over the new
  training set, not re-normalised), ``counts: int64[C_new]`` and ``old_label_of_class: int64[C_new]``
  (−1 for classes the old model does not know).
* ``advbct_meta`` — dense class metadata over the **old** training set (centres, 1.5-IQR radii/angles;
  :func:`bctbench.prototypes.advbct_class_meta`), indexed by old label.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bctbench.errors import BCTBenchError
from bctbench.evaluation.features import extract_features
from bctbench.identity import save_deterministic
from bctbench.old_model import FrozenOldModel

log = logging.getLogger(__name__)

KINDS = ("old_classifier", "old_features_new", "class_means_new", "advbct_meta")

# keys of each kind's dict (advbct_meta: those of :func:`bctbench.prototypes.advbct_class_meta`); a cached
# file with other keys is recomputed
ARTIFACT_KEYS: dict[str, frozenset[str]] = {
    "old_classifier": frozenset({"weight"}),
    "old_features_new": frozenset({"features", "labels", "old_labels", "num_classes"}),
    "class_means_new": frozenset({"means", "counts", "old_label_of_class"}),
    "advbct_meta": frozenset(
        {"centers", "r_max", "r_min", "r_med", "theta_max", "n_kept", "counts", "has_meta"}
    ),
}
# keys holding ``[*, d]`` old-model embeddings (d = the old model's embedding width)
_EMBEDDING_KEYS = frozenset({"weight", "features", "means", "centers"})


@dataclass(frozen=True)
class TrainingImages:
    """Images of one training set (paths + labels) for offline old-model passes."""

    paths: Sequence[str]
    labels: torch.Tensor  # int64[N], label space of that training set
    old_labels: torch.Tensor  # int64[N], −1 when the old model has no such class
    num_classes: int


class ArtifactStore:
    """Lazy, cached old-model artefacts (see module docstring).

    ``new_images``/``old_images``: callables returning :class:`TrainingImages` of the new / old training set;
    ``transform``: the benchmark's test transform. Files: ``root/<kind>-<key>.pt``, key = sha256 of (old
    sha256, split sha256, kind, transform), written by :func:`~bctbench.identity.save_deterministic`. A cached
    file that cannot be read or does not hold the kind's tensors (:data:`ARTIFACT_KEYS`) is logged as a
    warning, deleted and recomputed.
    """

    def __init__(
        self,
        root: str | Path,
        old: FrozenOldModel,
        split_sha256: str,
        new_images: Callable[[], TrainingImages],
        old_images: Callable[[], TrainingImages],
        transform,
        *,
        batch_size: int = 256,
        num_workers: int = 0,
        device: str = "cpu",
    ) -> None:
        self.root = Path(root)
        self.old = old
        self.split_sha256 = split_sha256
        self._new_images = new_images
        self._old_images = old_images
        self.transform = transform
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self._memo: dict[str, dict[str, torch.Tensor]] = {}

    def key(self, kind: str) -> str:
        blob = json.dumps([self.old.identity, self.split_sha256, kind, repr(self.transform)])
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, kind: str) -> dict[str, torch.Tensor]:
        """Return artefact ``kind`` (computed and cached on first use)."""
        if kind not in KINDS:
            raise BCTBenchError(f"unknown artefact kind '{kind}' (known: {', '.join(KINDS)})")
        if kind in self._memo:
            return self._memo[kind]
        path = self.root / f"{kind}-{self.key(kind)}.pt"
        value = self._load(kind, path) if path.is_file() else None
        if value is None:
            log.info("computing old-model artefact '%s' (cached at %s)", kind, path)
            value = getattr(self, f"_compute_{kind}")()
            self._save(value, path)
        self._memo[kind] = value
        return value

    def _load(self, kind: str, path: Path) -> dict[str, torch.Tensor] | None:
        """The cached artefact at ``path``, or None after deleting a file that cannot be read
        (``torch.load(weights_only=True)``: never runs code) or does not hold artefact ``kind``."""
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
            problem = self._problem(kind, value)
        except Exception as err:  # truncated zip, garbage, refused pickle globals, I/O errors, ...
            problem = f"unreadable: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
        if problem is None:
            return value
        log.warning("artefact cache: discarding %s (%s); recomputing", path, problem)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None

    def _problem(self, kind: str, value: object) -> str | None:
        """Why ``value`` is not a valid artefact ``kind`` (None if it is): a dict of tensors with exactly the
        keys of :data:`ARTIFACT_KEYS`, and embeddings of the old model's width."""
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return f"expected a dict of tensors, got {type(value).__name__}"
        keys = set(value)
        if keys != ARTIFACT_KEYS[kind]:
            missing, extra = sorted(ARTIFACT_KEYS[kind] - keys), sorted(keys - ARTIFACT_KEYS[kind])
            return f"keys differ from '{kind}' (missing: {missing}, unexpected: {extra})"
        not_tensors = sorted(k for k, v in value.items() if not isinstance(v, torch.Tensor))
        if not_tensors:
            return f"not tensors: {not_tensors}"
        for k in _EMBEDDING_KEYS & keys:
            t = value[k]
            if t.ndim != 2 or t.shape[1] != self.old.embed_dim:
                return f"'{k}' has shape {list(t.shape)}, expected [*, {self.old.embed_dim}]"
        return None

    def _save(self, value: dict[str, torch.Tensor], path: Path) -> None:
        save_deterministic(value, path)  # atomic, normal permissions

    def embed_new_training_set(self, encoder) -> dict[str, torch.Tensor]:
        """Embed every image of the new training set with ``encoder`` (e.g. the current new model at a
        prototype-refinement epoch; not cached). Returns ``features float32[N, D]`` (encoder output, unit-norm
        for :class:`~bctbench.method.Encoder`) and ``labels int64[N]``, rows in the order of
        ``old_features_new``. Under DDP the pass is sharded across processes and gathered."""
        images = self._new_images()
        # device=None: the live new model stays on its own device
        feats = self._embed(encoder, images, device=None, desc="new features")
        return {"features": feats, "labels": images.labels.clone()}

    def _embed(self, encoder, images: TrainingImages, *, device, desc: str) -> torch.Tensor:
        """``float32[N, D]`` features of ``images`` (test transform, eval mode)."""
        feats = extract_features(
            encoder,
            list(images.paths),
            None,
            self.transform,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=device,
            desc=desc,
        )
        return torch.from_numpy(feats)

    def _old_features(self, images: TrainingImages) -> torch.Tensor:
        from bctbench.method import Encoder

        # eval() first: extract_features restores the wrapper's mode afterwards, and a fresh wrapper is in train
        # mode, which would leave the frozen old embedder (BN running statistics) training
        encoder = Encoder(self.old.model.embedder, f"old:{self.old.identity}").eval()
        return self._embed(encoder, images, device=self.device, desc="old features")

    def _compute_old_classifier(self) -> dict[str, torch.Tensor]:
        return {"weight": self.old.classifier_weight.detach().cpu().clone()}

    def _compute_old_features_new(self) -> dict[str, torch.Tensor]:
        images = self._new_images()
        feats = self._old_features(images)
        return {
            "features": feats.half(),
            "labels": images.labels.clone(),
            "old_labels": images.old_labels.clone(),
            "num_classes": torch.tensor(images.num_classes),
        }

    def _compute_class_means_new(self) -> dict[str, torch.Tensor]:
        from bctbench.prototypes import class_means

        data = self.get("old_features_new")
        num_classes = int(data["num_classes"])
        means, counts = class_means(data["features"].float(), data["labels"], num_classes)
        old_label_of_class = torch.full((num_classes,), -1, dtype=torch.int64)
        old_label_of_class[data["labels"]] = data["old_labels"]  # constant within a class
        return {"means": means, "counts": counts, "old_label_of_class": old_label_of_class}

    def _compute_advbct_meta(self) -> dict[str, torch.Tensor]:
        from bctbench.prototypes import advbct_class_meta

        images = self._old_images()
        feats = self._old_features(images)
        return advbct_class_meta(feats, images.labels, images.num_classes)


class RandomArtifactStore:
    """Artefacts with the real shapes and the real shared math, from random unit features instead of an
    old-model pass: for contract tests and step-time benchmarks, where no dataset is involved.

    ``old_label_of_class``: ``int64[C_new]`` (−1 for classes the old model does not know); ``samples_per_class``
    random features are drawn per new class (seeded).
    """

    def __init__(
        self,
        old: FrozenOldModel,
        old_label_of_class: torch.Tensor,
        *,
        samples_per_class: int = 8,
        seed: int = 1,
    ) -> None:
        from bctbench import prototypes

        g = torch.Generator().manual_seed(seed)
        c_new, c_old, d = len(old_label_of_class), old.num_classes, old.embed_dim
        labels_new = torch.arange(c_new * samples_per_class) % c_new
        feats = torch.nn.functional.normalize(torch.randn(len(labels_new), d, generator=g), dim=1)
        means, counts = prototypes.class_means(feats, labels_new, c_new)
        old_labels = old_label_of_class[labels_new]
        known = old_labels >= 0
        self.data = {
            "old_classifier": {"weight": old.classifier_weight.detach().clone()},
            "old_features_new": {
                "features": feats.half(),
                "labels": labels_new,
                "old_labels": old_labels,
                "num_classes": torch.tensor(c_new),
            },
            "class_means_new": {
                "means": means,
                "counts": counts,
                "old_label_of_class": old_label_of_class.clone(),
            },
            "advbct_meta": prototypes.advbct_class_meta(feats[known], old_labels[known], c_old),
        }

    def get(self, kind: str) -> dict[str, torch.Tensor]:
        if kind not in self.data:
            raise BCTBenchError(f"unknown artefact kind '{kind}' (known: {', '.join(KINDS)})")
        return self.data[kind]
