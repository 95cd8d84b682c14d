"""Facts about the machine a measurement ran on (for LUT provenance) and NVML access.

Nothing here changes any setting; NVML is optional (``nvidia-ml-py``, module ``pynvml``).
"""

from __future__ import annotations

import platform
import socket
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from latbench.errors import UserError


def resolve_device(text: str | None) -> str:
    """``None`` -> ``cuda:0`` if a GPU is available else ``cpu``; ``cuda`` -> ``cuda:0``.

    Raises :class:`UserError` for a malformed device or a CUDA device that is not there.
    """
    if text is None or str(text).strip() == "":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    t = str(text).strip().lower()
    try:
        dev = torch.device(t)
    except (RuntimeError, ValueError):
        raise UserError(f"malformed device {text!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise UserError(f"unsupported device {text!r}: expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"device {text!r} requested but no CUDA GPU is available (torch "
                        f"{torch.__version__}); use --device cpu")
    index = dev.index or 0
    if index >= torch.cuda.device_count():
        raise UserError(f"no CUDA device {text!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return f"cuda:{index}"


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pkg_version(*names: str) -> str | None:
    for n in names:
        try:
            return version(n)
        except PackageNotFoundError:
            continue
    return None


def software_versions() -> dict[str, Any]:
    """torch, CUDA, cuDNN, ONNX Runtime, TensorRT (if installed), latbench, python."""
    from latbench import __version__

    cudnn = None
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:
        pass
    return {
        "latbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "onnxruntime": _pkg_version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": _pkg_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
    }


def pynvml_module() -> Any:
    """The initialised ``pynvml`` module, or None if NVML is not available here."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def nvml_handle(device_index: int) -> Any:
    """The NVML handle of torch's CUDA device ``device_index`` (matched by PCI bus id, so that
    ``CUDA_VISIBLE_DEVICES`` renumbering is respected), or None."""
    nvml = pynvml_module()
    if nvml is None:
        return None
    try:
        props = torch.cuda.get_device_properties(device_index)
        bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        return nvml.nvmlDeviceGetHandleByPciBusId(bus.encode())
    except Exception:
        try:
            return nvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception:
            return None


def _nvml_facts(device_index: int) -> dict[str, Any]:
    nvml = pynvml_module()
    handle = nvml_handle(device_index)
    if nvml is None or handle is None:
        return {}
    facts: dict[str, Any] = {}

    def get(key, fn, *args):
        try:
            v = fn(handle, *args)
            facts[key] = v.decode() if isinstance(v, bytes) else v
        except Exception:
            pass

    try:
        v = nvml.nvmlSystemGetDriverVersion()
        facts["driver"] = v.decode() if isinstance(v, bytes) else v
    except Exception:
        pass
    get("max_sm_clock_mhz", nvml.nvmlDeviceGetMaxClockInfo, nvml.NVML_CLOCK_SM)
    get("power_limit_w", nvml.nvmlDeviceGetEnforcedPowerLimit)
    if "power_limit_w" in facts:
        facts["power_limit_w"] = facts["power_limit_w"] / 1000.0
    get("serial", nvml.nvmlDeviceGetSerial)
    get("uuid", nvml.nvmlDeviceGetUUID)
    return facts


def describe_device(device: str) -> dict[str, Any]:
    """What was actually used: ``{"type", "name", ...}`` (GPU name, compute capability, memory,
    L2, driver via NVML; CPU model and thread count), plus ``host`` and ``cpu``."""
    info: dict[str, Any] = {"host": socket.gethostname(), "cpu": cpu_model()}
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index or 0
        p = torch.cuda.get_device_properties(index)
        info.update({
            "type": "cuda", "index": index, "name": p.name,
            "compute_capability": f"{p.major}.{p.minor}",
            "total_memory_gib": round(p.total_memory / 2**30, 2),
            "multiprocessors": p.multi_processor_count,
            "l2_cache_bytes": int(getattr(p, "L2_cache_size", 0) or 0) or None,
        })
        info.update(_nvml_facts(index))
    else:
        info.update({"type": "cpu", "name": cpu_model(), "threads": torch.get_num_threads()})
    return info


def device_identity(info: dict[str, Any]) -> dict[str, Any]:
    """The part of :func:`describe_device` that must match for two timings to share a LUT."""
    keys = ("type", "name", "compute_capability")
    return {k: info.get(k) for k in keys if k in info}


def name_matches(label: str, info: dict[str, Any]) -> bool:
    """Does the user's ``--gpu`` label plausibly describe ``info``'s device?

    A CPU matches the labels ``cpu`` (or a label contained in the CPU model); a GPU matches when
    its name (case- and punctuation-insensitive) contains the label, e.g. ``h100`` in
    ``NVIDIA H100 80GB HBM3``. A label's first dash/underscore-separated word may carry the device
    alone and the rest a variant (``cpu-ort``, ``h100-fp16``, ``cpu-t1``).
    """
    import re

    norm = lambda s: "".join(ch for ch in str(s).lower() if ch.isalnum())  # noqa: E731
    name = norm(info.get("name", ""))
    first = re.split(r"[-_.\s]+", str(label).strip().lower(), maxsplit=1)[0]
    for lab in {norm(label), norm(first)}:
        if not lab:
            continue
        if info.get("type") == "cpu" and (lab == "cpu" or lab in name):
            return True
        if info.get("type") != "cpu" and lab in name:
            return True
    return False
