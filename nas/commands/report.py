"""``nas report``: FPS reports (and mIoU results) -> a Table IV-style Markdown table, the repeated
runs of each configuration as mean ± std, and PNGs."""

from __future__ import annotations

import json

import click


@click.command("report")
@click.option("--reports", "reports_dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder holding fps/*.json (from nas fps) and miou/*.json (from nas eval).")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Write the Markdown tables here (default: print them).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG of FPS against mIoU, one point per network (the paper's Fig. 1).")
@click.option("--groups/--no-groups", default=True, show_default=True,
              help="Also gather repeated runs: runs whose names differ only in a trailing seed marker (t6a-s0, "
                   "t6a-s1: nas eval --name, else the folder under runs/) form one configuration, reported as "
                   "mean ± std and the variance (the paper's ± var) of mIoU, latency and FPS with the number of "
                   "runs.")
@click.option("--group-by", "group_by", default="name", show_default=True, type=click.Choice(["name", "config"]),
              help="What makes runs one configuration: name = run names equal but for a trailing seed marker "
                   "(-s0, -seed0, -random-003: docs/reproduce.md's naming); config = the search (or random-search) "
                   "settings their genotype files record, the seed aside (groups named by the settings that differ).")
@click.option("--group-plot", "group_plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG of each configuration's mean FPS against mean mIoU with ± std error bars.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the rows and the groups as JSON on stdout instead of Markdown.")
def report(reports_dir, out_path, plot_path, groups, group_by, group_plot_path, as_json) -> None:
    """Gather every FPS record (latest per network, device, backend, precision, batch and resolution)
    with the network's mIoU where one was recorded, into a Markdown table; then the repeated runs of
    each configuration as mean ± std over the runs; optionally plots of both."""
    from latbench.errors import UserError
    from latbench.files import atomic_write_text, check_outputs
    from nas.report import build_rows, load_fps_records, load_miou_records, plot_fps_miou, render_markdown
    from nas.report_groups import build_groups, plot_groups, render_groups_markdown

    check_outputs(files={"--out": out_path, "--plot": plot_path, "--group-plot": group_plot_path})
    if group_plot_path and not groups:
        raise UserError("--group-plot needs the groups (drop --no-groups)")
    records = load_fps_records(reports_dir)
    if not records:
        raise UserError(f"no FPS records under {reports_dir}/fps (run nas fps first)")
    miou = load_miou_records(reports_dir)
    rows = build_rows(records, miou)
    grouped = build_groups(rows, miou, by=group_by) if groups else []
    if as_json:
        text = json.dumps({"rows": [_row_dict(r) for r in rows], "groups": [g.to_dict() for g in grouped]},
                          indent=2, default=str) + "\n"
    else:
        text = render_markdown(rows) + (("\n" + render_groups_markdown(grouped, group_by)) if groups else "")
    if out_path:
        atomic_write_text(out_path, text)
        click.echo(f"wrote {out_path} ({len(rows)} rows, {len(grouped)} groups)", err=as_json)
    else:
        click.echo(text, nl=False)
    if plot_path:
        plot_fps_miou(rows, plot_path)
        click.echo(f"wrote {plot_path}", err=as_json)
    if group_plot_path:
        plot_groups(grouped, group_plot_path)
        click.echo(f"wrote {group_plot_path}", err=as_json)


def _row_dict(r) -> dict:
    import dataclasses

    d = dataclasses.asdict(r)
    d["miou"] = None if r.miou is None else r.miou.to_dict()
    if d["miou"] is not None:
        d["miou"].pop("per_class", None)
        d["miou"].pop("confusion_matrix", None)
    return d
