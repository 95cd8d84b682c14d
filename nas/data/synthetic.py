"""A procedurally generated segmentation data set that a small network learns in minutes.

Each image is a textured background (class 0) with 3-7 shapes painted over it in random order —
discs, axis-aligned rectangles and straight bands ("stripes") at any angle. Every shape gets a
random class in 1..K-1. A class is encoded twice, so both a colour-only and a texture-only model
can separate it:

- **colour**: the class's base colour (:func:`nas.data.palette.synthetic_colors`, also the
  palette), with a small per-image colour jitter;
- **texture**: a sinusoidal grating whose orientation and period depend on the class, modulating
  the brightness by 30 %.

Gaussian pixel noise (std 0.05 of the range by default) is added on top. The background is the
dark base colour with a slow random gradient. One pixel along every boundary between two regions
(the pixel above / left of the change) is labelled 255, so the ignore path is always exercised.

Item ``i`` of split ``s`` is a pure function of ``(seed, s, i)`` and the configuration; the
splits draw from disjoint streams.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from latbench.errors import UserError
from nas.data.base import SegDataset, Transform, check_split
from nas.data.palette import IGNORE_INDEX, synthetic_colors, synthetic_spec

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_STREAM_TAG = 0x5E6D  # keeps content streams apart from augmentation streams (seed, epoch, i)
DEFAULT_LENGTH = {"train": 64, "val": 16, "test": 16}


@dataclass(frozen=True)
class SyntheticConfig:
    num_classes: int = 5
    size: tuple[int, int] = (64, 128)
    min_shapes: int = 3
    max_shapes: int = 7
    noise: float = 0.05
    ignore_border: bool = True

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= 64:
            raise ValueError(f"num_classes must be in 2..64, got {self.num_classes}")
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"size must be (H, W) with both >= 8, got {self.size}")
        if not 1 <= self.min_shapes <= self.max_shapes:
            raise ValueError("need 1 <= min_shapes <= max_shapes")
        if self.noise < 0:
            raise ValueError("noise must be >= 0")


def class_texture(c: int, num_classes: int, yy: np.ndarray, xx: np.ndarray,
                  phase: float) -> np.ndarray:
    """Class ``c``'s grating in [0, 1]: orientation and period depend on the class."""
    k = max(num_classes - 1, 1)
    theta = math.pi * ((c - 1) % k) / k
    period = (3.0, 5.0, 8.0)[(c - 1) % 3]
    u = xx * math.cos(theta) + yy * math.sin(theta)
    return 0.5 + 0.5 * np.sin(2.0 * math.pi * u / period + phase)


def _paint_shape(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                 h: int, w: int) -> np.ndarray:
    m = min(h, w)
    kind = int(rng.integers(0, 3))
    if kind == 0:  # disc
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.10, 0.30) * m
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 1:  # rectangle
        rh, rw = rng.uniform(0.15, 0.5) * h, rng.uniform(0.15, 0.5) * w
        y0, x0 = rng.uniform(-0.1 * h, h - rh), rng.uniform(-0.1 * w, w - rw)
        return (yy >= y0) & (yy < y0 + rh) & (xx >= x0) & (xx < x0 + rw)
    # stripe: a straight band through a random point at a random angle
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ang = rng.uniform(0, math.pi)
    half = rng.uniform(0.05, 0.12) * m
    d = (yy - cy) * math.cos(ang) - (xx - cx) * math.sin(ang)
    return np.abs(d) <= half


def generate(cfg: SyntheticConfig, seed: int, split: str,
             index: int) -> tuple[np.ndarray, np.ndarray]:
    """Item ``index`` of ``split``: ``uint8 [H, W, 3]`` RGB image, ``int64 [H, W]`` labels."""
    check_split(split)
    rng = np.random.default_rng([_STREAM_TAG, int(seed), _SPLIT_CODE[split], int(index)])
    h, w = cfg.size
    k = cfg.num_classes
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    label = np.zeros((h, w), dtype=np.int64)
    for _ in range(int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))):
        mask = _paint_shape(rng, yy, xx, h, w)
        label[mask] = int(rng.integers(1, k))

    base = np.asarray(synthetic_colors(k), dtype=np.float32) / 255.0  # [K, 3]
    jitter = rng.uniform(-0.04, 0.04, size=3).astype(np.float32)
    image = np.zeros((h, w, 3), dtype=np.float32)
    phase = float(rng.uniform(0, 2 * math.pi))
    for c in np.unique(label):
        sel = label == c
        if c == 0:
            gy, gx = rng.uniform(-1, 1, size=2)
            shade = 1.0 + 0.25 * (gy * yy[sel] / h + gx * xx[sel] / w)
        else:
            shade = 0.7 + 0.3 * class_texture(int(c), k, yy[sel], xx[sel], phase)
        image[sel] = base[c][None, :] * shade[:, None] + jitter
    if cfg.noise > 0:
        image += rng.normal(0.0, cfg.noise, size=image.shape).astype(np.float32)
    image_u8 = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)

    if cfg.ignore_border:
        edge = np.zeros((h, w), dtype=bool)
        edge[:, :-1] |= label[:, :-1] != label[:, 1:]
        edge[:-1, :] |= label[:-1, :] != label[1:, :]
        label = np.where(edge, IGNORE_INDEX, label)
    return image_u8, label


class SyntheticDataset(SegDataset):
    """``length`` generated items of one split; see the module docstring."""

    def __init__(self, split: str, transform: Transform, *, config: SyntheticConfig | None = None,
                 length: int | None = None, seed: int = 0, augment: bool = False,
                 crop: tuple[int, int] | None = None, resize: tuple[int, int] | None = None):
        check_split(split)
        if split not in _SPLIT_CODE:
            raise UserError(f"the synthetic data set has no split {split!r} (it has {', '.join(_SPLIT_CODE)})")
        self.config = config or SyntheticConfig()
        super().__init__(synthetic_spec(self.config.num_classes), split, None, transform,
                         seed=seed, augment=augment, crop=crop, resize=resize)
        self.length = DEFAULT_LENGTH[split] if length is None else int(length)
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")

    def __len__(self) -> int:
        return self.length

    def describe(self, index: int) -> str:
        return f"synthetic:{self.split}:seed={self.seed}:index={index}"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return generate(self.config, self.seed, self.split, index)

    def info_extra(self) -> dict[str, Any]:
        d = asdict(self.config)
        d["size"] = list(d["size"])
        return d
