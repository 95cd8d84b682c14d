"""``nas search``: LGCNet's latency-constrained architecture search, priced by a latbench LUT."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click
from click.core import ParameterSource

from latbench.errors import UserError

DATASET_CLASSES = {"cityscapes": 19, "camvid": 11}
DATASETS = ("cityscapes", "camvid", "synthetic")
# options a resumed search may set freely (they do not change what is computed); any other option
# given with --resume must repeat the saved configuration's value
RUNTIME_OPTIONS = {"out", "resume", "workers", "device", "no_progress", "no_plots", "stop_after_steps"}
# search-space options: not given -> the LUT's value
SPACE_OPTIONS = {"init_channels": "init_channels", "num_cells": "num_cells", "reduction_cells": "reduction_cells",
                 "fusion": "fusion", "fusion_inputs": "fusion_inputs", "fusion_channels": "fusion_channels",
                 "head_channels": "head_channels", "num_classes": "num_classes"}


def _int_list(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in str(text).replace(" ", "").split(",") if x != "")
    except ValueError:
        raise UserError(f"malformed {what} {text!r}: expected comma-separated integers, e.g. 0,7,13") from None


def _float_pair(text: str, what: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"malformed {what} {text!r}: expected two comma-separated numbers, e.g. 0.5,0.999") from None
    return a, b


def _choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if value is not None and value not in allowed:
        raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


def _lut_space_config(lut: Any, path: str) -> dict[str, Any]:
    """The configuration of the LGCNet space ``lut`` (read from ``path``) was built for."""
    from latbench.lut.coverage import space_identity
    from nas.space import NAME

    space = space_identity(lut)
    if space["name"] != NAME:
        raise UserError(f"LUT {path!r} was built for search space {space['name']!r}, not {NAME!r}")
    return space["config"]


def _saved_values(cfg) -> dict[str, Any]:
    """Option name -> the value a saved search configuration has for it (as the CLI spells it)."""
    from latbench.space import format_resolution

    sp, o, g, t, data, lut = cfg.space, cfg.optim, cfg.ggm, cfg.temperature, cfg.data, cfg.lut
    res = lambda r: None if r is None else format_resolution(r)  # noqa: E731
    return {
        "lut": lut.path, "dataset": data.dataset, "data_root": data.root, "resolution": res(lut.resolution),
        "crop": res(data.crop), "beta": cfg.beta, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "seed": cfg.seed, "cells": cfg.arch.cells, "between": g.mode, "graph": g.graph, "gcn_dim": g.dim,
        "gamma": g.gamma, "ggm_chain": g.chain, "op_graph_norm": g.op_graph_norm, "ggm_bias": g.bias, "fusion": sp.fusion,
        "fusion_inputs": ",".join(map(str, sp.fusion_inputs)), "lr_w": o.lr_w, "lr_w_min": o.lr_w_min,
        "momentum": o.momentum, "wd_w": o.wd_w, "lr_a": o.lr_a, "adam_betas": ",".join(f"{b:g}" for b in o.betas),
        "wd_a": o.wd_a, "grad_clip": o.grad_clip or 0.0, "arch_warmup_epochs": o.arch_warmup_epochs,
        "tau_start": t.start, "tau_end": t.end, "tau_schedule": t.kind, "init_channels": sp.init_channels,
        "num_cells": sp.num_cells, "reduction_cells": ",".join(map(str, sp.reduction_cells)),
        "fusion_channels": sp.fusion_channels, "head_channels": sp.head_channels, "num_classes": sp.num_classes,
        "length": data.length, "lut_batch": lut.batch, "backend": lut.backend, "precision": lut.precision,
        "no_calibration": not lut.use_calibration, "latency_model": lut.latency_model,
        "latency_scope": lut.latency_scope, "amp": cfg.amp, "channels_last": cfg.channels_last,
        "checkpoint_every": cfg.checkpoint_every,
    }


def check_resume_options(p: dict[str, Any], given: set[str], saved) -> None:
    """A resumed search keeps its saved configuration: options given again must repeat it."""
    from latbench.space import format_resolution, parse_resolution

    have = _saved_values(saved)
    for name in sorted(given - RUNTIME_OPTIONS):
        new, old = p[name], have.get(name)
        if name == "lut":
            new = os.path.abspath(new)
        elif name in ("resolution", "crop"):
            new = format_resolution(parse_resolution(new))
        elif name in ("fusion_inputs", "reduction_cells"):
            new = ",".join(map(str, _int_list(new, "--" + name.replace("_", "-")) or ()))
        elif name == "adam_betas":
            new = ",".join(f"{b:g}" for b in _float_pair(new, "--adam-betas"))
        if new != old:
            raise UserError(f"--resume continues the search with its saved configuration, which has "
                            f"--{name.replace('_', '-')} {old}; drop --{name.replace('_', '-')} {p[name]}")


def build_config(p: dict[str, Any], given: set[str]):
    """``(config, lut)``: the :class:`SearchConfig` of a fresh search from the parsed options, and
    the LUT at ``--lut`` (read once: its space configures the search, its rows price it)."""
    from latbench.space import parse_resolution
    from nas.config import SpaceConfig
    from nas.search.arch_params import ArchConfig
    from nas.search.config import DataConfig, LUTConfig, OptimConfig, SearchConfig
    from nas.search.ggm import GGMConfig
    from nas.search.temperature import TemperatureSchedule

    if not p["lut"]:
        raise UserError("--lut PATH is required (a LUT built by `latbench build-lut` for this search space)")
    dataset = _choice(p["dataset"], DATASETS, "data set")
    resolution = parse_resolution(p["resolution"]) if p["resolution"] else None
    crop = parse_resolution(p["crop"]) if p["crop"] else None
    if dataset != "synthetic" and not p["data_root"]:
        raise UserError(f"the {dataset} data set needs --data-root DIR")
    if dataset != "synthetic" and p["data_root"] and not os.path.isdir(p["data_root"]):
        raise UserError(f"--data-root {p['data_root']} does not exist or is not a directory")

    # the space: the LUT's configuration, overridden by options given explicitly
    from latbench.lut.table import read_lut
    from nas.lutfile import require_lut_file

    require_lut_file(p["lut"], [p["resolution"]] if p["resolution"] else [], p["device"])
    lut = read_lut(p["lut"])
    space = _lut_space_config(lut, p["lut"])
    for opt, key in SPACE_OPTIONS.items():
        if opt in given and p[opt] is not None:
            space[key] = p[opt]
    if "reduction_cells" in given:
        space["reduction_cells"] = _int_list(p["reduction_cells"], "--reduction-cells")
    if "fusion_inputs" in given:
        space["fusion_inputs"] = _int_list(p["fusion_inputs"], "--fusion-inputs")
    if "fusion" in given:
        from nas.config import FUSION_MODES

        _choice(p["fusion"], tuple(FUSION_MODES), "fusion mode")
    if dataset in DATASET_CLASSES:
        if "num_classes" in given and p["num_classes"] != DATASET_CLASSES[dataset]:
            raise UserError(f"{dataset} has {DATASET_CLASSES[dataset]} classes; --num-classes applies to synthetic data")
        space["num_classes"] = DATASET_CLASSES[dataset]
    space_cfg = SpaceConfig.from_dict(space)

    cells = _choice(p["cells"], ("independent", "shared"), "--cells")
    between = _choice(p["between"], ("none", "fc", "gcn"), "--between") or ("gcn" if cells == "independent" else "none")
    ggm = GGMConfig(mode=between, graph=_choice(p["graph"], ("edge", "operation"), "--graph"), dim=p["gcn_dim"],
                    gamma=p["gamma"], chain=p["ggm_chain"], op_graph_norm=p["op_graph_norm"],
                    bias=p["ggm_bias"])
    optim = OptimConfig(lr_w=p["lr_w"], lr_w_min=p["lr_w_min"], momentum=p["momentum"], wd_w=p["wd_w"],
                        lr_a=p["lr_a"], betas=_float_pair(p["adam_betas"], "--adam-betas"), wd_a=p["wd_a"],
                        grad_clip=p["grad_clip"] or None, arch_warmup_epochs=p["arch_warmup_epochs"])
    config = SearchConfig(
        space=space_cfg,
        lut=LUTConfig(path=os.path.abspath(p["lut"]), resolution=resolution, batch=p["lut_batch"],
                      backend=p["backend"], precision=p["precision"], use_calibration=not p["no_calibration"],
                      latency_model=p["latency_model"], latency_scope=p["latency_scope"]),
        arch=ArchConfig(cells=cells),
        ggm=ggm,
        optim=optim,
        temperature=TemperatureSchedule(p["tau_start"], p["tau_end"], p["tau_schedule"]),
        data=DataConfig(dataset=dataset, root=p["data_root"], crop=crop, length=p["length"]),
        beta=p["beta"], epochs=p["epochs"], batch_size=p["batch_size"], seed=p["seed"], amp=p["amp"],
        channels_last=p["channels_last"], checkpoint_every=p["checkpoint_every"])
    return config, lut


#: ``nas search``'s options, in ``--help`` order (the command is made from them).
SEARCH_OPTIONS = [
    click.option("--lut", default=None, metavar="PATH", help="latbench LUT pricing the search (required unless --resume)."),
    click.option("--dataset", default="cityscapes", show_default=True, help="cityscapes | camvid | synthetic."),
    click.option("--data-root", default=None, metavar="DIR", help="Root of the real data set."),
    click.option("--resolution", default=None, metavar="HxW", help="LUT resolution pricing the search (the deployed input size). [default: the LUT's only resolution]"),
    click.option("--crop", default=None, metavar="HxW", help="Training crop. [default: --resolution]"),
    click.option("--beta", default=0.005, show_default=True, type=click.FloatRange(min=0), help="β of CE + β·log(LAT)."),
    click.option("--epochs", default=50, show_default=True, type=click.IntRange(min=1)),
    click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Global batch (split over torchrun processes)."),
    click.option("--out", default=None, metavar="DIR", help="Run folder. [default: runs/search-DATE-TIME]"),
    click.option("--resume", is_flag=True, help="Continue the search in --out from its last checkpoint, exactly."),
    click.option("--seed", default=0, show_default=True, type=int),
    # ablations
    click.option("--cells", default="independent", show_default=True, help="independent (14 × α) | shared (normal + reduction α)."),
    click.option("--between", default=None, help="Between cells: gcn | fc | none. [default: gcn; none with --cells shared]"),
    click.option("--graph", default="edge", show_default=True, help="GCN reasoning graph: edge (similarity) | operation (identity)."),
    click.option("--gcn-dim", default=64, show_default=True, type=click.IntRange(min=1), help="d of Φ1/Φ2 and W."),
    click.option("--gamma", default=0.5, show_default=True, type=float, help="γ of eq. 5."),
    click.option("--ggm-chain", default="raw", show_default=True, type=click.Choice(["raw", "updated"]), hidden=True),
    click.option("--op-graph-norm", default="softmax", show_default=True, type=click.Choice(["softmax", "none"]), hidden=True),
    click.option("--ggm-bias/--no-ggm-bias", default=False, show_default=True, hidden=True, help="Biases in Φ1/Φ2."),
    click.option("--fusion", default=None, help="dcfc | aspp | ppm | none | mscell (Table X). [default: the LUT's]"),
    click.option("--fusion-inputs", default=None, metavar="I,J,K", help="Cells feeding the fusion cell. [default: the LUT's, 0,7,13]"),
    # optimisation
    click.option("--lr-w", default=0.025, show_default=True, type=float, help="Weights: SGD initial lr (cosine)."),
    click.option("--lr-w-min", default=0.001, show_default=True, type=float, help="Weights: final lr."),
    click.option("--momentum", default=0.9, show_default=True, type=float),
    click.option("--wd-w", default=1e-3, show_default=True, type=float, help="Weights: weight decay."),
    click.option("--lr-a", default=1e-3, show_default=True, type=float, help="α (and GGM): Adam lr."),
    click.option("--adam-betas", default="0.5,0.999", show_default=True, help="α: Adam betas."),
    click.option("--wd-a", default=1e-4, show_default=True, type=float, help="α: weight decay."),
    click.option("--grad-clip", default=5.0, show_default=True, type=click.FloatRange(min=0), help="Weights' gradient-norm clip (0: off)."),
    click.option("--arch-warmup-epochs", default=0, show_default=True, type=click.IntRange(min=0), help="Epochs before α starts to move."),
    click.option("--tau-start", default=1.0, show_default=True, type=float, help="Gumbel-softmax λ at the first step."),
    click.option("--tau-end", default=0.03, show_default=True, type=float, help="λ at the last step."),
    click.option("--tau-schedule", default="exp", show_default=True, type=click.Choice(["exp", "linear", "cosine"])),
    # space / LUT
    click.option("--init-channels", default=None, type=click.IntRange(min=1), help="Initial channels. [default: the LUT's, 8]"),
    click.option("--num-cells", default=None, type=click.IntRange(min=1), hidden=True),
    click.option("--reduction-cells", default=None, hidden=True),
    click.option("--fusion-channels", default=None, type=click.IntRange(min=1), hidden=True),
    click.option("--head-channels", default=None, type=click.IntRange(min=1), hidden=True),
    click.option("--num-classes", default=None, type=click.IntRange(min=2), help="Classes of the synthetic data. [default: the LUT's]"),
    click.option("--length", default=None, type=click.IntRange(min=1), hidden=True, help="Use only N training items."),
    click.option("--lut-batch", default=1, show_default=True, type=click.IntRange(min=1), help="LUT batch size (latency batch)."),
    click.option("--backend", default=None, help="Require the LUT's rows of this timing backend."),
    click.option("--precision", default=None, help="Require the LUT's rows of this precision."),
    click.option("--no-calibration", is_flag=True, help="Ignore the LUT's legacy affine calibration a·ΣLUT+b (used "
                  "only in the network scope, and only when the LUT has no latency model)."),
    click.option("--latency-model", default="auto", show_default=True, type=click.Choice(["auto", "none", "require"]),
                  help="How LUT rows are priced: auto = by the LUT's latency model for these rows when it has one "
                       "(`latbench fit`), else the raw medians; none = raw medians; require = refuse a LUT without a model."),
    click.option("--latency-scope", default="searched", show_default=True,
                  type=click.Choice(["searched", "cells", "network"]),
                  help="What LAT sums: searched = the edges the search chooses, the 14 cells' and the fusion cell's "
                       "(the paper's eq. 9 over its searched cells; its fusion cell is 'guided by the latency oriented "
                       "loss' too); cells = the 14 cells' edges only (the earlier default); network = the whole "
                       "network's predicted latency (cells, fusion cell, fixed parts, the model's constant)."),
    # running
    click.option("--amp", default="auto", show_default=True, type=click.Choice(["auto", "off", "bf16", "fp16"]), help="Mixed precision (CUDA only; auto = bf16 on GPU, off on CPU)."),
    click.option("--channels-last", default="auto", show_default=True, type=click.Choice(["auto", "on", "off"])),
    click.option("--checkpoint-every", default=0, show_default=True, type=click.IntRange(min=0), help="Also checkpoint every N steps."),
    click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="Data-loader workers per process."),
    click.option("--device", default=None, help="cpu, cuda, cuda:N. [default: cuda:LOCAL_RANK if available]"),
    click.option("--no-progress", is_flag=True),
    click.option("--no-plots", is_flag=True),
    click.option("--stop-after-steps", default=None, type=click.IntRange(min=1), hidden=True),
]


def _search_options(f: Any) -> Any:
    for option in reversed(SEARCH_OPTIONS):
        f = option(f)
    return f


@click.command("search")
@_search_options
@click.pass_context
def search(ctx: click.Context, **p: Any) -> None:
    """Search an LGCNet architecture: Gumbel-softmax supernet + GCN-guided module + fusion cell,
    loss CE + β·log(LAT) with LAT from a latbench LUT (µs). Writes OUT/genotype.json, checkpoints,
    log.jsonl and plots. Multi-GPU / multi-process: run under torchrun."""
    from latbench.files import check_outputs
    from nas.search.config import SearchConfig
    from nas.search.derive import load_checkpoint
    from nas.search.trainer import RunOptions, SearchRun

    given = {name for name in p if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    out = p["out"] or os.path.join("runs", "search-" + time.strftime("%Y%m%d-%H%M%S"))
    check_outputs(folders={"--out": out})
    if p["batch_size"] < 2 and not p["resume"]:
        raise UserError("--batch-size must be at least 2: the supernet's BatchNorm layers (after global "
                        "pooling) need more than one value per channel in training")
    if p["resume"]:
        if not p["out"]:
            raise UserError("--resume needs --out DIR (the run folder to continue)")
        ckpt_path = os.path.join(p["out"], "checkpoints", "last.pt")
        if not os.path.exists(ckpt_path):
            raise UserError(f"--resume: no checkpoint at {ckpt_path}")
        config = SearchConfig.from_dict(load_checkpoint(ckpt_path)["config"])
        check_resume_options(p, given, config)
    table = identity = None
    if not p["resume"]:
        from nas.search.latency import load_latency_table

        config, lut = build_config(p, given)
        table, identity = load_latency_table(config.lut, config.space, lut=lut)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0 and identity and identity.get("latency_notice"):
        click.echo(f"note: {identity['latency_notice']}", err=True)
    progress = not p["no_progress"] and sys.stderr.isatty()
    run = RunOptions(out=out, device=p["device"], workers=p["workers"], progress=progress, resume=p["resume"],
                     stop_after_steps=p["stop_after_steps"], plots=not p["no_plots"],
                     log=(lambda m: click.echo(m, err=True)) if rank0 else (lambda m: None))
    result = SearchRun(config, run, table=table, lut_identity=identity).run()
    if not rank0:
        return
    if not result.finished:
        click.echo(f"stopped at step {result.global_step} (epoch {result.epoch + 1}); checkpoint {result.checkpoint}; "
                   f"continue with: nas search --out {out} --resume")
        return
    last = result.history[-1] if result.history else {}
    click.echo(f"genotype: {result.genotype_path}")
    if last:
        click.echo(f"derived architecture: {last['derived_latency_us']:.1f} µs predicted by the LUT "
                   f"(final CE {last['ce']:.4f})")
    click.echo(f"log: {os.path.join(out, 'log.jsonl')}; plots: {os.path.join(out, 'plots')}")
