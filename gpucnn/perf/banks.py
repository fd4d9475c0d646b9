"""Shared-memory wavefronts of the step's kernels, counted by running their CUDA C (the honest ruler's
shared pipe): ``gpucnn kernels`` prices each launch's shared-memory traffic with them.

For each kernel instance a step launches that has static shared memory, the first recorded launch runs
again, with its own arguments (the recorded step's arrays), through the emulator's counting build
(``hostemu.Module(..., instrumented=True)``: kernels/hostemu.h's GPUCNN_HOSTEMU_HOOKS), for its first CTA only.
Every shared access of the CTA's warps is recorded with its 32 lanes' addresses and its width, and priced
in wavefronts by the rules hostemu.h writes down (32 banks of 4 bytes, broadcast, 128-byte groups of lanes,
the LDS.128 pairing rule). A GEMM's CTA runs twice, walking 2 and then 4 K steps (its `per` argument set
so): the difference gives the wavefronts of one K step, the rest those outside the loop; any other kernel's
CTA runs once, as launched. Counts are cached by the kernel file's sources, the instance and its integer
arguments (~/.cache/gpucnn/perf/banks), so a report after the first is quick.

The model then charges a launch's busiest SM ceil(CTAs / SMs) x its CTA's wavefronts at one wavefront a
clock ([SMEM] in gpus.py). Every figure is a model of the code's accesses, counted on the CPU, not a
measurement; the CuPy backend's kernels only (the Numba backend's are not CUDA C).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .launches import Launch

STEPS = (2, 4)  # K steps a counted GEMM CTA walks: the difference is one step's worth, twice


KINDS = ("LDS", "STS", "cp.async")  # hostemu.h's banks::Kind


@dataclass
class Site:
    where: str          # file:line of the access (the kernel's own line, not a helper's)
    width: int          # bytes a lane accesses
    kind: int           # index in KINDS
    requests: int       # warp-wide requests, in the counted CTA
    wavefronts: int
    ideal: int          # the wavefronts without any bank conflict

    @property
    def per_request(self) -> float:
        return self.wavefronts / self.requests

    @property
    def instruction(self) -> str:
        return KINDS[self.kind] + (f".{8 * self.width}" if self.kind < 2 else f".{self.width}")


@dataclass
class Count:
    kernel: str
    per_step: float     # wavefronts a CTA needs for one K step (GEMMs; 0 otherwise)
    fixed: float        # wavefronts outside the K loop (GEMMs), or the whole CTA's
    ideal_per_step: float = 0.0   # the same without any bank conflict
    ideal_fixed: float = 0.0
    sites: list[Site] = field(default_factory=list)   # of the longest counted run, one per file:line and access

    def per_cta(self, ksteps: int | None) -> float:
        return self.fixed + self.per_step * (ksteps or 0)


def _merged(sites: list[Site]) -> list[Site]:
    """Sites of one source line and access (unrolled copies of it) as one, in order of appearance."""
    out: dict = {}
    for s in sites:
        key = (s.where, s.width, s.kind)
        if key in out:
            m = out[key]
            m.requests, m.wavefronts, m.ideal = m.requests + s.requests, m.wavefronts + s.wavefronts, m.ideal + s.ideal
        else:
            out[key] = Site(**s.__dict__)
    return list(out.values())


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpucnn" / "perf" / "banks"


_MODULES: dict = {}


def _module(family: str):
    from ..backends.cupy import _runtime as rt
    from ..backends.cupy import hostemu
    from .model import family_names
    if family not in _MODULES:
        _MODULES[family] = hostemu.Module(rt.kernels_dir() / f"{family}.cu", family_names(family), instrumented=True)
    return _MODULES[family]


def _key(launch: Launch) -> str:
    """The counted library's name (hostemu.build keys it by every source, header and flag), the instance, its
    block and integer arguments."""
    from ..backends.cupy import _runtime as rt
    from ..backends.cupy import hostemu
    from .model import family_names
    lib = hostemu.build(rt.kernels_dir() / f"{launch.family}.cu", family_names(launch.family), instrumented=True)
    ints = [int(a) for a in launch.args if isinstance(a, (np.integer, int))]
    return hashlib.sha256(json.dumps([lib.name, launch.kernel, launch.block, ints, STEPS]).encode()).hexdigest()[:24]


def _names(lib: Path, offsets: list[int]) -> list[str]:
    """file:line of each site: the innermost inlined location outside common.cuh and hostemu.h (addr2line)."""
    tool = shutil.which("addr2line")
    if tool is None or not offsets:
        return [hex(o) for o in offsets]
    out = subprocess.run([tool, "-a", "-i", "-e", str(lib), *(hex(o - 1) for o in offsets)], capture_output=True,
                         text=True).stdout.splitlines()
    chains, names = [], []
    for line in out:  # "0x..." then the inline chain, innermost first
        if line.startswith("0x"):
            chains.append([])
        elif chains:
            chains[-1].append(Path(line.split(" (")[0]).name)
    for chain in chains:
        own = [c for c in chain if not c.startswith(("common.cuh", "hostemu.h"))]
        names.append((own or chain or ["?"])[0])
    return names if len(names) == len(offsets) else [hex(o) for o in offsets]


def _run(launch: Launch, steps: int | None):
    """(total wavefronts, total ideal, sites) of the launch's first CTA, walking `steps` K steps (None: as
    launched)."""
    from ..backends.cupy import _runtime as rt
    module = _module(launch.family)
    args = list(launch.args)
    if steps is not None:
        args[launch.steps_arg] = np.int32(steps)
    module.count_begin(1)
    module.get_function(launch.kernel)(launch.grid, launch.block,
                                        [rt._emulated_arg(launch.kernel, i, a) for i, a in enumerate(args)])
    rows = module.count_sites()
    names = _names(module.path, [r[0] for r in rows])
    sites = [Site(name, w, kind, req, wf, ideal) for name, (_, w, kind, req, wf, ideal, _) in zip(names, rows)]
    return sum(s.wavefronts for s in sites), sum(s.ideal for s in sites), _merged(sites)


def count(launch: Launch) -> Count:
    """The wavefronts of one CTA of `launch` (cached)."""
    path = _cache() / f"{launch.kernel.split('<')[0]}-{_key(launch)}.json"
    if path.exists():
        raw = json.loads(path.read_text())
        return Count(**{**raw, "sites": [Site(**s) for s in raw["sites"]]})
    ksteps = (launch.gemm or {}).get("ksteps")
    if launch.steps_arg is not None and ksteps and ksteps >= STEPS[1]:
        (short, short_ideal, _), (long, long_ideal, sites) = _run(launch, STEPS[0]), _run(launch, STEPS[1])
        span = STEPS[1] - STEPS[0]
        per_step, ideal_step = (long - short) / span, (long_ideal - short_ideal) / span
        result = Count(launch.kernel, per_step, long - STEPS[1] * per_step, ideal_step,
                       long_ideal - STEPS[1] * ideal_step, sites)
    elif launch.steps_arg is not None and ksteps:  # too few steps to tell the loop apart: all of it the loop's
        total, ideal, sites = _run(launch, None)
        result = Count(launch.kernel, total / ksteps, 0.0, ideal / ksteps, 0.0, sites)
    else:
        total, ideal, sites = _run(launch, None)
        result = Count(launch.kernel, 0.0, float(total), 0.0, float(ideal), sites)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**result.__dict__, "sites": [s.__dict__ for s in result.sites]}))
    os.replace(tmp, path)
    return result


def count_step(launches: list[Launch], needs=lambda launch: True) -> dict[str, Count]:
    """{kernel instance: Count} for the first launch of each instance `needs` (one with shared memory)."""
    from .launches import _emulated_if_needed
    counts = {}
    with _emulated_if_needed():
        for launch in launches:
            if launch.kernel not in counts and launch.args and needs(launch):
                counts[launch.kernel] = count(launch)
    return counts
