"""Helpers for the search tests: a tiny LGCNet configuration and a real CPU LUT of it.

The LUT is built by latbench's build engine (real CPU timings, a protocol cut to milliseconds per
entry): the tests need *a* LUT of this configuration, not accurate numbers.
"""

from __future__ import annotations

from pathlib import Path

from nas.config import SpaceConfig

RESOLUTION = (33, 65)
TINY_SPACE = dict(num_cells=4, init_channels=4, reduction_cells=(1, 2), fusion_inputs=(0, 1, 3), num_classes=5)
TINY_CLI = ["--num-cells", "4", "--init-channels", "4", "--reduction-cells", "1,2", "--fusion-inputs", "0,1,3",
            "--num-classes", "5"]


def tiny_space(**changes) -> SpaceConfig:
    return SpaceConfig(**{**TINY_SPACE, **changes})


def build_tiny_lut(path: Path, **changes) -> Path:
    from latbench.build.builder import build_lut
    from latbench.timing import TimingConfig
    from nas.space import LGCNetSpace

    cfg = TimingConfig(warmup_s=0.002, min_samples=3, min_time_s=0.0, max_time_s=0.03, target_sample_s=2e-4, threads=1)
    build_lut(LGCNetSpace(tiny_space(**changes)), [RESOLUTION], "cpu", cfg, path, name="cpu-test",
              device="cpu", progress=False, warn=lambda m: None)
    return path


def tiny_search_config(lut: Path, **changes):
    """A real but tiny search: 4 cells, init channels 4, 33x65, 16 synthetic images, batch 4."""
    from nas.search.config import DataConfig, LUTConfig, SearchConfig

    base = dict(space=tiny_space(), lut=LUTConfig(path=str(lut), resolution=RESOLUTION),
                data=DataConfig(dataset="synthetic", length=16), epochs=2, batch_size=4, seed=0)
    base.update(changes)
    return SearchConfig(**base)


def benchmark_script(name: str):
    """The module of ``benchmarks/<name>.py`` (benchmark scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def affine_result(path: Path, lut_path: Path, n: int, sets, seed: int = 5, source=None) -> Path:
    """A ``latbench fit`` results file whose 'measurements' are an exact affine of ``lut_path``'s
    sums (0.6 Σ + 500 µs) over ``n`` sampled architectures, for the offline benchmark scripts:
    ``sets(i)`` names network ``i``'s set, ``source(i)`` (optional) its recorded kind."""
    import json
    import random

    from latbench.lut.table import read_lut
    from latbench.model.latency_model import ModelScope
    from latbench.model.networks import resolve_setup
    from latbench.model.predictor import Predictor

    lut = read_lut(lut_path)
    s = resolve_setup(lut)
    scope = ModelScope.of_lut(lut.meta, s.height, s.width, s.batch)
    prices = Predictor(lut, scope)
    r = random.Random(seed)
    nets = []
    for i in range(n):
        arch = s.space.sample_architecture(r)
        y = 0.6 * prices.raw_sum(prices.network_rows(s.space, arch)) + 500.0
        nets.append({"key": f"n{i}", "set": sets(i), "measured_us": y, "arch": arch,
                     **({"source": source(i)} if source else {})})
    path.write_text(json.dumps({"networks": nets, "overhead_us": 20.0, "lut": str(lut_path), "scope": scope.to_dict()}))
    return path
