"""``nas demo``: the main job end to end on defaults — LUT → search → FPS — on whatever device is here.

Each step runs the real command line a user would type (printed before it runs), so the demo is
also a worked example: ``latbench build-lut``, ``nas search``, ``nas fps``, ``nas report``.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

from latbench.errors import UserError


def _device_defaults(device: str | None) -> tuple[str, str, str, str]:
    """(device, LUT name, default resolution, backend) for what is present."""
    import torch

    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available")
        name = torch.cuda.get_device_name(torch.device(device)).lower()
        slug = "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
        return device, slug, "769x1537", "cudagraph"
    return "cpu", "cpu", "65x129", "cpu"


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True,
              help="Folder for the LUT, the search run, FPS reports and the summary table.")
@click.option("--device", default=None, help="cpu or cuda:N. Default: the first GPU if there is one, else the CPU.")
@click.option("--resolution", default=None,
              help="Network input HxW. Default: 769x1537 (the paper's Cityscapes size) on a GPU, 65x129 on a CPU "
                   "so that the demo finishes in minutes.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Search epochs on the synthetic data set (default 2 on CPU, 4 on GPU).")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Per-entry timing cap for the LUT build, seconds (default 0.1 on CPU, 1.0 on GPU).")
def demo(out_dir: str, device: str | None, resolution: str | None, epochs: int | None, max_time: float | None) -> None:
    """Build a LUT for this device, search an LGCNet with it on synthetic data, and measure the result's FPS.

    Everything lands under --out: lut.parquet, search/ (genotype.json, plots, log), reports/ (FPS JSON),
    and summary.md. Rerunning resumes the LUT build and reuses finished steps' files.
    """
    # every option checked before the first step (a step would refuse it only after the others' work)
    device, name, default_res, backend, res = _check_options(device, resolution, out_dir, 16)
    on_gpu = device.startswith("cuda")
    epochs = epochs if epochs is not None else (4 if on_gpu else 2)
    max_time = max_time if max_time is not None else (1.0 if on_gpu else 0.1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lut = out / "lut.parquet"
    # On a CPU, one thread: with several, an OpenMP barrier on a shared machine can stall an op
    # for whole scheduler ticks (tens of ms) and the LUT would record the machine's load, not the op.
    threads = [] if on_gpu else ["--threads", "1"]
    search_dir = out / "search"
    reports = out / "reports"
    steps = [
        ("LUT", ["latbench", "build-lut", "--gpu", name, "--device", device, "--backend", backend,
                 "--resolution", res, "--max-time", str(max_time), "--output", str(lut)] + threads),
        ("search", ["nas", "search", "--lut", str(lut), "--dataset", "synthetic", "--resolution", res,
                    "--epochs", str(epochs), "--out", str(search_dir), "--device", device]
         + (["--resume"] if (search_dir / "checkpoints" / "last.pt").exists() else [])),
        ("FPS", ["nas", "fps", "--arch", str(search_dir / "genotype.json"), "--gpu", name, "--device", device,
                 "--resolution", res, "--backend", backend, "--lut", str(lut), "--reports", str(reports)] + threads),
        ("report", ["nas", "report", "--reports", str(reports), "--out", str(out / "summary.md"),
                    "--plot", str(out / "fps_miou.png")]),
    ]
    for title, argv in steps:
        click.secho(f"\n== {title}: {shlex.join(argv)}", bold=True, err=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", _module_of(argv[0])] + argv[1:])
        if rc != 0:  # the step printed its own one-line error: say where the demo stopped, keep its status
            click.echo(f"demo stopped: step '{title}' failed (exit status {rc}); the files so far are in {out}",
                       err=True)
            sys.exit(rc)
        click.secho(f"   {title} done in {time.perf_counter() - t0:.1f} s", err=True)
    click.echo(f"\nDemo finished: genotype {search_dir / 'genotype.json'}, summary {out / 'summary.md'}")


def _check_options(device: str | None, resolution: str | None, out_dir: str,
                   batch_size: int) -> tuple[str, str, str, str, str]:
    """The device (refused unless cpu / cuda / cuda:N that exists), the resolution, the output folder
    and the memory the searches need, all before any step runs; returns ``_device_defaults`` and the
    resolution."""
    from latbench.device import resolve_device
    from latbench.fileio import check_outputs
    from latbench.space import format_resolution, parse_resolution
    from nas.config import SpaceConfig
    from nas.memory import check_network_fits

    dev, name, default_res, backend = _device_defaults(None if device is None else resolve_device(device))
    res = format_resolution(parse_resolution(resolution)) if resolution else default_res
    check_outputs(folders={"--out": out_dir})
    check_network_fits(SpaceConfig(), None, dev, batch=batch_size, resolution=parse_resolution(res), training=True,
                       what=f"the demo's search (the supernet at batch {batch_size})")
    return dev, name, default_res, backend, res


def _module_of(program: str) -> str:
    return {"latbench": "latbench.cli", "nas": "nas.cli"}[program]
