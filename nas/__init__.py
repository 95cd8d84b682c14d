"""nas: LGCNet latency-constrained architecture search for real-time semantic segmentation."""

__version__ = "0.1.0"
