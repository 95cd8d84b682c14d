"""``nas sample``: the paper's random-search baselines (Table VII) as genotype files.

Setting (a) draws architectures uniformly from the search space; setting (b) keeps only those
whose LUT-predicted latency meets a speed requirement (the paper: "over 100 FPS"), by rejection
sampling. Each genotype is written like a search's, so `nas fps`, `nas train` and `nas eval`
treat random and searched networks alike.
"""

from __future__ import annotations

import random
from pathlib import Path

import click

from latbench.errors import UserError


@click.command()
@click.option("--lut", "lut_path", required=True, type=click.Path(dir_okay=False),
              help="LUT of the space: its configuration defines the space and its rows price the samples.")
@click.option("-n", "--num", "num", default=10, show_default=True, type=click.IntRange(min=1),
              help="How many architectures (the paper averages ten).")
@click.option("--min-fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Setting (b): keep only architectures whose LUT-predicted latency gives at least this FPS "
                   "(e.g. 100). Without it: setting (a), no constraint.")
@click.option("--resolution", default=None, help="LUT resolution HxW. [default: the LUT's only resolution]")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-draws", default=100000, show_default=True, type=click.IntRange(min=1),
              help="Give up after this many draws when the constraint is too tight.")
@click.option("--latency-model", default="auto", show_default=True, type=click.Choice(["auto", "none", "require"]),
              help="How predicted latency is priced: auto = the LUT's latency model for these rows when it has one "
                   "(`latbench fit`), else Σ LUT (calibrated if the LUT has a calibration); none = Σ LUT.")
@click.option("--out", "out_dir", default="runs/random", show_default=True, type=click.Path(file_okay=False),
              help="Folder for random-NNN.json genotypes.")
def sample(lut_path: str, num: int, min_fps: float | None, resolution: str | None, seed: int, max_draws: int,
           latency_model: str, out_dir: str) -> None:
    """Random-search baselines (paper Table VII): N genotypes drawn uniformly (a), or only among
    architectures predicted faster than --min-fps (b)."""
    from latbench.files import check_outputs
    from latbench.lut.coverage import space_identity
    from latbench.lut.table import read_lut
    from latbench.space import parse_resolution
    from nas.config import SpaceConfig
    from nas.genotype import Architecture, Genotype
    from nas.search.config import LUTConfig
    from nas.search.latency import load_latency_table
    from nas.space import LGCNetSpace

    from nas.lutfile import require_lut_file

    check_outputs(folders={"--out": out_dir})
    require_lut_file(lut_path, [resolution] if resolution else [])
    lut = read_lut(lut_path)
    config = SpaceConfig.from_dict(space_identity(lut)["config"])
    hw = parse_resolution(resolution) if resolution else None
    # an FPS constraint is about the whole network: priced by the LUT's latency model when it has
    # one for these rows (else the calibrated or raw Σ LUT)
    table, identity = load_latency_table(LUTConfig(path=lut_path, resolution=hw, latency_model=latency_model),
                                         config, scope="network", lut=lut)
    if identity.get("latency_notice"):
        click.echo(f"note: {identity['latency_notice']}", err=True)
    space = LGCNetSpace(config)
    rng = random.Random(seed)
    budget_us = 1e6 / min_fps if min_fps else None
    out = Path(out_dir)
    kept, draws = 0, 0
    while kept < num:
        if draws >= max_draws:
            raise UserError(f"only {kept} of {num} architectures met {min_fps} FPS in {max_draws} draws; "
                            "relax --min-fps or raise --max-draws")
        draws += 1
        arch = Architecture.from_dict(space.sample_architecture(rng))
        lat = table.architecture_latency(arch)
        if budget_us is not None and lat > budget_us:
            continue
        meta = {"random_search": {"setting": "b" if budget_us else "a", "min_fps": min_fps, "seed": seed,
                                  "draw": draws},
                "lut": identity,
                "expected_latency": {"lut_sum_us": round(table.architecture_lut_sum(arch), 3),
                                     "latency_us": round(lat, 3)}}
        path = Genotype(arch, config, meta).save(out / f"random-{kept:03d}.json")
        raw = table.architecture_lut_sum(arch)
        how = f"latency model, Σ LUT {raw / 1e3:.3f} ms" if table.model else "Σ LUT" if table.calibration is None \
            else f"calibrated, Σ LUT {raw / 1e3:.3f} ms"
        click.echo(f"{path}: predicted {lat / 1e3:.3f} ms ({1e6 / lat:.1f} FPS; {how})")
        kept += 1
    click.echo(f"{kept} architectures kept of {draws} drawn" + (f" (≥ {min_fps} FPS predicted)" if budget_us else ""))
