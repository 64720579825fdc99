"""Image I/O shared by training and evaluation: RGB loading, an image-list dataset, transforms, a sampler.

* :func:`load_rgb` always returns an RGB ``PIL.Image`` (grayscale, 16-bit greyscale, CMYK, palette and PNG
  bytes in a ``.jpg`` all work), optionally cropped to an ``(x1, y1, x2, y2)`` box before any transform.
  Truncated JPEGs are tolerated as in revisitop (``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``, set when
  this module is imported); files that still cannot be decoded raise a one-line
  :class:`~bctbench.errors.DataError`.
* :class:`ImageListDataset` yields ``{"images": float[3, H, W], "labels": int64, "old_labels": int64,
  "index": int64}`` samples. Use :class:`ImageLoader` (a ``DataLoader``) to batch it: a ``DataError`` raised
  while loading inside a worker process reaches the main process as the same one-line ``DataError``
  instead of torch's multi-line worker traceback.
* :func:`build_train_transform` / :func:`build_test_transform`: torchvision (v1) pipelines with ImageNet
  normalisation.
* :class:`ClassBalancedSampler`: index sampler whose consecutive chunks of ``batch_size`` hold
  ``batch_size / m`` distinct classes with ``m`` images each; deterministic per ``(seed, epoch)``;
  shards whole batches over DDP ranks.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info
from torch.utils.data.distributed import DistributedSampler
from torchvision import transforms as T

from bctbench.errors import DataError

# revisitop: "to avoid crashing for truncated (corrupted images)". Process-wide, like the reference loader;
# DataLoader workers inherit it (fork) or re-import this module (spawn).
ImageFile.LOAD_TRUNCATED_IMAGES = True

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RRC_SCALE = (0.5, 1.0)  # area fraction of the random resized crop (PIL and tensor paths alike)

Box = tuple[float, float, float, float]

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassBalancedSampler",
    "ImageListDataset",
    "ImageLoader",
    "LoadFailure",
    "PackedStrings",
    "build_test_transform",
    "build_train_transform",
    "collate_batch",
    "load_rgb",
]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# PIL's 16-bit (and 32-bit integer) greyscale modes: ``convert("RGB")`` clips them to 0..255, i.e. white
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _to_rgb(im: Image.Image) -> Image.Image:
    """A new, fully loaded RGB copy of ``im``.

    16-bit greyscale (``I;16``/``I;16L``/``I;16B``/``I;16N``, and ``I`` whose values lie in 0..65535) is
    scaled to 8 bits by ``value >> 8`` instead of PIL's clipping; an ``I`` image outside that range is
    stretched linearly from its [min, max] to 0..255. Other modes (PIL already decodes 48/64-bit PNGs as
    8-bit ``RGB``/``RGBA``) go through ``convert("RGB")``.
    """
    if im.mode not in _WIDE_GREY_MODES:
        return im.convert("RGB")
    grey = np.asarray(im).astype(np.int64)  # int64[H, W]
    lo, hi = (int(grey.min()), int(grey.max())) if grey.size else (0, 0)
    if lo >= 0 and hi <= 0xFFFF:
        grey8 = (grey >> 8).astype(np.uint8)  # uint8[H, W]
    else:  # 32-bit data: stretch its own range
        grey8 = ((grey - lo) * 255 // max(hi - lo, 1)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(grey8)).convert("RGB")


def load_rgb(path: str | os.PathLike, box: Sequence[float] | None = None) -> Image.Image:
    """Decode ``path`` as an RGB image, cropped to ``box = (x1, y1, x2, y2)`` (pixels, PIL ``crop``
    semantics: rounded, right/bottom exclusive) when given.

    Raises ``DataError("<path>: cannot decode image (...)")`` for a missing or undecodable file, and
    ``DataError("<path>: invalid crop box ...")`` for a box that is not 4 numbers with x2 > x1, y2 > y1.
    """
    try:
        with Image.open(path) as im:
            rgb = _to_rgb(im)  # always a new, fully loaded image
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DataError(f"{path}: cannot decode image ({type(err).__name__}: {_one_line(err)})") from err
    if box is None:
        return rgb
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: invalid crop box {box!r} (expected 4 numbers x1, y1, x2, y2)") from err
    if not (x2 > x1 and y2 > y1):
        raise DataError(f"{path}: invalid crop box {tuple(box)!r} (need x2 > x1 and y2 > y1)")
    return rgb.crop((x1, y1, x2, y2))


class LoadFailure:
    """Placeholder for a sample whose image could not be loaded inside a DataLoader worker.

    :func:`collate_batch` turns a batch holding one into a ``LoadFailure``; :class:`ImageLoader` raises its
    ``message`` as a :class:`DataError` in the main process. Deliberately not a Mapping/Sequence, so the
    pin-memory thread passes it through untouched.
    """

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"LoadFailure({self.message!r})"


class PackedStrings(Sequence[str]):
    """Read-only list of strings stored as one UTF-8 byte buffer plus offsets (two NumPy arrays).

    DataLoader workers forked from the main process share these pages; a Python ``list[str]`` would be
    copied into every worker as reference counts are touched (pytorch/pytorch#13246), which matters for
    GLDv2's 1.58M paths.
    """

    def __init__(self, items: Sequence[str | os.PathLike]) -> None:
        encoded = [os.fsencode(p) for p in items]
        self._buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends.size)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]  # type: ignore[return-value]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = int(self._ends[i - 1]) if i else 0
        return os.fsdecode(self._buf[start : int(self._ends[i])].tobytes())


def _as_int64(name: str, values: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, -1, dtype=np.int64)
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"ImageListDataset: {name} has {arr.shape[0]} entries for {n} paths")
    return arr


class ImageListDataset(Dataset):
    """Dataset over a list of image files.

    Item ``i`` is ``{"images": Tensor[3, H, W] (float after the transform), "labels": int64 scalar,
    "old_labels": int64 scalar (-1: none), "index": int64 scalar}``; ``labels`` default to -1 and ``index``
    to ``i`` (pass ``indices`` to report e.g. the row of a split CSV instead). ``boxes[i]`` (or None) crops
    image ``i`` before the transform. Without a transform, ``images`` is ``ToTensor()`` of the image
    (float in [0, 1]).

    ``cache_decoded=True`` keeps each decoded RGB image in memory (per process; use with persistent
    DataLoader workers) so later epochs only augment: for small datasets such as the embedded synthetic one.

    ``skip_corrupt=False``: an undecodable image raises ``DataError`` naming the file. ``skip_corrupt=True``:
    it is replaced by the next decodable item (wrapping around; labels/index follow the replacement), a
    warning is logged, and the file is recorded: :attr:`skipped` counts distinct bad files, also across
    DataLoader worker processes (shared-memory flags).

    ``defer_errors`` (set by :class:`ImageLoader`): inside a worker process, return a :class:`LoadFailure`
    instead of raising, so that the main process can raise the one-line error.

    ``paths`` is kept as :class:`PackedStrings` (``dataset.paths[i]`` is a ``str``).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | np.ndarray | None = None,
        boxes: Sequence[Box | None] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        old_labels: Sequence[int] | np.ndarray | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        skip_corrupt: bool = False,
        cache_decoded: bool = False,
    ) -> None:
        self.paths = PackedStrings(paths)
        n = len(self.paths)
        self.labels = _as_int64("labels", labels, n)
        self.old_labels = _as_int64("old_labels", old_labels, n)
        self.indices = np.arange(n, dtype=np.int64) if indices is None else _as_int64("indices", indices, n)
        if boxes is not None and len(boxes) != n:
            raise ValueError(f"ImageListDataset: boxes has {len(boxes)} entries for {n} paths")
        self.boxes = None if boxes is None else list(boxes)
        self.transform = transform if transform is not None else T.ToTensor()
        self.skip_corrupt = skip_corrupt
        # decoded RGB images kept per process (small datasets: decode once, augment every epoch)
        self._decoded: dict[int, Image.Image] | None = {} if cache_decoded else None
        self.defer_errors = False
        # one flag per item, in shared memory so that worker processes' findings reach the main process
        self._bad = torch.zeros(n, dtype=torch.bool).share_memory_() if skip_corrupt else None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def skipped(self) -> int:
        """Number of distinct files found undecodable and skipped so far (``skip_corrupt=True``)."""
        return 0 if self._bad is None else int(self._bad.sum())

    @property
    def skipped_paths(self) -> list[str]:
        """The files counted in :attr:`skipped`, in dataset order."""
        if self._bad is None:
            return []
        return [self.paths[i] for i in torch.nonzero(self._bad).flatten().tolist()]

    def _load(self, i: int) -> dict[str, Any]:
        rgb = self._decoded.get(i) if self._decoded is not None else None
        if rgb is None:
            rgb = load_rgb(self.paths[i], None if self.boxes is None else self.boxes[i])
            if self._decoded is not None:
                self._decoded[i] = rgb
        image = self.transform(rgb)
        return {
            "images": image,
            "labels": torch.tensor(self.labels[i], dtype=torch.int64),
            "old_labels": torch.tensor(self.old_labels[i], dtype=torch.int64),
            "index": torch.tensor(self.indices[i], dtype=torch.int64),
        }

    def _get(self, i: int) -> dict[str, Any]:
        if not self.skip_corrupt:
            return self._load(i)
        n = len(self.paths)
        assert self._bad is not None
        for step in range(n):
            j = (i + step) % n
            if bool(self._bad[j]):
                continue
            try:
                return self._load(j)
            except DataError as err:
                self._bad[j] = True
                log.warning("skipping corrupt image (skip_corrupt=True): %s", err)
        raise DataError(f"{self.paths[i]}: no decodable image left in the dataset ({n} files tried)")

    def __getitem__(self, i: int) -> dict[str, Any] | LoadFailure:
        i = int(i)
        if self.defer_errors and get_worker_info() is not None:
            try:
                return self._get(i)
            except DataError as err:
                return LoadFailure(str(err))
        return self._get(i)


