"""The search configuration: typed values, passed explicitly, saved in checkpoints and genotypes.

Defaults and their sources (paper = LGCNet IV-A; "ours" = the paper is silent, our choice):

=====================  ==================  ===========================================================
value                  default             source
=====================  ==================  ===========================================================
beta (β)               0.005               paper (eq. 10, IV-C)
batch_size             16 (global)         paper; split evenly over DDP processes
epochs                 50                  ours (DARTS' search length; the paper gives 10 h on 16 GPUs)
lr_w → lr_w_min        0.025 → 0.001       paper (SGD, cosine), annealed per step (ours)
momentum, wd_w         0.9, 1e-3           paper
lr_a, betas, wd_a      1e-3, (0.5, 0.999), paper (Adam on α; we also put the GGM's weights here)
                       1e-4
grad_clip              5.0                 ours (DARTS' clip of the weights' gradient norm)
arch_warmup_epochs     0                   ours (the paper names no warm-up; α moves from step 0)
λ                      1.0 → 0.03, exp     paper's end points; curve ours (see temperature.py)
init_channels          8                   paper (the supernet's width; the deployed network is
                                           widened by the LUT's width_mult, nas.config)
gcn dim d, γ           64, 0.5             paper (IV-A, Table VIII)
=====================  ==================  ===========================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from latbench.errors import UserError
from nas.config import SpaceConfig
from nas.search.arch_params import ArchConfig
from nas.search.ggm import GGMConfig
from nas.search.temperature import TemperatureSchedule

AMP_MODES = ("auto", "off", "bf16", "fp16")
#: What LAT sums (nas.search.latency): the searched edges (cells + fusion cell: eq. 9, the default),
#: the cells' edges only, or the whole network.
LATENCY_SCOPES = ("searched", "cells", "network")
CHANNELS_LAST = ("auto", "on", "off")


def _tuple(v: Any) -> tuple[int, int] | None:
    return None if v is None else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class OptimConfig:
    lr_w: float = 0.025
    lr_w_min: float = 0.001
    momentum: float = 0.9
    wd_w: float = 1e-3
    lr_a: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    wd_a: float = 1e-4
    grad_clip: float | None = 5.0
    arch_warmup_epochs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))
        if self.lr_w <= 0 or self.lr_a < 0 or self.lr_w_min < 0:
            raise UserError("learning rates must be positive (lr_a may be 0 to freeze α)")
        if not (0 <= self.betas[0] < 1 and 0 <= self.betas[1] < 1):
            raise UserError(f"Adam betas must be in [0, 1), got {self.betas}")
        if self.arch_warmup_epochs < 0:
            raise UserError("arch_warmup_epochs must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None
    crop: tuple[int, int] | None = None      # None: the search resolution
    length: int | None = None                 # keep only the first N items (synthetic: generate N)

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", _tuple(self.crop))


@dataclass(frozen=True)
class LUTConfig:
    """Which LUT rows price the search."""

    path: str = ""
    resolution: tuple[int, int] | None = None   # None: the LUT's only resolution
    batch: int = 1
    backend: str | None = None
    precision: str | None = None
    use_calibration: bool = True
    latency_model: str = "auto"      # auto: the LUT's model for these rows if it has one; none; require
    latency_scope: str = "searched"  # what LAT prices: searched edges (eq. 9), cells only, or network

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolution", _tuple(self.resolution))
        if self.latency_model not in ("auto", "none", "require"):
            raise UserError(f"latency_model must be auto, none or require, not {self.latency_model!r}")
        if self.latency_scope not in LATENCY_SCOPES:
            raise UserError(f"latency_scope must be one of {', '.join(LATENCY_SCOPES)}, not {self.latency_scope!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LUTConfig":
        """From a saved configuration. One saved before ``latency_scope`` existed priced the whole
        network, so that is the scope it reads with (a checkpoint resumes with the scope it priced)."""
        return cls(**{"latency_scope": "network", **dict(d)})


@dataclass(frozen=True)
class SearchConfig:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    lut: LUTConfig = field(default_factory=LUTConfig)
    arch: ArchConfig = field(default_factory=ArchConfig)
    ggm: GGMConfig = field(default_factory=GGMConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    temperature: TemperatureSchedule = field(default_factory=TemperatureSchedule)
    data: DataConfig = field(default_factory=DataConfig)
    beta: float = 0.005
    epochs: int = 50
    batch_size: int = 16
    seed: int = 0
    amp: str = "auto"
    channels_last: str = "auto"
    checkpoint_every: int = 0   # also every N steps (0: at the end of every epoch only)

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise UserError(f"beta must be >= 0, got {self.beta}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("epochs and batch size must be >= 1")
        if self.amp not in AMP_MODES:
            raise UserError(f"unknown --amp {self.amp!r}; choose one of {', '.join(AMP_MODES)}")
        if self.channels_last not in CHANNELS_LAST:
            raise UserError(f"unknown --channels-last {self.channels_last!r}")
        if self.arch.cells == "shared" and self.ggm.mode != "none":
            raise UserError("shared cells (--cells shared) use one normal and one reduction cell, so there is "
                            "nothing between cells to connect: use --between none (the paper's Table VI a)")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["space"] = self.space.to_dict()
        for k in ("lut", "arch", "ggm", "optim", "temperature", "data"):
            d[k] = _plain(dataclasses.asdict(d[k]))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchConfig":
        if not isinstance(d, Mapping):
            raise UserError(f"invalid search configuration: a dictionary is needed, not {type(d).__name__}")
        d = dict(d)
        parts = {"space": SpaceConfig.from_dict, "lut": LUTConfig.from_dict,
                 "arch": ArchConfig.from_dict, "ggm": GGMConfig.from_dict,
                 "optim": lambda x: OptimConfig(**x), "temperature": TemperatureSchedule.from_dict,
                 "data": lambda x: DataConfig(**x)}
        try:
            for k, make in parts.items():
                if k in d:
                    d[k] = make(d[k])
            return cls(**d)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:  # a file from anywhere
            raise UserError(f"invalid search configuration: {exc}") from None

    def replace(self, **changes: Any) -> "SearchConfig":
        return dataclasses.replace(self, **changes)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
