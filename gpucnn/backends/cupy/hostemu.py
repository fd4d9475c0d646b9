"""Run the CUDA C kernels of kernels/ on the CPU (GPUCNN_CUPY_EMULATE=1): the CuPy backend's test mode.

A stand-in for ``cupy.RawModule`` with the same use: build a module from one
kernels/*.cu file and a list of name expressions (template instances), then
``module.get_function(name)(grid, block, args)``. The source is compiled as
C++20 by the machine's g++ with hostemu.h force-included (CUDA threads become
fibers, see that file), plus one ``extern "C"`` entry point per name
expression, into a shared library cached under ~/.cache/gpucnn/hostemu.

Arguments are NumPy arrays (passed as pointers) and NumPy scalars of the
kernel's parameter types; a Python int or float is refused, because CuPy would
pass it with a width of its own choosing. Each entry point checks the argument
count and every argument's size against the kernel's signature, and the launch
geometry against CUDA's limits, before any thread runs.

Arrays allocated by ``guarded_empty`` carry canary margins on both sides; after
every launch the margins of each such array among the arguments are checked,
so a kernel writing out of bounds fails loudly (a small memcheck).

After loading a library, the emulator is told where its ``__shared__`` arrays are
(the function-local statics in .bss of its symbol table, read with objdump): it poisons them at
every block's start, so a kernel reading shared memory before writing it sees NaN.

``Module(..., instrumented=True)`` builds the hooked variant (hostemu.h's
GPUCNN_HOSTEMU_HOOKS: every memory access of the kernels hooked through g++'s
-fsanitize=thread instrumentation, no sanitizer runtime linked). It counts shared-memory
wavefronts (``count_begin``/``count_sites``, for ``gpucnn.perf.banks``) and, with
GPUCNN_HOSTEMU_CHECK=1 (see ``_runtime``), checks every global access of a kernel against
the live allocations (every array ``guarded_empty`` made that is still alive, and the
launch's own array arguments): one outside all of them fails the launch, naming the kernel.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

import numpy as np

def header() -> Path:
    """hostemu.h, beside the kernels it runs: kernels/hostemu.h."""
    from ._runtime import kernels_dir
    return kernels_dir() / "hostemu.h"
CANARY = np.uint32(0x7FA1B2C3)  # a NaN pattern no kernel writes by accident
MARGIN = 64  # elements on each side


class EmulationError(RuntimeError):
    """A kernel failed under emulation: bad arguments or geometry, a barrier misuse, an out-of-bounds write."""


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "gpucnn" / "hostemu"


def _sources(source: Path) -> list[Path]:
    return [header(), source, *sorted(source.parent.glob("*.cuh"))]


# -fno-ipa-reference-addressable: a __shared__ array no code writes is not taken for a constant zero (g++ would
# fold its loads away; on a GPU it holds garbage, here the poison)
FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-fno-ipa-reference-addressable", "-Wall",
         "-Wno-unused-function", "-Wno-unused-variable", "-Wno-unknown-pragmas", "-Werror=return-type")
# the instrumented build: every access hooked; no vectorizer (it would merge 4-byte accesses into wider ones the
# GPU code does not make); line tables, so a site can be named (addr2line); hostemu.h's inline variables not
# process-unique (GNU unique symbols would make every family's library share one record)
INSTRUMENTED = ("-DGPUCNN_HOSTEMU_HOOKS", "-fsanitize=thread", "-fno-tree-vectorize", "-fno-tree-slp-vectorize",
                "-g1", "-fno-gnu-unique")


def build(source: Path, names: list[str], instrumented: bool = False) -> Path:
    """The shared library of `source` with these name expressions, built once and cached by the bytes of every
    source and header, the entry points and the flags (what Module loads; the tests prebuild with it)."""
    source = Path(source)
    flags = FLAGS + (INSTRUMENTED if instrumented else ())
    cxx = compiler()
    if cxx is None:
        raise EmulationError("GPUCNN_CUPY_EMULATE=1 needs a C++20 compiler (g++) to build the kernels for the CPU")
    wrapper = [f'#include "{source.resolve()}"']
    for i, name in enumerate(names):
        wrapper.append(
            f'extern "C" int gpucnn_entry_{i}(const unsigned* g, const unsigned* b, void** a, const long* s, '
            f"int n, char* e, int el) {{ return hostemu::launch(&{name}, g, b, a, s, n, e, el); }}")
    code = "\n".join(wrapper) + "\n"
    key = hashlib.sha256()
    for p in _sources(source):
        key.update(p.read_bytes())
    key.update(code.encode())
    key.update(" ".join((cxx,) + flags + ("-shared -Bsymbolic",)).encode())
    lib = _cache_dir() / f"{source.stem}-{key.hexdigest()[:20]}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cpp = Path(tmp) / "entry.cpp"
        cpp.write_text(code)
        out, obj = Path(tmp) / lib.name, Path(tmp) / "entry.o"
        # compiled, then linked without the sanitizer's runtime (hostemu.h defines its hooks), every reference
        # bound inside the library (-Bsymbolic: each kernel file's hooks and counters are its own)
        for cmd in ([cxx, *flags, "-c", "-include", str(header()), f"-I{source.parent}", str(cpp), "-o", str(obj)],
                    [cxx, "-shared", "-fPIC", "-Wl,-Bsymbolic", str(obj), "-o", str(out)]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise EmulationError(f"g++ could not build {source.name} for the CPU:\n{r.stderr[-6000:]}")
        os.replace(out, lib)  # atomic: parallel test workers may race here
    return lib


class Module:
    """One kernels/*.cu file compiled for the host (`build`), with its template instances."""

    def __init__(self, source: Path, name_expressions: list[str], instrumented: bool = False):
        self.source = Path(source)
        self.names = list(name_expressions)
        self.instrumented = instrumented
        lib = build(self.source, self.names, instrumented)
        self.path = lib
        self._lib = ctypes.CDLL(str(lib))
        self._functions = {}
        ranges = shared_arrays(lib)
        pairs = (ctypes.c_ulonglong * max(2 * len(ranges), 1))(*[v for r in ranges for v in r])
        self._lib.gpucnn_shared_ranges(pairs, ctypes.c_int(len(ranges)))

    def count_begin(self, blocks: int) -> None:
        """Instrumented build: record shared accesses from now on, running only the first `blocks` blocks of a
        grid (0: all)."""
        self._lib.gpucnn_banks_begin(ctypes.c_uint(blocks))

    def count_sites(self) -> list[tuple[int, ...]]:
        """Instrumented build: stop recording; per site (offset in the library, width, kind: 0 load, 1 store, 2 cp.async,
        requests, wavefronts, ideal wavefronts, active lanes), as hostemu.h's banks::Site."""
        n = self._lib.gpucnn_banks_sites()
        row = (ctypes.c_ulonglong * 7)()
        out = []
        for i in range(n):
            self._lib.gpucnn_banks_site(ctypes.c_int(i), row)
            out.append(tuple(int(v) for v in row))
        return out

    def check(self, arrays) -> None:
        """Instrumented build: check the global accesses of the next launches against the live allocations and
        `arrays` (the launch's own NumPy arguments); `check(None)` ends it."""
        if arrays is None:
            self._lib.gpucnn_check_end()
            return
        ranges = live_ranges() + [(a.ctypes.data, a.nbytes) for a in arrays]
        pairs = (ctypes.c_ulonglong * max(2 * len(ranges), 1))(*[v for r in ranges for v in r])
        self._lib.gpucnn_check_begin(pairs, ctypes.c_int(len(ranges)))

    def get_function(self, name: str) -> "Function":
        if name not in self._functions:
            if name not in self.names:
                raise EmulationError(f"{name!r} is not among the name expressions {self.source.name} was built with")
            entry = getattr(self._lib, f"gpucnn_entry_{self.names.index(name)}")
            entry.restype = ctypes.c_int
            self._functions[name] = Function(name, entry, self if self.instrumented else None)
        return self._functions[name]


def shared_arrays(lib: Path) -> list[tuple[int, int]]:
    """(offset, bytes) of the library's __shared__ arrays: its function-local static objects in .bss (Itanium
    names _ZZ...; the kernels have no other), from objdump's symbol table. Empty without objdump (then nothing
    is poisoned, and the wavefront counter sees no shared access)."""
    tool = shutil.which("objdump")
    if tool is None:
        return []
    out = subprocess.run([tool, "-t", str(lib)], capture_output=True, text=True).stdout
    ranges = []
    for line in out.splitlines():  # address flags section size name
        parts = line.split()
        if len(parts) >= 5 and parts[-1].startswith("_ZZ") and parts[-3] == ".bss" and "O" in parts[1:-3]:
            ranges.append((int(parts[0], 16), int(parts[-2], 16)))
    return ranges


def _as_arg(a):
    """(ctypes value, size in bytes) for one kernel argument."""
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data), 8
    if isinstance(a, np.generic):
        raw = ctypes.create_string_buffer(a.tobytes(), a.nbytes)
        return raw, a.nbytes
    if a is None:
        return ctypes.c_void_p(0), 8
    raise EmulationError(f"kernel argument {a!r} of type {type(a).__name__}: pass NumPy arrays or NumPy scalars "
                         "(np.int32, np.float32, ...) so its width is explicit")


class Function:
    """A kernel: call with (grid, block, args) like a cupy.RawKernel. With a `checker` (an instrumented Module) and
    GPUCNN_HOSTEMU_CHECK=1, its global accesses are checked against the live allocations."""

    def __init__(self, name, entry, checker=None):
        self.name = name
        self._entry = entry
        self._checker = checker

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if shared_mem:
            raise EmulationError("dynamic shared memory is not emulated; the kernels use static __shared__ arrays")
        packed = [_as_arg(a) for a in args]
        n = len(packed)
        ptrs = (ctypes.c_void_p * max(n, 1))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v, _ in packed])
        sizes = (ctypes.c_long * max(n, 1))(*[s for _, s in packed])
        err = ctypes.create_string_buffer(1024)
        checking = self._checker is not None and os.environ.get("GPUCNN_HOSTEMU_CHECK") == "1"
        if checking:
            self._checker.check([a for a in args if isinstance(a, np.ndarray)])
        try:
            rc = self._entry((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), ptrs, sizes, n, err, 1024)
        finally:
            if checking:
                self._checker.check(None)
        if rc:
            raise EmulationError(f"{self.name} <<<{grid}, {block}>>>: {err.value.decode()}")
        for a in args:
            if isinstance(a, np.ndarray):
                check_guards(a, self.name)


_LIVE: dict = {}  # id -> (address, bytes) of every array guarded_empty made that is still alive


def live_ranges() -> list[tuple[int, int]]:
    """(address, bytes) of the live device allocations (their payloads: canary margins are outside)."""
    return list(_LIVE.values())


def _register(raw: np.ndarray, payload: np.ndarray) -> None:
    key = id(raw)
    _LIVE[key] = (payload.ctypes.data, payload.nbytes)
    weakref.finalize(raw, _LIVE.pop, key, None)


def guarded_empty(shape, dtype=np.float32):
    """An uninitialised array with canary margins either side (checked after each launch), registered as a live
    allocation while it lives."""
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if dtype.itemsize != 4:
        out = np.empty(shape, dtype)
        _register(out, out)
        return out
    size = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(size + 2 * MARGIN, np.uint32)
    raw[:MARGIN] = CANARY
    raw[MARGIN + size:] = CANARY
    out = raw[MARGIN:MARGIN + size].view(dtype).reshape(shape)
    _register(raw, out)
    return out


def check_guards(a: np.ndarray, who: str) -> None:
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    if base.dtype != np.uint32 or base.ndim != 1 or base.size < 2 * MARGIN or a.size + 2 * MARGIN != base.size:
        return
    if not (np.all(base[:MARGIN] == CANARY) and np.all(base[-MARGIN:] == CANARY)):
        raise EmulationError(f"{who} wrote outside an output array of shape {a.shape} (canary margin overwritten)")
