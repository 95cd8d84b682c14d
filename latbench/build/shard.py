"""One LUT build sharded over the GPUs of one machine (``latbench build-lut --shard`` under torchrun).

.. code-block:: bash

    torchrun --standalone --nproc_per_node 8 -m latbench.cli build-lut --shard --gpu h100 \\
        --resolution 769x1537 --output luts/h100.parquet

Every rank is one process on one GPU (``cuda:LOCAL_RANK``; ``--device cpu`` runs CPU ranks, as the
tests do over gloo). The ranks talk over a gloo process group (small control messages only: no
tensors travel, so no NCCL is needed) and share the output's folder:

1. **Check the ranks.** Every rank describes its device; the build is refused (one ``Error:``
   line, exit status 2) when the ranks run on different hosts, on GPUs of different models
   (name or compute capability: one LUT is one kind of GPU), or two ranks on one GPU (they
   would time each other). CPU ranks share the CPU's cores; allowed (for tests), with a warning.
2. **Plan (rank 0).** Rank 0 takes the output's lock for the whole build, folds any shard file or
   journal left by an earlier, interrupted run into its shard file (without timing anything),
   reads what the output LUT and the shard files already hold, checks it was built with the same
   space, backend, protocol and kind of GPU, and deals the op keys still to time round-robin over
   the ranks (enumeration order interleaves positions and resolutions, so the shares are alike).
3. **Time (every rank).** Each rank runs the ordinary resumable build
   (:func:`latbench.build.builder.build_lut`, ``only_keys`` = its share) into its own shard file
   ``OUTPUT.shard<RANK>.parquet`` (journal, checkpoints, lock: as crash-safe as a plain build).
4. **Merge (rank 0).** Once every rank has finished, rank 0 merges the output and the shard files
   into the output (a timing beats an analytic row beats a failure; new beats old), writes it
   atomically and removes the shard files. The metadata gets ``shard``: the world size, each
   rank's device (index, name, UUID, PCI bus) and ``timed_on``: for every op key timed by a
   shard, the device (``cuda:N``) that timed it.

Resumable: rerun the same command (any number of ranks, or a plain ``build-lut`` after the merge)
and only what is missing is timed; a killed rank loses at most the entry it was timing.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import pandas as pd
import torch

from latbench.errors import UserError

SHARD_RE = re.compile(r"\.shard(\d+)\.parquet(?:\.partial\.jsonl)?$")
#: The gloo group waits this long for a slow rank (a rank's share can take hours on a slow backend).
GROUP_TIMEOUT = timedelta(hours=24)
STATUS_ORDER = {"failed": 0, "analytic": 1, "ok": 2}


def shard_path(output: str | os.PathLike, rank: int) -> Path:
    return Path(f"{output}.shard{int(rank)}.parquet")


def existing_shards(output: str | os.PathLike) -> list[Path]:
    """Shard files (or journals of shard builds) left next to ``output``, by rank."""
    out = Path(output)
    folder = out.parent if str(out.parent) else Path(".")
    ranks = set()
    if folder.is_dir():
        prefix = out.name + ".shard"
        for p in folder.iterdir():
            if p.name.startswith(prefix):
                m = SHARD_RE.search(p.name)
                if m and p.name[: m.start()] == out.name:
                    ranks.add(int(m.group(1)))
    return [shard_path(output, r) for r in sorted(ranks)]


# ---- ranks ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int
    group: bool  # a process group was created here

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"environment variable {name}={os.environ.get(name)!r} is not an integer") from None


def join() -> Ranks:
    """This process's place in the torchrun job (a gloo process group), or a job of one."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world <= 1:
        return Ranks(0, 1, 0, False)
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
        created = True
    return Ranks(rank, world, local, created)


