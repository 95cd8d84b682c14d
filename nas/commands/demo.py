"""``nas demo``: the main job end to end — LUT → two searches (β = 0 and β > 0) → FPS of both — on
whatever device is here, in minutes.

Each step runs the real command line a user would type (printed before it runs), so the demo is
also a worked example: ``latbench build-lut``, ``nas search`` (twice), ``nas fps`` (twice),
``nas report``. Then it prints, side by side for the two searched networks, what the search did
(α entropy at the start and the end: a search that learns moves it well below ln 8) and what it
bought: the LUT-predicted latency and the measured latency of each derived network. Both searches
see the same data in the same order (same seed); only β differs, so the difference is the latency
term's doing.

The demo's search settings are the demo's, not the paper's (``nas search`` keeps the paper's):
the paper's α learning rate (Adam, 1e-3) over a few dozen steps moves α by about 1e-3 — the
derived network would be the arg-max of initialisation noise — so the demo uses a larger
architecture learning rate (``--lr-a``), a smaller batch (more steps) and a larger β, and says so.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from latbench.errors import UserError

#: The demo's search settings (the paper's are nas search's defaults: lr_a 1e-3, batch 16, β 0.005).
DEMO_LR_A = 0.05
DEMO_BATCH = 8
DEMO_BETA = 0.5


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
              help="Folder for the LUT, the search runs, FPS reports and the summaries.")
@click.option("--device", default=None, help="cpu or cuda:N. Default: the first GPU if there is one, else the CPU.")
@click.option("--resolution", default=None,
              help="Network input HxW. Default: 769x1537 (the paper's Cityscapes size) on a GPU, 65x129 on a CPU "
                   "so that the demo finishes in minutes.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Search epochs on the synthetic data set, per search (default 3 on CPU, 10 on GPU).")
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=DEMO_BETA, show_default=True,
              help="β of the latency-constrained search (the other search runs with β = 0).")
@click.option("--lr-a", type=click.FloatRange(min=0, min_open=True), default=DEMO_LR_A, show_default=True,
              help="Architecture learning rate of the demo's searches (the paper's, nas search's default, is 1e-3).")
@click.option("--batch-size", type=click.IntRange(min=2), default=DEMO_BATCH, show_default=True,
              help="Search batch size (64 synthetic training images per epoch).")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Per-entry timing cap for the LUT build, seconds (default 0.05 on CPU, with a 0.05 s warm-up; "
                   "1.0 on GPU).")
def demo(out_dir: str, device: str | None, resolution: str | None, epochs: int | None, beta: float, lr_a: float,
         batch_size: int, max_time: float | None) -> None:
    """Build a LUT for this device, run the latency-constrained search twice on synthetic data (β = 0
    and β > 0, same data), measure both searched networks, and show predicted and measured latency side
    by side with how much α moved.

    Everything lands under --out: lut.parquet, search-beta0/ and search-betaB/ (genotype.json, plots,
    log), reports/ (FPS JSON), report.md (Table IV style) and summary.md (the side-by-side).
    Rerunning resumes the LUT build and reuses finished steps' files.
    """
    # every option checked before the first step (a step would refuse it only after the others' work)
    device, name, default_res, backend, res = _check_options(device, resolution, out_dir, batch_size)
    on_gpu = device.startswith("cuda")
    epochs = epochs if epochs is not None else (10 if on_gpu else 3)
    max_time = max_time if max_time is not None else (1.0 if on_gpu else 0.05)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lut = out / "lut.parquet"
    reports = out / "reports"
    runs = {0.0: out / "search-beta0", beta: out / f"search-beta{beta:g}"}
    steps = _steps(out, lut, name, device, backend, res, max_time, on_gpu, runs, reports,
                   ["--epochs", str(epochs), "--batch-size", str(batch_size), "--beta", "{beta}", "--lr-a", f"{lr_a:g}"])
    click.secho(f"demo settings (ours, for a search that learns in minutes; nas search keeps the paper's): "
                f"α lr {lr_a:g}, batch {batch_size}, {epochs} epochs, β {beta:g} vs 0", err=True)
    for title, argv in steps:
        click.secho(f"\n== {title}: {shlex.join(argv)}", bold=True, err=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", _module_of(argv[0])] + argv[1:])
        if rc != 0:  # the step printed its own one-line error: say where the demo stopped, keep its status
            click.echo(f"demo stopped: step '{title}' failed (exit status {rc}); the files so far are in {out}",
                       err=True)
            sys.exit(rc)
        click.secho(f"   {title} done in {time.perf_counter() - t0:.1f} s", err=True)
    rows = [summarize_run(b, run_dir, reports) for b, run_dir in runs.items()]
    text = render_summary(rows, res, str(lut))
    (out / "summary.md").write_text(text, encoding="utf-8")
    click.echo("\n" + text)
    click.echo(f"Demo finished: {out / 'summary.md'}, Table IV style {out / 'report.md'}")


def _steps(out: Path, lut: Path, name: str, device: str, backend: str, res: str, max_time: float, on_gpu: bool,
           runs: dict[float, Path], reports: Path, search_opts: list[str]) -> list[tuple[str, list[str]]]:
    """The demo's commands: LUT → a quick latency-model fit → the two searches → FPS → report."""
    # On a CPU, one thread: with several, an OpenMP barrier on a shared machine can stall an op
    # for whole scheduler ticks (tens of ms) and the LUT would record the machine's load, not the op.
    threads = [] if on_gpu else ["--threads", "1"]
    # a CPU needs no clock ramp: a short warm-up keeps the LUT build to about half a minute there
    warmup = [] if on_gpu else ["--warmup", "0.05"]
    accept = ["--accept-load"]  # a demo runs on any machine: load recorded, not refused (not for real LUTs)
    # on a 2-core CPU, data-loader processes only compete with the search for the cores
    workers = ["--workers", "2" if on_gpu else "0"]
    steps: list[tuple[str, list[str]]] = [
        ("LUT", ["latbench", "build-lut", "--gpu", name, "--device", device, "--backend", backend,
                 "--resolution", res, "--max-time", str(max_time), "--output", str(lut)] + warmup + threads + accept)]
    if not (out / "fit.png").exists():  # a quick model (well under a minute on a CPU): raw vs model vs measured
        steps.append(("latency model", ["latbench", "fit", str(lut), "--resolution", res, "--fit-networks", "12",
                                        "--test-networks", "6", "--rounds", "5", "--window", "0.05", "--peers",
                                        "none", "--plot", str(out / "fit.png"), "--no-progress",
                                        "--max-reference-spread", "1e9"]))  # a demo's model, on any machine
    for b, run_dir in runs.items():
        if (run_dir / "genotype.json").exists():
            continue
        steps.append((f"search β={b:g}", [
            "nas", "search", "--lut", str(lut), "--dataset", "synthetic", "--resolution", res,
            *[o.replace("{beta}", f"{b:g}") for o in search_opts],
            "--out", str(run_dir), "--device", device, "--no-progress"] + workers
            + (["--resume"] if (run_dir / "checkpoints" / "last.pt").exists() else [])))
    for b, run_dir in runs.items():
        steps.append((f"FPS β={b:g}", [
            "nas", "fps", "--arch", str(run_dir / "genotype.json"), "--gpu", name, "--device", device,
            "--resolution", res, "--backend", backend, "--lut", str(lut), "--reports", str(reports)] + threads))
    steps.append(("report", ["nas", "report", "--reports", str(reports), "--out", str(out / "report.md"),
                             "--plot", str(out / "fps_miou.png")]))
    return steps


