"""The one adaptive measurement loop, used for single ops and whole networks alike (DESIGN §5).

1. warm up by time (``warmup_s``) and for at least ``warmup_rounds`` timed batches, growing the
   calls per batch as the op's speed becomes known;
2. choose calls per sample from the *last* warm-up batch so that one sample lasts about
   ``target_sample_s`` (a multiple of the prepared object's ``granularity``, e.g. calls per CUDA
   graph; one call with a cold cache);
3. sample until ``min_samples`` and ``min_time_s`` are reached *and* the median's relative noise is
   at most ``max_noise`` -- or until ``max_time_s`` (always at least one sample);
4. poll NVML between samples; a throttled pass is repeated up to ``max_throttle_retries`` times,
   but a re-measurement throttled for the same reasons ends it (``throttle_persistent``): a GPU
   that keeps reporting e.g. its power cap costs an entry two passes, not ``1 + retries``;
5. compare enqueue time with device time to flag host-bound runs (trtexec's 0.8 rule).

Nothing here raises for a failing op: the result is a ``Measurement`` with status ``failed``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

from latbench.timing.config import Measurement, TimingConfig
from latbench.timing.stats import median_noise, summarize

Clock = Callable[[], float]

MAX_CALLS_PER_SAMPLE = 1_000_000
HOST_BOUND_RATIO = 0.8


def calls_for(per_call_s: float, target_sample_s: float, granularity: int = 1) -> int:
    """Calls per sample so one sample lasts about ``target_sample_s``; a multiple of granularity."""
    g = max(1, int(granularity))
    if not per_call_s > 0 or not math.isfinite(per_call_s):
        n = MAX_CALLS_PER_SAMPLE if per_call_s == 0 else 1
    else:
        n = math.ceil(target_sample_s / per_call_s)
    n = min(max(n, 1), MAX_CALLS_PER_SAMPLE)
    return max(g, math.ceil(n / g) * g)


def describe_error(exc: BaseException) -> str:
    """One line: 'out of memory: ...' for CUDA OOM, else 'ExcType: message'."""
    name = type(exc).__name__
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if name == "OutOfMemoryError" or "out of memory" in msg.lower():
        text = f"out of memory: {msg}"
    else:
        text = f"{name}: {msg}" if msg else name
    return text[:300]


def _release_cuda_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass


def _should_check_noise(n: int) -> bool:
    # The noise estimate sorts all samples: check every sample early, every 10th later.
    return n < 100 or n % 10 == 0


def _one_pass(prepared: Any, config: TimingConfig, clock: Clock) -> Measurement:
    g = max(1, int(getattr(prepared, "granularity", 1) or 1))
    monitor = getattr(prepared, "clock", None)

    # 1. warm-up by time, and by at least ``warmup_rounds`` batches (a first call slower than the
    #    whole warm-up time must not end it, nor size the samples)
    t0 = clock()
    calls = g
    warm_calls = 0
    rounds = 0
    while True:
        dt = prepared.time(calls)
        warm_calls += calls
        rounds += 1
        per_call = dt / calls
        if rounds >= config.warmup_rounds and clock() - t0 >= config.warmup_s:
            break
        calls = g if config.cold_cache else calls_for(per_call, config.target_sample_s, g)
    warmup_s = clock() - t0

    # 2. calls per sample, from the last warm-up batch
    calls = g if config.cold_cache else calls_for(per_call, config.target_sample_s, g)

    # 3. adaptive sampling
    if monitor is not None:
        monitor.reset()
        monitor.poll(force=True)
    samples: list[float] = []
    min_time = config.effective_min_time_s
    start = clock()
    stop = "max_time"
    while True:
        dt = prepared.time(calls)
        samples.append(dt / calls)
        if monitor is not None:
            monitor.poll()
        elapsed = clock() - start
        n = len(samples)
        if elapsed >= config.max_time_s:
            break
        if n >= config.min_samples and elapsed >= min_time and _should_check_noise(n) \
                and median_noise(samples) <= config.max_noise:
            stop = "converged"
            break
    elapsed = clock() - start
    if monitor is not None:
        monitor.poll(force=True)

    s = summarize([x * 1e6 for x in samples])
    m = Measurement(
        median_us=s.median, p10_us=s.p10, p90_us=s.p90, iqr_us=s.iqr, mean_us=s.mean,
        samples=s.n, noise=s.noise, calls_per_sample=calls,
        sm_clock_mhz=monitor.mean_mhz if monitor is not None else None,
        throttled=bool(monitor.throttled) if monitor is not None else False,
        extra={"stop": stop, "warmup_s": warmup_s, "warmup_calls": warm_calls, "warmup_rounds": rounds,
               "warmup_last_call_us": per_call * 1e6, "sampling_s": elapsed,
               "noise_reached": s.noise <= config.max_noise},
    )
    if monitor is not None and monitor.throttled:
        m.extra["throttle_reasons"] = monitor.reasons

    # 5. host-bound detection
    enqueue = getattr(prepared, "enqueue_time", None)
    if enqueue is not None:
        times = sorted(enqueue(calls) / calls for _ in range(3))
        m.enqueue_us = times[1] * 1e6
        m.host_bound = bool(m.enqueue_us > HOST_BOUND_RATIO * m.median_us)
    return m


def measure_prepared(prepared: Any, config: TimingConfig, clock: Clock = time.perf_counter) -> Measurement:
    """Measure an already prepared object (see :mod:`latbench.timing.registry`)."""
    retries = 0
    seen: set[tuple[str, ...]] = set()
    while True:
        try:
            m = _one_pass(prepared, config, clock)
        except Exception as exc:  # an op that fails is data, not a crash
            _release_cuda_memory()
            return Measurement.failed(describe_error(exc), retries=retries)
        if not m.throttled or retries >= config.max_throttle_retries:
            break
        reasons = tuple(sorted(m.extra.get("throttle_reasons") or ()))
        if reasons in seen:
            # the same throttle in a re-measurement too: a state of the GPU (e.g. a power cap it
            # keeps hitting), not an episode; more passes would only multiply the time (<= 2 passes)
            m.extra["throttle_persistent"] = True
            break
        seen.add(reasons)
        retries += 1
    m.extra["throttle_retries"] = retries
    info = getattr(prepared, "info", None)
    if info:
        m.extra.update({k: v for k, v in info.items() if k not in m.extra})
    return m


def measure(target: Any, inputs: Sequence[Any] = (), config: TimingConfig | None = None, *,
            backend: Any = None, clock: Clock = time.perf_counter) -> Measurement:
    """Time ``target`` with the latbench protocol and return a :class:`Measurement`.

    ``target`` is either a prepared object (has ``time(calls)``; ``inputs`` ignored) or a module /
    callable that ``backend`` (an instance, or a registered name; default ``"cpu"``) prepares with
    ``inputs``. A prepared object passed in is not closed; one made here is.
    """
    from latbench.timing.registry import get_backend

    config = config or TimingConfig()
    if callable(getattr(target, "time", None)):
        return measure_prepared(target, config, clock)
    if backend is None:
        backend = "cpu"
    if isinstance(backend, str):
        backend = get_backend(backend, threads=config.threads) if backend == "cpu" else get_backend(backend)
    try:
        prepared = backend.prepare(target, tuple(inputs), config)
    except Exception as exc:
        _release_cuda_memory()
        return Measurement.failed(describe_error(exc), stage="prepare")
    try:
        return measure_prepared(prepared, config, clock)
    finally:
        try:
            prepared.close()
        except Exception:
            pass
