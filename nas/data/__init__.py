"""Segmentation data sets (Cityscapes, CamVid, synthetic), augmentation and palettes.

``make_dataset(name, root, split, crop=..., augment=...)`` is the entry point; every data set
yields ``(image float32 [3, H, W] normalised, label int64 [H, W])`` with 255 = ignore.
"""

from nas.data.base import DatasetInfo, SegDataset, read_image, read_label
from nas.data.factory import DATASETS, make_dataset, make_transform
from nas.data.palette import IGNORE_INDEX, LabelSpec, colorize, label_spec, overlay
from nas.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform,
                                 denormalize, image_to_tensor, normalize, sample_rng)

__all__ = [
    "DATASETS", "DatasetInfo", "EvalTransform", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD",
    "LabelSpec", "SegDataset", "TrainTransform", "colorize", "denormalize", "image_to_tensor",
    "label_spec", "make_dataset", "make_transform", "normalize", "overlay", "read_image",
    "read_label", "sample_rng",
]
