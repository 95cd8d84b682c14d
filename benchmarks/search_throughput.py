"""Supernet training throughput of ``nas search`` (images/s), on CPU and on a GPU when present.

    python benchmarks/search_throughput.py [--device cpu|cuda|all] [--crop HxW] [--batch-size N]
                                           [--steps N] [--warmup N] [--init-channels C] [--num-cells K]
                                           [--threads N] [--out-dir benchmarks/results]

Each measured step is exactly one step of the search loop (:class:`nas.search.trainer.SearchStep`):
GCN-guided module, Gumbel sample, supernet forward over every candidate op of every edge (paper
space by default: 14 cells, C = 8, dense-connected fusion cell), CE + β·log(LAT), backward, SGD
and Adam updates; bf16 autocast and channels-last on CUDA, as the search runs there. What it does
not include: data loading (one synthetic batch, generated once, is reused) and the LUT lookup
cost (the latency table holds constant numbers; pricing is a 14×5×8 dot product either way).

Writes ``OUT_DIR/search_throughput-<device>-<date>.json`` and ``.md`` per device.
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

DEFAULTS = {"cpu": {"crop": (129, 257), "batch": 4, "steps": 5, "warmup": 2},
            "cuda": {"crop": (513, 1025), "batch": 16, "steps": 20, "warmup": 5}}


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
            init_channels: int, num_cells: int) -> dict:
    from nas.config import SpaceConfig
    from nas.data import make_dataset
    from nas.search.config import SearchConfig
    from nas.search.latency import LatencyTable
    from nas.search.trainer import SearchModel, SearchStep, make_optimizers, resolve_amp

    defaults = SpaceConfig()
    space = SpaceConfig(num_cells=num_cells, init_channels=init_channels,
                        reduction_cells=defaults.reduction_cells if num_cells == 14 else (1, max(2, num_cells // 2)),
                        fusion_inputs=defaults.fusion_inputs if num_cells == 14 else (0, 1, num_cells - 1),
                        num_classes=19)
    cfg = SearchConfig(space=space, batch_size=batch, epochs=1)
    torch.manual_seed(0)
    model = SearchModel(cfg, torch.Generator().manual_seed(1)).to(device)
    amp = resolve_amp(cfg, device)
    channels_last = device.type == "cuda"
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


def render_md(r: dict, command: str, when: str) -> str:
    return "\n".join([
        f"# Search supernet training throughput — {r['device_name']} ({r['device']})",
        "",
        f"Date: {when}. torch {torch.__version__}. Command: `{command}`",
        "",
        "| space | crop | batch | AMP | channels-last | threads | median step (s) | images/s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['space']['num_cells']} cells, C={r['space']['init_channels']}, fusion {r['space']['fusion']} "
        f"({r['supernet_params_m']} M params) | {r['crop'][0]}x{r['crop'][1]} | {r['batch']} | {r['amp']} | "
        f"{r['channels_last']} | {r['threads'] if r['threads'] is not None else '-'} | {r['median_step_s']} | "
        f"**{r['images_per_s']}** |",
        "",
        f"Per-step times (s, after {r['warmup']} warm-up steps): {', '.join(map(str, r['step_s']))}. "
        f"Host: {r.get('host')} ({r['cpu_count']} logical CPUs, possibly shared with other jobs).",
        "One step = GGM + Gumbel sample + supernet forward/backward over every candidate op + SGD and Adam "
        "updates (`nas.search.trainer.SearchStep`); data loading excluded (one synthetic batch reused).",
        "" if r["max_memory_gib"] is None else f"Peak GPU memory: {r['max_memory_gib']} GiB.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="all", help="cpu, cuda or all (cpu, plus cuda when available)")
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
    for kind in kinds:
        d = DEFAULTS[kind]
        crop = tuple(int(x) for x in args.crop.lower().split("x")) if args.crop else d["crop"]
        device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
        r = measure(device, crop, args.batch_size or d["batch"], args.steps or d["steps"], args.warmup or d["warmup"],
                    args.init_channels, args.num_cells)
        r.update({"command": command, "date": now.isoformat(timespec="seconds"), "torch": torch.__version__,
                  "host": platform.node()})
        stem = out_dir / f"search_throughput-{kind}-{_slug(r['device_name'])}-{now:%Y%m%d}"
        stem.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
        stem.with_suffix(".md").write_text(render_md(r, command, now.strftime("%Y-%m-%d")))
        print(f"{r['device_name']} ({kind}): {r['images_per_s']} images/s at {crop[0]}x{crop[1]}, batch {r['batch']} "
              f"-> {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
