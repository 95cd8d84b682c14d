"""ImageNet (ILSVRC2012 classification) read in its usual folder layouts.

``--data-root`` is the folder that holds ``train/`` and ``val/``, or the Kaggle download folder
(``ILSVRC/Data/CLS-LOC/{train,val}`` below it). Training images are always ``train/<wnid>/*``;
the class list is the sorted list of those folder names (class ``i`` = ``i``-th wnid, the order
of torchvision's ``ImageFolder`` and of every published ImageNet checkpoint). The validation
images come in one of four layouts:

``folders``
    ``val/<wnid>/*`` (the val set sorted into class folders, e.g. by the well-known
    ``valprep.sh``).
``kaggle-csv``
    ``val/*.JPEG`` flat, labels from Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``;
    the first token of the prediction string is the wnid).
``devkit``
    ``val/*.JPEG`` flat, labels from the ILSVRC2012 devkit's ``ILSVRC2012_validation_ground_truth.txt``
    (one ILSVRC2012_ID per line, line ``i`` for ``ILSVRC2012_val_{i:08d}``), IDs mapped to wnids with
    the devkit's ``meta.mat`` beside it (read with SciPy).
``wnid-list``
    ``val/*.JPEG`` flat, labels from a text file with one wnid per line in the same order (e.g.
    ``imagenet_2012_validation_synset_labels.txt`` of the TensorFlow models repository).

A flat val folder's label file is found by name in the val folder, the data root and up to three
folders above the train/val folder (where the Kaggle and devkit releases put it), or given with
``--val-labels``. Its format is told from its content. Every user mistake — a missing folder, an
empty class, a val folder with no labels or an unknown label format, images and labels that do not
pair up, train and val class sets that differ — ends in one :class:`UserError` naming the file.

File lists are held as fixed-width byte arrays (not Python strings), so forked data-loading workers
share them instead of copying 1.28 million objects each.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from latbench.errors import UserError
from nas.data.transforms import sample_rng

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
KAGGLE_SUBDIR = Path("ILSVRC") / "Data" / "CLS-LOC"
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"
KAGGLE_CSV = "LOC_val_solution.csv"
DEVKIT_GT = "ILSVRC2012_validation_ground_truth.txt"
WNID_LIST = "imagenet_2012_validation_synset_labels.txt"
VAL_LAYOUTS = ("folders", "kaggle-csv", "devkit", "wnid-list")

_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})$")
_WNID = re.compile(r"^n\d{8}$")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _scan(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(sub-folders, image files, other files) of ``folder``, each sorted; hidden entries skipped."""
    dirs, images, other = [], [], []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    dirs.append(e.name)
                elif _is_image(e.name):
                    images.append(e.name)
                else:
                    other.append(e.name)
    except OSError as exc:
        raise UserError(f"cannot list {folder}: {exc.strerror or exc}") from None
    return sorted(dirs), sorted(images), sorted(other)


