"""The LUT build engine: enumerate a space, time each distinct OpSpec once, write a Parquet LUT.

Crash safety and resume (DESIGN §4):

- every finished timing is appended to ``OUTPUT.partial.jsonl`` (flushed + fsynced per line);
- the Parquet file is rewritten atomically every ``checkpoint_s`` seconds and at the end, holding
  every row whose timing is finished (metadata ``complete`` says whether anything is left);
- a rerun reads the existing LUT and the journal and times only keys found in neither, so a kill
  at any moment loses at most the entry in flight; the journal is removed once the LUT is complete;
- ``OUTPUT.lock`` refuses a second concurrent build on the same output;
- resuming into a LUT built for another space configuration, name, backend, precision, batch,
  protocol or device is refused with a :class:`UserError` naming the difference.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import pandas as pd
import torch

from latbench.build.rows import PASSTHROUGH, Timed, check_compatible, compat, jsonable, lut_row, timed_from_frame
from latbench.device import describe_device, software_versions
from latbench.errors import UserError
from latbench.files import FileLock, Journal, check_writable, lock_path, read_journal
from latbench.lut.table import LUT, ROW_ID, SCHEMA_VERSION, concat_rows, dedupe_rows, now_iso, read_lut, write_lut
from latbench.memory import check_entries_fit
from latbench.progress import PhaseProgress
from latbench.space import Entry, OpSpec, format_resolution
from latbench.timing import Measurement, TimingConfig, get_backend, measure, measure_prepared
from latbench.timing.loop import describe_error
from latbench.timing.passthrough import is_passthrough
from latbench.timing.plausibility import FLAG_COLUMN, EntryChecker, PlausibilityConfig

JOURNAL_SUFFIX = ".partial.jsonl"
def journal_path(output: str | os.PathLike) -> Path:
    return Path(str(output) + JOURNAL_SUFFIX)


def _builds_a_passthrough(space: Any, spec: OpSpec) -> bool:
    try:
        return is_passthrough(space.build_op(spec), spec.inputs)
    except Exception:  # a build failure is recorded when the entry is timed
        return False


def make_inputs(spec: OpSpec, seed: int = 0) -> list[torch.Tensor]:
    """Random fp32 CPU inputs of ``spec``'s shapes (the backend moves/casts them)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for shape in spec.inputs]


def time_spec(space: Any, spec: OpSpec, backend: Any, config: TimingConfig, watch: Any = None) -> Measurement:
    """Build ``spec`` with the space, prepare it with the backend and measure it. Never raises for
    a failing op (the failure is the measurement). A pass-through (the op returns its input) is
    not timed: status ``analytic``, 0 µs (:mod:`latbench.timing.passthrough`). ``watch`` (a
    :class:`latbench.timing.plausibility.LoadWatch`) is entered around the measurement alone."""
    prepared = None
    try:
        module = space.build_op(spec)
        if isinstance(module, torch.nn.Module):
            module.eval()
        if is_passthrough(module, spec.inputs):  # returns its input: nothing to time, on any backend
            return Measurement(median_us=0.0, p10_us=0.0, p90_us=0.0, iqr_us=0.0, mean_us=0.0, noise=0.0,
                               status="analytic", extra={"passthrough": True})
        prepared = backend.prepare(module, make_inputs(spec), config)
    except Exception as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return Measurement.failed(describe_error(exc), stage="prepare")
    try:
        if watch is None:
            m = measure_prepared(prepared, config)
        else:
            with watch:
                m = measure_prepared(prepared, config)
    finally:
        try:
            prepared.close()
        except Exception:
            pass
        del prepared
    if m.ok and config.const_inputs:
        m.const_us = _time_on_zeros(module, spec, backend, config)
    return m


def _time_on_zeros(module: Any, spec: OpSpec, backend: Any, config: TimingConfig) -> float | None:
    """Median µs of ``module`` on all-zero inputs, one set (it never changes, as a constant in a
    network does not); None if that fails."""
    m = measure(module, [torch.zeros_like(t) for t in make_inputs(spec)], replace(config, input_sets=1),
                backend=backend)
    return float(m.median_us) if m.ok else None


