"""Cityscapes, read from the official directory layout::

    ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png          (train, val, test)
    ROOT/gtCoarse/train_extra/{city}/{city}_{seq}_{frame}_gtCoarse_labelIds.png  (train_extra)

``train`` / ``val`` / ``test`` use the fine annotations; ``train_extra`` (19 998 images) the
coarse ones, which the paper adds for its 74.0 % test-server result (Table IV). Splits join with
``+`` (``train+val+train_extra``, see :func:`nas.data.make_dataset`).

Images and labels are paired by name. Every image must have its ``labelIds`` file and every
``labelIds`` file its image; the first one missing is reported by path. Label ids become the 19
train ids exactly as ``cityscapesscripts.helpers.labels`` defines them; ids whose trainId is 255
or -1 (unlabeled, ego vehicle, ..., license plate) become the ignore index 255. A label value that
is no Cityscapes id is reported with its file. (The official test split's labels are all ignore.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from latbench.errors import UserError
from nas.data.base import Pair, PairedFileDataset, Transform, pair_files
from nas.data.palette import IGNORE_INDEX, cityscapes_spec

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
COARSE_SUFFIX = "_gtCoarse_labelIds.png"


def annotation(split: str) -> tuple[str, str]:
    """(annotation folder, label file suffix) of ``split``: coarse for train_extra, else fine."""
    return ("gtCoarse", COARSE_SUFFIX) if split == "train_extra" else ("gtFine", LABEL_SUFFIX)


def id_to_train_id_table() -> dict[int, int]:
    """Every Cityscapes label id (including -1) → train id, with 255 / -1 mapped to 255."""
    from cityscapesscripts.helpers.labels import labels

    table: dict[int, int] = {}
    for lab in labels:
        t = lab.trainId
        table[int(lab.id)] = int(t) if 0 <= t < IGNORE_INDEX else IGNORE_INDEX
    return table


class IdMapper:
    """Vectorised label id → train id over a table such as :func:`id_to_train_id_table`."""

    def __init__(self, table: dict[int, int]):
        self.table = dict(table)
        self._lut = np.full(256, -2, dtype=np.int64)  # -2 marks "not a Cityscapes id"
        for i, t in self.table.items():
            if 0 <= i < 256:
                self._lut[i] = t

    def unknown(self, ids: np.ndarray) -> list[int]:
        """The values in ``ids`` that are no label id of the table."""
        return [int(v) for v in np.unique(np.asarray(ids)) if int(v) not in self.table]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """``int [H, W]`` label ids → ``int64`` train ids; ValueError on an unknown id."""
        ids = np.asarray(ids, dtype=np.int64)
        inb = (ids >= 0) & (ids < 256)
        out = self._lut[np.where(inb, ids, 0)]
        if not inb.all():
            for v in np.unique(ids[~inb]):
                out[ids == v] = self.table.get(int(v), -2)
        if (out == -2).any():
            raise ValueError(f"not Cityscapes label ids: {self.unknown(ids)}")
        return out


def find_pairs(root: Path, split: str) -> list[Pair]:
    """All (image, labelIds) pairs of ``split``, sorted by image path; UserError on any gap."""
    folder, label_suffix = annotation(split)
    img_dir = root / "leftImg8bit" / split
    lab_dir = root / folder / split
    if not img_dir.is_dir():
        raise UserError(f"Cityscapes images not found: {img_dir} is not a directory "
                        f"(expected ROOT/leftImg8bit/{split}/CITY/*{IMAGE_SUFFIX})")
    if not lab_dir.is_dir():
        raise UserError(f"Cityscapes labels not found: {lab_dir} is not a directory "
                        f"(expected ROOT/{folder}/{split}/CITY/*{label_suffix})")
    images = sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise UserError(f"no Cityscapes images (*{IMAGE_SUFFIX}) in {img_dir}/CITY/")
    labels = sorted(lab_dir.glob(f"*/*{label_suffix}"))

    def partner(p: Path, suffix: str, folder: Path, other: str) -> Path:
        """The file of the same city and frame in ``folder`` (``CITY/STEM{other}``)."""
        return folder / p.parent.name / (p.name[: -len(suffix)] + other)

    label_path = lambda img: partner(img, IMAGE_SUFFIX, lab_dir, label_suffix)  # noqa: E731
    return pair_files("Cityscapes", images, labels, image_key=label_path, label_key=lambda lab: lab,
                      label_path=label_path,
                      image_path=lambda lab: partner(lab, label_suffix, img_dir, IMAGE_SUFFIX))


class CityscapesDataset(PairedFileDataset):
    """Cityscapes fine annotations, 19 classes, ignore 255."""

    title = "Cityscapes"
    label_spec = staticmethod(cityscapes_spec)
    find_pairs = staticmethod(find_pairs)

    def __init__(self, root: str | Path, split: str, transform: Transform, **kw: Any):
        super().__init__(root, split, transform, **kw)
        self.mapper = IdMapper(id_to_train_id_table())

    def convert_label(self, ids: np.ndarray, path: Path) -> np.ndarray:
        try:
            return self.mapper(ids)
        except ValueError:
            raise UserError(f"label file {path} holds values that are no Cityscapes label "
                            f"id: {self.mapper.unknown(ids)[:10]} (expected "
                            f"*{LABEL_SUFFIX}, ids 0..33)") from None

    def info_extra(self) -> dict[str, Any]:
        return {"labels": f"{annotation(self.split)[0]} labelIds -> trainIds (cityscapesscripts)"}


def train_id_to_label_id() -> np.ndarray:
    """``uint8 [256]``: train id (0..18) → Cityscapes label id (``cityscapesscripts``'
    ``trainId2label``), what the test server scores; any other value → 0 (unlabeled)."""
    from cityscapesscripts.helpers.labels import trainId2label

    table = np.zeros(256, dtype=np.uint8)
    for t in range(19):
        table[t] = int(trainId2label[t].id)
    return table
