"""Augmentation keeps image and label aligned, pads with ignore, respects the scale range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.data.transforms import (EvalTransform, TrainTransform, denormalize, image_to_tensor,
                                 sample_rng)

COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]], np.uint8)


def blocks(h=48, w=64, b=8, seed=0):
    """A label of b x b blocks (asymmetric), and an image that is a function of it."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 4, size=(h // b, w // b))
    label = np.kron(cells, np.ones((b, b), dtype=np.int64))
    return COLOURS[label], label


def classify(img_t: torch.Tensor) -> np.ndarray:
    rgb = denormalize(img_t).astype(np.float32)
    return np.argmin(((rgb[:, :, None, :] - COLOURS[None, None].astype(np.float32)) ** 2).sum(-1), -1)


def test_alignment_exact_without_scaling():
    image, label = blocks()
    t = TrainTransform(crop=(32, 40), scale_range=(1.0, 1.0))
    flips = set()
    for s in range(12):
        rng = sample_rng(0, 0, s)
        p = t.sample(sample_rng(0, 0, s), *label.shape)
        flips.add(p.flip)
        img, lab = t(image, label, rng)
        assert img.shape == (3, 32, 40) and lab.shape == (32, 40)
        assert (lab != 255).all()
        assert np.array_equal(classify(img), lab.numpy())
        # the crop is the window the parameters name, flipped when they say so
        src = label[:, ::-1] if p.flip else label
        assert np.array_equal(lab.numpy(), src[p.top:p.top + 32, p.left:p.left + 40])
    assert flips == {True, False}


def test_alignment_with_random_scale():
    """Bilinear image vs nearest label: only boundary pixels may disagree.

    (Measured: a one-pixel shift between image and label scores ~0.95 on average, a flip of one
    but not the other ~0.4.)"""
    image, label = blocks(96, 128, 16, seed=1)
    t = TrainTransform(crop=(40, 40))
    agrees = []
    for s in range(20):
        img, lab = t(image, label, sample_rng(5, 0, s))
        m = lab.numpy() != 255
        agrees.append(float((classify(img)[m] == lab.numpy()[m]).mean()))
    assert min(agrees) > 0.96 and np.mean(agrees) > 0.985, agrees


def test_crop_pads_label_with_ignore_and_image_with_mean():
    image, label = blocks(16, 16, 4)
    t = TrainTransform(crop=(32, 48), scale_range=(1.0, 1.0), flip_prob=0.0)
    img, lab = t(image, label, sample_rng(0, 0, 0))
    assert lab.shape == (32, 48)
    assert int((lab != 255).sum()) == 16 * 16
    assert torch.equal(lab[:16, :16], torch.from_numpy(label))
    assert (lab[16:] == 255).all() and (lab[:, 16:] == 255).all()
    assert torch.allclose(img[:, 16:, :], torch.zeros(()), atol=1e-6)
    assert torch.allclose(img[:, :, 16:], torch.zeros(()), atol=1e-6)


def test_scale_range_respected_and_output_size_fixed():
    t = TrainTransform(crop=(24, 24))
    scales = []
    for s in range(300):
        p = t.sample(sample_rng(0, 0, s), 100, 60)
        assert 0.5 <= p.scale <= 2.0
        assert p.scaled_size == (round(100 * p.scale), round(60 * p.scale))
        assert 0 <= p.top <= max(p.scaled_size[0], 24) - 24
        assert 0 <= p.left <= max(p.scaled_size[1], 24) - 24
        scales.append(p.scale)
    assert min(scales) < 0.6 and max(scales) > 1.9
    image, label = blocks(20, 20, 4)
    for s in range(6):
        img, lab = t(image, label, sample_rng(1, 2, s))
        assert img.shape == (3, 24, 24) and lab.shape == (24, 24)
    base = TrainTransform(crop=None, scale_range=(0.5, 0.5), base_size=(40, 80))
    assert base.sample(sample_rng(0, 0, 0), 7, 9).scaled_size == (20, 40)


def test_same_rng_same_result():
    image, label = blocks()
    t = TrainTransform(crop=(32, 32))
    a = t(image, label, sample_rng(2, 3, 4))
    b = t(image, label, sample_rng(2, 3, 4))
    c = t(image, label, sample_rng(2, 4, 4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_eval_resize_and_center_crop():
    image, label = blocks()
    img, lab = EvalTransform(resize=(24, 32))(image, label)
    assert img.shape == (3, 24, 32) and lab.shape == (24, 32)
    assert np.array_equal(lab.numpy(), label[::2, ::2])  # nearest on an exact 2x grid
    img, lab = EvalTransform(resize=(24, 32), resize_label=False)(image, label)
    assert img.shape == (3, 24, 32) and lab.shape == (48, 64)
    img, lab = EvalTransform(crop=(16, 80))(image, label)
    assert lab.shape == (16, 80)
    assert torch.equal(lab[:, 8:72], torch.from_numpy(label[16:32]))
    assert (lab[:, :8] == 255).all() and (lab[:, 72:] == 255).all()
    x = image_to_tensor(image)
    assert torch.allclose(x, EvalTransform()(image, label)[0])
    assert np.array_equal(denormalize(x), image)


def test_bad_arguments():
    with pytest.raises(ValueError):
        TrainTransform(crop=(0, 4))
    with pytest.raises(ValueError):
        TrainTransform(crop=None, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError):
        sample_rng(-1, 0, 0)