def request_metadata(space: Any, backend_obj: Any, config: TimingConfig, name: str, batch: int, precision: str,
                     device: str) -> dict[str, Any]:
    """The provenance a build of ``space`` with ``backend_obj`` writes into its LUT's metadata
    (before any timing): what :func:`build_lut` checks an existing LUT or journal against."""
    dev_info = describe_device(getattr(backend_obj, "device", device))
    if dev_info.get("type") == "cpu" and config.threads:
        dev_info["threads"] = config.threads
    backend_info = jsonable(backend_obj.describe()) if hasattr(backend_obj, "describe") else {}
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "space": jsonable(space.identity()),
        "device": dev_info,
        "versions": software_versions(),
        "protocol": config.to_dict(),
        "backend": getattr(backend_obj, "name", str(backend_obj)),
        "backend_info": backend_info,
        "precision": precision,
        # the effective fp32 math (strict IEEE or TF32) and the flags that made it
        "precision_mode": backend_info.get("precision_mode"),
        "batch": int(batch),
        "cache": config.cache,
        "host": dev_info.get("host"),
    }


@dataclass
class _Request:
    """What one build asks for: the space, the backend, the protocol and where the LUT goes."""

    space: Any
    backend: Any
    backend_name: str
    config: TimingConfig
    output: Path
    batch: int
    precision: str
    device: str               # where the backend runs (for the memory check)
    meta: dict[str, Any]      # the metadata the LUT gets (before any timing)
    compat: dict[str, Any]    # what an existing LUT or journal must match

    @property
    def journal(self) -> Path:
        return journal_path(self.output)


@dataclass
class _Resumed:
    """What earlier runs left: the existing LUT, the finished timings, the journal's header."""

    existing: LUT | None
    done: dict[str, Timed]
    header: dict[str, Any] | None
    created: str


@dataclass
class _Plan:
    """Every row of the requested resolutions and the distinct keys, with those left to time."""

    rows: list[tuple[Entry, int, int]]
    specs: dict[str, OpSpec]
    todo: list[str]


@dataclass
class _TimingRun:
    """The outcome of the timing loop."""

    failed: int
    elapsed_s: float
    watch: Any  # the canary's DriftWatch, or None
    checker: Any = None  # the plausibility checker (latbench.timing.plausibility.EntryChecker), or None


def _request(space: Any, backend: str | Any, config: TimingConfig, output: str | os.PathLike, name: str,
             batch: int, precision: str, device: str) -> _Request:
    output = check_writable(output)
    backend_obj = get_backend(backend, device=device, precision=precision, threads=config.threads) \
        if isinstance(backend, str) else backend
    backend_name = getattr(backend_obj, "name", str(backend))
    meta = request_metadata(space, backend_obj, config, name, batch, precision, device)
    meta["backend"] = backend_name
    return _Request(space, backend_obj, backend_name, config, output, int(batch), precision,
                    getattr(backend_obj, "device", device), meta, compat(meta))


def _resume(req: _Request, retry_failed: bool, retry_flagged: bool = False) -> _Resumed:
    """Read the existing LUT and the unfinished journal (each checked against the request)."""
    existing: LUT | None = None
    if req.output.exists():
        existing = read_lut(req.output)
        check_compatible(f"existing LUT {str(req.output)!r}", compat(existing.meta), req.compat)
    done: dict[str, Timed] = timed_from_frame(existing.df, keep_failed=not retry_failed) if existing else {}
    journal_records = list(read_journal(req.journal))
    header = next((r for r in journal_records if r.get("type") == "header"), None)
    if header is not None:
        check_compatible(f"unfinished build journal {str(req.journal)!r}", header.get("compat") or {}, req.compat)
    for rec in journal_records:
        if rec.get("type") == "timing" and isinstance(rec.get("key"), str):
            if rec.get("fields", {}).get("status") == "failed" and retry_failed:
                continue
            done[rec["key"]] = Timed(dict(rec.get("fields") or {}), str(rec.get("measured_at") or ""))
    if retry_flagged:  # time again what was flagged as contended or implausible
        done = {k: t for k, t in done.items() if not t.fields.get(FLAG_COLUMN)}
    created = (existing.meta.get("created") if existing else None) or \
        (header.get("created") if header else None) or now_iso()
    return _Resumed(existing, done, header, created)


