"""``latbench build-lut``: time every op of a search space and write a Parquet LUT."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from latbench.commands.build_options import build_lut_options
from latbench.errors import UserError


def parse_space_opts(items: tuple[str, ...], option: str = "--space-opt",
                     example: str = "init_channels=16") -> dict[str, Any]:
    """``("init_channels=16", "fusion_inputs=[0,7,13]", "mode=fast")`` -> a config dict (values
    parsed as JSON when they are JSON, else kept as strings)."""
    cfg: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"malformed {option} {item!r}: expected KEY=VALUE, e.g. {example}")
        try:
            cfg[key] = json.loads(value)
        except ValueError:
            cfg[key] = value
    return cfg


def _load_space(name: str, cfg: dict[str, Any]):
    from latbench.space import load_space

    try:
        return load_space(name, cfg)
    except UserError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"bad configuration for search space {name!r}: {msg}") from None


@click.command("build-lut")
@build_lut_options
def build_lut(name, device, backend, resolutions, batch, precision, output, max_noise, max_time, min_time,
              warmup, cold_cache, threads, input_sets, const_inputs, space_name, space_opts, backend_opts, retry_failed, retry_flagged, accept_load,
              shard, canary_every, canary_tolerance, force, no_progress, as_json) -> None:
    """Time every candidate op at every position (and every fixed part) of a search space and
    write a LUT. Resumable: rerun the same command after a crash to time only what is missing.
    Prints the one-off preparation time of each entry where a backend has one (torch.compile's
    compilation, a TensorRT engine build)."""
    from latbench.build.builder import build_lut as run_build, raise_if_mostly_failed
    from latbench.device import resolve_device
    from latbench.files import check_writable
    from latbench.space import parse_resolution
    from latbench.timing import TimingConfig, available_backends, default_backend, get_backend

    res = []
    for r in resolutions:
        hw = parse_resolution(r)
        if hw not in res:
            res.append(hw)
    world = os.environ.get("WORLD_SIZE", "1")
    if not shard and world not in ("", "1"):
        raise UserError(f"this process is one of {world} torchrun ranks: add --shard so that they share the build "
                        "(without it every rank would time everything into one output)")
    if shard:
        dev = "cpu" if str(device or "").strip().lower() == "cpu" or not torch_cuda_available() else "cuda"
    else:
        dev = resolve_device(device)
    backend = backend or default_backend(dev)
    if backend not in available_backends():
        raise UserError(f"unknown timing backend {backend!r}; available: {', '.join(available_backends())}")
    if not name.strip() or any(ch in name for ch in "/\\") and output is None:
        raise UserError(f"--gpu {name!r} cannot name a file; give --output")
    out = check_writable(output or f"luts/{name}.parquet")
    if threads is None and not str(dev).startswith("cuda"):  # leave a core for everything else (§5.11)
        from latbench.timing.load import default_cpu_threads

        threads = default_cpu_threads()
    on_gpu = str(dev).startswith("cuda")
    if input_sets is None:
        input_sets = 1 if on_gpu else TimingConfig.input_sets
    if const_inputs is None:
        const_inputs = not on_gpu
    config = TimingConfig(warmup_s=warmup, min_time_s=min_time, max_time_s=max_time, max_noise=max_noise,
                          cold_cache=cold_cache, threads=threads, input_sets=input_sets, const_inputs=const_inputs)
    extra = parse_space_opts(backend_opts, "--backend-opt", "mode=max-autotune")
    warn = lambda msg: click.echo(f"warning: {msg}", err=True)  # noqa: E731
    if shard:
        if retry_flagged:
            raise UserError("--retry-flagged is not available with --shard yet; rerun the build without --shard")
        from latbench.build.shard import sharded_build

        space = _load_space(space_name, parse_space_opts(space_opts))
        lut = sharded_build(space, res, backend, extra, config, out, name, batch=batch, precision=precision,
                            device=device, progress=not no_progress and not as_json, retry_failed=retry_failed,
                            warn=warn, on_timed=report_preparation)
        if lut is None:  # not rank 0: rank 0 reports
            return
        dev = str((lut.meta.get("device") or {}).get("type") or dev)
        _report(lut, out, name, dev, (lut.meta.get("device") or {}).get("name"), backend, precision, batch, res, as_json)
        raise_if_mostly_failed(lut, str(out))
        return
    try:
        backend_obj = get_backend(backend, device=dev, precision=precision, threads=threads, **extra)
    except TypeError as exc:
        raise UserError(f"backend {backend!r} does not take the option(s) {', '.join(extra) or '(none)'}: {exc}") from None
    space = _load_space(space_name, parse_space_opts(space_opts))

    info = _device_named(name, dev, force)
    from latbench.timing.canary import CanaryConfig

    canary = CanaryConfig(every_s=canary_every, tolerance=canary_tolerance) if canary_every > 0 else None
    lut = run_build(space, res, backend_obj, config, out, name, batch=batch, precision=precision, device=dev,
                    progress=not no_progress and not as_json, retry_failed=retry_failed, warn=warn,
                    checks=_checks(accept_load), retry_flagged=retry_flagged,
                    on_timed=report_preparation, canary=canary)
    _report(lut, out, name, dev, info.get("name"), backend, precision, batch, res, as_json)
    raise_if_mostly_failed(lut, str(out))


def _checks(accept_load: bool) -> Any:
    """The plausibility checks build-lut applies: all of them, or (--accept-load) all but contention."""
    from latbench.timing.plausibility import PlausibilityConfig

    return PlausibilityConfig(accept_load=accept_load)


def _device_named(name: str, dev: str, force: bool) -> dict[str, Any]:
    """The facts of ``dev``, after refusing a --gpu name that contradicts them (as nas fps refuses a
    report name that contradicts the device); with --force, a warning instead."""
    from latbench.device import describe_device, name_matches

    info = describe_device(dev)
    if not name_matches(name, info):
        if not force:
            raise UserError(f"--gpu {name!r} does not describe the device that would time the ops ({dev}: "
                            f"{info.get('name')}); name the LUT after it (e.g. --gpu cpu on a CPU, --gpu h100 on an "
                            "H100) or add --force")
        click.echo(f"warning: --gpu {name!r} does not match the device actually used ({dev}: {info.get('name')}); "
                   "the LUT metadata records the real device", err=True)
    return info


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


#: Per-entry one-off costs a backend reports in a measurement's ``extra`` (printed, never timed).
PREPARATION_FACTS = (("compile_s", "compiled"), ("engine_build_s", "built a TensorRT engine"))


def report_preparation(key: str, m: Any) -> None:
    """Print the one-off preparation time of an entry (compilation, engine build) when the backend
    reports one: time a LUT build spends outside the samples."""
    extra = getattr(m, "extra", None) or {}
    parts = []
    for fact, what in PREPARATION_FACTS:
        v = extra.get(fact)
        if isinstance(v, (int, float)) and v > 0:
            parts.append(f"{what} in {v:.2f} s")
    if parts:
        graphs = f", {extra['compiled_graphs']} graph(s)" if "compiled_graphs" in extra else ""
        click.echo(f"{key}: {', '.join(parts)}{graphs}", err=True)


def _report(lut, out, name, dev, device_name, backend, precision, batch, res, as_json) -> None:
    from latbench.space import format_resolution

    counts = lut.counts()
    summary = {
        "output": str(out), "name": name, "device": dev, "device_name": device_name, "backend": backend,
        "precision": precision, "batch": batch, "resolutions": [format_resolution(r) for r in res],
        **counts, **{k: v for k, v in lut.meta.get("build", {}).items() if k not in ("rows", "distinct_timings")},
    }
    if "shard" in lut.meta:
        summary["world_size"] = lut.meta["shard"]["world_size"]
    from latbench.lut.flags import flagged_rows

    flagged = flagged_rows(lut)
    summary["flagged"] = int(flagged["key"].nunique()) if len(flagged) else 0
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        b = lut.meta.get("build", {})
        ranks = f" on {lut.meta['shard']['world_size']} ranks" if "shard" in lut.meta else ""
        click.echo(f"wrote {out}: {counts['rows']} rows, {counts['distinct_timings']} distinct timings "
                   f"({b.get('timed', 0)} timed now{ranks}, {b.get('reused', 0)} reused), {counts['ok']} ok, "
                   f"{counts['failed']} failed, {counts['analytic']} analytic, {b.get('elapsed_s', 0):.1f} s")
    if summary["flagged"]:
        click.echo(f"warning: {summary['flagged']} distinct timing(s) flagged (timed under contention or physically "
                   f"implausible; latbench show {out} lists them): fit and nas search refuse them until "
                   "rerun with --retry-flagged on a quieter machine", err=True)
    if counts["failed"]:
        sys.stderr.flush()
