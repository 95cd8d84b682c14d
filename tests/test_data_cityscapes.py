"""Cityscapes loader on a tiny tree in the official layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latbench.errors import UserError
from nas.data import make_dataset
from nas.data.cityscapes import IdMapper, id_to_train_id_table

from data_trees import make_cityscapes_tree  # tests/ is on sys.path (conftest.py)


def test_id_mapping_equals_cityscapesscripts_for_every_id():
    from cityscapesscripts.helpers.labels import id2label

    mapper = IdMapper(id_to_train_id_table())
    ids = np.array(list(range(34)) + [-1])
    got = mapper(ids)
    for i, g in zip(ids, got):
        t = id2label[int(i)].trainId
        assert g == (t if 0 <= t < 255 else 255), (i, g, t)
    assert set(got[got != 255].tolist()) == set(range(19))
    with pytest.raises(ValueError):
        mapper(np.array([34]))


def test_loader_reads_tree_and_maps_labels(tmp_path):
    root = make_cityscapes_tree(tmp_path, n_train=3, n_val=2, size=(32, 72))
    ds = make_dataset("cityscapes", str(root), "train", crop=None, augment=False)
    assert len(ds) == 3 and ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.class_names[0] == "road" and ds.class_names[18] == "bicycle"
    assert ds.palette[0] == (128, 64, 128)
    info = ds.info
    assert (info.name, info.split, info.count, info.root) == ("cityscapes", "train", 3, str(root))

    table = id_to_train_id_table()
    for i in range(len(ds)):
        pair = ds.pairs[i]
        ids = np.asarray(Image.open(pair.label)).astype(np.int64)
        expect = np.vectorize(table.get)(ids)
        img, lab = ds[i]
        assert img.dtype == torch.float32 and img.shape == (3, 32, 72)
        assert lab.dtype == torch.int64
        assert torch.equal(lab, torch.from_numpy(expect))
        # ignore-mapped ids (0..6, 9, 10, 14, 15, 16, 18, 29, 30) are present and became 255
        assert (lab == 255).any() and set(lab.unique().tolist()) <= set(range(19)) | {255}
        # image normalised with ImageNet statistics: raw pixel back from the file
        raw = np.asarray(Image.open(pair.image).convert("RGB"), dtype=np.float32) / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        back = (img * std + mean).permute(1, 2, 0).numpy()
        assert np.allclose(back, raw, atol=1e-5)


def test_sorted_pairing_by_name_across_cities(tmp_path):
    root = make_cityscapes_tree(tmp_path, n_train=0, n_val=4)
    ds = make_dataset("cityscapes", str(root), "val", crop=None, augment=False)
    for p in ds.pairs:
        assert p.image.parent.name == p.label.parent.name
        assert p.image.name.replace("_leftImg8bit.png", "") == \
            p.label.name.replace("_gtFine_labelIds.png", "")


def test_missing_label_names_the_file(tmp_path):
    root = make_cityscapes_tree(tmp_path, n_train=2, n_val=0)
    victim = sorted((root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))[1]
    victim.unlink()
    with pytest.raises(UserError, match=victim.name):
        make_dataset("cityscapes", str(root), "train", crop=None, augment=False)


def test_missing_image_names_the_file(tmp_path):
    root = make_cityscapes_tree(tmp_path, n_train=2, n_val=0)
    victim = sorted((root / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))[0]
    victim.unlink()
    with pytest.raises(UserError, match=victim.name):
        make_dataset("cityscapes", str(root), "train", crop=None, augment=False)


def test_missing_root_and_empty_split(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_dataset("cityscapes", str(tmp_path / "nope"), "train", crop=None, augment=False)
    with pytest.raises(UserError, match="data root"):
        make_dataset("cityscapes", None, "train", crop=None, augment=False)
    root = make_cityscapes_tree(tmp_path, n_train=1, n_val=0)
    (root / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    (root / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(UserError, match=str(root / "leftImg8bit" / "val")):
        make_dataset("cityscapes", str(root), "val", crop=None, augment=False)
    with pytest.raises(UserError, match=str(root / "leftImg8bit" / "test")):
        make_dataset("cityscapes", str(root), "test", crop=None, augment=False)


def test_malformed_files_name_the_file(tmp_path):
    root = make_cityscapes_tree(tmp_path, n_train=3, n_val=0, size=(16, 32))
    ds = make_dataset("cityscapes", str(root), "train", crop=None, augment=False)
    # an unreadable image
    ds.pairs[0].image.write_bytes(b"not a png")
    with pytest.raises(UserError, match=ds.pairs[0].image.name):
        ds[0]
    # a colour-coded label in place of labelIds
    Image.new("RGB", (32, 16)).save(ds.pairs[1].label)
    with pytest.raises(UserError, match="single-channel"):
        ds[1]
    # ids that are no Cityscapes id, and a size mismatch
    Image.fromarray(np.full((16, 32), 200, np.uint8)).save(ds.pairs[2].label)
    with pytest.raises(UserError, match=ds.pairs[2].label.name):
        ds[2]
    Image.fromarray(np.zeros((8, 32), np.uint8)).save(ds.pairs[2].label)
    with pytest.raises(UserError, match="8x32"):
        ds[2]


def test_training_crop_and_length(tmp_path):
    root = make_cityscapes_tree(tmp_path, n_train=3, n_val=0, size=(32, 64))
    ds = make_dataset("cityscapes", str(root), "train", crop=(24, 40), augment=True, length=2)
    assert len(ds) == 2
    img, lab = ds[1]
    assert img.shape == (3, 24, 40) and lab.shape == (24, 40)
    with pytest.raises(UserError, match="19 classes"):
        make_dataset("cityscapes", str(root), "train", crop=None, augment=False, num_classes=5)


def test_palette_and_names_come_from_cityscapesscripts():
    from cityscapesscripts.helpers.labels import trainId2label

    from nas.data.palette import colorize, label_spec

    spec = label_spec("cityscapes")
    assert spec.num_classes == 19
    for t in range(19):
        assert spec.class_names[t] == trainId2label[t].name
        assert spec.palette[t] == tuple(trainId2label[t].color)
    lab = np.arange(20).reshape(4, 5)
    lab[3, 4] = 255
    rgb = colorize(lab, spec)
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[3, 3]) == (119, 11, 32)
    assert tuple(rgb[3, 4]) == (0, 0, 0)
