"""``nas fps``: end-to-end latency and FPS of a genotype's network, per backend, through latbench's
timing protocol; appends the results to ``REPORTS/fps/NAME.json``."""

from __future__ import annotations

import json
from typing import Any

import click


def _fmt_record(r: dict) -> str:
    from nas.paper import params_note

    if r["status"] != "ok":
        return f"{r['resolution']:>10}  {r['backend']:<10} {r['precision']}  failed: {r['error']}"
    line = (f"{r['resolution']:>10}  {r['backend']:<10} {r['precision']}  b{r['batch']}  "
            f"median {r['latency_ms']:.3f} ms  (p10 {r['p10_ms']:.3f}, p90 {r['p90_ms']:.3f})  {r['fps']:.1f} FPS  "
            f"{params_note(r['network']['params'])}  {r['network']['flops'] / 1e9:.2f} GFLOPs")
    if r.get("host_bound"):
        line += f"  HOST-BOUND (enqueue {r['enqueue_us'] / 1e3:.3f} ms)"
    lut = r.get("lut")
    if lut:
        line += f"  | Σ LUT {lut['sum_us'] / 1e3:.3f} ms"
        if lut.get("calibrated_us") is not None:
            line += f", calibrated {lut['calibrated_us'] / 1e3:.3f} ms"
        if lut.get("model_us") is not None:
            err = lut.get("model_error_pct")
            against = "p10" if lut.get("model_compared_with") == "p10_us" else "median"
            line += f", latency model {lut['model_us'] / 1e3:.3f} ms"
            line += f" ({err:+.1f} % vs {against})" if err is not None else ""
        line += f" ({lut['backend']})"
        if lut.get("model_notice"):
            line += f"  [{lut['model_notice']}]"
    return line


#: ``nas fps``'s options, in ``--help`` order (the command is made from them).
FPS_OPTIONS = [
    click.option("--arch", "arch_path", required=True, type=click.Path(dir_okay=False),
                  help="genotype.json of the network to measure."),
    click.option("--gpu", "label", default=None,
                  help="Name of the report file (reports/fps/NAME.json); must describe the device. [default: the device's name]"),
    click.option("--device", default=None, help="cpu, cuda or cuda:N. [default: cuda:0 if available, else cpu]"),
    click.option("--resolution", "resolutions", multiple=True, default=("769x1537",), show_default=True,
                  help="Input HxW; repeat for several."),
    click.option("--backend", "backends", default=None,
                  help="Comma-separated timing backends (eager, cudagraph, trt, ort, compile, cpu). "
                       "[default: eager,cudagraph on a GPU, cpu on the CPU]"),
    click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "tf32", "fp16"]),
                  help="fp32: strict IEEE fp32 math; tf32: fp32 tensors with TF32 math on NVIDIA GPUs; fp16."),
    click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1)),
    click.option("--width-mult", default=None, type=click.FloatRange(min=0, min_open=True),
                  help="Width multiplier of the deployed network (overrides the genotype's)."),
    click.option("--lut", "lut_path", default=None, type=click.Path(dir_okay=False),
                  help="A LUT of the same space: its predictions (Σ LUT, and the latency model's when the LUT has one "
                       "for these rows) are shown beside the measurement, and its protocol is used unless timing "
                       "options are given."),
    click.option("--latency-model", default="auto", show_default=True, type=click.Choice(["auto", "none", "require"]),
                  help="With --lut: auto = show the LUT's latency model's prediction when it has one for these rows; "
                       "none = Σ LUT only; require = refuse a LUT without a model."),
    click.option("--reports", "reports_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
                  help="Folder of the report files."),
    click.option("--warmup", default=None, type=click.FloatRange(min=0), help="Warm-up seconds. [default 0.2]"),
    click.option("--max-time", default=None, type=click.FloatRange(min=0, min_open=True),
                  help="Sampling cap in seconds per (resolution, backend). [default 5]"),
    click.option("--min-time", default=None, type=click.FloatRange(min=0), help="Minimum sampling seconds. [default 0.5]"),
    click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads for the cpu backend."),
    click.option("--no-save", is_flag=True, help="Do not append to the report file."),
    click.option("--json", "as_json", is_flag=True, help="Print the records as JSON on stdout."),
]


def _fps_options(f: Any) -> Any:
    for option in reversed(FPS_OPTIONS):
        f = option(f)
    return f


@click.command("fps")
@_fps_options
def fps(arch_path, label, device, resolutions, backends, precision, batch, width_mult, lut_path, latency_model,
        reports_dir, warmup, max_time, min_time, threads, no_save, as_json) -> None:
    """Measure a genotype's derived network end to end (median, p10, p90 latency and FPS) with
    latbench's protocol, per backend and resolution; count parameters and FLOPs; show the LUT's
    prediction beside it; flag host-bound runs; append everything to reports/fps/NAME.json."""
    from pathlib import Path

    from latbench.device import resolve_device
    from latbench.errors import UserError
    from latbench.files import check_outputs
    from latbench.lut.table import read_lut
    from latbench.space import parse_resolution
    from latbench.timing import TimingConfig
    from nas.fps import FpsRequest, append_records, measure_fps, report_path

    dev = resolve_device(device)
    check_outputs(folders={"--reports": None if no_save else Path(reports_dir) / "fps"})
    res = []
    for r in resolutions:
        hw = parse_resolution(r)
        if hw not in res:
            res.append(hw)
    names = [b.strip() for b in (backends or "").split(",") if b.strip()]
    if not names:
        names = ["cpu"] if dev == "cpu" else ["eager", "cudagraph"]
        if backends is not None:
            raise UserError("--backend is empty")
    base = TimingConfig()
    if lut_path:
        from nas.lutfile import require_lut_file

        require_lut_file(lut_path, resolutions, device)
        from latbench.lut.coverage import timing_protocol

        base = timing_protocol(read_lut(lut_path), lut_path)
    over = {k: v for k, v in {"warmup_s": warmup, "max_time_s": max_time, "min_time_s": min_time,
                               "threads": threads}.items() if v is not None}
    timing = TimingConfig.from_dict({**base.to_dict(), **over})
    request = FpsRequest(genotype_path=arch_path, resolutions=tuple(res), backends=tuple(names), device=dev,
                         precision=precision, batch=batch, width_mult=width_mult, timing=timing,
                         lut_path=lut_path, label=label, latency_model=latency_model)
    noticed: set[str] = set()

    def show(r: dict) -> None:
        note = (r.get("lut") or {}).get("notice")
        if note and note not in noticed:
            noticed.add(note)
            click.echo(f"note: {note}", err=True)
        click.echo(_fmt_record(r))

    on_record = None if as_json else show
    name, records = measure_fps(request, on_record=on_record)
    out = None
    if not no_save:
        out = append_records(report_path(reports_dir, name), records)
    if as_json:
        click.echo(json.dumps({"report": str(out) if out else None, "records": records}, indent=2, default=str))
    elif out:
        click.echo(f"appended {len(records)} record(s) to {out}")