def _plan(req: _Request, resolutions: Sequence[tuple[int, int]], resumed: _Resumed,
          only_keys: Collection[str] | None) -> _Plan:
    """Enumerate every requested resolution; the distinct keys to time, in enumeration order.
    Pass-throughs (the op returns its input) are analytic 0 µs on every backend: never timed."""
    rows: list[tuple[Entry, int, int]] = []
    specs: dict[str, OpSpec] = {}
    for (h, w) in resolutions:
        entries = req.space.enumerate(int(h), int(w), req.batch)
        if not entries:
            raise UserError(f"the space enumerated nothing at {format_resolution((h, w))}")
        for e in entries:
            rows.append((e, int(h), int(w)))
            if not e.analytic:
                specs.setdefault(e.spec.key, e.spec)
    check_entries_fit(specs.values(), req.precision, req.device, req.space)  # before any work
    done = resumed.done
    todo = [k for k in specs if k not in done and (only_keys is None or k in only_keys)]
    passthroughs = {k for k in todo if _builds_a_passthrough(req.space, specs[k])}
    for k in passthroughs:
        done[k] = PASSTHROUGH
    return _Plan(rows, specs, [k for k in todo if k not in passthroughs])


def _snapshot(req: _Request, resumed: _Resumed, plan: _Plan, complete: bool) -> LUT:
    """The LUT of every finished row: the new rows, and the existing LUT's rows the plan does not
    replace (other resolutions, other positions)."""
    done = resumed.done
    rows = [lut_row(e, h, w, req.batch, req.backend_name, req.precision, req.config.cache, done.get(e.spec.key))
            for e, h, w in plan.rows if e.analytic or e.spec.key in done]
    frames = []
    old_rows = resumed.existing.df if resumed.existing is not None else None
    if old_rows is not None and len(old_rows):
        new_ids = {(e.position, e.op, h, w, req.backend_name, req.precision, req.batch) for e, h, w in plan.rows}
        ids = list(zip(*(old_rows[c] for c in ROW_ID)))
        keep = [(str(i[0]), str(i[1]), int(i[2]), int(i[3]), str(i[4]), str(i[5]), int(i[6])) not in new_ids
                for i in ids]
        frames.append(old_rows[keep])
    frames.append(pd.DataFrame(rows))
    df = dedupe_rows(concat_rows(frames))
    meta = dict(req.meta)
    for k in ("calibration", "plausibility"):
        if resumed.existing is not None and k in resumed.existing.meta and k not in meta:
            meta[k] = resumed.existing.meta[k]
    meta.update({"created": resumed.created, "updated": now_iso(), "complete": complete,
                 "resolutions": [format_resolution(r) for r in
                                 sorted({(int(h), int(w)) for h, w in zip(df["height"], df["width"])})]})
    return LUT(df, meta)