def collate_batch(samples: list[Any]) -> dict[str, torch.Tensor] | LoadFailure:
    """``default_collate`` of :class:`ImageListDataset` items: ``images float[B, 3, H, W]``, ``labels``,
    ``old_labels``, ``index`` ``int64[B]``. Returns the first :class:`LoadFailure` if any sample failed.
    ``uint8`` images of different sizes (tensor augmentation, :func:`augment_batch`) are zero-padded at the
    bottom/right to the largest height and width of the batch; their crop boxes stay valid."""
    for s in samples:
        if isinstance(s, LoadFailure):
            return s
    images = [s["images"] for s in samples]
    if images[0].dtype == torch.uint8 and len({tuple(im.shape) for im in images}) > 1:
        h, w = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
        padded = torch.zeros(len(images), 3, h, w, dtype=torch.uint8)
        for k, im in enumerate(images):
            padded[k, :, : im.shape[1], : im.shape[2]] = im
        rest = default_collate([{k: v for k, v in s.items() if k != "images"} for s in samples])
        return {"images": padded, **rest}
    return default_collate(samples)


class AugmentingCollate:
    """``collate_fn`` that collates (:func:`collate_batch`) and then applies the batch's crop boxes and flips
    (:func:`augment_batch`) to ``size x size``: in a data-loader worker, so the training process only trains.
    Batches without crop boxes (and load failures) pass through unchanged."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, samples: list[Any]) -> dict[str, torch.Tensor] | LoadFailure:
        batch = collate_batch(samples)
        if isinstance(batch, dict) and "crop_box" in batch:
            batch["images"] = augment_batch(
                batch["images"], batch.pop("crop_box"), batch.pop("flip"), self.size
            )
        return batch


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``uint8[3, H, W]`` (no scaling: the tensor augmentation works on raw pixels)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def rrc_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[float, float, float, float]:
    """A random-resized-crop box ``(x0, y0, x1, y1)`` in pixels of a ``height x width`` image, drawn like
    torchvision's ``RandomResizedCrop.get_params`` (area fraction in ``scale``, log-uniform aspect ratio in
    ``ratio``, ten tries, then the central crop of the clamped ratio) from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            return float(x0), float(y0), float(x0 + w), float(y0 + h)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    y0, x0 = (height - h) // 2, (width - w) // 2
    return float(x0), float(y0), float(x0 + w), float(y0 + h)