def _short(names: list[str] | set[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


@dataclass(frozen=True)
class Split:
    """One split's images: paths relative to ``folder`` and class indices, as compact arrays."""

    folder: Path
    files: np.ndarray      # fixed-width bytes, relative to ``folder``
    labels: np.ndarray     # int64

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.folder / self.files[i].decode()

    @classmethod
    def build(cls, folder: Path, files: list[str], labels: list[int]) -> "Split":
        return cls(folder, np.array([f.encode() for f in files], dtype=np.bytes_),
                   np.asarray(labels, dtype=np.int64))


@dataclass(frozen=True)
class ImageNetLayout:
    """Where ImageNet lies and what it holds; :func:`find_imagenet` builds it."""

    root: Path
    train: Split
    val: Split
    classes: tuple[str, ...]
    val_layout: str
    val_labels: Path | None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity for logs, checkpoints and the result file."""
        import hashlib

        return {"root": str(self.root), "train_dir": str(self.train.folder), "val_dir": str(self.val.folder),
                "num_classes": self.num_classes, "train_items": len(self.train), "val_items": len(self.val),
                "val_layout": self.val_layout,
                "val_labels": None if self.val_labels is None else str(self.val_labels),
                "classes_sha256": hashlib.sha256("\n".join(self.classes).encode()).hexdigest()}


# --------------------------------------------------------------------------- finding the folders

def _base_folder(root: Path) -> Path:
    for base in (root, root / KAGGLE_SUBDIR):
        if (base / "train").is_dir():
            return base
    raise UserError(f"no ImageNet train folder under {root}: expected {root}/train/<wnid>/*.JPEG "
                    f"(or the Kaggle release's {root}/{KAGGLE_SUBDIR}/train)")


def _train_split(train_dir: Path) -> tuple[tuple[str, ...], Split]:
    dirs, images, other = _scan(train_dir)
    if not dirs:
        tars = [o for o in other if o.lower().endswith(".tar")]
        if tars:
            raise UserError(f"train folder {train_dir} holds {len(tars)} .tar archives and no class folders: "
                            f"extract each class archive into {train_dir}/<wnid>/ first")
        what = f"{len(images)} loose images" if images else "nothing usable"
        raise UserError(f"train folder {train_dir} has no class folders ({what}); expected "
                        f"{train_dir}/<wnid>/*.JPEG")
    files: list[str] = []
    labels: list[int] = []
    for c, wnid in enumerate(dirs):
        _, imgs, _ = _scan(train_dir / wnid)
        if not imgs:
            raise UserError(f"class folder {train_dir / wnid} holds no images "
                            f"({'/'.join(IMAGE_EXTENSIONS)}); remove it or fill it")
        files.extend(f"{wnid}/{name}" for name in imgs)
        labels.extend([c] * len(imgs))
    return tuple(dirs), Split.build(train_dir, files, labels)


def _check_same_classes(classes: tuple[str, ...], val_classes: set[str], where: str) -> None:
    train_only = set(classes) - val_classes
    val_only = val_classes - set(classes)
    if train_only or val_only:
        parts = []
        if val_only:
            parts.append(f"{len(val_only)} only in val ({_short(val_only)})")
        if train_only:
            parts.append(f"{len(train_only)} only in train ({_short(train_only)})")
        raise UserError(f"train and val classes differ ({where}): {'; '.join(parts)}")


def _label_file_candidates(root: Path, base: Path, val_dir: Path) -> list[Path]:
    folders: list[Path] = []
    for d in (val_dir, base, base.parent, base.parent.parent, base.parent.parent.parent, root):
        if d not in folders:
            folders.append(d)
    out = []
    for d in folders:
        out += [d / KAGGLE_CSV, d / DEVKIT_DATA / DEVKIT_GT, d / DEVKIT_GT, d / WNID_LIST]
    return out


def read_devkit_meta(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID → wnid for the 1000 leaf synsets of the devkit's ``meta.mat``."""
    try:
        from scipy.io import loadmat

        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        ids, wnids, children = synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"]
        mapping = {int(i): str(w) for i, w, c in zip(np.atleast_1d(ids), np.atleast_1d(wnids),
                                                         np.atleast_1d(children)) if int(c) == 0}
    except FileNotFoundError:
        raise UserError(f"devkit file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse means the file is unusable
        raise UserError(f"cannot read the devkit's {path.name} ({path}) as a synset table: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not mapping:
        raise UserError(f"devkit file {path} lists no leaf synsets (num_children == 0)")
    return mapping


def read_val_labels(path: Path) -> tuple[str, Callable[[str], str | None], int]:
    """Parse a val ground-truth file: ``(layout, image stem → wnid or None, number of labels)``."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="strict")
    except FileNotFoundError:
        raise UserError(f"val label file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read val label file {path}: {exc}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"val label file {path} is empty")
    head = lines[0].replace(" ", "")
    if head.startswith("ImageId,PredictionString"):
        table: dict[str, str] = {}
        for n, row in enumerate(csv.reader(lines[1:]), start=2):
            if len(row) < 2 or not row[1].split():
                raise UserError(f"{path} line {n}: expected ImageId,PredictionString with a wnid first, got {','.join(row)!r}")
            table[row[0].strip()] = row[1].split()[0]
        return "kaggle-csv", table.get, len(table)

    def by_line(values: list[str]) -> Callable[[str], str | None]:
        def look(stem: str) -> str | None:
            m = _VAL_NAME.match(stem)
            if m is None:
                raise UserError(f"val image {stem} is not named ILSVRC2012_val_NNNNNNNN, so the line-ordered "
                                f"labels of {path} cannot label it; sort val into class folders instead")
            i = int(m.group(1))
            return values[i - 1] if 1 <= i <= len(values) else None
        return look

    if all(ln.isdigit() for ln in lines):
        meta = path.parent / "meta.mat"
        if not meta.is_file():
            raise UserError(f"{path} lists ILSVRC2012_IDs; their wnids come from the devkit's meta.mat, "
                            f"which is not beside it (expected {meta})")
        mapping = read_devkit_meta(meta)
        unknown = sorted({int(v) for v in lines} - set(mapping))
        if unknown:
            raise UserError(f"{path} uses ILSVRC2012_ID {unknown[0]}, which {meta} does not list as a leaf synset")
        return "devkit", by_line([mapping[int(v)] for v in lines]), len(lines)
    if all(_WNID.match(ln) for ln in lines):
        return "wnid-list", by_line(lines), len(lines)
    raise UserError(f"unknown val label format in {path}: expected Kaggle's {KAGGLE_CSV} (ImageId,PredictionString), "
                    f"the devkit's {DEVKIT_GT} (one ILSVRC2012_ID per line, meta.mat beside it) or one wnid per line")


def _val_split(root: Path, base: Path, val_dir: Path, classes: tuple[str, ...],
               val_labels: Path | None) -> tuple[Split, str, Path | None]:
    if not val_dir.is_dir():
        raise UserError(f"no ImageNet val folder: {val_dir} does not exist (expected next to {base / 'train'})")
    dirs, images, _ = _scan(val_dir)
    index = {w: i for i, w in enumerate(classes)}
    if dirs and images:
        raise UserError(f"val folder {val_dir} holds both class folders ({_short(dirs)}) and loose images "
                        f"({_short(images)}); use one layout")
    if dirs:
        if val_labels is not None:
            raise UserError(f"--val-labels {val_labels} given, but {val_dir} is already sorted into class folders")
        _check_same_classes(classes, set(dirs), f"class folders of {base / 'train'} and {val_dir}")
        files: list[str] = []
        labels: list[int] = []
        for wnid in dirs:
            _, imgs, _ = _scan(val_dir / wnid)
            if not imgs:
                raise UserError(f"class folder {val_dir / wnid} holds no images ({'/'.join(IMAGE_EXTENSIONS)})")
            files.extend(f"{wnid}/{name}" for name in imgs)
            labels.extend([index[wnid]] * len(imgs))
        return Split.build(val_dir, files, labels), "folders", None
    if not images:
        raise UserError(f"val folder {val_dir} holds no images and no class folders")
    if val_labels is None:
        found = [p for p in _label_file_candidates(root, base, val_dir) if p.is_file()]
        if not found:
            raise UserError(f"val folder {val_dir} holds {len(images)} images but no class folders, and no "
                            f"ground-truth file was found ({KAGGLE_CSV}, {DEVKIT_DATA / DEVKIT_GT} or {WNID_LIST} "
                            f"in {val_dir}, {base} or the folders above); pass --val-labels FILE or sort val "
                            f"into val/<wnid>/")
        val_labels = found[0]
    layout, lookup, count = read_val_labels(val_labels)
    files, labels = [], []
    seen: set[str] = set()
    for name in images:
        stem = name.rsplit(".", 1)[0]
        wnid = lookup(stem)
        if wnid is None:
            raise UserError(f"val image {val_dir / name} has no label in {val_labels}")
        if wnid not in index:
            raise UserError(f"val image {val_dir / name} is labelled {wnid} in {val_labels}, which has no "
                            f"train class folder (train and val classes differ)")
        files.append(name)
        labels.append(index[wnid])
        seen.add(wnid)
    if count != len(images):
        raise UserError(f"{val_labels} labels {count} val images but {val_dir} holds {len(images)}; "
                        f"a partial copy of val would be scored as if whole")
    _check_same_classes(classes, seen, f"class folders of {base / 'train'} and the labels in {val_labels}")
    return Split.build(val_dir, files, labels), layout, val_labels


def find_imagenet(root: str | os.PathLike | None, val_labels: str | os.PathLike | None = None) -> ImageNetLayout:
    """Locate and list ImageNet under ``root`` (see the module docstring for the layouts)."""
    if root is None or str(root) == "":
        raise UserError("ImageNet pre-training needs --data-root DIR (the folder with train/ and val/)")
    r = Path(root).expanduser()
    if not r.is_dir():
        raise UserError(f"ImageNet data root {r} does not exist or is not a directory")
    base = _base_folder(r)
    classes, train = _train_split(base / "train")
    if len(classes) < 2:
        raise UserError(f"train folder {base / 'train'} has {len(classes)} class folder; classification needs at least 2")
    vl = None if val_labels is None else Path(val_labels).expanduser()
    val, layout, used = _val_split(r, base, base / "val", classes, vl)
    return ImageNetLayout(r, train, val, classes, layout, used)


# --------------------------------------------------------------------------- the data set

def open_image(path: Path) -> Image.Image:
    """Decode an image file as RGB (Pillow); unreadable files raise :class:`UserError`."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


class ImageFolderDataset(Dataset):
    """``ds[(epoch, i)] -> (uint8 [3, h, w], class index)``; the transform's randomness comes from
    ``(seed, epoch, i)`` (:func:`nas.data.transforms.sample_rng`), as in :mod:`nas.data.base`, so an
    item's pixels do not depend on the worker that loads it or on a resume."""

    def __init__(self, split: Split, transform: Callable[[Image.Image, np.random.Generator], torch.Tensor],
                 *, seed: int = 0):
        self.split = split
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (0, int(key))
        image = open_image(self.split.path(index))
        return self.transform(image, sample_rng(self.seed, epoch, index)), int(self.split.labels[index])


def worker_error(exc: UserError) -> UserError:
    """A :class:`UserError` raised in a DataLoader worker arrives wrapped in the worker's traceback;
    return the original one-line error."""
    lines = [ln.strip() for ln in exc.format_message().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return exc
    # the traceback's last line is "package.module.SomeError: the message"
    return UserError(re.sub(r"^[\w.]+Error: ", "", lines[-1]))


__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "ImageNetLayout", "Split", "VAL_LAYOUTS", "find_imagenet",
           "open_image", "read_devkit_meta", "read_val_labels", "worker_error"]
