"""The synthetic data set: deterministic, declared classes, learnable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.data import make_dataset
from nas.data.synthetic import SyntheticConfig, generate


def test_deterministic_and_splits_differ():
    a = make_dataset("synthetic", None, "train", crop=None, augment=False, seed=3, length=4)
    b = make_dataset("synthetic", None, "train", crop=None, augment=False, seed=3, length=4)
    for i in range(4):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], a[1][0])
    v = make_dataset("synthetic", None, "val", crop=None, augment=False, seed=3, length=4)
    assert not torch.equal(a[0][0], v[0][0])
    c = make_dataset("synthetic", None, "train", crop=None, augment=False, seed=4, length=4)
    assert not torch.equal(a[0][0], c[0][0])


def test_augmented_items_depend_only_on_seed_epoch_index():
    ds = make_dataset("synthetic", None, "train", crop=(32, 48), augment=True, seed=1, length=8)
    x5, y5 = ds[5]
    ds[2]  # load order does not matter
    assert torch.equal(ds[5][0], x5)
    ds.set_epoch(1)
    x5e1, _ = ds[5]
    assert not torch.equal(x5e1, x5)
    assert torch.equal(ds[(0, 5)][0], x5) and torch.equal(ds[(1, 5)][0], x5e1)
    assert x5.shape == (3, 32, 48) and y5.shape == (32, 48)


def test_dataloader_workers_give_the_same_batches():
    from torch.utils.data import DataLoader

    ds = make_dataset("synthetic", None, "train", crop=(24, 32), augment=True, seed=2, length=8)
    ds.set_epoch(3)
    serial = list(DataLoader(ds, batch_size=4, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=4, num_workers=2))
    # Same augmentation draws in both: labels (nearest) are identical; images may differ in the last
    # float bits because workers run with one intra-op thread and the main process with several
    # (bilinear resampling sums in a different order), which a different crop/flip/scale would exceed
    # by orders of magnitude.
    for (xs, ys), (xp, yp) in zip(serial, parallel):
        assert torch.equal(ys, yp)
        assert torch.allclose(xs, xp, rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [2, 5, 9])
def test_declared_classes_and_ignore(k):
    ds = make_dataset("synthetic", None, "train", crop=None, augment=False, num_classes=k,
                      length=16, resize=(40, 56))
    assert ds.num_classes == k and len(ds.class_names) == k and len(ds.palette) == k
    seen = set()
    for i in range(len(ds)):
        img, lab = ds[i]
        assert img.shape == (3, 40, 56) and lab.dtype == torch.int64
        vals = set(lab.unique().tolist())
        assert 255 in vals  # boundary pixels are ignored
        assert vals <= set(range(k)) | {255}
        frac_ignore = float((lab == 255).float().mean())
        assert 0 < frac_ignore < 0.25
        seen |= vals
    assert seen == set(range(k)) | {255}
    assert ds.info.extra["num_classes"] == k


def test_classes_separable_by_pixel_colour():
    """Nearest-centroid on raw RGB, fitted on train images, scored on val images."""
    k = 5
    cfg = SyntheticConfig(num_classes=k, size=(48, 64))

    def pixels(split, n):
        xs, ys = [], []
        for i in range(n):
            img, lab = generate(cfg, 0, split, i)
            m = lab != 255
            xs.append(img[m].astype(np.float32))
            ys.append(lab[m])
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = pixels("train", 6)
    xte, yte = pixels("val", 6)
    cent = np.stack([xtr[ytr == c].mean(0) for c in range(k)])
    pred = np.argmin(((xte[:, None, :] - cent[None]) ** 2).sum(-1), axis=1)
    acc = float((pred == yte).mean())
    majority = max(float((yte == c).mean()) for c in range(k))
    per_class = [float((pred[yte == c] == c).mean()) for c in range(k) if (yte == c).any()]
    assert acc > 0.9 and acc > majority + 0.2, (acc, majority)
    assert min(per_class) > 0.7, per_class


def test_bad_config():
    with pytest.raises(ValueError):
        SyntheticConfig(num_classes=1)
    with pytest.raises(ValueError):
        SyntheticConfig(size=(4, 4))
