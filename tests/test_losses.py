"""OHEM and plain cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas.losses import CrossEntropy, OhemCrossEntropy, cross_entropy, make_loss, ohem_select


def setup(seed=0, n=2, k=4, h=6, w=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g) * 2
    target = torch.randint(0, k, (n, h, w), generator=g)
    target[0, 0, :3] = 255
    return logits, target


def per_pixel(logits, target):
    return F.cross_entropy(logits, target, ignore_index=255, reduction="none")


def test_threshold_one_equals_cross_entropy():
    logits, target = setup()
    ce = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(OhemCrossEntropy(thresh=1.0, min_kept=0)(logits, target), ce)
    assert torch.allclose(cross_entropy(logits, target), ce)
    assert torch.allclose(CrossEntropy()(logits, target), ce)


def test_drops_easy_pixels():
    logits, target = setup(1)
    valid = target != 255
    p = torch.softmax(logits, 1).gather(1, target.clamp(max=3).unsqueeze(1)).squeeze(1)
    hard = valid & (p < 0.7)
    easy = valid & ~hard
    assert hard.sum() > 10 and easy.sum() > 5  # the example has both kinds
    logits.requires_grad_(True)
    loss = OhemCrossEntropy(thresh=0.7, min_kept=1)(logits, target)
    expect = per_pixel(logits.detach(), target)[hard].mean()
    assert torch.allclose(loss, expect)
    loss.backward()
    g = logits.grad.abs().sum(1)
    assert (g[easy] == 0).all() and (g[hard] > 0).all()


def test_keeps_at_least_min_kept_hardest():
    logits, target = setup(2)
    valid = target != 255
    # make every pixel easy: boost the true class
    easy_logits = logits + 10 * F.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2)
    crit = OhemCrossEntropy(thresh=0.7, min_kept=9)
    keep = ohem_select(easy_logits, target, 0.7, 9)
    assert int(keep.sum()) == 9 and not (keep & ~valid).any()
    losses = per_pixel(easy_logits, target)[valid]
    expect = losses.sort(descending=True).values[:9].mean()
    assert torch.allclose(crit(easy_logits, target), expect)
    # min_kept above the number of valid pixels keeps them all
    assert int(ohem_select(easy_logits, target, 0.7, 10_000).sum()) == int(valid.sum())


def test_all_ignored_gives_zero_with_grad():
    logits, target = setup()
    logits.requires_grad_(True)
    target[:] = 255
    for crit in (OhemCrossEntropy(), CrossEntropy()):
        loss = crit(logits, target)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_logits_upsampled_to_target():
    logits, target = setup(h=4, w=4)
    big = torch.randint(0, 4, (2, 8, 8))
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(make_loss("ce")(logits, big), F.cross_entropy(up, big))
    with pytest.raises(ValueError):
        make_loss("focal")
