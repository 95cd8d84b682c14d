"""Fold BatchNorm into the preceding convolution for inference.

Folding is exact up to float rounding: ``W' = W·γ/σ``, ``b' = (b − μ)·γ/σ + β``. It walks every
``nn.Sequential`` (conv directly followed by BN) and calls ``fold_bn()`` on modules that know
their own layout (e.g. :class:`nas.ops.FactorizedReduce`).
"""

from __future__ import annotations

import torch
from torch import nn


def fold_conv_bn_params(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d,
                        channels: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """Folded (weight, bias) for a conv whose output channels are ``bn``'s ``channels``."""
    mean = bn.running_mean[channels]
    var = bn.running_var[channels]
    gamma = bn.weight[channels] if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias[channels] if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b0 = bias if bias is not None else torch.zeros_like(mean)
    b = (b0 - mean) * scale + beta
    return w.detach().clone(), b.detach().clone()


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every conv→BN pair of ``model`` in place (model must be in eval mode); returns it."""
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (BN running statistics)")
    for module in list(model.modules()):
        if hasattr(module, "fold_bn") and callable(module.fold_bn):
            module.fold_bn()
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                        and bn.num_features == conv.out_channels and bn.track_running_stats):
                    w, bias = fold_conv_bn_params(conv.weight, conv.bias, bn)
                    conv.weight = nn.Parameter(w)
                    conv.bias = nn.Parameter(bias)
                    module._modules[b] = nn.Identity()
    return model
