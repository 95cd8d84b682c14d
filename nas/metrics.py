"""Segmentation metrics from a confusion matrix accumulated over a whole split.

``ConfusionMatrix.matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p``. Pixels
whose target is ``ignore_index`` (or outside ``0..K-1``) are excluded.

- ``iou()[c] = TP / (TP + FP + FN)``; a class absent from both target and prediction over
  everything accumulated has an undefined IoU, reported as NaN (``None`` in ``to_dict``).
- ``miou()`` is the mean over the classes whose IoU is defined, i.e. that appear in the target
  or the prediction (NaN when no pixel has been counted). This is the rule of the Cityscapes
  evaluation scripts (``nanmean`` over classes): a class predicted but never present counts
  with IoU 0, a class neither present nor predicted does not count.
- ``pixel_accuracy()`` = correctly classified / counted pixels; ``mean_accuracy()`` = mean over
  classes present in the target of per-class recall.

For distributed evaluation, accumulate per process, then ``all_reduce()`` (sums the matrices
over the default ``torch.distributed`` group when it is initialised; a no-op otherwise), or
``merge()`` matrices by hand.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Accumulates ``pred`` vs ``target`` class indices; see the module docstring."""

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 device: torch.device | str = "cpu"):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. ``pred``: class indices of ``target``'s shape, or logits ``[N, K, ...]``
        for a ``target`` of ``[N, ...]`` (arg-max over dim 1 is taken)."""
        k = self.num_classes
        if pred.is_floating_point():
            if pred.dim() != target.dim() + 1 or pred.shape[1] != k:
                raise ValueError(f"float pred {tuple(pred.shape)} must be logits [N, {k}, ...] "
                                 f"for target {tuple(target.shape)}")
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        p = pred.reshape(-1).long()
        t = target.reshape(-1).to(p.device).long()
        valid = (t != self.ignore_index) & (t >= 0) & (t < k)
        p, t = p[valid], t[valid]
        if p.numel() and (p.min() < 0 or p.max() >= k):
            raise ValueError(f"predictions outside 0..{k - 1}: "
                             f"{int(p.min())}..{int(p.max())}")
        counts = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        self.matrix += counts.to(self.matrix.device)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add ``other``'s counts into this matrix (returns self)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class into "
                             f"{self.num_classes}-class matrix")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrix over all processes of the default group (no-op if not distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            m = self.matrix
            if dist.get_backend() == "nccl" and m.device.type != "cuda":
                m = m.cuda()
            dist.all_reduce(m, op=dist.ReduceOp.SUM)
            self.matrix = m.to(self.matrix.device)
        return self

    # ---- metrics
    def _diag_rows_cols(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.matrix.double().cpu()
        return m.diag(), m.sum(1), m.sum(0)

    def iou(self) -> torch.Tensor:
        """Per-class IoU, float64 ``[K]``; NaN for classes absent from target and prediction."""
        tp, rows, cols = self._diag_rows_cols()
        denom = rows + cols - tp
        return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, math.nan))

    def miou(self) -> float:
        """Mean IoU over classes present in target or prediction (NaN if nothing counted)."""
        iou = self.iou()
        defined = ~torch.isnan(iou)
        return float(iou[defined].mean()) if defined.any() else math.nan

    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else math.nan

    def mean_accuracy(self) -> float:
        tp, rows, _ = self._diag_rows_cols()
        present = rows > 0
        return float((tp[present] / rows[present]).mean()) if present.any() else math.nan

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready summary; undefined values are ``None``."""
        names = list(class_names) if class_names is not None else [
            str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")

        def clean(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        iou = self.iou().tolist()
        return {
            "miou": clean(self.miou()),
            "pixel_accuracy": clean(self.pixel_accuracy()),
            "mean_accuracy": clean(self.mean_accuracy()),
            "per_class_iou": {n: clean(v) for n, v in zip(names, iou)},
            "num_classes": self.num_classes,
            "classes_counted": int(sum(not math.isnan(v) for v in iou)),
            "pixels": self.total,
            "ignore_index": self.ignore_index,
            "confusion_matrix": self.matrix.cpu().tolist(),
        }
