"""How much memory a device has, and refusing work that cannot fit before it starts.

Estimates are *lower bounds* (what must be resident at once, at the least): a request above the
device's whole memory cannot succeed, so refusing it up front never refuses something that could
have run, and the user hears the estimate instead of an allocator traceback minutes later. What
an estimate misses is caught when it happens: the CLI turns an out-of-memory error into one line
(:mod:`latbench.lazycli`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable

from latbench.errors import ResourceError

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _meminfo_kib(*keys: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            vals = {}
            for line in fh:
                name, _, rest = line.partition(":")
                if name in keys:
                    vals[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return sum(vals.values()) if vals else None


def device_capacity(device: str) -> int | None:
    """Bytes a process on ``device`` could ever use: a GPU's total memory; for the CPU, physical
    memory plus swap. None when unknown (then nothing is refused)."""
    dev = str(device)
    if dev.startswith("cuda"):
        try:
            import torch

            index = int(dev.split(":", 1)[1]) if ":" in dev else 0
            return int(torch.cuda.get_device_properties(index).total_memory)
        except Exception:  # noqa: BLE001 - no CUDA here: nothing to refuse by
            return None
    kib = _meminfo_kib("MemTotal", "SwapTotal")
    if kib:
        return kib * 1024
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(need_bytes: float, device: str, what: str, detail: str = "", hint: str = "") -> None:
    """:class:`ResourceError` (one line, with the estimate) when ``need_bytes`` exceeds all the
    memory ``device`` has."""
    cap = device_capacity(device)
    if cap is None or need_bytes <= cap:
        return
    msg = f"{what} needs at least {format_bytes(need_bytes)} of memory"
    if detail:
        msg += f" ({detail})"
    msg += f", but {device} has {format_bytes(cap)} in all"
    if hint:
        msg += f"; {hint}"
    raise ResourceError(msg)


def tensor_bytes(shape: Iterable[int], precision: str = "fp32") -> int:
    return math.prod(int(d) for d in shape) * BYTES_PER_ELEMENT.get(precision, 4)


def _output_bytes(space: Any, spec: Any, precision: str) -> int:
    """Bytes of what ``spec``'s op returns, from a forward pass on the ``meta`` device (shapes
    only); 0 when the op cannot run there."""
    try:
        import torch

        module = space.build_op(spec)
        module = module.to("meta") if isinstance(module, torch.nn.Module) else module
        with torch.no_grad():
            out = module(*[torch.empty(tuple(s), device="meta") for s in spec.inputs])
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return sum(tensor_bytes(o.shape, precision) for o in outs if isinstance(o, torch.Tensor))
    except Exception:  # noqa: BLE001 - an estimate: the inputs alone still bound it
        return 0


def check_entries_fit(entries: Iterable[Any], precision: str, device: str, space: Any = None) -> None:
    """Before a LUT build: the entry with the largest inputs must fit the device with its inputs
    and (given the ``space`` that builds it) its output at once — a lower bound of what timing it
    needs — else :class:`ResourceError` naming the entry and the estimate."""
    worst, worst_spec = 0, None
    for e in entries:
        spec = getattr(e, "spec", e)
        n = sum(tensor_bytes(s, precision) for s in getattr(spec, "inputs", ()))
        if n > worst:
            worst, worst_spec = n, spec
    if worst_spec is None:
        return
    out = _output_bytes(space, worst_spec, precision) if space is not None else 0
    check_fits(worst + out, device, f"timing {getattr(worst_spec, 'key', '?')}",
               "its input and output tensors" if out else "its input tensors alone", "lower --resolution or --batch")
