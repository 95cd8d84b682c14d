"""The common data-set class: raw (image, label) pairs in, augmented tensors out.

A concrete data set implements :meth:`SegDataset.load` (``uint8 [H, W, 3]`` RGB image and
``int64 [H, W]`` train-id label with 255 = ignore) and :meth:`SegDataset.describe` (what item
``i`` is, e.g. its file). The base class applies the transform with a generator seeded from
``(seed, epoch, index)``, so items are reproducible regardless of worker or load order:

- ``ds[i]`` uses the epoch set with :meth:`SegDataset.set_epoch` (call it before building the
  epoch's ``DataLoader`` iterator, as with ``DistributedSampler``);
- ``ds[(epoch, i)]`` names the epoch explicitly — safe with persistent workers, for a sampler
  that yields ``(epoch, index)`` pairs.

Data sets read from image / label files on disk (Cityscapes, CamVid) derive from
:class:`PairedFileDataset`, which pairs the files (:func:`pair_files`) and reads an item; they
supply where the files are and how raw label values become train ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from latbench.errors import UserError
from nas.data.palette import LabelSpec
from nas.data.transforms import sample_rng

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator],
                     tuple[torch.Tensor, torch.Tensor]]

SPLITS = ("train", "val", "test")
#: Further single splits some data sets have (Cityscapes: ``train_extra``, the coarse annotations).
EXTRA_SPLITS = ("train_extra",)


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set instance is, for logs, genotypes and checkpoints (JSON-ready)."""

    name: str
    root: str | None
    split: str
    count: int
    num_classes: int
    ignore_index: int
    augment: bool
    crop: tuple[int, int] | None
    resize: tuple[int, int] | None
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("crop", "resize"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d


def split_parts(split: str) -> list[str]:
    """``"train+val"`` -> ``["train", "val"]``: the single splits a (joined) split name stands for."""
    parts = str(split).split("+")
    known = SPLITS + EXTRA_SPLITS
    if any(p not in known for p in parts) or len(set(parts)) != len(parts):
        raise UserError(f"unknown split {split!r} (expected one of {', '.join(known)}, or several joined "
                        f"with '+', e.g. train+val)")
    return parts


def check_split(split: str) -> None:
    split_parts(split)


def check_root(root: str | Path | None, dataset: str) -> Path:
    if root is None or str(root) == "":
        raise UserError(f"the {dataset} data set needs a data root (--data-root DIR)")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise UserError(f"{dataset} data root {p} does not exist or is not a directory")
    return p


def read_image(path: str | Path) -> np.ndarray:
    """An image file → ``uint8 [H, W, 3]`` RGB. Unreadable files raise :class:`UserError`."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise UserError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def read_label(path: str | Path) -> np.ndarray:
    """A single-channel label PNG → ``int64 [H, W]`` of raw values.

    An RGB (colour-coded) label file is refused: it would need a colour → id mapping.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise UserError(
                    f"label file {path} has mode {im.mode}: expected a single-channel image of "
                    f"label ids (not the colour-coded version)"
                )
            arr = np.asarray(im)
    except FileNotFoundError:
        raise UserError(f"label file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot read label file {path}: {e}") from None
    if arr.ndim != 2:
        raise UserError(f"label file {path} has shape {arr.shape}: expected [H, W]")
    return arr.astype(np.int64)


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Any,
                    label_path: Any) -> None:
    if image.shape[:2] != label.shape:
        raise UserError(
            f"image {image_path} is {image.shape[0]}x{image.shape[1]} but its label "
            f"{label_path} is {label.shape[0]}x{label.shape[1]}"
        )


@dataclass(frozen=True)
class Pair:
    """An image file and its label file."""

    image: Path
    label: Path


def pair_files(dataset: str, images: Sequence[Path], labels: Sequence[Path], *,
               image_key: Callable[[Path], Hashable], label_key: Callable[[Path], Hashable],
               label_path: Callable[[Path], Path], image_path: Callable[[Path], Path]) -> list[Pair]:
    """Pair every image with the label file of the same key, in the images' order.

    An image without a label file, or a label file without an image, is a :class:`UserError`
    naming the file and the path its partner should have (``label_path(image)``,
    ``image_path(label)``), the first one of ``images`` / ``labels`` in their order.
    """
    by_key = {label_key(lab): lab for lab in labels}
    pairs = []
    for img in images:
        lab = by_key.get(image_key(img))
        if lab is None:
            raise UserError(f"missing {dataset} label file {label_path(img)} (for image {img})")
        pairs.append(Pair(img, lab))
    image_keys = {image_key(img) for img in images}
    for lab in labels:
        if label_key(lab) not in image_keys:
            raise UserError(f"missing {dataset} image {image_path(lab)} (for label file {lab})")
    return pairs


