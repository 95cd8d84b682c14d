"""Write tiny ImageNet trees in the release layouts ``nas pretrain`` reads, for tests.

Usage from any test (``tests/`` is on ``sys.path``)::

    from imagenet_tree import make_imagenet_tree

    tree = make_imagenet_tree(tmp_path / "imagenet", val_layout="kaggle", classes=4)
    layout = find_imagenet(tree.root)

Every class is a colour and a stripe pattern (horizontal, vertical, diagonal or checker stripes at
a class-specific period) with per-image random size, aspect, stripe phase, brightness and noise,
saved as JPEG — distinct enough that a tiny network learns the classes from random-resized crops in
a few CPU seconds, varied enough that it has to. Layouts (``val_layout``):

- ``folders``: ``train/<wnid>/<wnid>_<i>.JPEG``, ``val/<wnid>/ILSVRC2012_val_<n>.JPEG``;
- ``kaggle``: ``ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}`` with a flat val folder and
  ``LOC_val_solution.csv`` (+ ``LOC_synset_mapping.txt``) in the root, as Kaggle ships them;
- ``devkit``: ``train/<wnid>/``, flat ``val/`` and ``ILSVRC2012_devkit_t12/data/`` holding
  ``ILSVRC2012_validation_ground_truth.txt`` and ``meta.mat`` (ILSVRC2012_IDs deliberately not in
  wnid order, plus a non-leaf synset, as in the real file);
- ``wnid-list``: ``train/<wnid>/``, flat ``val/`` and ``imagenet_2012_validation_synset_labels.txt``.

Val images are numbered ``ILSVRC2012_val_00000001...`` over the classes in shuffled order.
Everything is deterministic in ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

LAYOUTS = ("folders", "kaggle", "devkit", "wnid-list")
COLOURS = [(200, 40, 40), (40, 170, 60), (40, 70, 210), (220, 200, 40), (170, 60, 190), (40, 190, 200)]


def wnid(c: int) -> str:
    return f"n{1440764 + 1111 * c:08d}"


@dataclass
class Tree:
    root: Path
    classes: list[str]
    val_truth: dict[str, str] = field(default_factory=dict)   # val image stem -> wnid
    train_counts: dict[str, int] = field(default_factory=dict)


def draw(c: int, rng: np.random.Generator, size_range: tuple[int, int] = (36, 52)) -> Image.Image:
    """One image of class ``c``."""
    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = 6 + 2 * (c % 3)
    phase = rng.uniform(0, period)
    kind = c % 4
    coord = {0: yy, 1: xx, 2: xx + yy, 3: None}[kind]
    if coord is None:
        stripes = ((np.floor((xx + phase) / period) + np.floor((yy + phase) / period)) % 2)
    else:
        stripes = (np.floor((coord + phase) / period) % 2)
    base = np.array(COLOURS[c % len(COLOURS)], dtype=np.float32)
    img = base[None, None, :] * (0.55 + 0.45 * stripes[..., None])
    img *= rng.uniform(0.8, 1.2)
    img += rng.normal(0, 12, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)


def write_meta_mat(path: Path, ids_to_wnid: dict[int, str]) -> None:
    """A devkit ``meta.mat``: a ``synsets`` struct array with the real file's fields; one extra
    non-leaf synset (``num_children`` > 0) that must be ignored."""
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(i, w, f"class {w}", "a synthetic class", 0, np.zeros((1, 0)), 0, 10) for i, w in ids_to_wnid.items()]
    rows.append((len(rows) + 1, "n00001740", "entity", "the root", 2, np.array([[1, 2]]), 18, 0))
    arr = np.zeros((len(rows), 1), dtype=[(f, "O") for f in fields])
    for r, row in enumerate(rows):
        for f, v in zip(fields, row):
            arr[r, 0][f] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"synsets": arr})


def make_imagenet_tree(root: str | Path, *, val_layout: str = "folders", classes: int = 4, n_train: int = 8,
                       n_val: int = 4, seed: int = 0, size_range: tuple[int, int] = (36, 52)) -> Tree:
    """Write a tree (see the module docstring) and return what it holds."""
    if val_layout not in LAYOUTS:
        raise ValueError(f"val_layout must be one of {LAYOUTS}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    wnids = [wnid(c) for c in range(classes)]
    base = root / "ILSVRC" / "Data" / "CLS-LOC" if val_layout == "kaggle" else root
    tree = Tree(root, wnids)
    for c, w in enumerate(wnids):
        for i in range(n_train):
            _save(draw(c, rng, size_range), base / "train" / w / f"{w}_{i}.JPEG")
        tree.train_counts[w] = n_train
    val_classes = rng.permutation(np.repeat(np.arange(classes), n_val))
    for n, c in enumerate(val_classes, start=1):
        stem = f"ILSVRC2012_val_{n:08d}"
        tree.val_truth[stem] = wnids[c]
        sub = Path(wnids[c]) if val_layout == "folders" else Path()
        _save(draw(int(c), rng, size_range), base / "val" / sub / f"{stem}.JPEG")
    stems = sorted(tree.val_truth)
    if val_layout == "kaggle":
        lines = ["ImageId,PredictionString"]
        for stem in rng.permutation(stems):
            w = tree.val_truth[stem]
            lines.append(f"{stem},{w} 12 3 40 33 {w} 1 2 20 21 ")
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {w}\n" for w in wnids))
    elif val_layout == "devkit":
        order = rng.permutation(classes)          # ILSVRC2012_ID i+1 -> a class not in wnid order
        ids = {int(i) + 1: wnids[int(c)] for i, c in enumerate(order)}
        by_wnid = {w: i for i, w in ids.items()}
        data = root / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{by_wnid[tree.val_truth[s]]}\n" for s in stems))
        write_meta_mat(data / "meta.mat", ids)
    elif val_layout == "wnid-list":
        (root / "imagenet_2012_validation_synset_labels.txt").write_text("".join(f"{tree.val_truth[s]}\n" for s in stems))
    return tree
