"""``latbench build-lut``'s options, defined once: the command (:mod:`latbench.commands.build`) is
made from them, and :func:`latbench.lut.coverage.rebuild_command` spells the command that fills a
LUT from them. The timing options' defaults are :class:`~latbench.timing.TimingConfig`'s. Nothing
here imports the build machinery, so the LUT layer can read the options."""

from __future__ import annotations

from typing import Any, Callable

import click

from latbench.timing.config import TimingConfig

COMMAND = "build-lut"
#: The protocol build-lut times with when no timing option is given.
DEFAULT_TIMING = TimingConfig()


def build_lut_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Apply every ``build-lut`` option to ``f`` (in the order ``--help`` lists them)."""
    for option in reversed(OPTIONS):
        f = option(f)
    return f


def build_lut_params() -> list[click.Parameter]:
    """``build-lut``'s click parameters, in order (names and defaults as the command has them)."""
    return click.command(COMMAND)(build_lut_options(lambda **kw: None)).params


OPTIONS = [
    click.option("--gpu", "name", required=True, help="Name of the LUT (the hardware), e.g. h100; default output luts/NAME.parquet."),
    click.option("--device", default=None, help="cuda:N or cpu. [default: cuda:0 if a GPU is available, else cpu]"),
    click.option("--backend", default=None, help="Timing backend: cudagraph, eager, cpu or another registered one. [default: cudagraph on a GPU, cpu on the CPU]"),
    click.option("--resolution", "resolutions", multiple=True, default=("769x1537",), show_default=True,
                  help="Network input resolution HxW; repeat for several (one LUT holds all)."),
    click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1)),
    click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "tf32", "fp16"]),
                  help="fp32: strict IEEE fp32 math (TF32 off for cuDNN, cuBLAS, TensorRT, ONNX Runtime); "
                       "tf32: fp32 tensors with TF32 math allowed (NVIDIA GPUs); fp16: fp16 tensors."),
    click.option("--output", default=None, help="Output Parquet path. [default: luts/NAME.parquet]"),
    click.option("--max-noise", default=DEFAULT_TIMING.max_noise, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="Stop sampling an entry when the relative noise of its median is below this."),
    click.option("--max-time", default=DEFAULT_TIMING.max_time_s, show_default=True,
                  type=click.FloatRange(min=0, min_open=True),
                  help=f"Per-entry cap (seconds) on sampling; the {DEFAULT_TIMING.min_time_s:g} s minimum is clipped "
                       "to it."),
    click.option("--min-time", default=DEFAULT_TIMING.min_time_s, show_default=True, type=click.FloatRange(min=0),
                  help="Minimum sampling time per entry (seconds)."),
    click.option("--warmup", default=DEFAULT_TIMING.warmup_s, show_default=True, type=click.FloatRange(min=0), help="Warm-up per entry (seconds)."),
    click.option("--cold-cache", is_flag=True, help="Flush L2 before every sample (cold numbers); default warm."),
    click.option("--threads", default=None, type=click.IntRange(min=1),
                  help="CPU threads that time each op on the CPU (cpu, ort, compile backends). [default: the cores this "
                       "process may use less one, and 1 on a machine of 2 cores or fewer: a timing thread that shares "
                       "its core with other work is preempted, and an OpenMP region waits for it]"),
    click.option("--input-sets", default=None, type=click.IntRange(min=1),
                  help="Random input sets a CPU timer rotates through, call by call, so that an op whose branches "
                       "depend on the data (eager max-pool) is not timed on data the branch predictor has "
                       "memorised (it then runs 2.3-3.0x faster than inside a network). 1: the same inputs every "
                       f"call. [default: {DEFAULT_TIMING.input_sets} on the CPU; 1 on a GPU, whose timers replay fixed buffers]"),
    click.option("--const-inputs/--no-const-inputs", default=None,
                  help="Also time each op on an all-zero input (LUT column const_us): an eager backend runs the ops "
                       "downstream of all-zero cells on a constant, and an op whose branches depend on the data "
                       "(eager max-pool) runs faster there; prices of such networks use it. [default: on on the CPU, "
                       "off on a GPU]"),
    click.option("--space", "space_name", default="lgcnet", show_default=True, help="Registered search space (or module:Class)."),
    click.option("--space-opt", "space_opts", multiple=True, metavar="KEY=VALUE",
                  help="Search-space configuration; values parsed as JSON when possible. Repeatable."),
    click.option("--backend-opt", "backend_opts", multiple=True, metavar="KEY=VALUE",
                  help="Backend setting, recorded in the LUT (e.g. mode=max-autotune for compile, "
                       "graph_optimization=basic for ort, optimization_level=5 for trt). Repeatable."),
    click.option("--retry-failed", is_flag=True, help="Re-time entries that failed in an earlier run of this build."),
    click.option("--retry-flagged", is_flag=True,
                  help="Re-time entries flagged in an earlier run (timed while other processes held the cores, or "
                       "physically implausible for the op: see the flag column, latbench show); fit and nas search "
                       "refuse a LUT whose rows they need are flagged."),
    click.option("--accept-load", is_flag=True,
                  help="Record the load around each timing but do not flag timings taken while other processes "
                       "held the cores (the physical plausibility checks still apply). For demos and functional "
                       "tests on a busy machine; the LUT's metadata says the load was accepted, so a LUT meant "
                       "for a search or a fit should be built without it on a quiet machine."),
    click.option("--shard", is_flag=True,
                  help="One rank of a build sharded over this machine's GPUs: start it with torchrun "
                       "(torchrun --standalone --nproc_per_node N -m latbench.cli build-lut --shard ...); each rank "
                       "times its share on cuda:LOCAL_RANK, rank 0 merges one resumable LUT."),
    click.option("--canary-every", default=5.0, show_default=True, type=click.FloatRange(min=0),
                  help="Re-time one fixed op (the canary) every this many seconds; when it drifts beyond "
                       "--canary-tolerance (a slow episode, a clock change NVML does not report), the entries timed "
                       "since its last good reading are timed again and the drift is recorded in the LUT. 0: off."),
    click.option("--canary-tolerance", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="Relative drift of the canary that counts as a slow episode."),
    click.option("--force", is_flag=True,
                  help="Build even when --gpu does not describe the device that times the ops (the LUT's metadata "
                       "records the real device either way)."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
]
