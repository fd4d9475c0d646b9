"""Every kernels/*.cu compiles with NVRTC, as cupy.RawModule compiles it on a GPU machine: the same
source, the same options as gpucnn/backends/cupy/_runtime.py, every name expression its launcher lists.

nvcc is not NVRTC: NVRTC sees no system headers, so a macro such as INFINITY that nvcc takes from
math.h is undefined there. No GPU is needed, only libnvrtc (the PyPI wheel nvidia-cuda-nvrtc or a
CUDA toolkit); without it the test is skipped, saying so.
"""
import ctypes
import ctypes.util
import glob
import importlib
import os

import pytest

from gpucnn.backends.cupy import _runtime

KERNELS = _runtime.kernels_dir()
STEMS = sorted(p.stem for p in KERNELS.glob("*.cu"))
OPTIONS = ("-std=c++17", f"-I{KERNELS}")  # _runtime._module's options
ARCH = "--gpu-architecture=compute_80"


def _nvrtc():
    candidates = []
    for pkg in ("nvidia.cu13", "nvidia.cuda_nvrtc", "nvidia.cu12"):
        try:
            mod = importlib.import_module(pkg)
        except ImportError:
            continue
        for root in getattr(mod, "__path__", []):
            candidates += sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    candidates += [found] if found else []
    candidates += sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"))
    for path in candidates:
        if "builtins" in os.path.basename(path):
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


NVRTC = _nvrtc()
pytestmark = pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")


def names_of(stem):
    module = importlib.import_module(f"gpucnn.backends.cupy.{stem}")
    return sorted({n for v in vars(module).values() if isinstance(v, _runtime.Family) and v.family == stem
                   for n in v.names})


def compile_with_nvrtc(stem):
    """(return code, log, {name: lowered name}) of kernels/<stem>.cu compiled as cupy.RawModule compiles it."""
    names = names_of(stem)
    prog = ctypes.c_void_p()
    src = (KERNELS / f"{stem}.cu").read_bytes()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), src, f"{stem}.cu".encode(), 0, None, None) == 0
    try:
        for n in names:
            assert NVRTC.nvrtcAddNameExpression(prog, n.encode()) == 0
        opts = [o.encode() for o in OPTIONS + (ARCH,)]
        rc = NVRTC.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(max(size.value, 1))
        NVRTC.nvrtcGetProgramLog(prog, log)
        lowered = {}
        if rc == 0:
            for n in names:
                name = ctypes.c_char_p()
                lowered[n] = name.value if NVRTC.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(name)) == 0 else None
        return rc, log.value.decode(errors="replace"), lowered
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="module")
def compiled():
    """Every file compiled once, in two processes (the biggest files take tens of seconds each, and NVRTC
    compiles one program at a time in a process), the two biggest first."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    order = sorted(STEMS, key=lambda s: s not in ("conv", "dense"))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        return dict(zip(order, pool.map(compile_with_nvrtc, order)))


@pytest.mark.parametrize("stem", STEMS)
def test_compiles_with_nvrtc_like_cupy_rawmodule(stem, compiled):
    names = names_of(stem)
    assert names, f"kernels/{stem}.cu has no launcher"
    rc, log, lowered = compiled[stem]
    assert rc == 0, f"NVRTC failed on kernels/{stem}.cu:\n{log[-5000:]}"
    for n in names:
        assert lowered.get(n), f"{n} has no compiled kernel"
