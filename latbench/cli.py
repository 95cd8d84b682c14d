"""``latbench`` command line: one module per command under :mod:`latbench.commands`."""

from __future__ import annotations

import click

from latbench import __version__
from latbench.lazycli import LazyGroup, run_cli

COMMANDS = {
    "build-lut": "latbench.commands.build:build_lut",
    "show": "latbench.commands.show:show",
    "compare-lut": "latbench.commands.compare:compare_lut",
    "merge-lut": "latbench.commands.merge:merge_lut",
    "validate-lut": "latbench.commands.validate:validate_lut",
    "fit": "latbench.commands.fit:fit",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="latbench")
def cli() -> None:
    """Hardware latency profiling and lookup tables (LUTs) for neural-architecture search spaces.

    Typical use: `latbench build-lut --gpu h100` times every candidate op of the search space at
    every position and writes luts/h100.parquet; `latbench show`, `compare-lut`, `merge-lut` and
    `validate-lut` inspect, compare, combine and check LUTs;
    `latbench fit` fits the latency model that turns a LUT into whole-network predictions.
    """


def main() -> None:
    run_cli(cli)


if __name__ == "__main__":
    main()
