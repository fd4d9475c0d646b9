"""The Numba backend's side of the static kernel model: its launches of one training step and their SASS.

Recording (``record_step``): one training step (the same ``train.train_step`` and SGD with momentum 0.9
as the CuPy side) runs through the Numba backend with numba.cuda imported for real (not the simulator:
its tile sizes, TILE 16 and 256-thread reductions, are the GPU's; and the kernels are real dispatchers,
so each can be compiled for the GPU from its own Python function, closures included). Nothing reaches a
GPU: ``cuda.device_array``/``to_device``/``as_cuda_array`` return host-backed stand-ins (the simulator's
``FakeCUDAArray`` over zero-filled NumPy arrays), ``CUDADispatcher.configure`` returns a recorder, so
``kernel[grid, block](*args)`` keeps the kernel, grid, block and the argument types instead of
launching, and the backend's probe is bypassed. The launchers read shapes only; the host reads (the
loss, the logits for the accuracy, the label-error record) see zeros. The second step is recorded.

NUMBA_ENABLE_CUDASIM is read when numba.cuda is first imported, so the recording and the compilation run
in a child process with the variable removed (``python -m gpucnn.perf.numba_side``), which writes JSON:
the launches and, per kernel instance (dispatcher and signature), the PTX of
``numba.cuda.compile_ptx(py_func, signature, cc=...)`` (NVVM: libnvvm of the CUDA toolkit or of the
nvidia-cuda-nvcc wheel). The parent assembles the PTX with ``ptxas -v`` into a cubin and reads it with
cuobjdump as ``sass.build`` does (``sass.build_ptx``, cached by content).

GEMM sizes: M, N, K come from the layer (convolution: M = N*P*Q pixels, N = K filters, K = C*R*S for the
forward; the data gradient M = N*H*W, N = C, K = K*R*S; the weight gradient M = C*R*S, N = K, K = N*P*Q;
linear as kernels/dense.cu: forward M = out, N = batch, K = in, and so on), so FLOP and % of peak compare
with the CuPy backend's. The multiply-adds of the busiest block (``macs_cta``, what the model's trip count
uses) follow the numba launchers' tiling (``_macs_cta``): the tiled forward a (tw, th, tk) tile of
outputs over C*R*S; the gather data gradient one dx element a thread (grid-stride) over K*R*S/(sh*sw) taps
(every tap counted at stride 1); the weight gradient one (k, c) a block over R*S*N*P*Q; matmul a
TILE x TILE tile over K rounded up to TILE; a kernel the model does not know spreads the GEMM over its
blocks evenly, and no block counts less than that even share (the larger of the two is taken, so a
kernel rewritten with another tiling is never credited with less work than the average block does).

The main loop, its mix and the time follow the CuPy side's rules (``model``, ``sass.analyze``), so the two
backends' figures compare; the same caveat holds more strongly here: instructions outside the main loop
count once per warp, so staging loops around it (the tiled forward stages input and filters per
channel chunk) are under-counted, while a main loop holding branchy inner loops counts its whole body
every trip (the gather data gradient).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from .launches import Launch, _is_array

_GEMM_DIRECTIONS = ("forward", "data grad", "weight grad")


class ToolsMissing(RuntimeError, OSError):
    """A tool or NVVM is missing here: the message says which and how to install it (the CLI prints it as
    its one-line error: an OSError to it)."""


# --------------------------------------------------------------------------- child process: record + PTX

def _fake_cuda(context):
    """numba.cuda with device memory on the host and launches recorded (with context[-1], the layer and
    phase) instead of run: returns (records, restore)."""
    from numba import cuda
    from numba.cuda import dispatcher as disp
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    records = []

    def device_array(shape, dtype=np.float64, *a, **k):
        return FakeCUDAArray(np.zeros(shape, dtype=dtype))

    def to_device(arr, *a, **k):
        return FakeCUDAArray(np.array(arr, copy=True))

    def as_cuda_array(obj, *a, **k):
        return FakeCUDAArray(np.asarray(obj))

    class Configured:
        def __init__(self, dispatcher, griddim, blockdim):
            self.dispatcher, self.griddim, self.blockdim = dispatcher, griddim, blockdim

        def __call__(self, *args):
            records.append((self.dispatcher, tuple(self.griddim), tuple(self.blockdim), args, context[-1]))

    def configure(self, griddim, blockdim, stream=0, sharedmem=0):
        griddim, blockdim = disp.normalize_kernel_dimensions(griddim, blockdim)
        return Configured(self, griddim, blockdim)

    class Stream:  # streams and events: nothing is queued, so every wait returns at once
        def synchronize(self):
            pass

        def record(self, *a, **k):
            pass

        def wait(self, *a, **k):
            pass

        def elapsed_time(self, *a, **k):
            return 0.0

    fakes = {"device_array": device_array, "to_device": to_device, "as_cuda_array": as_cuda_array,
             "device_array_like": lambda a, *r, **k: device_array(a.shape, a.dtype),
             "pinned_array": lambda shape, dtype=np.float64, *r, **k: np.zeros(shape, dtype),
             "synchronize": lambda: None, "stream": lambda *a, **k: Stream(),
             "default_stream": lambda *a, **k: Stream(), "event": lambda *a, **k: Stream(),
             "event_elapsed_time": lambda *a, **k: 0.0}
    saved = {n: getattr(cuda, n) for n in fakes if hasattr(cuda, n)}
    saved_configure = disp.CUDADispatcher.configure
    for n, v in fakes.items():
        setattr(cuda, n, v)
    disp.CUDADispatcher.configure = configure

    def restore():
        for n in fakes:
            if n in saved:
                setattr(cuda, n, saved[n])
            else:
                delattr(cuda, n)
        disp.CUDADispatcher.configure = saved_configure
    return records, restore


def _arg_type(a):
    import numba
    from numba import types
    if _is_array(a) or (hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "copy_to_host")):
        arr = np.asarray(a._ary if hasattr(a, "_ary") else a)
        layout = "C" if arr.flags.c_contiguous else ("F" if arr.flags.f_contiguous else "A")
        return types.Array(numba.from_dtype(arr.dtype), arr.ndim, layout)
    return numba.typeof(a)


def _instance_name(dispatcher) -> str:
    """conv2d_fwd<float32> for a factory's kernel (its compile-time closure values), fill_zero otherwise."""
    fn = dispatcher.py_func
    parts = fn.__qualname__.split(".<locals>.")
    base = parts[0] if len(parts) > 1 else fn.__name__
    base = base[len("make_"):] if base.startswith("make_") else base
    params = []
    for cell in fn.__closure__ or ():
        try:
            v = cell.cell_contents
        except ValueError:
            continue
        if isinstance(v, (bool, int, np.integer)) or type(v).__module__.startswith("numba.core.types"):
            params.append(str(v))
    return f"{base}<{', '.join(params)}>" if params else base


