"""``nas derive CHECKPOINT``: re-derive the genotype a search checkpoint stands for."""

from __future__ import annotations

import click


@click.command("derive")
@click.argument("checkpoint", metavar="CHECKPOINT")
@click.option("--out", default=None, metavar="PATH", help="Where to write the genotype. [default: genotype.json next to the run folder of CHECKPOINT]")
@click.option("--plots", "plots_dir", default=None, metavar="DIR", help="Also draw the derived cells and fusion cell (architecture.png, fusion_cell.png) here.")
def derive(checkpoint: str, out: str | None, plots_dir: str | None) -> None:
    """Derive a genotype from a search checkpoint: per edge, the arg-max of the GCN-updated α
    (zero removes the edge). Needs no LUT: the checkpoint holds the latency table."""
    import os
    from pathlib import Path

    from latbench.errors import UserError
    from latbench.files import check_outputs
    from nas.genotype import Genotype
    from nas.search.derive import genotype_from_checkpoint

    if out is None:
        ck = Path(checkpoint).resolve()
        run = ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent
        out = os.fspath(run / "genotype.json")
    check_outputs(files={"--out": out}, folders={"--plots": plots_dir})
    if Path(out).is_file():  # re-deriving replaces a genotype, never another kind of file
        try:
            Genotype.load(out)
        except UserError:
            raise UserError(f"--out {out} exists and is not a genotype file; refusing to overwrite it") from None
    geno = genotype_from_checkpoint(checkpoint)
    path = geno.save(out)
    lat, empty = geno.meta.get("expected_latency") or {}, geno.meta.get("empty_nodes") or []
    click.echo(f"wrote {path}: {lat['latency_us']:.1f} µs predicted by the LUT at {lat['resolution']}"
               + (f"; nodes with only zero inputs: {', '.join(empty)}" if empty else ""))
    if plots_dir:
        from nas.search.plots import draw_architecture, draw_fusion_cell

        draw_architecture(Path(plots_dir) / "architecture.png", geno.arch, geno.config)
        if geno.config.fusion == "dcfc":
            draw_fusion_cell(Path(plots_dir) / "fusion_cell.png", geno.arch, geno.config)
        click.echo(f"plots: {plots_dir}")