def _time_entries(req: _Request, resumed: _Resumed, plan: _Plan, journal: Journal | None, progress: PhaseProgress,
                  checkpoint_s: float, warn: Callable[[str], None],
                  on_timed: Callable[[str, Measurement], None] | None, canary: Any,
                  checks: PlausibilityConfig | None = None) -> _TimingRun:
    """Time every key of ``plan.todo`` (and what a drift of the canary asks again), journalling
    each timing and checkpointing the Parquet file every ``checkpoint_s`` seconds. With ``checks``,
    each timing's load is recorded and a contended or implausible one is re-timed, then flagged
    (:mod:`latbench.timing.plausibility`)."""
    t_start = last_ckpt = time.monotonic()
    n_failed = 0
    watch = None
    if canary is not None and plan.todo:
        from latbench.timing.canary import DriftWatch, start_canary

        c = start_canary(req.space, {k: plan.specs[k] for k in plan.todo}, req.backend, req.config, canary)
        watch = DriftWatch(c, warn) if c is not None else None
    checker = None
    if checks is not None and plan.todo:
        checker = EntryChecker.start(req.space, req.backend, req.config, req.precision, checks)
        req.meta["plausibility"] = checker.meta()
    queue = list(plan.todo)
    i = 0
    while i < len(queue) or (checker is not None and _recheck_collapse(checker, resumed, plan, queue, journal,
                                                                       progress, warn)):
        key = queue[i]
        i += 1
        progress.advance("timing", 0, key)
        load = checker.watch() if checker is not None else None
        m = time_spec(req.space, plan.specs[key], req.backend, req.config, load)
        timed = Timed.from_measurement(m)
        if checker is not None:
            reasons = checker.review(key, plan.specs[key], m.median_us if m.status == "ok" else None, load.record)
            if reasons and checker.may_retime(key):  # later, so that a passing load can clear
                queue.append(key)
                progress.grow("timing", 1)
            elif reasons:
                checker.flagged_now[key] = reasons[0]
                warn(f"{key}: flagged after re-timing: {'; '.join(reasons)}")
            else:
                checker.flagged_now.pop(key, None)
            timed.fields.update(checker.row_fields(load.record, reasons))
        assert journal is not None  # opened whenever there is something to time
        journal.append({"type": "timing", "key": key, "fields": timed.fields, "measured_at": timed.measured_at})
        resumed.done[key] = timed
        if m.status == "failed":  # "analytic": a pass-through, not timed
            n_failed += 1
            warn(f"{key}: {m.error}")
        if on_timed is not None:
            on_timed(key, m)
        progress.advance("timing")
        if watch is not None:
            redo = watch.timed(key)  # a confirmed drift of the canary: time those entries again
            queue.extend(redo)
            progress.grow("timing", len(redo))
        if time.monotonic() - last_ckpt >= checkpoint_s:
            write_lut(_snapshot(req, resumed, plan, complete=False), req.output)
            last_ckpt = time.monotonic()
    if checker is not None:
        req.meta["plausibility"] = checker.meta()
    return _TimingRun(n_failed, round(time.monotonic() - t_start, 3), watch, checker)


def _recheck_collapse(checker: EntryChecker, resumed: _Resumed, plan: _Plan, queue: list[str],
                      journal: Journal | None, progress: PhaseProgress, warn: Callable[[str], None]) -> bool:
    """Once the queue is empty: find distinct ops collapsing on one value; queue those that may be
    re-timed (True: the loop goes on) and flag the others (their re-timing did not help)."""
    timings = {k: t.fields.get("median_us") for k, t in resumed.done.items()
               if k in plan.specs and t.fields.get("status") == "ok"}
    groups = checker.collapse(timings, plan.specs)
    again = [k for k in groups if checker.may_retime(k)]
    if again:
        queue.extend(again)
        progress.grow("timing", len(again))
        return True
    for k, reason in groups.items():
        t = resumed.done[k]
        if reason not in str(t.fields.get(FLAG_COLUMN) or ""):
            t.fields[FLAG_COLUMN] = "; ".join(x for x in (t.fields.get(FLAG_COLUMN), reason) if x)
            checker.flagged_now[k] = reason
            if journal is not None:
                journal.append({"type": "timing", "key": k, "fields": t.fields, "measured_at": t.measured_at})
    if groups:
        warn(f"{len(groups)} timing(s) flagged after re-timing: {next(iter(groups.values()))}")
    return False


def _finish(req: _Request, resumed: _Resumed, plan: _Plan, run: _TimingRun, canary: Any) -> LUT:
    """Write the final LUT (``complete`` when no key of the space is missing) with the build's record."""
    specs = plan.specs
    lut = _snapshot(req, resumed, plan, complete=all(k in resumed.done for k in specs))
    lut.meta["build"] = {"timed": len(plan.todo), "reused": len(specs) - len(plan.todo), "failed_now": run.failed,
                         "distinct_timings": len(specs), "rows": len(plan.rows), "elapsed_s": run.elapsed_s}
    if run.watch is not None:
        lut.meta["build"]["canary"] = {**run.watch.canary.record.to_dict(), **canary.to_dict()}
        run.watch.canary.close()
    write_lut(lut, req.output)
    return lut