def _child(model_name: str, batch: int, sms: int, cc: tuple) -> dict:
    """Runs in a process where numba.cuda is the real one: record the step, compile each instance to PTX."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise RuntimeError("the numba side of gpucnn kernels must run without NUMBA_ENABLE_CUDASIM=1")
    import warnings

    from numba import cuda
    from numba.core.errors import NumbaPerformanceWarning

    from ..backend import use_backend
    from ..backends import numba as nb
    from ..train import train_step
    from .launches import training_model, wrap_layers

    warnings.simplefilter("ignore", NumbaPerformanceWarning)
    context = [("step", "loss", None)]  # outside every layer: the loss, then the optimizer (wrapped below)
    model, x, y = training_model(model_name, batch)
    wrap_layers(model, context, lambda layer, phase: (layer.name, phase, layer))
    step = model.optimizer.step

    def optimizer_step(*a, **k):
        context.append(("step", "optimizer", None))
        try:
            return step(*a, **k)
        finally:
            context.pop()
    model.optimizer.step = optimizer_step

    records, restore = _fake_cuda(context)
    from numba.cuda import compiler as nc
    from numba.cuda import dispatcher as nd

    class Device:  # device functions are compiled for "the current device": the target's capability
        compute_capability = tuple(cc)
    current = (nd.get_current_device, nc.get_current_device)
    nd.get_current_device = nc.get_current_device = lambda: Device()
    probe = nb.NumbaBackend.probe
    nb.NumbaBackend.probe = lambda self: None
    try:
        with use_backend("numba"):
            from .. import functional as F
            xd = F.asarray(x)
            for _ in range(2):
                records.clear()
                train_step(model, xd, y)
    finally:
        nb.NumbaBackend.probe = probe
        restore()
    launches, ptx, keys = [], {}, {}
    for dispatcher, grid, block, args, (layer_name, phase, layer) in records:
        sig = tuple(_arg_type(a) for a in args)
        key = (id(dispatcher), str(sig))
        if key not in keys:
            keys[key] = f"{_instance_name(dispatcher)}#{len(keys)}"
            text, _ = cuda.compile_ptx(dispatcher.py_func, sig, cc=cc)
            ptx[keys[key]] = text
        shapes = [list(np.shape(a._ary if hasattr(a, "_ary") else a)) if hasattr(a, "copy_to_host") else None
                  for a in args]
        arrays = [(list(s), np.dtype(a.dtype).itemsize) for a, s in zip(args, shapes) if s is not None]
        scalars = [a.item() if isinstance(a, np.generic) else a if isinstance(a, (bool, int, float)) else None
                   for a in args]
        info = None
        if layer is not None:
            info = {"type": type(layer).__name__, "input": list(layer.input_shape or ()),
                    "output": list(layer.output_shape or ()),
                    "weight": list(layer.params["weight"].shape) if "weight" in layer.params else None,
                    "strides": list(getattr(layer, "strides", ()) or ())}
        launches.append({"layer": layer_name, "phase": phase, "instance": keys[key], "grid": list(grid),
                         "block": list(block), "arrays": arrays, "scalars": scalars, "layer_info": info})
    nd.get_current_device, nc.get_current_device = current
    return {"launches": launches, "ptx": ptx}


# --------------------------------------------------------------------------- parent: Launch records

def _cache_key(model_name: str, batch: int, sms: int, cc: tuple) -> str:
    import numba
    h = hashlib.sha256(f"{model_name}|{batch}|{sms}|{cc}|{numba.__version__}|{sys.version}".encode())
    try:
        import numba_cuda
        h.update(str(getattr(numba_cuda, "__version__", "")).encode())
    except ImportError:
        pass
    root = Path(__file__).resolve().parent.parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def nvvm_missing() -> str | None:
    """None when numba-cuda can compile to PTX here (NVVM found), else what is missing."""
    code = ("import os; os.environ.pop('NUMBA_ENABLE_CUDASIM', None)\n"
            "from numba.cuda.cudadrv import nvvm\n"
            "nvvm.NVVM()\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode == 0:
        return None
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    return ("gpucnn kernels --backend numba needs NVVM (libnvvm) for numba-cuda's PTX, not usable here "
            f"({last[:200]}): install the CUDA toolkit (its nvvm/ or lib/libnvvm.so) or pip install "
            "nvidia-cuda-nvcc, or point CUDA_HOME at a toolkit")


def record_raw(model_name: str, batch: int, sms: int, cc: tuple) -> dict:
    """The child's JSON (launches and PTX per instance), cached by content under the perf cache."""
    from . import sass
    cached = sass.cache_dir() / f"numba-{_cache_key(model_name, batch, sms, cc)}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"] = "0"
    package_root = str(Path(__file__).resolve().parents[2])  # this gpucnn, whatever the child's sys.path
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    import tempfile
    with tempfile.TemporaryDirectory(prefix="gpucnn-numba-") as tmp:
        result = Path(tmp) / "record.json"  # a file, not stdout: anything the step prints cannot garble it
        cmd = [sys.executable, "-m", "gpucnn.perf.numba_side", model_name, str(batch), str(sms),
               f"{cc[0]}{cc[1]}", str(result)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        text = result.read_text() if r.returncode == 0 and result.is_file() else ""
    if r.returncode != 0 or not text:
        why = nvvm_missing()
        if why:
            raise ToolsMissing(why)
        raise RuntimeError(f"recording the numba backend failed ({' '.join(cmd)}):\n{r.stderr[-3000:]}")
    out = json.loads(text)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(cached)
    return out


def _layer_gemm(direction: str, info: dict, batch: int) -> tuple[int, int, int] | None:
    """(M, N, K) of the GEMM a conv or linear layer's `direction` computes, as kernels/*.cu define it."""
    if not info or info["weight"] is None or direction not in _GEMM_DIRECTIONS:
        return None
    if info["type"] == "Conv2D":
        k, c, r, s = info["weight"]
        _, h, w = info["input"]
        _, p, q = info["output"]
        return {"forward": (batch * p * q, k, c * r * s), "data grad": (batch * h * w, c, k * r * s),
                "weight grad": (c * r * s, k, batch * p * q)}[direction]
    if info["type"] == "Dense":
        o, i = info["weight"]
        return {"forward": (o, batch, i), "data grad": (i, batch, o), "weight grad": (i, o, batch)}[direction]
    return None


def _macs_cta(base: str, raw: dict, mnk: tuple, info: dict, ctas: int, threads: int) -> int:
    """Multiply-adds of the busiest block, from the numba launchers' tiling (module docstring)."""
    even = math.ceil(mnk[0] * mnk[1] * mnk[2] / max(ctas, 1))  # the busiest block does at least the average
    return max(even, _tiling_macs(base, raw, mnk, info, ctas, threads))


def _tiling_macs(base: str, raw: dict, mnk: tuple, info: dict, ctas: int, threads: int) -> int:
    """The busiest block's multiply-adds by today's numba launchers' tiling (0: a kernel not known here)."""
    m, n, k = mnk
    block = raw["block"]
    known = {"conv2d_fwd": 14, "conv2d_dgrad": 8, "conv2d_wgrad": 8, "matmul": 8}  # their argument counts
    if known.get(base) != len(raw["scalars"]):
        return 0
    if base == "conv2d_fwd" and info["type"] == "Conv2D":
        kk, c, r, s = info["weight"]
        return int(np.prod(block)) * c * r * s
    if base == "conv2d_dgrad" and info["type"] == "Conv2D":
        kk, c, r, s = info["weight"]
        sh, sw = (info["strides"] or [1, 1])[:2]
        per_thread = math.ceil(m * n / (ctas * threads))  # dx elements a thread walks (grid-stride)
        return per_thread * threads * math.ceil(kk * r * s / (sh * sw))
    if base == "conv2d_wgrad" and info["type"] == "Conv2D":
        return k * (info["weight"][2] * info["weight"][3])  # R*S taps over N*P*Q
    if base == "matmul":
        t = int(block[0])
        return t * t * math.ceil(k / t) * t
    return 0


def _direction(base: str, phase: str, scalars: list, previous: str) -> str:
    if base == "matmul":  # (a, b, bias, c, trans_a, trans_b, has_bias, zero)
        trans_a, trans_b = bool(scalars[4]), bool(scalars[5])
        return "weight grad" if trans_a else ("forward" if trans_b else "data grad")
    if base == "col_sum" and phase == "backward":
        return "bias grad"
    from .launches import _direction as cupy_direction
    return cupy_direction(base, phase == "backward", previous)


def _is_gemm(base: str) -> bool:
    """A kernel that multiplies (conv2d_fwd/dgrad/wgrad, matmul): not a bias, ReLU, fill or reduction pass."""
    if any(w in base for w in ("bias", "relu", "fill", "reduce", "epilogue", "sum", "mask")):
        return False
    return base.startswith(("conv2d_", "matmul", "gemm", "linear"))


def to_launches(raw: dict, batch: int) -> list[Launch]:
    out = []
    for la in raw["launches"]:
        name = la["instance"].split("#")[0]
        base = name.split("<")[0]
        layer, phase = la["layer"], la["phase"]
        grid, block = tuple(int(g) for g in la["grid"]), tuple(int(b) for b in la["block"])
        nbytes = sum(int(np.prod(s)) * size for s, size in la["arrays"])
        work = max((int(np.prod(s)) for s, _ in la["arrays"]), default=0)
        if layer == "step":  # outside every layer: the loss and the optimizer step
            layer = phase
        previous = out[-1].direction if out else ""
        if phase in ("loss", "optimizer"):
            direction = "softmax-xent" if phase == "loss" else "sgd step"
        else:
            direction = _direction(base, phase, la["scalars"], previous)
        gemm, flops = None, 0
        info = la["layer_info"]
        mnk = _layer_gemm(direction, info, batch) if info else None
        if mnk and _is_gemm(base):
            ctas, threads = int(np.prod(grid)), int(np.prod(block))
            gemm = {"M": mnk[0], "N": mnk[1], "K": mnk[2],
                    "macs_cta": int(_macs_cta(base, la, mnk, info, ctas, threads))}
            flops = 2 * mnk[0] * mnk[1] * mnk[2]
        launch = Launch(layer, direction, "numba:" + la["instance"], name, grid, block, int(nbytes), int(work),
                        gemm, int(flops))
        out.append(launch)
    return out


def record_step(model_name: str, batch: int, sms: int, arch: str = "sm_90") -> list[Launch]:
    """The Numba backend's launches of one training step of `model_name` at `batch` (PTX for `arch`)."""
    return to_launches(record_raw(model_name, batch, sms, capability(arch)), batch)


def capability(arch: str) -> tuple[int, int]:
    """sm_90 -> (9, 0)."""
    digits = arch.split("_")[1]
    return int(digits[:-1]), int(digits[-1])


def missing() -> str | None:
    """None when ptxas, cuobjdump and nvdisasm are here, else what is missing and how to get it."""
    from . import sass
    absent = [t for t in ("ptxas", "cuobjdump", "nvdisasm") if sass.find(t) is None]
    if absent:
        how = []
        if "ptxas" in absent:
            how.append("ptxas comes with the CUDA toolkit (its bin/ on PATH) or pip install nvidia-cuda-nvcc")
        if {"cuobjdump", "nvdisasm"} & set(absent):
            how.append(sass.INSTALL)
        return f"gpucnn kernels --backend numba needs {', '.join(absent)}, not found here: " + "; ".join(how)
    return None  # NVVM is checked when the recording fails (nvvm_missing: a second import of numba.cuda)


def compile_instances(launches: list[Launch], raw: dict, arch: str) -> dict:
    """{family: (resources by symbol, SASS by symbol, entry symbol)} for the numba launches: each kernel
    instance's PTX assembled by ptxas into its own cubin (``sass.build_ptx``)."""
    import re

    from . import sass
    out = {}
    for family in sorted({la.family for la in launches}):
        ptx = raw["ptx"][family.split(":", 1)[1]]
        entry = re.search(r"\.entry\s+([A-Za-z0-9_$]+)", ptx).group(1)
        built = sass.build_ptx(ptx, arch)
        out[family] = (sass.resources(built), sass.functions(built["sass"]), entry)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    model_name, batch, sms, cc, result = argv
    out = _child(model_name, int(batch), int(sms), (int(cc[:-1]), int(cc[-1])))
    Path(result).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- per-layer comparison

def conv_layer_times(rows) -> dict:
    """{conv layer: (forward us, backward us)} of a model report's rows: every launch a Conv2D layer makes
    (bias, ReLU, its mask and split-K reductions included), predicted times (model)."""
    out = {}
    for r in rows:
        if not r.launch.layer.startswith("conv2d"):
            continue
        fwd, bwd = out.get(r.launch.layer, (0.0, 0.0))
        if r.launch.direction == "forward":
            fwd += r.predicted_us
        else:
            bwd += r.predicted_us
        out[r.launch.layer] = (fwd, bwd)
    return out


def compare_conv_layers(numba_rows, cupy_rows, title: str) -> str:
    """The per-layer conv time of the Numba backend against the CuPy backend's (both model output)."""
    a, b = conv_layer_times(numba_rows), conv_layer_times(cupy_rows)
    lines = [f"{title}: per-layer conv time, numba vs cupy backend (model output, predicted us, forward + "
             "backward launches of each Conv2D layer)",
             f"{'layer':12s} {'numba fwd':>10s} {'numba bwd':>10s} {'numba':>10s} {'cupy fwd':>9s} {'cupy bwd':>9s} "
             f"{'cupy':>9s} {'numba/cupy':>10s}"]
    worst = 0.0
    for layer in a:
        nf, nb_ = a[layer]
        cf, cb = b.get(layer, (0.0, 0.0))
        ratio = (nf + nb_) / (cf + cb) if cf + cb else float("inf")
        worst = max(worst, ratio)
        lines.append(f"{layer:12s} {nf:10.1f} {nb_:10.1f} {nf + nb_:10.1f} {cf:9.1f} {cb:9.1f} {cf + cb:9.1f} "
                     f"{ratio:9.1f}x")
    total_n = sum(f + g for f, g in a.values())
    total_c = sum(f + g for f, g in b.values())
    lines.append(f"{'all conv':12s} {'':10s} {'':10s} {total_n:10.1f} {'':9s} {'':9s} {total_c:9.1f} "
                 f"{total_n / total_c if total_c else float('inf'):9.1f}x")
    lines.append(f"worst layer (model): numba {worst:.1f}x the cupy backend's time (issue target: within 3x)")
    return "\n".join(lines)
