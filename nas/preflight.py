"""Checks a ``nas`` command runs before any work: the device exists, outputs can be written, the
request fits the device's memory, a resume has something to resume. One function per command
whose checks span several of these (the others call :mod:`latbench.files` / :mod:`nas.memory`
directly)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from latbench.device import resolve_device
from latbench.errors import UserError
from latbench.files import check_output_dir


def world_size() -> int:
    """``WORLD_SIZE`` of a torchrun job (1 outside one; a malformed value is left to
    :func:`nas.runtime.init_distributed` to refuse)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE") or 1))
    except ValueError:
        return 1


def check_train_request(genotype: Any, cfg: Any) -> None:
    """``nas train``: device, output folder, ``--resume`` (a run to continue must exist, as for
    ``nas search``) and the memory one process needs for its share of the batch."""
    from nas.memory import check_network_fits

    dev = resolve_device(cfg.device)
    check_output_dir(cfg.out_dir, "--out")
    last = Path(cfg.out_dir) / "last.pt"
    if cfg.resume and not last.is_file():
        raise UserError(f"--resume: no checkpoint at {last}; start a new run without --resume")
    config = genotype.config if cfg.width_mult is None else genotype.config.replace(width_mult=float(cfg.width_mult))
    check_network_fits(config, genotype.arch, dev, batch=max(1, cfg.batch_size // world_size()),
                       resolution=tuple(cfg.crop_size), training=True, what="training the network")


def check_predict_request(images: Any, out_dir: Any, device: str | None) -> str:
    """``nas predict``: the device (returned, resolved), the output folder, and every image file
    present — before the first prediction is written."""
    dev = resolve_device(device)
    check_output_dir(out_dir, "--out")
    for p in images:
        if not Path(p).is_file():
            raise UserError(f"image {p} does not exist" if not Path(p).exists() else f"image {p} is not a file")
    return dev


__all__ = ["check_predict_request", "check_train_request", "world_size"]
