"""``nas`` command line: one module per command under :mod:`nas.commands`."""

from __future__ import annotations

import click

from latbench.lazycli import LazyGroup, run_cli
from nas import __version__

COMMANDS = {
    "search": "nas.commands.search:search",
    "derive": "nas.commands.derive:derive",
    "sample": "nas.commands.sample:sample",
    "fps": "nas.commands.fps:fps",
    "report": "nas.commands.report:report",
    "pretrain": "nas.commands.pretrain:pretrain",
    "train": "nas.commands.train:train",
    "eval": "nas.commands.evaluate:evaluate",
    "predict": "nas.commands.predict:predict",
    "demo": "nas.commands.demo:demo",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nas")
def cli() -> None:
    """LGCNet: latency-constrained architecture search for real-time semantic segmentation.

    Typical use: `nas search --lut luts/h100.parquet` searches an architecture priced by a latbench
    LUT and writes genotype.json; `nas fps` measures it end to end; `nas train` / `nas eval` train
    it and measure mIoU; `nas report` gathers FPS and mIoU into one table.
    """


def main() -> None:
    run_cli(cli)


if __name__ == "__main__":
    main()
