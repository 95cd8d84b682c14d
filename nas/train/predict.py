"""Colour-coded predictions and overlays of a trained network (the paper's Figure 6).

For every input image, :func:`write_prediction` writes into the output folder:

- ``<stem>_pred.png`` — the predicted classes in the data set's palette (Cityscapes: the official
  ``cityscapesscripts`` colours);
- ``<stem>_overlay.png`` — the palette colours blended over the image (``alpha``);
- ``<stem>_labels.png`` — the predicted class indices (train ids) as a single-channel PNG;
- ``<stem>_panel.png`` — image | prediction side by side, as in Fig. 6.

Predictions are made at the image's own size, or with the image resized to ``resolution`` for the
network and the logits upsampled back to the image's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nas.data import colorize, image_to_tensor, overlay, read_image
from nas.data.palette import LabelSpec


@dataclass(frozen=True)
class PredictConfig:
    resolution: tuple[int, int] | None = None
    alpha: float = 0.5


@torch.no_grad()
def predict_image(model: nn.Module, image: np.ndarray, *, device: str | torch.device = "cpu",
                  resolution: tuple[int, int] | None = None) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB -> ``uint8 [H, W]`` predicted class per pixel (model in eval mode)."""
    model.eval()
    x = image_to_tensor(image, resolution)[None].to(device)
    logits = model(x).float()
    h, w = image.shape[:2]
    if tuple(logits.shape[-2:]) != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def write_prediction(out_dir: str | Path, stem: str, image: np.ndarray, pred: np.ndarray,
                     spec: LabelSpec, alpha: float = 0.5) -> dict[str, Path]:
    """Write the four PNGs of one image (see the module docstring); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colour = colorize(pred, spec)
    blend = overlay(image, pred, spec, alpha=alpha)
    gap = np.full((image.shape[0], max(4, image.shape[1] // 64), 3), 255, dtype=np.uint8)
    panel = np.concatenate([image, gap, colour], axis=1)
    paths = {"pred": out / f"{stem}_pred.png", "overlay": out / f"{stem}_overlay.png",
             "labels": out / f"{stem}_labels.png", "panel": out / f"{stem}_panel.png"}
    Image.fromarray(colour).save(paths["pred"])
    Image.fromarray(blend).save(paths["overlay"])
    Image.fromarray(pred.astype(np.uint8), mode="L").save(paths["labels"])
    Image.fromarray(panel).save(paths["panel"])
    return paths


def unique_stems(paths: list[Path]) -> list[str]:
    """File stems, made unique (``name``, ``name-2``, ...) when two inputs share one."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        s = p.stem
        seen[s] = seen.get(s, 0) + 1
        stems.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return stems


def predict_files(model: nn.Module, images: list[Path], out_dir: str | Path, spec: LabelSpec, *,
                  device: str | torch.device = "cpu", cfg: PredictConfig = PredictConfig()
                  ) -> list[dict[str, Path]]:
    """Predict every image file and write its PNGs; unreadable files raise UserError."""
    written = []
    for path, stem in zip(images, unique_stems(images)):
        image = read_image(path)
        pred = predict_image(model, image, device=device, resolution=cfg.resolution)
        written.append(write_prediction(out_dir, stem, image, pred, spec, cfg.alpha))
    return written


__all__ = ["PredictConfig", "predict_files", "predict_image", "unique_stems", "write_prediction"]