def _check_options(device: str | None, resolution: str | None, out_dir: str,
                   batch_size: int) -> tuple[str, str, str, str, str]:
    """The device (refused unless cpu / cuda / cuda:N that exists), the resolution, the output folder
    and the memory the searches need, all before any step runs; returns ``_device_defaults`` and the
    resolution."""
    from latbench.device import resolve_device
    from latbench.files import check_outputs
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


def summarize_run(beta: float, run_dir: Path, reports: Path) -> dict[str, Any]:
    """What one search did and bought: α entropy (start, end), the derived network's LUT-predicted
    latency (from its genotype) and its measured latency (its latest FPS record)."""
    from nas.fps import genotype_hash
    from nas.genotype import Genotype
    from nas.report import load_fps_records

    geno = Genotype.load(run_dir / "genotype.json")
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    ent = [sum(r["alpha_entropy"]) / len(r["alpha_entropy"]) for r in log if r.get("alpha_entropy")]
    sha = genotype_hash(geno)
    recs = [r for r in load_fps_records(reports) if (r.get("genotype") or {}).get("sha") == sha and r.get("status") == "ok"]
    rec = max(recs, key=lambda r: str(r.get("date", ""))) if recs else None
    exp = geno.meta.get("expected_latency") or {}
    light = sum(op in ("zero", "skip_connect", "max_pool_3x3") for cell in geno.arch.cells for op in cell)
    return {"beta": beta, "run": str(run_dir), "entropy_start": math.log(8), "entropy_end": ent[-1] if ent else None,
            "entropy_curve": ent, "predicted_ms": (exp.get("latency_us") or math.nan) / 1e3,
            "lut_sum_ms": (exp.get("lut_sum_us") or math.nan) / 1e3,
            "measured_ms": None if rec is None else rec["latency_ms"],
            "fps_sum_ms": _ms((rec or {}).get("lut", {}).get("sum_us")),
            "fps_model_ms": _ms((rec or {}).get("lut", {}).get("model_us")),
            "model_error_pct": (rec or {}).get("lut", {}).get("model_error_pct"),
            "params": None if rec is None else (rec.get("network") or {}).get("params"),
            "light_ops": light, "edges": sum(len(c) for c in geno.arch.cells),
            "final_ce": log[-1].get("ce") if log else None}