class SegDataset(Dataset):
    """Base class: ``ds[i] -> (image float32 [3, H, W] normalised, label int64 [H, W])``."""

    def __init__(self, spec: LabelSpec, split: str, root: str | Path | None,
                 transform: Transform, *, seed: int = 0, augment: bool = False,
                 crop: tuple[int, int] | None = None, resize: tuple[int, int] | None = None):
        check_split(split)
        self.spec = spec
        self.split = split
        self.root = None if root is None else str(root)
        self.transform = transform
        self.seed = int(seed)
        self.augment = bool(augment)
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.epoch = 0

    # ---- what subclasses provide
    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """Item ``index`` before any transform: ``uint8 [H, W, 3]`` RGB, ``int64 [H, W]`` ids."""
        raise NotImplementedError

    def describe(self, index: int) -> str:  # pragma: no cover - abstract
        """A human-readable identity of item ``index`` (its image file, or generator key)."""
        raise NotImplementedError

    def info_extra(self) -> dict[str, Any]:
        return {}

    # ---- common API
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return list(self.spec.palette)

    @property
    def ignore_index(self) -> int:
        return self.spec.ignore_index

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name, root=self.root, split=self.split, count=len(self),
            num_classes=self.num_classes, ignore_index=self.ignore_index, augment=self.augment,
            crop=self.crop, resize=self.resize, seed=self.seed, extra=self.info_extra(),
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` for plain integer indices."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(key, tuple):
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = self.epoch, int(key)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        image, label = self.load(index)
        return self.transform(image, label, sample_rng(self.seed, epoch, index))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, root={self.root!r})")


class PairedFileDataset(SegDataset):
    """A data set of (image file, label file) :class:`Pair` s found under a data root.

    A subclass sets ``title`` (the data set's name in messages) and provides :meth:`label_spec`,
    :meth:`find_pairs` and :meth:`convert_label` (raw label values → train ids, a
    :class:`UserError` naming the file for a value it does not know).
    """

    title = "paired-file"

    def __init__(self, root: str | Path | None, split: str, transform: Transform, *, seed: int = 0,
                 augment: bool = False, crop: tuple[int, int] | None = None,
                 resize: tuple[int, int] | None = None):
        check_split(split)
        root_p = check_root(root, self.title)
        super().__init__(self.label_spec(), split, root_p, transform, seed=seed, augment=augment,
                         crop=crop, resize=resize)
        self.pairs: list[Pair] = self.find_pairs(root_p, split)

    def label_spec(self) -> LabelSpec:  # pragma: no cover - abstract
        raise NotImplementedError

    def find_pairs(self, root: Path, split: str) -> list[Pair]:  # pragma: no cover - abstract
        raise NotImplementedError

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        return str(self.pairs[index].image)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[index]
        image = read_image(pair.image)
        raw = read_label(pair.label)
        check_same_size(image, raw, pair.image, pair.label)
        return image, self.convert_label(raw, pair.label)


class JoinedDataset(SegDataset):
    """Several splits of one data set as one (``"train+val"``, the test-server protocol: paper
    IV-B trains on train and val before submitting). Item ``i`` is item ``i`` of the concatenation,
    augmented with the ``(seed, epoch, i)`` stream of the joined data set."""

    def __init__(self, parts: Sequence[SegDataset], split: str, limit: int | None = None):
        if not parts:
            raise UserError("a joined split needs at least one part")
        first = parts[0]
        super().__init__(first.spec, split, first.root, first.transform, seed=first.seed,
                         augment=first.augment, crop=first.crop, resize=first.resize)
        self.parts = list(parts)
        self.offsets = list(np.cumsum([0] + [len(p) for p in self.parts]))
        self.limit = None if limit is None else int(limit)

    def __len__(self) -> int:
        n = int(self.offsets[-1])
        return n if self.limit is None else min(n, self.limit)

    def _locate(self, index: int) -> tuple[SegDataset, int]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[k], index - int(self.offsets[k])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        part, i = self._locate(index)
        return part.load(i)

    def describe(self, index: int) -> str:
        part, i = self._locate(index)
        return part.describe(i)

    def info_extra(self) -> dict[str, Any]:
        return {"parts": {p.split: len(p) for p in self.parts}, **self.parts[0].info_extra()}