def build_lut(space: Any, resolutions: Sequence[tuple[int, int]], backend: str | Any, config: TimingConfig,
              output: str | os.PathLike, name: str, batch: int = 1, precision: str = "fp32",
              device: str = "cpu", progress: bool = True, *, retry_failed: bool = False,
              checkpoint_s: float = 30.0, warn: Callable[[str], None] | None = None,
              on_timed: Callable[[str, Measurement], None] | None = None,
              only_keys: Collection[str] | None = None, canary: Any = None,
              checks: PlausibilityConfig | None = None, retry_flagged: bool = False) -> LUT:
    """Build (or finish) the LUT at ``output`` and return it: resume → plan → timing loop → finish.
    See the module docstring.

    ``backend`` is a registered backend name or an instance; ``retry_failed`` re-times keys that
    failed in an earlier run; ``on_timed(key, measurement)`` is called after each new timing;
    ``only_keys`` restricts the timing to those op keys (one rank's share of a sharded build,
    :mod:`latbench.build.shard`): the LUT then holds the analytic rows and the rows of those keys, and
    its metadata says ``complete`` only if nothing of the space is missing. ``canary`` (a
    :class:`latbench.timing.canary.CanaryConfig`) re-times one op at intervals and times again what was
    measured during a drift (recorded in ``meta["build"]["canary"]``); None: no canary.
    ``checks`` (a :class:`latbench.timing.plausibility.PlausibilityConfig`) records the load around
    each timing, probes the machine's throughput once, and re-times then flags (column ``flag``)
    contended or physically implausible timings; None: none of this. ``retry_flagged`` re-times
    the keys an earlier run flagged.
    """
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    if not resolutions:
        raise UserError("no resolution given")
    if batch < 1:
        raise UserError(f"batch must be >= 1, not {batch}")
    req = _request(space, backend, config, output, name, batch, precision, device)
    lock = FileLock(lock_path(req.output), purpose="a LUT build", on_stale=warn)
    lock.acquire()
    journal: Journal | None = None
    try:
        resumed = _resume(req, retry_failed, retry_flagged)
        plan = _plan(req, resolutions, resumed, only_keys)
        try:
            if plan.todo:
                journal = Journal(req.journal)
                if resumed.header is None:
                    journal.append({"type": "header", "compat": req.compat, "created": resumed.created,
                                    "pid": os.getpid()})
            n = len(plan.specs)
            with PhaseProgress(progress, transient=False) as bar:
                bar.start_phase("timing", n, n - len(plan.todo))
                run = _time_entries(req, resumed, plan, journal, bar, checkpoint_s, warn, on_timed, canary, checks)
            lut = _finish(req, resumed, plan, run, canary)
        except BaseException:
            # Ctrl-C or a crash: make the Parquet file reflect everything finished so far.
            if resumed.done:
                try:
                    write_lut(_snapshot(req, resumed, plan, complete=False), req.output)
                except Exception:
                    pass
            raise
        if journal is not None:
            journal.close()
            journal = None
        if req.journal.exists():
            req.journal.unlink()
        return lut
    finally:
        if journal is not None:
            journal.close()
        lock.release()


def raise_if_mostly_failed(lut: LUT, output: str) -> None:
    """:class:`UserError` (exit status 2) when most distinct timings of ``lut`` failed: a build
    that produced mostly holes (out of memory, a backend that cannot run the ops) is not a success,
    even though the LUT file keeps what did work."""
    df = lut.df[lut.df["status"].isin(("ok", "failed"))].drop_duplicates(subset=["key"])
    failed = df[df["status"] == "failed"]
    if len(failed) * 2 <= len(df) or failed.empty:
        return
    first = str(failed["error"].iloc[0] or "no reason recorded").splitlines()[0][:160]
    raise UserError(f"{len(failed)} of {len(df)} distinct timings failed (e.g. {failed['key'].iloc[0]}: {first}); "
                    f"{output} records them as failed: fix the cause, then rerun with --retry-failed")
