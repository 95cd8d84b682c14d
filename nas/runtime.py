"""Generic run-time pieces for long training jobs: processes, RNG, checkpoints, data order, progress.

Nothing here knows about LGCNet. What already exists elsewhere is reused rather than repeated:
device names come from :func:`latbench.device.resolve_device`, atomic writes and JSON-lines logs
from :mod:`latbench.files` (``atomic_write``, ``Journal``, ``truncate_journal`` for a log cut back to a
checkpoint's position on resume). ``nas train`` and ``nas search`` both run on these pieces.

- :class:`DistContext` / :func:`init_distributed` / :func:`teardown_distributed`: one process per
  device under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment), NCCL on
  GPUs and gloo on the CPU; a plain single process otherwise. :func:`all_reduce_sum` and
  :func:`broadcast_object` move small values between ranks.
- :func:`capture_rng_state` / :func:`restore_rng_state`: every global generator (Python, NumPy,
  torch CPU, torch CUDA) as tensors and plain values, so a checkpoint holding them loads with
  ``torch.load(weights_only=True)``.
- :func:`save_checkpoint` / :func:`load_checkpoint`: ``torch.save`` through a temporary file and
  ``os.replace``; loading never unpickles code (``weights_only=True``) and turns any failure into
  a one-line :class:`UserError`.
- :class:`EpochSampler`: the data order as a pure function of ``(seed, epoch)``, sharded over
  ranks, able to start in the middle of an epoch; it yields ``(epoch, index)`` so a data set can
  draw the item's augmentation from the epoch it belongs to (see :mod:`nas.data.base`).
- :func:`shard_indices`: an evaluation split divided over ranks without padding or duplicates.
- :func:`progress_bar`: a rich progress bar on an interactive terminal of the main process, and
  nothing otherwise.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from latbench.device import resolve_device
from latbench.errors import UserError
from latbench.files import atomic_write_bytes


# --------------------------------------------------------------------------- processes

@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly one-process) job and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str | None) -> DistContext:
    """Join the ``torchrun`` job this process belongs to, or run as a single process.

    ``device``: ``None`` (first GPU if any, else CPU), ``cpu``, ``cuda`` or ``cuda:N``. Under
    torchrun with CUDA each process takes ``cuda:LOCAL_RANK``; the process group uses NCCL on
    GPUs and gloo on the CPU.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device)
    if world <= 1:
        if dev.startswith("cuda"):
            torch.cuda.set_device(torch.device(dev))
        return DistContext(0, 1, 0, dev, False)
    if dev.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s)")
        dev = f"cuda:{local}"
        torch.cuda.set_device(torch.device(dev))
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        created = True
    return DistContext(rank, world, local, dev, created)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """The element-wise sum of ``values`` over every rank, in float64 (``values`` in a single process)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=ctx.device if ctx.device.startswith("cuda") else "cpu")
    dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (identity in a single process)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- random state

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Every global generator's state, as tensors / ints / floats (``weights_only``-loadable)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": None if py_gauss is None else float(py_gauss)},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; a generator the state does not name is left alone."""
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["gauss"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """``torch.save(payload)`` atomically: readers see the old file or the new one, never half.

    The file is serialised in memory first and written with :func:`latbench.files.atomic_write`,
    so a full or read-only disk is an :class:`~latbench.errors.OutputError` naming the file
    (``torch.save`` writing itself would turn it into an opaque ``RuntimeError``)."""
    p = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(p, buf.getbuffer().tobytes())
    return p


def _load_failure(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in our words. torch's own text is not
    passed on: it advises ``weights_only=False``, which is the wrong advice for a file from
    anywhere (it would run the file's code)."""
    text = str(exc)
    low = text.lower()
    if "weights only load failed" in low or "unsupported global" in low or "weights_only" in low:
        return ("it holds Python objects other than tensors and plain containers; refused, because "
                "loading them could run code from the file (only tensors-only files are read)")
    if isinstance(exc, EOFError) or "ran out of input" in low:
        return "the file is empty or truncated"
    if "zip" in low or "central directory" in low or "invalid load key" in low or "magic number" in low \
            or isinstance(exc, pickle.UnpicklingError) or "pytorchstreamreader" in low:
        return "it is not a PyTorch checkpoint file (corrupt, truncated or another format)"
    first = text.strip().splitlines()[0][:160] if text.strip() else type(exc).__name__
    return f"it is not a usable tensors-only PyTorch file ({type(exc).__name__}: {first})"


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Load a file written by :func:`save_checkpoint` (or any tensors-only file) on the CPU.

    ``weights_only=True``: a file that would need to run code to load is refused, with the reason.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory; give the .pt file")
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle / zip / weights-only errors all mean "unusable"
        raise UserError(f"cannot read {what} {p}: {_load_failure(exc)}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} {p} holds a {type(obj).__name__}, not a dictionary of tensors")
    return obj


# --------------------------------------------------------------------------- data order

def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of ``range(n)`` in ``epoch`` of a run seeded with ``seed`` (shuffled)."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1))
    return torch.randperm(n, generator=g).tolist()


class EpochSampler(Sampler):
    """Batches-aligned, shuffled, rank-sharded order that can start mid-epoch.

    Each epoch's order is :func:`epoch_permutation`; the tail that does not fill a global batch
    (``batch_size * world_size``) is dropped, so every rank takes the same number of steps. Rank
    ``r`` takes batch rows ``r*b .. (r+1)*b - 1`` of each global batch. ``start_step`` skips that
    many steps of the epoch (resuming). Yields ``(epoch, index)``.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1, start_step: int = 0):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler geometry: batch {batch_size}, rank {rank}/{world_size}")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    @staticmethod
    def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
        return n // (batch_size * world_size)

    def _indices(self) -> list[int]:
        order = epoch_permutation(self.n, self.seed, self.epoch)
        g = self.batch_size * self.world_size
        out: list[int] = []
        for step in range(self.start_step, self.steps_per_epoch(self.n, self.batch_size, self.world_size)):
            lo = step * g + self.rank * self.batch_size
            out.extend(order[lo:lo + self.batch_size])
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self._indices()])

    def __len__(self) -> int:
        steps = self.steps_per_epoch(self.n, self.batch_size, self.world_size)
        return max(0, steps - self.start_step) * self.batch_size


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Indices ``rank, rank + world, ...`` of ``range(n)``: every item exactly once over ranks."""
    return list(range(rank, n, world_size))


# --------------------------------------------------------------------------- progress

@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True, *, completed: int = 0,
                 transient: bool = True) -> Iterator[Callable[..., None]]:
    """``with progress_bar(n, "epoch 1") as advance: advance(1, loss=0.3)``.

    latbench's one progress bar (:class:`latbench.progress.PhaseProgress`, with the latest keyword
    values as its text), drawn only when ``enabled`` and stderr is an interactive terminal;
    otherwise ``advance`` does nothing. ``completed``: steps already done (a resumed run);
    ``transient``: erase the bar when done.
    """
    from latbench.progress import PhaseProgress

    with PhaseProgress(enabled, transient=transient, terminal_only=True) as bar:
        bar.start_phase(description, total, completed)

        def advance(n: int = 1, **status: Any) -> None:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in status.items())
            bar.advance(description, n, text)

        yield advance


__all__ = [
    "DistContext", "EpochSampler", "all_reduce_sum", "broadcast_object", "capture_rng_state", "epoch_permutation",
    "init_distributed", "load_checkpoint", "progress_bar", "restore_rng_state", "save_checkpoint",
    "seed_everything", "shard_indices", "teardown_distributed",
]


def unused_parameters(model: torch.nn.Module, size: int | tuple[int, int]) -> list[str]:
    """Parameters one forward/backward leaves without a gradient (e.g. a cell input whose every
    edge chose ``zero``): DistributedDataParallel must be told about them, or its first backward
    fails waiting for their gradients. Probed on a CPU copy in eval mode, so the BatchNorm
    statistics and the RNG of ``model`` are untouched."""
    import copy

    h, w = (size, size) if isinstance(size, int) else size
    probe = copy.deepcopy(model).cpu().float().eval()
    probe(torch.zeros(1, 3, int(h), int(w))).float().sum().backward()
    return [n for n, p in probe.named_parameters() if p.requires_grad and p.grad is None]
