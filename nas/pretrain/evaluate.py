"""Evaluation of a pre-training classifier (top-1 / top-5 over the whole val split, sharded over
torchrun processes) and the data-loading helpers it shares with the training loop."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from latbench.errors import UserError
from nas.data.transforms import normalize_uint8
from nas.pretrain.imagenet import ImageFolderDataset, worker_error
from nas.runtime import DistContext, all_reduce_sum, progress_bar, shard_indices


@torch.no_grad()
def evaluate_topk(model: nn.Module, dataset: ImageFolderDataset, *, device: torch.device,
                  ctx: DistContext, batch_size: int, workers: int = 0, channels_last: bool = False,
                  amp: bool = False, show_progress: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 accuracy and mean cross-entropy over all of ``dataset`` (summed over ranks)."""
    model.eval()
    part = Subset(dataset, shard_indices(len(dataset), ctx.rank, ctx.world_size))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=loader_generator())
    hit1 = hit5 = loss_sum = 0.0
    count = 0
    with progress_bar(len(loader), "eval val", show_progress and ctx.is_main) as advance:
        for images, labels in batches_of(loader):
            x = normalize_uint8(images.to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(x)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            hit1 += float(hits[:, 0].sum())
            hit5 += float(hits.any(dim=1).sum())
            count += labels.numel()
            advance(1)
    hit1, hit5, loss_sum, total = all_reduce_sum([hit1, hit5, loss_sum, count], ctx)
    total = max(1.0, total)
    return {"top1": hit1 / total, "top5": hit5 / total, "loss": loss_sum / total, "count": int(total)}


def loader_generator() -> torch.Generator:
    """A DataLoader draws its workers' base seed from its generator each time it is iterated — from
    the global torch RNG when it has none, which would make the global stream (dropout) depend on
    how many loaders a run created, i.e. on where it was resumed. Our items draw their randomness
    from ``(seed, epoch, index)`` instead, so a fixed private generator is enough."""
    return torch.Generator().manual_seed(0)


def batches_of(loader: DataLoader):
    """Iterate ``loader``; an error in a worker process comes back as its own one-line message."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except UserError as exc:
            raise worker_error(exc) from None
        yield batch


__all__ = ["batches_of", "evaluate_topk", "loader_generator"]
