"""Shared fixtures. GPU-marked tests skip cleanly when CUDA is not available."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def toy_space():
    from toy_space import ToySpace

    return ToySpace()


@pytest.fixture
def fast_config():
    """A protocol that finishes in milliseconds per entry (for build tests, not for accuracy)."""
    from latbench.timing import TimingConfig

    return TimingConfig(warmup_s=0.0, min_samples=3, min_time_s=0.0, max_time_s=0.02, max_noise=0.5,
                        target_sample_s=1e-4, threads=1)
