"""One timing protocol for ops and whole networks (DESIGN §5).

>>> from latbench.timing import TimingConfig, get_backend, measure
>>> backend = get_backend("cpu", threads=1)
>>> m = measure(torch.nn.Conv2d(8, 8, 3), [torch.randn(1, 8, 32, 32)], TimingConfig(max_time_s=0.5), backend=backend)
>>> m.median_us, m.noise, m.samples
"""

from latbench.timing.config import Measurement, TimingConfig
from latbench.timing.loop import calls_for, describe_error, measure, measure_prepared
from latbench.timing.registry import available_backends, get_backend, register_backend
from latbench.timing.stats import Summary, median_noise, summarize


def default_backend(device: str) -> str:
    """``cudagraph`` on a CUDA device, ``cpu`` otherwise."""
    return "cudagraph" if str(device).startswith("cuda") else "cpu"


__all__ = [
    "Measurement", "TimingConfig", "measure", "measure_prepared", "calls_for", "describe_error",
    "register_backend", "get_backend", "available_backends", "default_backend",
    "Summary", "summarize", "median_noise",
]
