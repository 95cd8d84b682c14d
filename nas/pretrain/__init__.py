"""ImageNet pre-training of a derived LGCNet's backbone (``nas pretrain``).

The paper's pipeline is search → ImageNet pre-training → fine-tuning (section IV-A); it says
nothing more about the pre-training. What is implemented here, and which choices are ours, is in
``docs/pretrain.md``.

- :mod:`nas.pretrain.imagenet` — ImageNet in its usual folder layouts (``train/<wnid>/*.JPEG``;
  ``val/`` sorted into class folders, or flat with Kaggle's ``LOC_val_solution.csv``, the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` + ``meta.mat``, or one wnid per line);
- :mod:`nas.pretrain.model` — :class:`~nas.pretrain.model.LGCNetClassifier`: the derived network's
  stem and cells (the same modules under the same names as :class:`nas.network.LGCNet`) with a
  classification head;
- :mod:`nas.pretrain.config` — :class:`~nas.pretrain.config.PretrainConfig`, the run's settings;
- :mod:`nas.pretrain.evaluate` — top-1 / top-5 over the val split;
- :mod:`nas.pretrain.trainer` — the recipe, checkpoints, exact resume, logs and the result file.

A pre-training checkpoint is a tensors-only file whose ``model`` entry holds ``stem.*`` and
``cells.*`` under the segmentation network's own names, so ``nas train --init RUN/last.pt``
loads it directly and reports ``backbone: N/N tensors matched``. This module imports nothing
heavy: :mod:`nas.train.checkpoint` reads the constants below.
"""

FORMAT = "lgcnet-pretrain-checkpoint"
VERSION = 1

# State-dict prefixes of the backbone: what pre-training trains and fine-tuning inherits.
BACKBONE_PREFIXES = ("stem.", "cells.")
# The classification head's module name: present only in pre-training checkpoints.
HEAD_PREFIX = "pretrain_head."


def is_backbone_key(name: str) -> bool:
    return name.startswith(BACKBONE_PREFIXES)
