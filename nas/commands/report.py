"""``nas report``: FPS reports (and mIoU results) -> a Table IV-style Markdown table and a PNG."""

from __future__ import annotations

import click


@click.command("report")
@click.option("--reports", "reports_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder holding fps/*.json (from nas fps) and miou/*.json (from nas eval).")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Write the Markdown table here (default: print it).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG of FPS against mIoU (the paper's Fig. 1).")
def report(reports_dir, out_path, plot_path) -> None:
    """Gather every FPS record (latest per network, device, backend, precision, batch and resolution)
    with the network's mIoU where one was recorded, into a Markdown table and optionally a plot."""
    from latbench.errors import UserError
    from latbench.fileio import atomic_write_text, check_outputs
    from nas.report import build_rows, load_fps_records, load_miou_records, plot_fps_miou, render_markdown

    check_outputs(files={"--out": out_path, "--plot": plot_path})
    records = load_fps_records(reports_dir)
    if not records:
        raise UserError(f"no FPS records under {reports_dir}/fps (run nas fps first)")
    rows = build_rows(records, load_miou_records(reports_dir))
    text = render_markdown(rows)
    if out_path:
        atomic_write_text(out_path, text)
        click.echo(f"wrote {out_path} ({len(rows)} rows)")
    else:
        click.echo(text, nl=False)
    if plot_path:
        plot_fps_miou(rows, plot_path)
        click.echo(f"wrote {plot_path}")
