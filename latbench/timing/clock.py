"""NVML SM-clock and clock-event (throttle) sampling during a measurement. Read-only: latbench
never changes clocks, power limits or any other GPU setting."""

from __future__ import annotations

import time
from typing import Any

from latbench.device import nvml_handle, pynvml_module

# Clock-event reasons that mean "the GPU slowed itself down" (idle, application clocks and sync
# boost do not count).
_THROTTLE_REASON_NAMES = (
    "SwPowerCap",
    "HwSlowdown",
    "HwThermalSlowdown",
    "SwThermalSlowdown",
    "HwPowerBrakeSlowdown",
)


def _reason_masks(nvml: Any) -> dict[str, int]:
    masks = {}
    for name in _THROTTLE_REASON_NAMES:
        for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
            v = getattr(nvml, prefix + name, None)
            if v is not None:
                masks[name] = int(v)
                break
    return masks


class ClockMonitor:
    """Polls the SM clock and the current clock-event reasons of one GPU.

    ``poll()`` is called by the timing loop between samples (outside the timed region), at most
    once every ``interval_s``. Create with :meth:`for_device`; ``None`` when NVML is unavailable.
    """

    def __init__(self, nvml: Any, handle: Any, interval_s: float = 0.005) -> None:
        self._nvml = nvml
        self._handle = handle
        self._masks = _reason_masks(nvml)
        self._interval = interval_s
        self.reset()

    @classmethod
    def for_device(cls, device_index: int) -> "ClockMonitor | None":
        nvml = pynvml_module()
        handle = nvml_handle(device_index)
        if nvml is None or handle is None:
            return None
        return cls(nvml, handle)

    def reset(self) -> None:
        self._clocks: list[int] = []
        self._reasons: set[str] = set()
        self._last = 0.0

    def poll(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        nvml = self._nvml
        try:
            self._clocks.append(int(nvml.nvmlDeviceGetClockInfo(self._handle, nvml.NVML_CLOCK_SM)))
            get = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                nvml.nvmlDeviceGetCurrentClocksThrottleReasons
            bits = int(get(self._handle))
        except Exception:  # NVML hiccup: a missed poll is not a failed measurement
            return
        for name, mask in self._masks.items():
            if bits & mask:
                self._reasons.add(name)

    @property
    def mean_mhz(self) -> float | None:
        return sum(self._clocks) / len(self._clocks) if self._clocks else None

    @property
    def throttled(self) -> bool:
        return bool(self._reasons)

    @property
    def reasons(self) -> list[str]:
        return sorted(self._reasons)
