"""``latbench merge-lut``: combine LUTs built in pieces into one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import click

from latbench.errors import UserError


@click.command("merge-lut")
@click.argument("output", metavar="OUT.parquet")
@click.argument("inputs", nargs=-1, metavar="IN1.parquet IN2.parquet [...]")
@click.option("--force", is_flag=True,
              help="Merge even when the sources' provenance disagrees (device, backend, precision, batch, "
                   "cache, protocol, space); every source's provenance is recorded in the output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def merge_lut(output: str, inputs: Sequence[str], force: bool, as_json: bool) -> None:
    """Combine LUTs built in pieces (different resolutions, days or GPUs of the same model) into
    OUT.parquet.

    Sources must agree on device model, backend, precision, batch, cache state, measurement
    protocol and search space, or the merge is refused (unless --force). Rows present in several
    sources (same position, op, resolution, backend, precision, batch) keep one: a successful
    timing over a failure, then unthrottled, more samples, lower noise, earlier source. Every
    input's latency model whose scope the merged LUT still covers is kept (one per scope and
    family of networks, the earliest input's); the others are named with why they were dropped.
    """
    from latbench.files import FileLock, check_writable
    from latbench.lut.table import read_lut, write_lut
    from latbench.lut.merge import merge_luts, output_lock

    if len(inputs) < 2:
        raise UserError(f"merge-lut needs at least two input LUTs, got {len(inputs)}: "
                        "latbench merge-lut OUT.parquet IN1.parquet IN2.parquet [...]")
    out = check_writable(output)
    luts = [read_lut(p) for p in inputs]
    labels = list(inputs)
    result = merge_luts(luts, labels, force=force)
    warn = (lambda msg: click.echo(f"warning: {msg}", err=True))
    with FileLock(output_lock(out), purpose="a LUT build or merge", on_stale=warn):
        write_lut(result.lut, out)
    if as_json:
        d = result.to_dict()
        d["output"] = str(out)
        click.echo(json.dumps(d, indent=1, default=str))
        return
    for c in result.conflicts:
        warn(f"--force: {c.describe(labels)}")
    for d in result.models_dropped:
        warn(f"dropped the latency model of {d}")
    res = ", ".join(f"{h}x{w}" for h, w in result.lut.resolutions())
    click.echo(f"merged {len(inputs)} LUTs ({result.rows_in} rows) into {Path(out)}: {result.rows_out} rows, "
               f"resolutions {res}; {result.duplicates_dropped} duplicate row(s) dropped"
               + (f" ({result.duplicates_disagreeing} with medians more than 5 % apart)"
                  if result.duplicates_disagreeing else ""))
    if result.models_kept:
        click.echo(f"kept {len(result.models_kept)} latency model(s): {'; '.join(result.models_kept)}")
