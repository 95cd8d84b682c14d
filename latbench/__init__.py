"""latbench: hardware latency profiling and lookup tables (LUTs) for NAS search spaces.

latbench knows timing, LUT storage, comparison and validation. It knows nothing about any
particular search space: spaces plug in through :mod:`latbench.space` and the entry-point group
``latbench.spaces``.
"""

__version__ = "0.1.0"
