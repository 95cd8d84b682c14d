"""``latbench validate-lut``: does Σ LUT predict whole networks? (DESIGN §5.8)"""

from __future__ import annotations

import json
import math

import click


def _fmt(v, spec: str = ".3f", none: str = "n/a") -> str:
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def render_text(d: dict) -> str:
    """A short human summary of :meth:`ValidationResult.to_dict`."""
    f = d["fidelity"]
    c = f.get("calibration") or {}
    dev = d["device"].get("name")
    lines = [
        f"LUT {d['lut']} ({d['backend']}, {d['precision']}, batch {d['batch']}, {d['resolution']}) on {dev}",
        f"architectures: {d['measured']} measured of {d['requested']} (seed {d['seed']}, {d.get('sampling', 'uniform')})"
        + (f", host-bound share {_fmt(d['host_bound_share'], '.0%')}" if d.get("host_bound_share") is not None else ""),
        *([f"excluded {d.get('excluded_fit_networks', 0)} draw(s) the LUT's latency model was fitted on "
           f"(checked against {d['fit_fingerprints_known']} fit network fingerprints)"]
          if d.get("fit_fingerprints_known") else []),
        *[f"notice: {n}" for n in d.get("exclusion_notes") or []],
        f"MAPE            {_fmt(f['mape'], '.2f')} %",
        f"within ±5 %     {_fmt(f['within_5'], '.0%')}",
        f"within ±10 %    {_fmt(f['within_10'], '.0%')}",
        f"Kendall τ       {_fmt(f['kendall_tau'])}",
        f"Spearman ρ      {_fmt(f['spearman_rho'])}",
        f"measured/Σ LUT  {_fmt(f['mean_ratio'])} (mean)",
    ]
    mf = d.get("model_fidelity")
    if mf:
        m = d.get("latency_model") or {}
        lines += [
            f"latency model {m.get('id')} ({m.get('group_by')} groups, fitted on {m.get('fitted_on')} networks):",
            f"  MAPE          {_fmt(mf['mape'], '.2f')} %   (Σ LUT {_fmt(f['mape'], '.2f')} %)",
            f"  worst         {_fmt(mf['worst'], '.2f')} %",
            f"  within ±5 %   {_fmt(mf['within_5'], '.0%')}, ±10 % {_fmt(mf['within_10'], '.0%')}",
            f"  Kendall τ     {_fmt(mf['kendall_tau'])}   (Σ LUT {_fmt(f['kendall_tau'])})",
            f"  Spearman ρ    {_fmt(mf['spearman_rho'])}",
        ]
    if c:
        lines += [
            f"calibration     measured ≈ {c['a']:.4f}·Σ LUT + {c['b']:.1f} µs",
            f"  MAPE after    {_fmt(c['mape'], '.2f')} %  (leave-one-out {_fmt(c['loo_mape'], '.2f')} %, "
            f"worst {_fmt(c['loo_max_abs_pct'], '.2f')} %)",
            f"  within ±5 %   {_fmt(f['calibrated_within_5'], '.0%')}, ±10 % {_fmt(f['calibrated_within_10'], '.0%')}",
        ]
    return "\n".join(lines)


@click.command("validate-lut")
@click.argument("lut", type=click.Path(dir_okay=False))
@click.option("--samples", default=50, show_default=True, type=click.IntRange(min=3),
              help="Number of architectures to sample, build and measure.")
@click.option("--seed", default=None, type=click.IntRange(min=0),
              help="Sampling seed (random.Random); recorded in the report. Architectures the LUT's latency model "
                   "was fitted on are never sampled (the report says how many draws were excluded). "
                   "[default: a fresh random seed]")
@click.option("--resolution", default=None, help="Input HxW; required when the LUT holds several.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N. [default: the LUT's device type]")
@click.option("--json", "as_json", is_flag=True, help="Print every figure and every sample as JSON on stdout.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write a PNG of measured vs Σ LUT with the fitted line.")
@click.option("--save-calibration", is_flag=True,
              help="Store the fitted measured ≈ a·Σ LUT + b in the LUT's metadata (the search uses it).")
@click.option("--space", "space_name", default=None,
              help="Load the space as package.module:Class (for a space not installed under the entry point).")
@click.option("--from-search", "from_search", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Sample from the architecture distribution a search left in this file (for LGCNet: "
                   "a genotype.json from `nas search`, whose α probabilities are drawn per edge) "
                   "instead of uniformly.")
@click.option("--rounds", default=15, show_default=True, type=click.IntRange(min=1),
              help="Interleaved rounds: every network is measured once per round.")
@click.option("--window", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds each network is sampled per round.")
@click.option("--statistic", default="fastest-half", show_default=True, type=click.Choice(["fastest-half", "median"]),
              help="A network's figure: mean of the fastest half of its per-round minima, or the median of its "
                   "per-round medians.")
@click.option("--latency-model", default="auto", show_default=True, type=click.Choice(["auto", "none", "require"]),
              help="auto: also report the LUT's latency model for these rows when it has one; none: Σ LUT only; "
                   "require: refuse a LUT without one.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def validate_lut(lut, samples, seed, resolution, device, as_json, plot_path, save_calibration, space_name,
                 from_search, rounds, window, statistic, latency_model, no_progress) -> None:
    """Sample architectures from the LUT's search space, measure them end to end with the LUT's own
    backend, precision, batch and protocol (all of them in interleaved rounds), and report MAPE,
    share within ±5 %/±10 %, Kendall τ, Spearman ρ and the affine calibration measured ≈ a·Σ LUT + b
    (with its leave-one-out error) — and, when the LUT holds a latency model for these rows
    (`latbench fit`), the model's figures side by side."""
    from latbench.errors import UserError
    from latbench.files import check_outputs
    from latbench.timing.interleave import RoundsConfig
    from latbench.progress import PhaseProgress
    from latbench.space import parse_resolution
    from latbench.model.validate import plot_validation, save_calibration as store, validate_lut as run

    hw = parse_resolution(resolution) if resolution else None
    check_outputs(files={"--plot": plot_path, "--save-calibration (the LUT)": lut if save_calibration else None})
    try:
        rc = RoundsConfig(rounds=rounds, window_s=window, statistic=statistic)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with PhaseProgress(not no_progress) as progress:
        result = run(lut, samples, seed=seed, resolution=hw, device=device, space_name=space_name,
                     from_search=from_search, rounds=rc, latency_model=latency_model,
                     on_event=progress.event, on_progress=progress.update)
    d = result.to_dict()
    if save_calibration:
        d["saved_calibration"] = store(lut, result)
    if plot_path:
        d["plot"] = str(plot_validation(result, plot_path))
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
    else:
        click.echo(render_text(d))
        if save_calibration:
            click.echo(f"saved the calibration into {lut}")
        if plot_path:
            click.echo(f"wrote {plot_path}")
