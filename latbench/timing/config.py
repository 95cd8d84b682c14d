"""The measurement protocol's settings and its result, both plain dataclasses (DESIGN §5)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TimingConfig:
    """How one thing (an op or a whole network) is timed.

    - ``warmup_s``: warm up *by time* before any sample counts (clocks ramp, cuDNN picks algorithms).
    - ``warmup_rounds``: and for at least this many timed batches of calls, whatever the time: a
      first call that outlasts ``warmup_s`` (cuDNN autotuning a whole network, ONNX Runtime's
      exhaustive algorithm search, a lazy initialisation) would otherwise end the warm-up alone and
      size the samples from its own slowness. Calls per sample are sized from the last batch.
    - ``min_samples`` / ``min_time_s``: never stop before both are reached (``min_time_s`` is
      clipped to ``max_time_s``).
    - ``max_time_s``: per-entry cap on the sampling phase (warm-up not included).
    - ``max_noise``: stop once :func:`latbench.timing.stats.median_noise` (relative standard error
      of the median, estimated from the MAD) is at or below this.
    - ``cold_cache``: flush L2 (a buffer allocated once) outside the timed region before every
      sample; each sample is then one call (a batch of calls would warm the cache).
    - ``max_throttle_retries``: re-measure an entry sampled while the GPU throttled at most this
      many times, then keep it flagged ``throttled``.
    - ``target_sample_s``: how long one sample should last; calls per sample are chosen from a
      first timing so that µs-scale work is not dominated by timer resolution or launch cost.
    - ``threads``: CPU threads (``torch.set_num_threads``) for the ``cpu`` backend; None = leave.
    - ``input_sets``: the CPU timers (``cpu``, ``ort`` and ``compile`` on the CPU) rotate call by
      call through this many random input sets, so that a kernel whose branches depend on the data
      is not timed on data the branch predictor has memorised (:mod:`latbench.timing.inputs`);
      1 = the same inputs every call (as every LUT built before 2026-12-04 21:58 UTC was timed).
      CUDA timers ignore it: a CUDA graph replays fixed buffers. 8 timed within 2 % of 32 at every
      size measured (``benchmarks/results/input_rotation-sweep-*``).
    - ``const_inputs``: a LUT build also times each op on an all-zero input (one set), the cost an
      eager backend pays where a network feeds the op a constant (downstream of all-``zero`` cells):
      the LUT's ``const_us``. ``build-lut`` on a CPU turns it on.
    """

    warmup_s: float = 0.2
    warmup_rounds: int = 3
    min_samples: int = 10
    min_time_s: float = 0.5
    max_time_s: float = 5.0
    max_noise: float = 0.005
    cold_cache: bool = False
    max_throttle_retries: int = 2
    target_sample_s: float = 1e-3
    threads: int | None = None
    input_sets: int = 8
    const_inputs: bool = False

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.min_time_s < 0 or self.max_time_s <= 0:
            raise ValueError("warmup_s and min_time_s must be >= 0 and max_time_s > 0")
        if self.warmup_rounds < 1:
            raise ValueError("warmup_rounds must be >= 1")
        if self.min_samples < 1:
            raise ValueError("min_samples must be >= 1")
        if not self.max_noise > 0:
            raise ValueError("max_noise must be > 0")
        if self.target_sample_s <= 0:
            raise ValueError("target_sample_s must be > 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")
        if self.input_sets < 1:
            raise ValueError("input_sets must be >= 1")

    @property
    def effective_min_time_s(self) -> float:
        return min(self.min_time_s, self.max_time_s)

    @property
    def cache(self) -> str:
        return "cold" if self.cold_cache else "warm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TimingConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Measurement:
    """One timed thing: the distribution of per-call times (µs) and the state it was taken in.

    A failed measurement (out of memory, an exception in the op) has ``status == "failed"``,
    ``error`` set and NaN statistics; :func:`latbench.timing.measure` returns it, never raises.
    """

    median_us: float = math.nan
    p10_us: float = math.nan
    p90_us: float = math.nan
    iqr_us: float = math.nan
    mean_us: float = math.nan
    samples: int = 0
    noise: float = math.nan
    calls_per_sample: int = 0
    sm_clock_mhz: float | None = None
    throttled: bool = False
    host_bound: bool | None = None
    enqueue_us: float | None = None
    status: str = "ok"
    error: str | None = None
    #: median µs of the op on an all-zero input (LUT builds with ``const_inputs``), else None
    const_us: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, error: str, **extra: Any) -> "Measurement":
        return cls(status="failed", error=error, extra=dict(extra))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no NaN or infinity (e.g. the noise of a single sample): store None instead.
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Measurement":
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("median_us", "p10_us", "p90_us", "iqr_us", "mean_us", "noise"):
            if kw.get(k) is None:
                kw[k] = math.nan
        return cls(**kw)