def _ms(us: Any) -> float | None:
    return float(us) / 1e3 if isinstance(us, (int, float)) else None


def render_summary(rows: list[dict[str, Any]], resolution: str, lut: str) -> str:
    def ms(v: float | None) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    lines = [f"# nas demo: β = 0 vs β > 0 on the same data ({resolution}, LUT {lut})", "",
             "| search | α entropy start → end (nats, mean per edge) | light ops (zero/skip/pool) | final CE "
             "| Σ LUT (ms) | latency model (ms) | model vs measured | measured latency (ms) | params (M) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        end = "–" if r["entropy_end"] is None else f"{r['entropy_end']:.3f}"
        ce = "–" if r["final_ce"] is None else f"{r['final_ce']:.3f}"
        params = "–" if r["params"] is None else f"{r['params'] / 1e6:.3f}"
        err = "–" if r.get("model_error_pct") is None else f"{r['model_error_pct']:+.1f} %"
        lines.append(f"| β = {r['beta']:g} | {r['entropy_start']:.3f} → {end} | {r['light_ops']} / {r['edges']} | {ce} "
                     f"| {ms(r.get('fps_sum_ms', r['lut_sum_ms']))} | {ms(r.get('fps_model_ms'))} | {err} "
                     f"| {ms(r['measured_ms'])} | {params} |")
    lines += ["", "α entropy starts at ln 8 = 2.079 (uniform over the 8 cell ops); a search that learns moves it "
              "down. Σ LUT: the derived network's ops timed alone, summed; latency model: what the quick model the "
              "demo fitted on 12 networks predicts (fit.png; a real fit measures 40, `latbench fit`), and its error "
              "against the measured figure of the statistic it was fitted to; measured: `nas fps`'s median on this "
              "device with the LUT's protocol. Trust the model over the raw sum, and the measurement over both. The β > 0 search pays for latency in its loss, "
              "so its network should be the faster one."]
    return "\n".join(lines) + "\n"
