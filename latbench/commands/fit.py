"""``latbench fit``: fit a latency model for a LUT on measured networks and judge it on held-out ones."""

from __future__ import annotations

import json
import math

import click

from latbench.model.fit_request import MAX_REFERENCE_SPREAD

MECH_LABELS = {
    "raw": "Σ LUT (raw)",
    "affine": "affine a·Σ+b",
    "overhead": "− per-call overhead",
    "overhead+global": "overhead + global fit",
    "model": "latency model",
    "+p10 column": "+ p10 column",
    "model (uniform fit networks)": "model, uniform fit set",
    "model (uniform part of the fit set only)": "model, uniform part of fit set",
    "measurement (split-half)": "(half vs half of the rounds)",
    "peer: ridge": "learned: ridge, one-hot",
    "peer: boosted-trees": "learned: boosted trees",
    "peer: gcn": "learned: GCN (BRP-NAS-like)",
}
SET_LABELS = {"fit": "fit networks (in-sample)", "test": "held-out uniform", "search": "held-out from search",
              "other_searches": "held-out from other searches (--test-search)"}


def _f(v, spec: str = ".2f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _ci(v, spec: str = ".2f") -> str:
    """``[lo, hi]`` of a ``{"value", "lo", "hi"}`` interval ('' without one)."""
    if not isinstance(v, dict) or v.get("lo") is None or v.get("hi") is None:
        return ""
    return f"[{format(v['lo'], spec)}, {format(v['hi'], spec)}]"


def render_text(d: dict) -> str:
    """A human summary of :meth:`latbench.model.fit.FitResult.to_dict`."""
    m = d["model"]
    meas = d["measurement"]
    prov = m.get("provenance") or {}
    lines = [
        f"LUT {d['lut']}: {d['scope']['backend']} {d['scope']['precision']} {d['scope']['height']}x{d['scope']['width']} "
        f"batch {d['scope']['batch']} on {d['device'].get('name')}",
        f"measured {len([n for n in d['networks'] if n['measured_us'] is not None])} networks in "
        f"{meas['rounds']['rounds']} interleaved rounds ({meas['statistic']}), {meas['elapsed_s']:.0f} s; "
        f"median network noise {_f((meas.get('median_network_noise') or 0) * 100)} %; "
        f"reference p10–p90 spread {_f((meas.get('reference_p10_p90_spread') or 0) * 100, '.1f')} %; "
        f"{len(meas['drift_events'])} drift event(s); load {meas['loadavg_before']}",
        f"per-call overhead {d['overhead_us']:.2f} µs; model: {m['group_by']} groups, "
        f"λ {_f(prov.get('lambda'), 'g')}, constant {m['constant_us']:.1f} µs, "
        f"cross-validated MAPE on the fit set {_f(prov.get('cv_mape'))} %",
        f"fit networks: {d['request']['design']} design, seed {d['request']['seed']}; held-out sets: test seed "
        f"{d['request']['test_seed']} (--test-seed {d['request']['test_seed']} reproduces them)",
        *[str(n) for n in d.get("notes") or []],
        "",
    ]
    stats = d.get("statistics") or {}
    for s, figs in d["figures"].items():
        lines.append(f"{SET_LABELS.get(s, s)} (n={figs['raw']['n']}; [90 % bootstrap intervals]):")
        lines.append(f"  {'mechanism':<30} {'MAPE %':>19} {'worst %':>8} {'±5 %':>5} {'±10 %':>5} "
                     f"{'τ':>19} {'ΔMAPE vs affine':>22}")
        for name, f in figs.items():
            if "mape" not in f:
                continue
            ci = f.get("ci") or {}
            va = (f.get("vs_affine") or {}).get("mape") or {}
            lines.append(f"  {MECH_LABELS.get(name, name):<30} {_f(f['mape']):>6} {_ci(ci.get('mape')):>12} "
                         f"{_f(f['worst']):>8} {_f(f['within_5'], '.0%'):>5} {_f(f['within_10'], '.0%'):>5} "
                         f"{_f(f['kendall_tau'], '.3f'):>6} {_ci(ci.get('kendall_tau'), '.2f'):>12} "
                         f"{(_f(va.get('value'), '+.2f') + ' ' + _ci(va)) if va else '':>22}")
        cov = (stats.get("coverage") or {}).get(s)
        if cov:
            dd, fr = cov["nearest_fit_rows_differ"], stats["coverage"]["fit_range_us"]
            lines.append(f"  from the fit networks: {dd['min']}–{dd['max']} (median {dd['median']:g}) of {cov['rows']} rows "
                         f"differ from the nearest; measured {cov['range_us'][0] / 1e3:.2f}–{cov['range_us'][1] / 1e3:.2f} ms "
                         f"against the fit's {fr[0] / 1e3:.2f}–{fr[1] / 1e3:.2f} ms ({cov['below_fit_range']} below, "
                         f"{cov['above_fit_range']} above: extrapolated)")
        c = (stats.get("ceiling") or {}).get(s) or {}
        sim, sb = c.get("simulated") or {}, c.get("spearman_brown") or {}
        if sim.get("kendall_tau") or sb.get("kendall_tau") is not None:
            t = sim.get("kendall_tau") or {}
            lines.append(f"  ceiling of this measurement: τ {_f(t.get('value'), '.3f')} {_ci(t, '.2f')}, MAPE "
                         f"{_f((sim.get('mape') or {}).get('value'))} % (simulated from each network's per-round "
                         f"spread); Spearman–Brown τ {_f(sb.get('kendall_tau'), '.3f')}")
    other = [n for n in d["networks"] if n["set"] == "other_searches" and n["measured_us"]]
    if other:
        lines.append("networks from other searches, one by one (error % of Σ LUT / of the model; measured ms):")
        for n in other:
            m_us = n["measured_us"]
            lines.append(f"  {n['key']:<18} {100 * (n['raw_sum_us'] - m_us) / m_us:+7.2f} {100 * (n['model_us'] - m_us) / m_us:+7.2f}"
                         f" {m_us / 1e3:8.3f}  {n.get('source') or ''}")
    sel = stats.get("selection")
    if sel:
        wins = {c["name"] if "name" in c else str(c): c.get("wins") for c in sel.get("candidates", [])}
        lines.append(f"model choice: {sel.get('chosen')} ({sel.get('rule')}; best score: {sel.get('best')}, "
                     f"{len(sel.get('fold_seeds', []))} fold seeds × {sel.get('k')} folds, {sel.get('grouping')}); "
                     f"single-seed wins: " + ", ".join(f"{k} {v}" for k, v in wins.items() if v))
        if sel.get("tied_groups"):
            lines.append(f"  per-group corrections the bootstrap does not support, tied to the global fit: "
                         f"{', '.join(sel['tied_groups'])}")
    ch = stats.get("cheapest_op_changes")
    if ch:
        lines.append(f"for a search: the model changes the cheapest op at {ch['changed']} of {ch['edges']} edges, "
                     f"{ch['supported']} of those supported by the bootstrap ({ch['bootstrap_models']} refits); "
                     f"median per-edge τ(raw, model) {_f(ch.get('median_edge_tau'), '.2f')}")
    ex = d.get("lut_explains") or {}
    if d.get("refused"):
        lines += ["", f"not stored: {d['refused']}"]
    elif ex:
        lines += ["", f"the LUT explains the fit networks: measured ≈ {_f(ex.get('scale'), '.3f')} × Σ LUT (median), "
                      f"affine slope {_f(ex.get('affine_slope'), '.3f')}, raw-sum correlation r "
                      f"{_f(ex.get('raw_correlation'), '.3f')}"]
    return "\n".join(lines)


#: every option of `latbench fit` (applied by :func:`_options`, in this order)
OPTIONS = [
    click.option("--fit-networks", default=40, show_default=True, type=int,
                  help="Architectures measured to fit the model (at least 8; chosen by --design)."),
    click.option("--design", default="span", show_default=True, type=click.Choice(["span", "uniform", "d-optimal"]),
                  help="How the fit networks are chosen: span = spread evenly over the LUT-predicted latency range "
                       "that draws tilted towards the LUT's cheapest and most expensive ops reach (light networks full "
                       "of zero/skip/pooling as well as heavy ones, so the constant and slopes are pinned where "
                       "searches go); uniform draws; or d-optimal = from many uniform draws the ones whose op "
                       "composition spreads the most (docs/latency_model.md)."),
    click.option("--uniform-fit-networks", default=0, show_default=True, type=int,
                  help="Ablation, with --design span or d-optimal: also measure this many uniform fit networks and "
                       "report the model fitted on them beside the designed one (costs their measurement)."),
    click.option("--test-networks", default=20, show_default=True, type=int,
                  help="Held-out uniform architectures the fitted model is judged on (0: none)."),
    click.option("--from-search", "from_search", default=None, type=click.Path(exists=True, dir_okay=False),
                  help="Also judge the model on architectures drawn from a search's α (for LGCNet: a "
                       "genotype.json written by `nas search`): searched networks sit where uniform samples rarely go."),
    click.option("--search-networks", default=20, show_default=True, type=int,
                  help="How many architectures to draw with --from-search."),
    click.option("--search-fit-networks", default=None, type=int,
                  help="With --from-search: this many of the --fit-networks are drawn from the search's α instead of "
                       "uniformly (disjoint from the held-out searched networks), so the fit sees the op mixes a search "
                       "produces; the report adds the same model fitted on the uniform part alone. "
                       "[default: half of --fit-networks with --from-search, else 0]"),
    click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fit networks' draws."),
    click.option("--test-seed", default=None, type=click.IntRange(min=0),
                  help="Seed of the held-out sets' draws (recorded in the report and the model's provenance; give it "
                       "to reproduce a fit's held-out sets). [default: a fresh random seed; a resumed fit keeps its own]"),
    click.option("--test-search", "test_search", multiple=True, type=click.Path(exists=True, dir_okay=False),
                  help="A result of another search the fit never saw (repeatable: other β, other seeds, a search priced "
                       "by a model): its derived architecture (a genotype) and --test-search-draws draws from its α "
                       "are measured and reported as the held-out set other_searches."),
    click.option("--test-search-draws", default=4, show_default=True, type=click.IntRange(min=0),
                  help="Draws from each --test-search file's α (0: its derived architecture only)."),
    click.option("--peers", default="ridge,boosted-trees,gcn", show_default=True,
                  help="Learned predictors trained on the same fit networks (their architectures only, no LUT values) "
                       "and judged on the same held-out sets beside the model: comma-separated from ridge, "
                       "boosted-trees, gcn; 'none' for none."),
    click.option("--yes", is_flag=True, help="Run even when the plan exceeds the bounds (2000 networks, --max-minutes)."),
    click.option("--max-minutes", default=None, type=float,
                  help="Refuse a fit whose estimated duration exceeds this many minutes. [default: 60]"),
    click.option("--max-reference-spread", default=MAX_REFERENCE_SPREAD, show_default=True,
                  type=click.FloatRange(min=0, min_open=True),
                  help="Store no model when the reference network's readings spread more than this (p10–p90, "
                       "relative; judged from 100 readings on): the machine was not steady during the fit."),
    click.option("--resolution", default=None, help="Input HxW; required when the LUT holds several."),
    click.option("--device", default=None, help="cpu, cuda or cuda:N. [default: the LUT's device type]"),
    click.option("--rounds", default=15, show_default=True, type=click.IntRange(min=1),
                  help="Interleaved rounds: every network is measured once per round."),
    click.option("--window", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="Seconds each network is sampled per round."),
    click.option("--statistic", default="fastest-half", show_default=True, type=click.Choice(["fastest-half", "median"]),
                  help="A network's figure: mean of the fastest half of its per-round minima (robust on shared "
                       "machines), or the median of its per-round medians."),
    click.option("--drift-tolerance", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="Relative drift of the reference network that marks a slow episode (the networks measured "
                       "during it are measured again)."),
    click.option("--no-save", is_flag=True, help="Report only; do not store the model in the LUT."),
    click.option("--space", "space_name", default=None,
                  help="Load the space as package.module:Class (for a space not installed under the entry point)."),
    click.option("--space-opt", "space_opts", multiple=True, metavar="KEY=VALUE",
                  help="Fit on networks of another configuration of the LUT's space, e.g. fusion=aspp (a Table X "
                       "head): the LUT must hold their rows; the model is stored beside the LUT's others (one per "
                       "scope and configuration). Repeatable."),
    click.option("--json", "as_json", is_flag=True, help="Print every figure, the model and every network as JSON."),
    click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
                  help="Write a PNG: measured vs predicted on the held-out networks, raw sum and model."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
]


def _options(fn):
    for opt in reversed(OPTIONS):
        fn = opt(fn)
    return fn


@click.command("fit")
@click.argument("lut", type=click.Path(dir_okay=False))
@_options
def fit(lut, fit_networks, design, uniform_fit_networks, test_networks, from_search, search_networks, search_fit_networks,
        seed, test_seed, test_search, test_search_draws, peers, yes, max_minutes, max_reference_spread, resolution, device, rounds, window,
        statistic, drift_tolerance, no_save, space_name, space_opts, as_json, plot_path, no_progress) -> None:
    """Fit a latency model for LUT: sample and measure whole networks with the LUT's own backend and
    protocol (interleaved rounds, a reference network watching for slow episodes), fit per-row
    corrections (measured per-call overhead, per-op-group slope and per-row terms, a constant)
    on the fit networks, and report MAPE, worst error, ±5/±10 %, Kendall τ and Spearman ρ on
    held-out networks (drawn from a fresh --test-seed, never a fit network; --test-search adds other
    searches' networks) for the raw sum, the affine calibration and the model side by side. The
    plan (networks × rounds × window, preparation, estimated minutes) is printed first; a fit
    beyond the bounds is refused unless --yes / --max-minutes. The model is stored in the LUT (one
    per backend/precision/resolution/batch/device, with its fit networks' fingerprints) and used by
    `nas search`, `nas fps` and `nas sample` — unless the LUT does not explain the fit networks
    (then nothing is stored and the command fails, saying why). Resumable: rerun the same command
    after a crash."""
    from latbench.errors import UserError
    from latbench.files import check_outputs
    from latbench.commands.build import parse_space_opts
    from latbench.model.fit import FitRequest, run_fit
    from latbench.timing.interleave import RoundsConfig
    from latbench.space import parse_resolution

    hw = parse_resolution(resolution) if resolution else None
    check_outputs(files={"--plot": plot_path, "the LUT": None if no_save else lut})
    try:
        rc = RoundsConfig(rounds=rounds, window_s=window, statistic=statistic, drift_tolerance=drift_tolerance)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if search_fit_networks is None:
        search_fit_networks = fit_networks // 2 if from_search else 0
    req = FitRequest(lut_path=lut, fit_networks=fit_networks, design=design, uniform_fit_networks=uniform_fit_networks,
                     search_fit_networks=search_fit_networks,
                     test_networks=test_networks,
                     search_networks=search_networks, from_search=from_search, seed=seed, test_seed=test_seed,
                     test_search=tuple(test_search), test_search_draws=test_search_draws, yes=yes,
                     peers=tuple(p.strip() for p in peers.split(",") if p.strip() and p.strip() != "none"),
                     max_minutes=max_minutes, max_reference_spread=max_reference_spread, resolution=hw,
                     device=device, space_name=space_name, space_options=parse_space_opts(space_opts), rounds=rc,
                     save=not no_save)
    from latbench.progress import PhaseProgress

    with PhaseProgress(not no_progress) as progress:
        result = run_fit(req, on_event=progress.event, on_progress=progress.update)
    d = result.to_dict()
    if plot_path:
        from latbench.lut.plots import plot_fit

        d["plot"] = str(plot_fit(d, plot_path))
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
    else:
        click.echo(render_text(d))
        if result.saved:
            click.echo(f"saved the latency model ({result.model.model_id}) into {lut}")
        if plot_path:
            click.echo(f"wrote {plot_path}")
    if result.refused and not no_save:
        raise UserError(f"no latency model stored in {lut}: {result.refused}")
