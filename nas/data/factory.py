"""``make_dataset``: one entry point for every data set the commands accept."""

from __future__ import annotations

from pathlib import Path

from latbench.errors import UserError
from nas.data.base import JoinedDataset, SegDataset, Transform, split_parts
from nas.data.camvid import CamVidDataset
from nas.data.cityscapes import CityscapesDataset
from nas.data.synthetic import SyntheticConfig, SyntheticDataset
from nas.data.transforms import EvalTransform, TrainTransform

DATASETS = ("cityscapes", "camvid", "synthetic")


def make_transform(*, augment: bool, crop: tuple[int, int] | None,
                   resize: tuple[int, int] | None = None,
                   scale_range: tuple[float, float] = (0.5, 2.0),
                   resize_label: bool = True) -> Transform:
    """Training augmentation (``augment``) or the deterministic evaluation transform.

    ``augment=True``: random scale (relative to ``resize`` when given, a fixed base resolution
    such as 769x1537 for 1024x2048 frames) / flip / padded random crop. ``augment=False``: optional
    resize, then an optional central (padded) crop.
    """
    if augment:
        return TrainTransform(crop=crop, scale_range=scale_range, base_size=resize)
    return EvalTransform(resize=resize, crop=crop, resize_label=resize_label)


def make_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    crop: tuple[int, int] | None,
    augment: bool,
    resize: tuple[int, int] | None = None,
    seed: int = 0,
    length: int | None = None,
    num_classes: int | None = None,
    image_size: tuple[int, int] | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    resize_label: bool = True,
) -> SegDataset:
    """A data set yielding ``(image float32 [3, H, W] normalised, label int64 [H, W])``.

    ``name``: 'cityscapes' | 'camvid' | 'synthetic'. ``root`` is required for the real data sets
    and ignored for 'synthetic'. ``length`` (synthetic: items per split; real: keep only the
    first ``length`` items, for quick runs). ``split`` may join several with ``+``
    (``"train+val"``; Cityscapes also ``train_extra``, the coarse annotations). ``num_classes``: synthetic class count (default 5);
    for the real data sets it must match theirs if given. ``image_size``: the synthetic
    generator's size (default: ``resize`` if given, else 64x128). ``resize_label=False`` keeps
    evaluation labels at full resolution (only without augmentation and crop).
    """
    parts = split_parts(split)
    if len(parts) > 1:  # train+val (+ train_extra): the test-server protocol's training set
        if name not in DATASETS:
            raise UserError(f"unknown data set {name!r} (expected one of {', '.join(DATASETS)})")
        kw = dict(crop=crop, augment=augment, resize=resize, seed=seed, num_classes=num_classes,
                  image_size=image_size, scale_range=scale_range, resize_label=resize_label)
        subsets = [make_dataset(name, root, p, length=length if name == "synthetic" else None, **kw)
                   for p in parts]
        return JoinedDataset(subsets, split, limit=None if name == "synthetic" else length)
    transform = make_transform(augment=augment, crop=crop, resize=resize,
                               scale_range=scale_range, resize_label=resize_label)
    if name == "synthetic":
        size = image_size or resize or (64, 128)
        cfg = SyntheticConfig(num_classes=5 if num_classes is None else num_classes,
                              size=(int(size[0]), int(size[1])))
        return SyntheticDataset(split, transform, config=cfg, length=length, seed=seed,
                                augment=augment, crop=crop, resize=resize)
    if name == "cityscapes":
        ds: SegDataset = CityscapesDataset(root, split, transform, seed=seed, augment=augment,
                                           crop=crop, resize=resize)  # type: ignore[arg-type]
    elif name == "camvid":
        ds = CamVidDataset(root, split, transform, seed=seed, augment=augment, crop=crop,
                           resize=resize)  # type: ignore[arg-type]
    else:
        raise UserError(f"unknown data set {name!r} (expected one of {', '.join(DATASETS)})")
    if num_classes is not None and num_classes != ds.num_classes:
        raise UserError(f"{name} has {ds.num_classes} classes, not {num_classes}")
    if length is not None:
        if length < 1:
            raise UserError(f"length must be >= 1, got {length}")
        ds.pairs = ds.pairs[:length]  # type: ignore[attr-defined]
    return ds
