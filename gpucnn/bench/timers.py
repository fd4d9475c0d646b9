"""Timing: the clock labels and the one check that keeps a CPU time from being called a GPU figure,
which backends are timed (never a simulator), and the measurement itself (first call, warm-up, repeats
over rotated input copies, their median).

The timers come from the backend objects (``get_backend(name).timer()``): a CPU backend's ``CpuTimer``
reads the monotonic clock, a GPU backend's reads CUDA events on its stream. PyTorch's own CUDA-event
timer lives with the PyTorch twins (``torch_twins``); PyTorch is not a gpucnn backend.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..backend import CpuTimer, get_backend, info
from .cases import Case, host_inputs, input_bytes

CPU_CLOCK = CpuTimer.clock    # "cpu-monotonic": time.perf_counter_ns around the call
GPU_CLOCK = "cuda-events"     # start/end CUDA events on the stream the work runs on
DEVICES = ("cpu", "gpu")


class GpuFigureError(ValueError):
    """A figure labelled GPU that CUDA events did not measure."""


def check_clock(device: str, clock: str) -> None:
    """Refuse a GPU label on anything but a CUDA-event measurement (and unknown devices or clocks)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if clock not in (CPU_CLOCK, GPU_CLOCK):
        raise ValueError(f"clock must be {CPU_CLOCK!r} or {GPU_CLOCK!r}, got {clock!r}")
    if device == "gpu" and clock != GPU_CLOCK:
        raise GpuFigureError(f"refusing a GPU figure measured with the {clock!r} clock: only CUDA events "
                             f"({GPU_CLOCK!r}) time GPU work; this is not a GPU measurement")
    if device == "cpu" and clock == GPU_CLOCK:
        raise ValueError("a CUDA-event time is a GPU figure; it cannot be labelled cpu")


def timer_for_backend(name: str):
    """Backend `name`'s timer (refused for a backend in a simulator: its times would be CPU emulation)."""
    return get_backend(name).timer()


@dataclass
class Timing:
    """Times of one call: the first call, the warm-up calls and the repeats (ms), with the clock that took them."""

    device: str
    clock: str
    times_ms: list
    first_call_ms: float
    warmup_ms: list = field(default_factory=list)

    def __post_init__(self):
        check_clock(self.device, self.clock)
        if not self.times_ms:
            raise ValueError("a timing needs at least one repeat")

    @property
    def median_ms(self) -> float:
        return median(self.times_ms)


def median(values) -> float:
    """The middle value (the mean of the two middle values for an even count)."""
    values = sorted(float(v) for v in values)
    if not values:
        raise ValueError("median of no values")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def measure(call, inputs: list, timer, warmup=2, min_repeats=10, max_repeats=100, min_time_s=0.3) -> Timing:
    """Time call(*inputs[i]) rotating over the input copies: first call, warm-up, then the repeats."""
    t = time.perf_counter_ns()
    call(*inputs[0])
    timer.sync()
    first = (time.perf_counter_ns() - t) / 1e6
    i = 1
    warm = []
    for _ in range(warmup):
        warm.append(timer.time_ms(lambda a=inputs[i % len(inputs)]: call(*a)))
        i += 1
    estimate = median(warm) if warm else first
    repeats = int(min(max_repeats, max(min_repeats, math.ceil(min_time_s * 1e3 / max(estimate, 1e-3)))))
    times = []
    for _ in range(repeats):
        times.append(timer.time_ms(lambda a=inputs[i % len(inputs)]: call(*a)))
        i += 1
    return Timing(timer.device, timer.clock, times, first, warm)


def plan_backends(requested=None) -> tuple[list[str], list[dict]]:
    """The backends to time and, for each left out, why (not available here, or a simulator)."""
    table = info()
    names = list(requested) if requested else list(table)
    run_, skipped = [], []
    for name in names:
        if name not in table:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(table)}")
        entry = table[name]
        if not entry["available"]:
            skipped.append({"backend": name, "reason": entry["reason"]})
        elif entry["simulated"]:
            how = get_backend(name).simulator
            skipped.append({"backend": name, "reason": f"runs in {how}: its kernels are emulated on the CPU, so "
                            "their times say nothing about a GPU"})
        else:
            run_.append(name)
    return run_, skipped


def _copies(nbytes: int, rotate_bytes: int, max_copies: int) -> int:
    return int(max(2, min(max_copies, math.ceil(rotate_bytes / max(nbytes, 1)))))


def time_case(case: Case, impl, timer, rng, rotate_bytes: int, max_copies=64, **measure_kw) -> tuple[Timing, dict]:
    """Time one case through (prepare, call) = impl with rotated input copies."""
    prepare, call = impl
    copies = _copies(input_bytes(case), rotate_bytes, max_copies)
    host = host_inputs(case, rng)
    inputs = []
    for i in range(copies):
        inputs.append(prepare(host if i == 0 else {k: v.copy() for k, v in host.items()}))
    timer.sync()
    rotation = {"copies": copies, "bytes": copies * input_bytes(case)}
    return measure(call, inputs, timer, **measure_kw), rotation
