"""Every Numba kernel compiled to real PTX (float32), checked for double precision.

test_kernels_type_for_cuda_without_float64 (below) checks the dense/softmax/norm/optim kernels at Numba's
typing and LLVM-IR level; test_float32_kernels_compile_to_ptx_without_float64 goes one step further, through NVVM to PTX, for the kernels of all seven modules
(elementwise, pool, conv, dense, softmax, norm, optim, plus _common's fill and col_sum kernels): any `.f64` instruction
or `%fd` register in a float32 kernel's PTX fails the test, naming the kernel and its first
offending lines. No GPU is needed: `numba.cuda.compile_ptx` only needs NVVM/NVRTC (e.g. the PyPI
wheel nvidia-cuda-nvrtc); without them the test is skipped, saying what is missing.

It also reports the per-kernel and total compile times (the first-call JIT cost on a GPU machine,
less the driver's PTX -> SASS step): run with `pytest -s` to see them.

The compilation runs in a subprocess without NUMBA_ENABLE_CUDASIM: under the simulator (which
tests/conftest.py enables without a GPU) numba.cuda has no compiler. Module constants that depend
on the simulator (_common.TILE, _common.REDUCE_THREADS) thus take their GPU values there, as on a GPU.
A self-check first compiles a tiny kernel with a float64 literal (`* 1.0`) and a float32 twin, so
the detector is known to flag double precision and to pass clean code.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

_PTX_CHECK = r'''
import json, re, sys, time, traceback

try:
    import numba
    from numba import cuda, types as T
    from numba.cuda.random import xoroshiro128p_type
    import numpy as np
    cuda.compile_ptx
except (ImportError, AttributeError) as e:
    print("SKIP: numba.cuda.compile_ptx is not available:", repr(e)); sys.exit(0)

CC = (8, 0)
try:  # a device function called from a kernel is typed by its own dispatcher, which asks the
    # current device for its compute capability: answer for the driver this machine may lack
    import types as pytypes
    import numba.cuda.dispatcher as disp
    disp.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=CC)
except (ImportError, AttributeError):
    pass
F64 = re.compile(r"\.f64\b|%fd\d*\b")


def compile_ptx(kernel, args):
    ptx, _ = cuda.compile_ptx(getattr(kernel, "py_func", kernel), T.void(*args), cc=CC)
    return ptx


def f64_lines(ptx):
    return [ln.strip() for ln in ptx.splitlines() if F64.search(ln) and not ln.lstrip().startswith("//")]


def missing_toolkit(e):
    """The reason to skip when compilation failed for want of NVVM / NVRTC / libdevice, else None."""
    from numba.cuda.cudadrv import error as cuerr
    support = tuple(getattr(cuerr, n) for n in ("NvvmSupportError", "NvrtcSupportError", "CudaSupportError")
                    if hasattr(cuerr, n))
    msg = f"{type(e).__name__}: {e}"
    lookup = any(c.__name__.endswith(("NotFoundError", "NotAvailableError")) for c in type(e).__mro__)  # cuda.pathfinder
    if isinstance(e, support + (FileNotFoundError,)) or lookup or (
            isinstance(e, (ImportError, OSError, RuntimeError))
            and re.search(r"nvvm|nvrtc|libdevice|cuda", msg, re.I)
            and re.search(r"not (be )?found|cannot be found|could not|unable to|no such file|not available", msg, re.I)):
        return "the CUDA compiler toolchain (libNVVM / NVRTC / libdevice) cannot be found: " + msg
    return None


# ---- self-check: the detector flags a float64 literal and passes its float32 twin
def _planted(x, y):
    i = cuda.grid(1)
    if i < y.size:
        y[i] = x[i] * 1.1  # a Python float: float64 arithmetic, then a narrowing store
        # (`* 1.0` would not do: LLVM folds fpext / fmul 1.0 / fptrunc back to nothing)


def _clean(x, y):
    i = cuda.grid(1)
    if i < y.size:
        y[i] = x[i] * x[i]


A1 = T.Array(T.float32, 1, "C")
try:
    planted = compile_ptx(_planted, (A1, A1))
except Exception as e:
    reason = missing_toolkit(e)
    if reason:
        print("SKIP:", reason); sys.exit(0)
    raise
selfcheck = {"planted_f64_lines": len(f64_lines(planted)), "clean_f64_lines": len(f64_lines(compile_ptx(_clean, (A1, A1))))}

# ---- every kernel, float32, with the argument types its launcher passes
from gpucnn.backends.numba import _common, elementwise as ew, pool, conv, dense, softmax, norm, optim

f32, i64, u64, b = T.float32, T.int64, T.uint64, T.boolean
A2, A3, A4 = (T.Array(f32, n, "C") for n in (2, 3, 4))
I1, I3 = T.Array(T.int64, 1, "C"), T.Array(T.int64, 3, "C")
I1_32 = T.Array(T.int32, 1, "C")
STATES = T.Array(xoroshiro128p_type, 1, "C")

KERNELS = [
    # module, name, kernel, argument types
    ("_common", "fill_nan", _common.fill_nan, (A1,)),
    ("_common", "fill_zero", _common.fill_zero, (A1,)),
    ("_common", "col_sum", _common.make_col_sum(numba.float32), (A2, A1, f32, f32)),
    ("elementwise", "relu_fwd", ew.relu_fwd, (A1, A1)),
    ("elementwise", "relu_bwd", ew.relu_bwd, (A1, A1, A1)),
    ("elementwise", "add_fwd", ew.add_fwd, (A1, A1, A1)),
    ("elementwise", "mul_fwd", ew.mul_fwd, (A1, A1, A1)),
    ("elementwise", "upsample_nearest_fwd", ew.upsample_nearest_fwd, (A3, A3, i64, i64)),
    ("elementwise", "upsample_nearest_bwd", ew.upsample_nearest_bwd, (A3, A3, i64, i64)),
    ("elementwise", "copy_channels", ew.copy_channels, (A3, A3, i64)),
    ("elementwise", "slice_channels", ew.slice_channels, (A3, A3, i64)),
    ("elementwise", "seed_states", ew.seed_states, (STATES, u64)),
    ("elementwise", "dropout_fwd", ew.dropout_fwd, (A1, STATES, u64, f32, A1, A1)),
    ("pool", "max_pool_fwd", pool.max_pool_fwd, (A3, A3, I3) + (i64,) * 4),
    ("pool", "max_pool_bwd", pool.max_pool_bwd, (A3, I3, A3, I1) + (i64,) * 4),
    ("pool", "avg_pool_fwd", pool.avg_pool_fwd, (A3, A3) + (i64,) * 4 + (f32,)),
    ("pool", "avg_pool_bwd", pool.avg_pool_bwd, (A3, A3) + (i64,) * 4 + (f32,)),
    ("conv", "conv2d_fwd_naive", conv.conv2d_fwd_naive, (A4, A4, A1, b, b, A4) + (i64,) * 4 + (f32,)),
    ("conv", "conv2d_fwd", conv.conv2d_fwd(np.float32), (A4, A4, A1, b, b, A4) + (i64,) * 7 + (f32,)),
    ("conv", "conv2d_dgrad", conv.conv2d_dgrad, (A4, A4, A4) + (i64,) * 4 + (f32,)),
    ("conv", "conv2d_wgrad", conv.conv2d_wgrad(np.float32), (A4, A4, A4) + (i64,) * 4 + (f32,)),
    ("conv", "conv2d_bias_grad", conv.conv2d_bias_grad(np.float32), (A4, A1, f32)),
    ("dense", "matmul", dense.make_matmul(numba.float32), (A2, A2, A1, A2, b, b, b, f32)),
    ("softmax", "softmax_rows", softmax.softmax_rows, (A1, A1, i64, i64, b, f32)),
    ("softmax", "softmax_bwd_rows", softmax.softmax_bwd_rows, (A1, A1, A1, i64, i64, f32)),
    ("softmax", "softmax_xent[int64 labels]", softmax.softmax_xent, (A2, I1, A2, A2, I1_32, f32, f32, f32)),
    ("softmax", "softmax_xent[int32 labels]", softmax.softmax_xent, (A2, I1_32, A2, A2, I1_32, f32, f32, f32)),
    ("softmax", "xent_count_launch", softmax.xent_count_launch, (I1_32,)),
    ("norm", "bn_fwd_stats", norm.make_bn_fwd_stats(numba.float32), (A1, i64, i64) + (f32,) * 5 + (b, b) + (A1,) * 4 + (f32, f32, f32)),
    ("norm", "bn_fwd_eval_stats", norm.bn_fwd_eval_stats, (A1, A1, f32, f32, f32, f32, A1, A1)),
    ("norm", "bn_fwd_apply", norm.bn_fwd_apply, (A1,) * 5 + (b, b, i64, i64, A1)),
    ("norm", "bn_bwd_reduce", norm.make_bn_bwd_reduce(numba.float32), (A1,) * 5 + (b, i64, i64, f32, f32, f32) + (A1,) * 4),
    ("norm", "bn_bwd_dx", norm.bn_bwd_dx, (A1,) * 5 + (b, A1, A1, b, i64, i64, A1)),
    ("optim", "sgd_update", optim.sgd_update, (A1, A1, A1) + (f32,) * 4 + (b,) * 4),
    ("optim", "adam_update", optim.adam_update, (A1,) * 4 + (f32,) * 8 + (b,)),
]

results, total = [], 0.0
for module, name, kernel, args in KERNELS:
    t0 = time.perf_counter()
    try:
        ptx = compile_ptx(kernel, args)
    except Exception as e:
        results.append({"module": module, "kernel": name, "error": f"{type(e).__name__}: {e}"[:2000]})
        print(f"  {module}.{name}: COMPILE ERROR {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
        continue
    dt = time.perf_counter() - t0
    total += dt
    bad = f64_lines(ptx)
    results.append({"module": module, "kernel": name, "seconds": round(dt, 3), "ptx_lines": ptx.count("\n"),
                    "f64_count": len(bad), "f64_lines": bad[:3]})
    print(f"  {module}.{name}: {dt:.2f} s, {ptx.count(chr(10))} PTX lines, {len(bad)} f64 lines", file=sys.stderr)
print(f"  total PTX compile time: {total:.2f} s for {len(results)} kernels", file=sys.stderr)
print(json.dumps({"listed": len(KERNELS), "selfcheck": selfcheck, "total_seconds": round(total, 3),
                  "results": results}))
'''


def _run_ptx_check():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", _PTX_CHECK], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    sys.stderr.write(proc.stderr)  # the per-kernel timings (pytest -s shows them)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, "the PTX check printed nothing\n" + proc.stderr[-3000:]
    return json.loads(lines[-1])


def test_float32_kernels_compile_to_ptx_without_float64():
    report = _run_ptx_check()

    # the detector works: a planted `* 1.0` is flagged, its float32 twin is not
    assert report["selfcheck"]["planted_f64_lines"] > 0, "the f64 detector missed a planted float64 literal"
    assert report["selfcheck"]["clean_f64_lines"] == 0, "the f64 detector flagged a clean float32 kernel"

    results = report["results"]
    errors = [f"{r['module']}.{r['kernel']}: {r['error']}" for r in results if "error" in r]
    assert not errors, "kernels failed to compile to PTX:\n" + "\n".join(errors)
    compiled = [r for r in results if "seconds" in r]
    assert len(compiled) == report["listed"], f"compiled {len(compiled)} of {report['listed']} kernels"

    print(f"\nPTX (cc 8.0) first-call compile time: {report['total_seconds']:.2f} s for {len(compiled)} kernels")
    offenders = [r for r in compiled if r["f64_count"]]
    assert not offenders, "float64 in the PTX of float32 kernels:\n" + "\n".join(
        f"{r['module']}.{r['kernel']}: {r['f64_count']} lines, e.g.\n    " + "\n    ".join(r["f64_lines"])
        for r in offenders)


# --------------------------------------------------------------------------- float32 discipline

# Types every kernel for the real CUDA target (Numba's typing and LLVM lowering: no GPU, driver or
# NVVM needed) with float32 arrays and scalars, and fails on any float64 variable or `double` in the
# IR; float64 arrays must type too. Runs in a subprocess: under the simulator numba.cuda has no compiler.
_TYPE_CHECK = r'''
import re, sys, types as pytypes
try:
    import numba
    from numba import types as T
    from numba.cuda import compiler
    import numba.cuda.dispatcher as disp
    compiler.compile_cuda
except (ImportError, AttributeError) as e:
    print("SKIP: numba.cuda.compiler.compile_cuda is not available:", e); sys.exit(0)
disp.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(8, 0))  # device functions ask
from gpucnn.backends.numba import _common, dense, softmax, norm, optim

bad = []
for fl, nbt in ((T.float32, numba.float32), (T.float64, numba.float64)):
    b, i = T.boolean, T.int64
    A1, A2 = T.Array(fl, 1, "C"), T.Array(fl, 2, "C")
    cases = {
        "matmul": (dense.make_matmul(nbt), (A2, A2, A1, A2, b, b, b, fl)),
        "col_sum": (_common.make_col_sum(nbt), (A2, A1, fl, fl)),
        "softmax_rows": (softmax.softmax_rows, (A1, A1, i, i, b, fl)),
        "softmax_bwd_rows": (softmax.softmax_bwd_rows, (A1, A1, A1, i, i, fl)),
        "softmax_xent int64": (softmax.softmax_xent, (A2, T.Array(T.int64, 1, "C"), A2, A2,
                                                      T.Array(T.int32, 1, "C"), fl, fl, fl)),
        "softmax_xent int32": (softmax.softmax_xent, (A2, T.Array(T.int32, 1, "C"), A2, A2,
                                                      T.Array(T.int32, 1, "C"), fl, fl, fl)),
        "bn_fwd_stats": (norm.make_bn_fwd_stats(nbt), (A1, i, i) + (fl,) * 5 + (b, b) + (A1,) * 4 + (fl, fl, fl)),
        "bn_fwd_eval_stats": (norm.bn_fwd_eval_stats, (A1, A1, fl, fl, fl, fl, A1, A1)),
        "bn_fwd_apply": (norm.bn_fwd_apply, (A1,) * 5 + (b, b, i, i, A1)),
        "bn_bwd_reduce": (norm.make_bn_bwd_reduce(nbt), (A1,) * 5 + (b, i, i, fl, fl, fl) + (A1,) * 4),
        "bn_bwd_dx": (norm.bn_bwd_dx, (A1,) * 5 + (b, A1, A1, b, i, i, A1)),
        "sgd_update": (optim.sgd_update, (A1, A1, A1) + (fl,) * 4 + (b,) * 4),
        "adam_update": (optim.adam_update, (A1,) * 4 + (fl,) * 8 + (b,)),
    }
    for name, (kernel, sig) in cases.items():
        cres = compiler.compile_cuda(getattr(kernel, "py_func", kernel), T.void, sig, cc=(8, 0))
        if fl == T.float32:
            f64 = sorted(v for v, t in cres.type_annotation.typemap.items() if t == T.float64)
            doubles = len(re.findall(r"\bdouble\b", cres.library.get_llvm_str()))
            if f64 or doubles:
                bad.append(f"{name}: float64 values {f64}, {doubles} 'double' in the LLVM IR")
print("\n".join(bad) if bad else "OK")
sys.exit(1 if bad else 0)
'''


def test_kernels_type_for_cuda_without_float64():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", _TYPE_CHECK], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip() == "OK"
