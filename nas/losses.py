"""Segmentation losses: plain cross-entropy and online bootstrapping of hard pixels (OHEM).

OHEM follows Wu, Shen & van den Hengel, "High-performance semantic segmentation using very deep
fully convolutional networks" (2016; LGCNet's ref. [58]), in the form common to segmentation
code bases (PSPNet / OCNet / HRNet ``OhemCrossEntropy``). The rule, per batch (all images of
the batch pooled together):

1. ``p`` = softmax probability of the true class at every non-ignored pixel (computed without
   gradient; only the selection uses it);
2. the *hard* pixels are those with ``p < thresh`` (default 0.7);
3. if there are fewer than ``min_kept`` hard pixels, the ``min_kept`` pixels with the lowest
   ``p`` are kept instead (all valid pixels when fewer than ``min_kept`` are valid);
4. loss = mean cross-entropy over the kept pixels.

``thresh >= 1`` keeps every valid pixel (plain cross-entropy). When no pixel is valid (all
ignored) both losses return a zero that is still connected to the graph, so ``backward()``
works and gives zero gradients.

Logits whose spatial size differs from the target's are upsampled bilinearly
(``align_corners=False``) to it first.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255


def _match_size(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.dim() != target.dim() + 1:
        raise ValueError(f"logits {tuple(logits.shape)} must be [N, C, ...] for target "
                         f"{tuple(target.shape)}")
    if logits.shape[2:] != target.shape[1:]:
        if logits.dim() != 4:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                             f"differ in size")
        logits = F.interpolate(logits, size=target.shape[1:], mode="bilinear",
                               align_corners=False)
    return logits


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0


def cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels; 0 (with grad) when all are ignored."""
    logits = _match_size(logits, target)
    valid = target != ignore_index
    if not bool(valid.any()):
        return _zero(logits)
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def ohem_select(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Boolean mask (target's shape) of the pixels OHEM keeps; see the module docstring."""
    with torch.no_grad():
        valid = target != ignore_index
        n_valid = int(valid.sum())
        if n_valid == 0:
            return valid
        if thresh >= 1.0:
            return valid
        prob = torch.softmax(logits.detach().float(), dim=1)
        t = target.clone()
        t[~valid] = 0
        p_true = prob.gather(1, t.unsqueeze(1)).squeeze(1)
        keep = valid & (p_true < thresh)
        k = min(int(min_kept), n_valid)
        if int(keep.sum()) < k:
            flat = torch.where(valid, p_true, torch.full_like(p_true, float("inf"))).reshape(-1)
            idx = torch.topk(flat, k, largest=False).indices
            keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
            keep[idx] = True
            keep = keep.reshape(target.shape)
        return keep


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over hard pixels (``p_true < thresh``), at least ``min_kept`` per batch."""

    def __init__(self, thresh: float = 0.7, min_kept: int = 100_000,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if not 0.0 < thresh:
            raise ValueError(f"thresh must be > 0, got {thresh}")
        if min_kept < 0:
            raise ValueError(f"min_kept must be >= 0, got {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.ignore_index = int(ignore_index)

    def extra_repr(self) -> str:
        return f"thresh={self.thresh}, min_kept={self.min_kept}, ignore_index={self.ignore_index}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _match_size(logits, target)
        keep = ohem_select(logits, target, self.thresh, self.min_kept, self.ignore_index)
        if not bool(keep.any()):
            return _zero(logits)
        t = torch.where(keep, target, torch.full_like(target, self.ignore_index))
        return F.cross_entropy(logits, t, ignore_index=self.ignore_index)


class CrossEntropy(nn.Module):
    """Plain cross-entropy as a module, same signature as :class:`OhemCrossEntropy`."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.ignore_index)


def make_loss(name: str = "ohem", *, thresh: float = 0.7, min_kept: int = 100_000,
              ignore_index: int = IGNORE_INDEX) -> nn.Module:
    """'ohem' → :class:`OhemCrossEntropy`, 'ce' → :class:`CrossEntropy`."""
    if name == "ohem":
        return OhemCrossEntropy(thresh, min_kept, ignore_index)
    if name == "ce":
        return CrossEntropy(ignore_index)
    raise ValueError(f"unknown loss {name!r} (expected 'ohem' or 'ce')")
