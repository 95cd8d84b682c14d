"""Joined splits (train+val, + Cityscapes' coarse train_extra) and CamVid's full-resolution release."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_trees import make_camvid_full_tree, make_camvid_tree, make_cityscapes_coarse, make_cityscapes_tree
from latbench.errors import UserError
from nas.data import make_dataset
from nas.data.camvid import COLOURS, GROUPS
from nas.data.palette import CAMVID_CLASSES


def _all_items(ds):
    return [ds.load(i) for i in range(len(ds))]


def test_train_plus_val_is_both_splits_in_order(tmp_path):
    root = make_cityscapes_tree(tmp_path / "cs", n_train=3, n_val=2, size=(24, 48))
    train = make_dataset("cityscapes", str(root), "train", crop=None, augment=False)
    val = make_dataset("cityscapes", str(root), "val", crop=None, augment=False)
    both = make_dataset("cityscapes", str(root), "train+val", crop=None, augment=False)
    assert len(both) == 5 and both.split == "train+val"
    assert [both.describe(i) for i in range(5)] == [train.describe(i) for i in range(3)] + \
        [val.describe(i) for i in range(2)]
    for (a_img, a_lab), (b_img, b_lab) in zip(_all_items(both), _all_items(train) + _all_items(val)):
        assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert both.info.to_dict()["extra"]["parts"] == {"train": 3, "val": 2}
    # augmented items come through the joined set's own (seed, epoch, index) stream
    aug = make_dataset("cityscapes", str(root), "train+val", crop=(16, 16), augment=True, seed=3)
    img, lab = aug[4]
    assert tuple(img.shape) == (3, 16, 16) and tuple(lab.shape) == (16, 16)
    # --limit keeps the first N of the joined set
    assert len(make_dataset("cityscapes", str(root), "train+val", crop=None, augment=False, length=4)) == 4


def test_coarse_train_extra_reads_gtcoarse(tmp_path):
    root = make_cityscapes_tree(tmp_path / "cs", n_train=2, n_val=1, size=(24, 48))
    make_cityscapes_coarse(root, n=2, size=(24, 48))
    extra = make_dataset("cityscapes", str(root), "train_extra", crop=None, augment=False)
    assert len(extra) == 2 and "gtCoarse" in extra.info.to_dict()["extra"]["labels"]
    _, lab = extra.load(0)
    assert set(np.unique(lab).tolist()) == set(range(19)) | {255}  # labelIds mapped to train ids
    everything = make_dataset("cityscapes", str(root), "train+val+train_extra", crop=None, augment=False)
    assert len(everything) == 5
    # without the coarse tree the error names the folder it expected
    root2 = make_cityscapes_tree(tmp_path / "cs2", n_train=1, n_val=1, size=(24, 48))
    (root2 / "leftImg8bit" / "train_extra").mkdir()
    with pytest.raises(UserError, match="gtCoarse/train_extra"):
        make_dataset("cityscapes", str(root2), "train+train_extra", crop=None, augment=False)


@pytest.mark.parametrize("split", ["train+trian", "train+train", "", "coarse"])
def test_unknown_or_repeated_splits_are_refused(split, tmp_path):
    root = make_cityscapes_tree(tmp_path / "cs", n_train=1, n_val=1, size=(24, 48))
    with pytest.raises(UserError, match="unknown split"):
        make_dataset("cityscapes", str(root), split, crop=None, augment=False)


def test_synthetic_joined_and_no_coarse():
    ds = make_dataset("synthetic", None, "train+val", crop=None, augment=False, length=3)
    assert len(ds) == 6
    with pytest.raises(UserError, match="no split 'train_extra'"):
        make_dataset("synthetic", None, "train_extra", crop=None, augment=False)


@pytest.mark.parametrize("class_dict", [True, False])
def test_camvid_full_resolution_release(tmp_path, class_dict):
    root = make_camvid_full_tree(tmp_path / "cv", n_train=2, n_val=1, size=(32, 48), class_dict=class_dict)
    ds = make_dataset("camvid", str(root), "train", crop=None, augment=False)
    assert len(ds) == 2 and ds.layout == "full" and ds.num_classes == 11
    img, lab = ds.load(0)
    rgb = np.asarray(Image.open(ds.pairs[0].label).convert("RGB")).astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    for name, (r, g, b) in COLOURS.items():   # every pixel of every one of the 32 classes lands in its group
        sel = code == ((r << 16) | (g << 8) | b)
        assert sel.any(), name
        group = GROUPS[name]
        want = 255 if group is None else CAMVID_CLASSES.index(group)
        assert (lab[sel] == want).all(), name
    assert set(np.unique(lab).tolist()) == set(range(11)) | {255}
    assert make_dataset("camvid", str(root), "train+val", crop=None, augment=False).__len__() == 3


def test_camvid_full_release_errors(tmp_path):
    root = make_camvid_full_tree(tmp_path / "cv", n_train=2, n_val=0, size=(16, 24))
    lab = sorted((root / "train_labels").glob("*_L.png"))[0]
    arr = np.asarray(Image.open(lab).convert("RGB")).copy()
    arr[0, 0] = (1, 2, 3)
    Image.fromarray(arr).save(lab)
    ds = make_dataset("camvid", str(root), "train", crop=None, augment=False)
    with pytest.raises(UserError, match=r"no CamVid class: \(1, 2, 3\)"):
        ds.load(0)
    (root / "class_dict.csv").write_text("name,r,g,b\nRoadz,1,2,3\n")
    with pytest.raises(UserError, match="Roadz"):
        make_dataset("camvid", str(root), "train", crop=None, augment=False)
    img = sorted((root / "train").glob("*.png"))[1]
    (root / "class_dict.csv").unlink()
    img.unlink()
    with pytest.raises(UserError, match=img.stem):
        make_dataset("camvid", str(root), "train", crop=None, augment=False)


def test_camvid_layouts_are_told_apart(tmp_path):
    segnet = make_camvid_tree(tmp_path / "segnet", n_train=1, n_val=1, size=(12, 16))
    assert make_dataset("camvid", str(segnet), "val", crop=None, augment=False).layout == "segnet"
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(UserError, match="val_labels.*valannot"):
        make_dataset("camvid", str(tmp_path / "empty"), "val", crop=None, augment=False)
