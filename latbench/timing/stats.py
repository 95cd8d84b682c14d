"""Statistics of a sample set. Pure functions on per-call times; tested against numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# For a normal distribution: sigma ~= 1.4826 * MAD, and the standard error of the median is
# sqrt(pi/2) * sigma / sqrt(n) ~= 1.2533 * sigma / sqrt(n).
_MAD_TO_SIGMA = 1.482602218505602
_SE_MEDIAN = math.sqrt(math.pi / 2.0)


def median_noise(values: Sequence[float]) -> float:
    """Relative noise of the median: ``1.2533 * 1.4826 * MAD / sqrt(n) / median``.

    That is the standard error of the sample median (normal approximation, sigma estimated
    robustly from the median absolute deviation) divided by the median. It shrinks with more
    samples, like nvbench's relative standard deviation of the mean, but an occasional outlier
    (a preemption, a page fault) does not inflate it. ``inf`` with fewer than 2 samples or a
    median of 0.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return math.inf
    med = float(np.median(x))
    if med <= 0:
        return math.inf
    mad = float(np.median(np.abs(x - med)))
    return _SE_MEDIAN * _MAD_TO_SIGMA * mad / math.sqrt(n) / med


@dataclass(frozen=True)
class Summary:
    median: float
    p10: float
    p90: float
    iqr: float
    mean: float
    n: int
    noise: float


def summarize(values: Sequence[float]) -> Summary:
    """Median, p10, p90, inter-quartile range, mean and :func:`median_noise` (same unit as input)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples")
    p10, q1, med, q3, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    return Summary(float(med), float(p10), float(p90), float(q3 - q1), float(x.mean()), int(x.size),
                   median_noise(x))
