"""Does a LUT hold what a use needs? One check, and the command that fills what is missing.

- :func:`coverage_of`: which of a list of :class:`latbench.space.Entry` rows a LUT holds at one
  resolution and batch, **by op key**: missing, failed to time, or timing another op shape
  (:meth:`latbench.lut.table.LUT.coverage` is this over a space's whole enumeration).
- :func:`check_prices`: the compatibility check every consumer runs before it prices anything
  (``nas search``, ``nas fps``, ``nas sample``, ``validate-lut`` / ``fit`` through
  :func:`check_space`): the same search space (name, version), the resolution and batch, and every
  row of the network the use prices, with the identical op key. A space's configuration need not
  equal the LUT's: ablations that change *which* rows are used, not what any row times, are
  priced by one LUT. Each refusal is one line; missing rows come with the exact ``latbench
  build-lut`` command (:func:`rebuild_command`) that adds them to the same file.
- :func:`rebuild_command`: that command, generated from ``build-lut``'s own click option
  definitions (names and defaults) and the LUT's recorded provenance, so it follows the options
  as they are.
- :func:`choose_resolution`, :func:`select_rows`, :func:`space_identity`: what a consumer asks of
  a LUT before pricing (which resolution, which backend / precision rows, which space), so no
  consumer reads the LUT's frame or metadata itself.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

from latbench.errors import LUTError, UserError
from latbench.lut.table import LUT, Coverage
from latbench.space import format_resolution

SHOW_MISSING = 12

#: ``build-lut`` option (click parameter name) -> the protocol field it sets (TimingConfig).
PROTOCOL_OPTIONS = {"max_noise": "max_noise", "max_time": "max_time_s", "min_time": "min_time_s",
                    "warmup": "warmup_s", "cold_cache": "cold_cache", "threads": "threads",
                    "input_sets": "input_sets", "const_inputs": "const_inputs"}


# ---- what a LUT is -------------------------------------------------------------------------------
def space_identity(lut: LUT) -> dict[str, Any]:
    """``{"name", "version", "config"}`` of the search space the LUT was built for."""
    space = lut.meta.get("space") or {}
    return {"name": space.get("name"), "version": space.get("version"), "config": dict(space.get("config") or {})}


def timing_protocol(lut: LUT, path: str) -> Any:
    """The :class:`latbench.timing.TimingConfig` the LUT was measured with (defaults where it
    recorded none); :class:`UserError` for one that cannot be used."""
    from latbench.timing.config import TimingConfig

    try:
        return TimingConfig.from_dict(dict(lut.meta.get("protocol") or {}))
    except (TypeError, ValueError) as exc:
        raise UserError(f"LUT {path} has an unusable protocol: {exc}") from None


def batches(lut: LUT) -> list[int]:
    return sorted({int(b) for b in lut.df["batch"].unique()})


def choose_resolution(lut: LUT, path: str | None, requested: tuple[int, int] | None) -> tuple[int, int]:
    """``requested`` (which the LUT must hold), or the LUT's only resolution (``path`` names the
    LUT in messages)."""
    have = lut.resolutions()
    listed = ", ".join(format_resolution(r) for r in have) or "none"
    what = "LUT" if path is None else f"LUT {path!r}"
    if requested is None:
        if len(have) != 1:
            raise UserError(f"{what} holds {len(have)} resolutions ({listed}); choose one with --resolution")
        return have[0]
    if tuple(requested) not in have:
        res = format_resolution(requested)
        raise LUTError(f"{what} has no rows at {res} (it holds {listed}); "
                       f"pass one of those with --resolution or build {res}")
    return (int(requested[0]), int(requested[1]))


def select_rows(lut: LUT, path: str, backend: str | None, precision: str | None) -> tuple[LUT, str, str]:
    """The LUT restricted to one backend and precision (a merged LUT may hold several)."""
    df = lut.df
    out = []
    for col, want in (("backend", backend), ("precision", precision)):
        have = sorted({str(v) for v in df[col].dropna().unique()})
        if want is None:
            if len(have) > 1:
                raise LUTError(f"LUT {path!r} holds several {col}s ({', '.join(have)}); choose one with --{col}")
            want = have[0] if have else str(lut.meta.get(col))
        elif want not in have:
            raise LUTError(f"LUT {path!r} has no {col} {want!r} rows (it holds {', '.join(have) or 'none'})")
        df = df[df[col] == want]
        out.append(want)
    return LUT(df.reset_index(drop=True), lut.meta), out[0], out[1]


# ---- coverage by key -----------------------------------------------------------------------------
def coverage_of(lut: LUT, entries: Sequence[Any], height: int, width: int, batch: int = 1) -> Coverage:
    """Which of ``entries`` (:class:`latbench.space.Entry`: position, op, op key) ``lut`` holds at
    ``height``×``width`` and ``batch``, by key (:meth:`latbench.lut.table.LUT.coverage_of`)."""
    return lut.coverage_of(entries, height, width, batch)


def _fmt_rows(rows: Sequence[tuple[str, str]], res: str, limit: int = SHOW_MISSING) -> str:
    shown = ", ".join(f"{p}/{o}@{res}" for p, o in rows[:limit])
    return shown + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


def _config_difference(lut_cfg: Mapping[str, Any], ours: Mapping[str, Any], user: str) -> list[str]:
    diffs = []
    for k in sorted(set(lut_cfg) | set(ours)):
        a, b = lut_cfg.get(k), ours.get(k)
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            diffs.append(f"{k}: LUT {a!r}, {user} {b!r}")
    return diffs


def check_space(lut: LUT, path: str, name: str, version: Any) -> None:
    """Refuse (one line) a LUT built for another search space or another version of it."""
    ident = space_identity(lut)
    if ident["name"] != name:
        raise LUTError(f"LUT {path!r} was built for search space {ident['name']!r}, not {name!r}")
    if ident["version"] != version:
        raise LUTError(f"LUT {path!r} was built for {name} space version {ident['version']!r}; "
                       f"this {name} has version {version}: rebuild the LUT")


def network_entries(space: Any, height: int, width: int, batch: int) -> list[Any]:
    """The rows pricing ``space``'s configured network needs: ``space.network_entries`` where the
    space has it (a space whose LUT holds the rows of several variants), else its enumeration."""
    rows = getattr(space, "network_entries", None) or space.enumerate
    return list(rows(height, width, batch))


def check_prices(lut: LUT, path: str, space: Any, resolution: tuple[int, int], batch: int,
                 user: str = "search") -> Coverage:
    """Refuse (one line) a LUT that cannot price ``space``'s network at ``resolution`` and
    ``batch`` (see the module docstring); ``user`` names the use in messages. Returns the
    coverage (complete)."""
    ident = space.identity()
    check_space(lut, path, ident["name"], ident["version"])
    res = format_resolution(resolution)
    choose_resolution(lut, path, tuple(resolution))
    have = batches(lut)
    if batch not in have:
        raise LUTError(f"LUT {path!r} has no rows at batch {batch} (it holds {', '.join(map(str, have))})")
    cov = coverage_of(lut, network_entries(space, resolution[0], resolution[1], batch), resolution[0],
                      resolution[1], batch)
    if cov.other:
        diffs = _config_difference(space_identity(lut)["config"], dict(ident.get("config") or {}), user)
        e, theirs = cov.other[0]
        why = "; ".join(diffs) if diffs else f"{len(cov.other)} rows time other shapes"
        raise LUTError(f"LUT {path!r} was built for another {ident['name']} configuration ({why}): its rows time "
                       f"other op shapes than this network's (e.g. {e.position}/{e.op}: LUT {theirs}, network "
                       f"{e.spec.key}); pass matching {user} options or build a LUT with matching --space-opt values")
    if cov.missing or cov.failed:
        parts = []
        if cov.missing:
            parts.append(f"{len(cov.missing)} missing: {_fmt_rows(cov.missing, res)}")
        if cov.failed:
            parts.append(f"{len(cov.failed)} failed to time: {_fmt_rows(cov.failed, res)}")
        cmd = rebuild_command(lut, path, [resolution], retry_failed=bool(cov.failed))
        raise LUTError(f"LUT {path!r} lacks {len(cov.missing) + len(cov.failed)} of {cov.expected} rows this "
                       f"{user} needs at {res}, batch {batch} ({'; '.join(parts)}); add them to the same file "
                       f"(the build resumes and times only what is missing) with: {cmd}")
    return cov


# ---- the build-lut command that fills a LUT --------------------------------------------------------
def build_values(lut: LUT, path: str | Path, resolutions: Sequence[tuple[int, int]],
                 retry_failed: bool = False) -> dict[str, Any]:
    """``build-lut``'s parameters (click names) as the LUT at ``path`` records them."""
    from latbench.space import load_space

    meta = lut.meta
    dev = meta.get("device") if isinstance(meta.get("device"), dict) else {}
    proto = dict(meta.get("protocol") or {})
    ident = space_identity(lut)
    values: dict[str, Any] = {
        "name": meta.get("name"),
        "device": f"cuda:{int(dev.get('index') or 0)}" if dev.get("type") == "cuda" else "cpu",
        "backend": meta.get("backend"), "resolutions": [format_resolution(r) for r in resolutions],
        "batch": int(meta.get("batch") or 1), "precision": meta.get("precision") or "fp32",
        "output": str(path), "retry_failed": bool(retry_failed), "space_name": ident["name"],
    }
    for opt, key in PROTOCOL_OPTIONS.items():
        if key in proto:
            values[opt] = proto[key]
    try:
        default_cfg = load_space(str(ident["name"]), {}).identity()["config"]
    except UserError:
        default_cfg = {}
    values["space_opts"] = [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in ident["config"].items()
                            if default_cfg.get(k) != v]
    canary = ((meta.get("build") or {}).get("canary") or {}) if isinstance(meta.get("build"), dict) else {}
    if "every_s" in canary:
        values["canary_every"] = canary["every_s"]
    if "tolerance" in canary:
        values["canary_tolerance"] = canary["tolerance"]
    checks = meta.get("plausibility") if isinstance(meta.get("plausibility"), dict) else {}
    if isinstance(checks.get("config"), dict) and checks["config"].get("accept_load"):
        values["accept_load"] = True  # built with --accept-load: the rows added are judged the same way
    return values


