"""Confusion matrix, IoU and mIoU against hand-computed values."""

from __future__ import annotations

import math
import os

import pytest
import torch

from nas.metrics import ConfusionMatrix

# target / prediction, one pixel per column; the last target pixel is ignored
TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 2]])
# rows = target, cols = prediction:  t0: p0 1, p1 1 | t1: p1 2 | t2: p0 1
HAND = [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_hand_computed_example_with_ignore():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert cm.matrix.tolist() == HAND
    iou = cm.iou().tolist()
    assert iou == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)
    assert cm.mean_accuracy() == pytest.approx((1 / 2 + 1 + 0) / 3)
    d = cm.to_dict(["a", "b", "c"])
    assert d["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 0.0})
    assert d["pixels"] == 5 and d["miou"] == pytest.approx(1 / 3)


def test_absent_class_is_nan_and_excluded_but_false_positive_counts():
    cm = ConfusionMatrix(5)
    cm.update(PRED, TARGET)
    iou = cm.iou()
    assert math.isnan(iou[3]) and math.isnan(iou[4])
    assert cm.miou() == pytest.approx(1 / 3)
    d = cm.to_dict()
    assert d["per_class_iou"]["3"] is None and d["classes_counted"] == 3
    # class 4 predicted where the target is 0: IoU 0, now counted
    cm.update(torch.tensor([4]), torch.tensor([0]))
    assert cm.iou()[4] == 0.0
    assert cm.iou()[0] == pytest.approx(1 / 4)
    assert cm.miou() == pytest.approx((1 / 4 + 2 / 3 + 0 + 0) / 4)


def test_empty_and_logits_and_merge():
    cm = ConfusionMatrix(3)
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())
    cm.update(torch.tensor([1, 2]), torch.tensor([255, 255]))
    assert cm.total == 0
    logits = torch.nn.functional.one_hot(PRED, 3).permute(2, 0, 1).float()[None] * 3.0
    a = ConfusionMatrix(3)
    a.update(logits, TARGET[None])
    assert a.matrix.tolist() == HAND
    b = ConfusionMatrix(3)
    b.update(PRED[:1], TARGET[:1])
    c = ConfusionMatrix(3)
    c.update(PRED[1:], TARGET[1:])
    assert b.merge(c).matrix.tolist() == HAND
    assert b.all_reduce().matrix.tolist() == HAND  # not distributed: no-op
    with pytest.raises(ValueError):
        a.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(4))


def _worker(rank: int, world: int, path: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    cm = ConfusionMatrix(3)
    cm.update(PRED[rank:rank + 1], TARGET[rank:rank + 1])
    cm.all_reduce()
    torch.save(cm.matrix, f"{out}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = str(tmp_path / "m")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    for r in range(2):
        assert torch.load(f"{out}.{r}", weights_only=True).tolist() == HAND