def leave(ranks: Ranks) -> None:
    if ranks.group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _gather(ranks: Ranks, obj: Any) -> list[Any]:
    if ranks.world <= 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def _broadcast(ranks: Ranks, obj: Any) -> Any:
    if ranks.world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RankFailed(click.exceptions.Exit):
    """Another rank failed and rank 0 reports why: this rank ends quietly with exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def agree(ranks: Ranks, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank and return this rank's result, unless it failed on some rank:
    then every rank stops. Rank 0 raises the first failing rank's user error (one ``Error:``
    line); a crash is re-raised where it happened (with its traceback); the other ranks raise
    :class:`RankFailed` (exit status 2, no message)."""
    exc: BaseException | None = None
    value = None
    try:
        value = fn()
    except UserError as e:
        exc = e
    except Exception as e:  # noqa: BLE001 - gathered, then re-raised below
        exc = e
    err = None if exc is None else (exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")
    errors = _gather(ranks, err)
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if not failed:
        return value
    if exc is not None and not isinstance(exc, UserError):
        raise exc
    first_rank, first_err = failed[0]
    if ranks.main:
        raise UserError((f"rank {first_rank}: " if first_rank != 0 else "") + first_err)
    raise RankFailed(first_err)


def rank_device(device: str | None, ranks: Ranks) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA request (or none on a GPU machine),
    ``cpu`` for ``cpu``. A specific ``cuda:N`` is refused: each rank takes its own GPU."""
    text = (device or "").strip().lower()
    if text == "cpu":
        return "cpu"
    if text not in ("", "cuda"):
        raise UserError(f"--shard gives every rank its own GPU (cuda:LOCAL_RANK); use --device cuda (or leave it "
                        f"out) instead of --device {device}, and CUDA_VISIBLE_DEVICES to choose the GPUs")
    if not torch.cuda.is_available():
        if text == "cuda":
            raise UserError("--device cuda requested but no CUDA GPU is available; use --device cpu")
        return "cpu"
    if ranks.local_rank >= torch.cuda.device_count():
        raise UserError(f"rank {ranks.rank} has LOCAL_RANK {ranks.local_rank} but this machine has "
                        f"{torch.cuda.device_count()} GPU(s): start at most that many processes per node")
    torch.cuda.set_device(ranks.local_rank)
    return f"cuda:{ranks.local_rank}"


def device_facts(device: str) -> dict[str, Any]:
    """What the rank check compares and the merged LUT records per rank."""
    from latbench.device import describe_device

    info = describe_device(device)
    facts = {"device": device, "host": info.get("host"), "type": info.get("type"), "name": info.get("name"),
             "compute_capability": info.get("compute_capability"), "uuid": info.get("uuid")}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        facts["pci_bus"] = f"{getattr(p, 'pci_domain_id', 0):08x}:{getattr(p, 'pci_bus_id', 0):02x}:" \
                           f"{getattr(p, 'pci_device_id', 0):02x}"
        if not facts["uuid"] and getattr(p, "uuid", None) is not None:
            facts["uuid"] = str(p.uuid)
    return facts


def check_rank_devices(facts: Sequence[dict[str, Any]], warn: Callable[[str], None] | None = None) -> None:
    """Refuse ranks on several hosts, on GPUs of different models, or two ranks on one GPU."""
    hosts = sorted({str(f.get("host")) for f in facts})
    if len(hosts) > 1:
        raise UserError(f"--shard builds one LUT on the GPUs of one machine, but the ranks run on {', '.join(hosts)}; "
                        "start torchrun on one node")
    kinds = {(f.get("type"), f.get("name"), f.get("compute_capability")) for f in facts}
    if len(kinds) > 1:
        shown = "; ".join(f"rank {r}: {f.get('device')} {f.get('name')} (cc {f.get('compute_capability')})"
                          for r, f in enumerate(facts))
        raise UserError(f"the ranks' devices are different models ({shown}): one LUT is timed on one kind of GPU; "
                        "choose identical GPUs with CUDA_VISIBLE_DEVICES")
    if all(f.get("type") == "cuda" for f in facts):
        seen: dict[str, int] = {}
        for r, f in enumerate(facts):
            ident = str(f.get("uuid") or f.get("pci_bus") or f.get("device"))
            if ident in seen:
                raise UserError(f"ranks {seen[ident]} and {r} would time on the same GPU ({f.get('device')}, "
                                f"{ident}): each rank needs a GPU of its own")
            seen[ident] = r
    elif len(facts) > 1 and warn is not None:
        warn(f"{len(facts)} CPU ranks share this machine's cores: their timings disturb each other "
             "(fine for testing the sharded build, not for a LUT to keep)")


# ---- planning and merging (rank 0) -----------------------------------------------------------------
def _plan_keys(space: Any, resolutions: Sequence[tuple[int, int]], batch: int) -> dict[str, Any]:
    specs: dict[str, Any] = {}
    for (h, w) in resolutions:
        for e in space.enumerate(int(h), int(w), int(batch)):
            if not e.analytic:
                specs.setdefault(e.spec.key, e.spec)
    return specs


def _device_label(d: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    label = f"cuda:{d.get('index')}" if d.get("type") == "cuda" else str(d.get("type") or "cpu")
    return label, {k: d.get(k) for k in ("name", "compute_capability", "uuid", "index", "host") if d.get(k) is not None}


def deal(keys: Sequence[str], world: int) -> list[list[str]]:
    """Round-robin shares of ``keys`` (in order) for ``world`` ranks."""
    return [list(keys[r::world]) for r in range(world)]


def _merge_frames(existing: pd.DataFrame | None, shards: Sequence[pd.DataFrame]) -> pd.DataFrame:
    from latbench.lut.table import ROW_ID, concat_rows

    frames, source = [], []
    if existing is not None and len(existing):
        frames.append(existing)
        source.append(0)
    for i, df in enumerate(shards, start=1):
        if len(df):
            frames.append(df)
            source.append(i)
    if not frames:
        return concat_rows([])
    tagged = []
    for df, src in zip(frames, source):
        d = df.copy()
        d["_from_shard"] = int(src > 0)
        d["_order"] = src
        tagged.append(d)
    df = concat_rows(tagged)
    df["_status"] = df["status"].map(STATUS_ORDER).fillna(-1)
    # shard rows beat the old output's; among them a timing beats an analytic row beats a failure
    df = df.sort_values(["_from_shard", "_status", "_order"], kind="stable")
    df = df.drop_duplicates(subset=list(ROW_ID), keep="last")
    return df.drop(columns=["_from_shard", "_order", "_status"]).reset_index(drop=True)


@dataclass
class _ShardRun:
    """One rank's view of a sharded build: the request, then what the steps find."""

    space: Any
    resolutions: Sequence[tuple[int, int]]
    backend: str
    backend_opts: dict[str, Any]
    config: Any
    output: Path
    name: str
    batch: int
    precision: str
    device: str | None
    progress: bool
    retry_failed: bool
    warn: Callable[[str], None]
    on_timed: Callable[[str, Any], None] | None
    ranks: Ranks
    dev: str = "cpu"
    backend_obj: Any = None
    facts: list[dict[str, Any]] = field(default_factory=list)
    request_meta: dict[str, Any] = field(default_factory=dict)
    lock: Any = None  # rank 0's FileLock on the output, held for the whole build

    def setup(self) -> None:
        """Every rank: its device and backend."""
        from latbench.timing import get_backend

        self.dev = rank_device(self.device, self.ranks)
        try:
            self.backend_obj = get_backend(self.backend, device=self.dev, precision=self.precision,
                                           threads=self.config.threads, **self.backend_opts)
        except TypeError as exc:
            raise UserError(f"backend {self.backend!r} does not take the option(s) "
                            f"{', '.join(self.backend_opts) or '(none)'}: {exc}") from None

    def plan(self) -> dict[str, Any] | None:
        """Rank 0: lock the output, fold leftovers of an interrupted run, deal the keys to time."""
        from latbench.build import builder as B
        from latbench.build.rows import check_compatible, compat, timed_from_frame
        from latbench.files import FileLock, lock_path
        from latbench.lut.table import read_lut

        if not self.ranks.main:
            return None
        self.request_meta.update(B.request_metadata(self.space, self.backend_obj, self.config, self.name, self.batch,
                                                    self.precision, self.dev))
        wanted = compat(self.request_meta)
        self.lock = FileLock(lock_path(self.output), purpose="a LUT build", on_stale=self.warn)
        self.lock.acquire()
        existing = None
        if self.output.exists():
            existing = read_lut(self.output)
            check_compatible(f"existing LUT {str(self.output)!r}", compat(existing.meta), wanted)
        for p in existing_shards(self.output):  # fold an interrupted run's journals into its shard files
            B.build_lut(self.space, self.resolutions, self.backend_obj, self.config, p, self.name, batch=self.batch,
                        precision=self.precision, device=self.dev, progress=False, warn=self.warn, only_keys=set())
        done: dict[str, Any] = {}
        if existing is not None:
            done.update(timed_from_frame(existing.df, keep_failed=not self.retry_failed))
        for p in existing_shards(self.output):
            done.update(timed_from_frame(read_lut(p).df, keep_failed=not self.retry_failed))
        specs = _plan_keys(self.space, self.resolutions, self.batch)
        todo = [k for k in specs if k not in done]
        # pass-throughs are dealt too: each rank's build records them as analytic rows, untimed
        return {"shares": deal(todo, self.ranks.world), "distinct": len(specs), "reused": len(specs) - len(todo)}

    def work(self, mine: list[str]) -> dict[str, Any]:
        """Every rank: its share into its shard file (an ordinary resumable build)."""
        from latbench.build import builder as B

        if not mine:
            return {"rank": self.ranks.rank, "device": self.dev, "timed": 0, "failed_now": 0, "elapsed_s": 0.0}
        lut = B.build_lut(self.space, self.resolutions, self.backend_obj, self.config,
                          shard_path(self.output, self.ranks.rank), self.name, batch=self.batch,
                          precision=self.precision, device=self.dev, progress=self.progress and self.ranks.main,
                          retry_failed=self.retry_failed, warn=self.warn, on_timed=self.on_timed, only_keys=set(mine))
        b = lut.meta.get("build", {})
        return {"rank": self.ranks.rank, "device": self.dev, "timed": b.get("timed", 0),
                "failed_now": b.get("failed_now", 0), "elapsed_s": b.get("elapsed_s")}

    def merge(self, planned: dict[str, Any], per_rank: list[dict[str, Any]], t0: float) -> Any:
        """Rank 0: merge the output and the shard files into the output, then remove the shards."""
        from latbench.lut.table import LUT, now_iso, read_lut, write_lut
        from latbench.space import format_resolution

        if not self.ranks.main:
            return None
        existing = read_lut(self.output) if self.output.exists() else None
        shards = [(p, read_lut(p)) for p in existing_shards(self.output)]
        df = _merge_frames(existing.df if existing is not None else None, [s.df for _, s in shards])
        devices, timed_on = _timed_on(existing, [s for _, s in shards])
        meta = dict(self.request_meta)
        if existing is not None and "calibration" in existing.meta:
            meta["calibration"] = existing.meta["calibration"]
        created = (existing.meta.get("created") if existing is not None else None) or \
            min((s.meta.get("created") for _, s in shards if s.meta.get("created")), default=None) or now_iso()
        lut = LUT(df, meta)
        missing = [(h, w) for h, w in self.resolutions if lut.coverage(self.space, h, w, self.batch).missing]
        meta.update({
            "created": created, "updated": now_iso(), "complete": not missing,
            "resolutions": [format_resolution(r) for r in lut.resolutions()],
            "shard": {"world_size": self.ranks.world, "ranks": self.facts, "devices": devices, "timed_on": timed_on,
                      "assignment": "round-robin over the op keys left to time"},
            "build": {"timed": sum(int(r["timed"]) for r in per_rank), "reused": planned["reused"],
                      "failed_now": sum(int(r["failed_now"]) for r in per_rank),
                      "distinct_timings": planned["distinct"], "rows": len(df),
                      "elapsed_s": round(time.monotonic() - t0, 3), "per_rank": per_rank},
        })
        lut = LUT(df, meta)
        write_lut(lut, self.output)
        for p, _ in shards:
            p.unlink(missing_ok=True)
        return lut


def _timed_on(existing: Any, shards: Sequence[Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The devices of a merged LUT's sources and, per op key timed by one, the device that timed it
    (an earlier sharded output's record kept; a plain build's rows: its device)."""
    old_shard = (existing.meta.get("shard") or {}) if existing is not None else {}
    devices = dict(old_shard.get("devices") or {})
    timed_on = dict(old_shard.get("timed_on") or {})
    sources = [(s.meta, s.df) for s in shards]
    if existing is not None and "shard" not in existing.meta:
        sources.insert(0, (existing.meta, existing.df))
    for src_meta, src_df in sources:
        label, facts_of = _device_label(src_meta.get("device") or {})
        devices[label] = facts_of
        for key in src_df[src_df["status"].isin(["ok", "failed"])]["key"].unique():
            timed_on[str(key)] = label
    return devices, timed_on


def sharded_build(space: Any, resolutions: Sequence[tuple[int, int]], backend: str, backend_opts: dict[str, Any],
                  config: Any, output: str | os.PathLike, name: str, *, batch: int = 1, precision: str = "fp32",
                  device: str | None = None, progress: bool = True, retry_failed: bool = False,
                  warn: Callable[[str], None] | None = None,
                  on_timed: Callable[[str, Any], None] | None = None) -> Any:
    """Run this rank's part of a sharded build: check the ranks → plan (rank 0) → time (every
    rank) → merge (rank 0); see the module docstring. Returns the merged
    :class:`~latbench.lut.table.LUT` on rank 0 and None on the other ranks."""
    from latbench.files import check_writable

    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    output = check_writable(output)
    ranks = join()
    run = _ShardRun(space, resolutions, backend, backend_opts, config, output, name, batch, precision, device,
                    progress, retry_failed, warn, on_timed, ranks)
    try:
        agree(ranks, run.setup)
        run.facts = _gather(ranks, agree(ranks, lambda: device_facts(run.dev)))
        agree(ranks, lambda: check_rank_devices(run.facts, warn if ranks.main else None))
        planned = _broadcast(ranks, agree(ranks, run.plan))
        t0 = time.monotonic()
        per_rank = _gather(ranks, agree(ranks, lambda: run.work(planned["shares"][ranks.rank])))
        merged = agree(ranks, lambda: run.merge(planned, per_rank, t0))
        return merged if ranks.main else None
    finally:
        if run.lock is not None:
            run.lock.release()
        leave(ranks)
