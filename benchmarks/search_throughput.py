"""Supernet training throughput of ``nas search`` (images/s), on CPU and on a GPU when present.

    python benchmarks/search_throughput.py [--device cpu|cuda|all] [--variants amp-cl,fp32,tf32]
                                           [--crop HxW] [--batch-size N] [--steps N] [--warmup N]
                                           [--init-channels C] [--num-cells K] [--threads N]
                                           [--out-dir benchmarks/results]

Each measured step is exactly one step of the search loop (:class:`nas.search.step.SearchStep`):
GCN-guided module, Gumbel sample, supernet forward over every candidate op of every edge (paper
space by default: 14 cells, C = 8, dense-connected fusion cell), CE + β·log(LAT), backward, SGD
and Adam updates. What it does not include: data loading (one synthetic batch, generated once, is
reused) and the LUT lookup cost (the latency table holds constant numbers).

Variants (CUDA; the CPU runs ``fp32`` only), each with its fp32 math mode set and recorded:

- ``amp-cl``: bf16 autocast + channels-last (what ``nas search`` does on a GPU), TF32 allowed for
  what stays fp32;
- ``fp32``: no autocast, contiguous (NCHW), strict IEEE fp32 (TF32 off for cuDNN and cuBLAS);
- ``tf32``: no autocast, contiguous, TF32 allowed (PyTorch's default for convolutions).

Writes ``OUT_DIR/search_throughput-<device>-<name>-<date>.json`` and ``.md`` per device, one
result per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from latbench.files import atomic_write_text

DEFAULTS = {"cpu": {"crop": (129, 257), "batch": 4, "steps": 5, "warmup": 2},
            "cuda": {"crop": (513, 1025), "batch": 16, "steps": 20, "warmup": 5}}
#: variant -> (autocast dtype name for SearchConfig.amp, channels-last, latbench precision of the fp32 math)
VARIANTS = {"amp-cl": ("bf16", True, "tf32"), "fp32": ("off", False, "fp32"), "tf32": ("off", False, "tf32")}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "device"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def measure(device: torch.device, crop: tuple[int, int], batch: int, steps: int, warmup: int,
            init_channels: int, num_cells: int, variant: str = "fp32") -> dict:
    from latbench.timing.precision import fp32_math, precision_mode

    amp_mode, channels_last, math = VARIANTS[variant]
    if device.type != "cuda":
        amp_mode, channels_last, math = "off", False, "fp32"
    with fp32_math(math):
        r = _measure(device, crop, batch, steps, warmup, init_channels, num_cells, amp_mode, channels_last)
    r.update({"variant": variant, "precision_mode": precision_mode(math, str(device))})
    return r


def _measure(device: torch.device, crop: tuple[int, int], batch: int, steps: int, warmup: int,
             init_channels: int, num_cells: int, amp_mode: str, channels_last: bool) -> dict:
    from nas.config import SpaceConfig
    from nas.data import make_dataset
    from nas.search.config import SearchConfig
    from nas.search.latency import LatencyTable
    from nas.search.step import SearchModel, SearchStep, make_optimizers, resolve_amp

    defaults = SpaceConfig()
    space = SpaceConfig(num_cells=num_cells, init_channels=init_channels,
                        reduction_cells=defaults.reduction_cells if num_cells == 14 else (1, max(2, num_cells // 2)),
                        fusion_inputs=defaults.fusion_inputs if num_cells == 14 else (0, 1, num_cells - 1),
                        num_classes=19)
    cfg = SearchConfig(space=space, batch_size=batch, epochs=1, amp=amp_mode)
    torch.manual_seed(0)
    model = SearchModel(cfg, torch.Generator().manual_seed(1)).to(device)
    amp = resolve_amp(cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if channels_last:
        model.supernet.to(memory_format=torch.channels_last)
    table = LatencyTable(torch.ones(space.num_cells, space.num_edges(), 8),
                         [torch.ones(t.numel()) for t in model.arch.fusion_logits()], 100.0)
    opt_w, opt_a, _ = make_optimizers(model, cfg, steps + warmup)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    step = SearchStep(model, model, table, cfg, opt_w, opt_a, scaler, torch.Generator().manual_seed(2), device,
                      amp, channels_last)
    ds = make_dataset("synthetic", None, "train", crop=crop, augment=False, num_classes=19, image_size=crop,
                      length=batch)
    images = torch.stack([ds[i][0] for i in range(batch)]).to(device)
    labels = torch.stack([ds[i][1] for i in range(batch)]).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        step(images, labels, tau=1.0)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "device": str(device), "device_name": _device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None, "cpu_count": os.cpu_count(),
        "crop": list(crop), "batch": batch, "steps": steps, "warmup": warmup,
        "space": space.to_dict(), "supernet_params_m": round(sum(p.numel() for p in model.supernet.parameters()) / 1e6, 3),
        "amp": str(amp) if amp else "off", "channels_last": channels_last,
        "step_s": [round(t, 4) for t in times], "median_step_s": round(med, 4),
        "images_per_s": round(batch / med, 3), "images_per_s_mean": round(batch * len(times) / sum(times), 3),
        "max_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


def render_md(results: list[dict], command: str, when: str) -> str:
    r0 = results[0]
    lines = [
        f"# Search supernet training throughput — {r0['device_name']} ({r0['device']})",
        "",
        f"Date: {when}. torch {torch.__version__}. Command: `{command}`",
        "",
        "| variant | space | crop | batch | AMP | channels-last | fp32 math | threads | median step (s) | images/s | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['space']['num_cells']} cells, C={r['space']['init_channels']}, fusion "
            f"{r['space']['fusion']} ({r['supernet_params_m']} M params) | {r['crop'][0]}x{r['crop'][1]} | {r['batch']} | "
            f"{r['amp']} | {r['channels_last']} | {r['precision_mode'].get('fp32_math')} | "
            f"{r['threads'] if r['threads'] is not None else '-'} | {r['median_step_s']} | **{r['images_per_s']}** | "
            f"{r['max_memory_gib'] if r['max_memory_gib'] is not None else '-'} |")
    lines += [""]
    for r in results:
        lines.append(f"Per-step times of {r['variant']} (s, after {r['warmup']} warm-up steps): "
                     f"{', '.join(map(str, r['step_s']))}.")
    lines += [
        "",
        f"Host: {r0.get('host')} ({r0['cpu_count']} logical CPUs, possibly shared with other jobs). "
        "One step = GGM + Gumbel sample + supernet forward/backward over every candidate op + SGD and Adam "
        "updates (`nas.search.step.SearchStep`); data loading excluded (one synthetic batch reused).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="all", help="cpu, cuda or all (cpu, plus cuda when available)")
    ap.add_argument("--variants", default="amp-cl,fp32",
                    help=f"comma-separated, CUDA only ({', '.join(VARIANTS)}); the CPU runs fp32")
    ap.add_argument("--crop", default=None, help="HxW (default per device: cpu 129x257, cuda 513x1025)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--init-channels", type=int, default=8)
    ap.add_argument("--num-cells", type=int, default=14)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in kinds and not torch.cuda.is_available():
        if args.device == "cuda":
            print("no CUDA device available", file=sys.stderr)
            return 2
        kinds.remove("cuda")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        print(f"unknown variant(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    for kind in kinds:
        d = DEFAULTS[kind]
        crop = tuple(int(x) for x in args.crop.lower().split("x")) if args.crop else d["crop"]
        device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
        results = []
        stem = None
        for variant in (variants if kind == "cuda" else ["fp32"]):
            r = measure(device, crop, args.batch_size or d["batch"], args.steps or d["steps"],
                        args.warmup or d["warmup"], args.init_channels, args.num_cells, variant)
            r.update({"command": command, "date": now.isoformat(timespec="seconds"), "torch": torch.__version__,
                      "host": platform.node()})
            results.append(r)
            stem = out_dir / f"search_throughput-{kind}-{_slug(r['device_name'])}-{now:%Y%m%d}"
            # rewritten after every variant: a run stopped by a time limit keeps what it measured
            atomic_write_text(stem.with_suffix(".json"), json.dumps({"benchmark": "search_throughput",
                                                                     "variants": results}, indent=2) + "\n")
            atomic_write_text(stem.with_suffix(".md"), render_md(results, command, now.strftime("%Y-%m-%d")))
            print(f"{r['device_name']} ({kind}, {variant}): {r['images_per_s']} images/s at {crop[0]}x{crop[1]}, "
                  f"batch {r['batch']} -> {stem}.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