def augment_batch(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Random resized crop + horizontal flip + ImageNet normalisation of a whole batch in one call.

    Args:
        images: ``uint8[B, 3, H, W]`` raw pixels (any device; zero padding beyond each image is never sampled).
        boxes: ``float[B, 4]`` crop boxes ``(x0, y0, x1, y1)`` in pixels, edges inclusive of the box
            (:func:`rrc_box`).
        flips: ``bool[B]``, mirror the crop horizontally.
        size: output side.

    Returns ``float32[B, 3, size, size]``: each box resampled bilinearly to ``size x size`` (one affine
    ``grid_sample`` for the batch; the flip is a negative x scale), scaled to [0, 1] and normalised.
    """
    import torch.nn.functional as F

    x = images.float()
    b, _, h, w = x.shape
    boxes = boxes.to(device=x.device, dtype=x.dtype)
    x0, y0, x1, y1 = boxes.unbind(1)
    sign = 1.0 - 2.0 * flips.to(device=x.device, dtype=x.dtype)  # -1 mirrors the crop
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = sign * (x1 - x0) / w  # output [-1, 1] -> the box's edges in input coordinates
    theta[:, 0, 2] = (x0 + x1) / w - 1.0
    theta[:, 1, 1] = (y1 - y0) / h
    theta[:, 1, 2] = (y0 + y1) / h - 1.0
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=out.device, dtype=out.dtype).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=out.device, dtype=out.dtype).view(1, 3, 1, 1) * 255.0
    return (out - mean) / std


class ImageLoader(DataLoader):
    """``DataLoader`` that surfaces image-loading errors from worker processes as one-line ``DataError``.

    Same arguments as ``DataLoader`` (keyword-only after ``dataset``); ``collate_fn`` defaults to :func:`collate_batch`. When the dataset is
    an :class:`ImageListDataset`, its ``defer_errors`` flag is switched on so that workers hand failures
    back as :class:`LoadFailure` batches, which are raised here, in the main process.
    """

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        if kwargs.get("collate_fn") is None:
            kwargs["collate_fn"] = collate_batch
        if isinstance(dataset, ImageListDataset):
            dataset.defer_errors = True
        super().__init__(dataset, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            if isinstance(batch, LoadFailure):
                raise DataError(batch.message)
            yield batch


def build_train_transform(image_size: int) -> T.Compose:
    """RandomResizedCrop(image_size, scale=(0.5, 1.0)) + RandomHorizontalFlip + ToTensor + ImageNet
    normalisation. PIL RGB image -> ``float[3, image_size, image_size]``."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=RRC_SCALE),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def build_test_transform(image_size: int, resize: str = "squash") -> T.Compose:
    """Deterministic test transform, PIL RGB image -> ``float[3, image_size, image_size]``.

    ``resize="squash"``: Resize((s, s)), ignoring the aspect ratio (the reference repos' 224x224);
    ``resize="short_side"``: Resize(s) of the short side, then CenterCrop(s). Then ToTensor + ImageNet
    normalisation.
    """
    if resize == "squash":
        geometry = [T.Resize((image_size, image_size))]
    elif resize == "short_side":
        geometry = [T.Resize(image_size), T.CenterCrop(image_size)]
    else:
        raise ValueError(
            f"build_test_transform: unknown resize {resize!r} (expected 'squash' or 'short_side')"
        )
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ClassBalancedSampler(DistributedSampler):
    """Class-balanced index sampler ("m per class"), deterministic per ``(seed, epoch)``, DDP-shardable.

    Yields dataset indices; every consecutive chunk of ``batch_size`` indices (use the same ``batch_size``
    and ``drop_last=True`` in the DataLoader, ``shuffle=False``) holds ``batch_size // m_per_class``
    distinct classes with ``m_per_class`` images each. A class with fewer than ``m_per_class`` images repeats
    them (sampling with replacement); otherwise its ``m`` images are distinct and successive visits walk
    through a fresh per-epoch permutation of the class, so images are covered evenly.

    Classes are visited in rounds: each round is a random permutation of all classes, cut into whole
    batches (the ``C mod (batch_size // m)`` classes left at the end of a round wait for the next round).
    ``len(labels) // batch_size`` batches are drawn per epoch in total; rank ``r`` of ``num_replicas``
    takes global batches ``r, r + num_replicas, ...`` (the same number on every rank). ``batch_size`` is the
    per-rank batch size. Subclasses ``DistributedSampler`` (without its constructor) only so that Lightning
    leaves the sharding to it instead of wrapping it; Lightning calls :meth:`set_epoch` every epoch.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        m_per_class: int,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        labels = np.asarray(labels).reshape(-1)
        if labels.size == 0:
            raise ValueError("ClassBalancedSampler: empty label list")
        if m_per_class < 1 or batch_size < 1 or batch_size % m_per_class:
            raise ValueError(
                f"ClassBalancedSampler: batch_size ({batch_size}) must be a positive multiple of "
                f"m_per_class ({m_per_class})"
            )
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"ClassBalancedSampler: invalid rank {rank} of num_replicas {num_replicas}")
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        self.classes_per_batch = batch_size // m_per_class
        if self.classes_per_batch > classes.size:
            raise ValueError(
                f"ClassBalancedSampler: batch_size // m_per_class = {self.classes_per_batch} classes per batch "
                f"but only {classes.size} classes"
            )
        self.m_per_class = int(m_per_class)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.shuffle = True
        self.drop_last = True
        self.dataset = None
        self._inverse = inverse.astype(np.int64)  # class position (0..C-1) of every dataset index
        self._counts = counts.astype(np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.num_batches = (labels.size // self.batch_size) // self.num_replicas  # per rank
        self.num_samples = self.num_batches * self.batch_size
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def global_batches(self) -> np.ndarray:
        """All ranks' batches of the current epoch: ``int64[num_batches * num_replicas, batch_size]``."""
        n_global = self.num_batches * self.num_replicas
        if n_global == 0:
            return np.zeros((0, self.batch_size), dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        n_classes = self._counts.size
        cpb = self.classes_per_batch
        per_round = n_classes // cpb  # batches per round
        n_rounds = math.ceil(n_global / per_round)
        # visits[k, c]: class of slot c in global batch k; round[k] = k // per_round
        perms = np.stack([rng.permutation(n_classes)[: per_round * cpb] for _ in range(n_rounds)])
        visits = perms.reshape(n_rounds * per_round, cpb)[:n_global]
        rounds = np.repeat(np.arange(n_rounds, dtype=np.int64), per_round)[:n_global]
        # per-epoch shuffled order of the images inside each class (grouped by class)
        grouped = np.lexsort((rng.random(self._inverse.size), self._inverse))
        m = self.m_per_class
        counts = self._counts[visits][..., None]  # [n_global, cpb, 1]
        start = (rounds[:, None, None] * m) % counts
        pos = (start + np.arange(m)[None, None, :]) % counts
        batches = grouped[self._offsets[visits][..., None] + pos]  # [n_global, cpb, m]
        return batches.reshape(n_global, self.batch_size).astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        mine = self.global_batches()[self.rank :: self.num_replicas]
        return iter(mine.reshape(-1).tolist())