def _option_argv(param: Any, value: Any, ctx: Any) -> list[str]:
    """``param``'s command-line spelling of ``value`` ([] where it is the option's default)."""
    flag = param.opts[0]
    default = param.get_default(ctx, call=True)
    if getattr(param, "is_flag", False) and param.secondary_opts:  # --x/--no-x: always said (its default
        return [flag if value else param.secondary_opts[0]]       # may depend on the device)
    if getattr(param, "is_flag", False):
        return [flag] if value and not default else []
    if param.multiple:
        return [a for v in value for a in (flag, str(v))]
    if value is None or (not param.required and value == default):
        return []
    return [flag, format(value, "g") if isinstance(value, float) else str(value)]


def build_command(values: dict[str, Any]) -> str:
    """``latbench build-lut`` with ``values`` (click parameter names → values), spelled with
    build-lut's own option definitions (an option at its default is left out)."""
    import click

    from latbench.commands.build_options import COMMAND, build_lut_params

    argv = ["latbench", COMMAND]
    params = build_lut_params()
    ctx = click.Context(click.Command(COMMAND, params=params))
    for p in params:
        if p.name in values:
            argv += _option_argv(p, values[p.name], ctx)
    return shlex.join(argv)


def new_lut_command(path: str | Path, resolutions: Sequence[str] = (), device: str | None = None) -> str:
    """The build that writes a LUT at ``path``, which does not exist yet: ``--gpu`` the file's stem
    (the name build-lut checks against the device), ``--device cpu`` on a CPU, the resolutions
    asked for, build-lut's defaults for everything else."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).stem).strip("-") or "gpu"
    values: dict[str, Any] = {"name": name, "output": str(path),
                              "resolutions": list(dict.fromkeys(str(r) for r in resolutions if r))}
    if device is not None and str(device).strip().lower() == "cpu":
        values["device"] = "cpu"
    return build_command(values)


def rebuild_command(lut: LUT, path: str | Path, resolutions: Sequence[tuple[int, int]],
                    retry_failed: bool = False) -> str:
    """The ``latbench build-lut`` command that adds what is missing to the LUT at ``path``.

    It repeats the LUT's own build (name, device, backend, batch, precision, protocol, space
    configuration), spelled with ``build-lut``'s option definitions, so the build resumes into the
    same file and times only what is missing. Protocol fields no option sets, and a LUT measured
    before the protocol had some field (a build cannot resume into it), are said after the
    command."""
    from latbench.timing.config import TimingConfig

    cmd = build_command(build_values(lut, path, resolutions, retry_failed))
    proto = dict(lut.meta.get("protocol") or {})
    defaults = TimingConfig().to_dict()
    settable = set(PROTOCOL_OPTIONS.values())
    odd = sorted(k for k in proto if k in defaults and k not in settable and proto[k] != defaults[k])
    if odd:
        cmd += (f" (this LUT's protocol also sets {', '.join(odd)}, which build-lut's options do not: "
                f"finish it with latbench.build.builder.build_lut and the LUT's protocol)")
    older = sorted(k for k in defaults if k not in proto)
    if proto and older:
        cmd += (f" — but this LUT was measured before the timing protocol had {', '.join(older)}, so a build "
                f"cannot resume into it: rebuild it (the same command with a new --output)")
    return cmd
