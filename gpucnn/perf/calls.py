"""The static kernel model of one call: the CuPy backend's launches one call of a function makes, and their
predicted time (``gpucnn bench`` puts it beside each measured cupy row).

``record_call(fn, sms)`` runs ``fn()`` once through the CuPy backend with ``_runtime.Family.launch`` replaced by
the recorder ``launches.record_step`` uses (so each launcher picks its own tile, split-K, grid and block for the
real shapes, and no kernel runs), ``_runtime.sm_count`` returning `sms` and ``gpucnn.config.allow_tf32``
following `tf32`; without CuPy the backend runs in its CPU emulation. ``predict_call`` compiles the kernel files
those launches use (``model.compile_families``: nvcc, cached by content under ~/.cache/gpucnn/perf) and models
each launch (``model.analyze``). Every figure is a model of the code as compiled, not a measurement.
"""
from __future__ import annotations

from . import gpus
from .launches import Launch, _emulated_if_needed, _State, recording


def record_call(fn, sms: int, tf32: bool = False, prepare=None, layer: str = "call",
                phase: str = "forward") -> list[Launch]:
    """The launches one call of ``fn()`` makes on the CuPy backend, on a GPU with `sms` SMs.

    `prepare` (optional) runs first, unrecorded, on the same backend; ``fn(*prepare())`` is then the call
    recorded (inputs that need launches of their own, e.g. a max-pool's indices for its backward).
    `layer` and `phase` ("forward" or "backward") name the launches' context as record_step's layers do."""
    with _emulated_if_needed():
        from .. import config
        from ..backend import use_backend

        state = _State(context=[(layer, phase)])
        with use_backend("cupy"), config.tf32(tf32):
            args = tuple(prepare()) if prepare is not None else ()
            with recording(state, sms):
                fn(*args)
        return list(state.raw)


def predict(launches: list[Launch], gpu: str = "h200", tf32: bool = False, compiled: dict | None = None):
    """(rows, total predicted microseconds) of recorded launches on `gpu` (model). `compiled`: the result of
    ``model.compile_families`` for these launches' families on the GPU's architecture, if already built."""
    from . import model
    spec = _spec(gpu)
    if compiled is None:
        compiled = model.compile_families({la.family for la in launches}, spec.arch)
    rows = model.analyze(launches, spec, tf32, compiled)
    return rows, float(sum(r.predicted_us for r in rows))


def predict_call(fn, gpu: str = "h200", tf32: bool = False, prepare=None) -> tuple[list, float]:
    """(model rows, total predicted microseconds) of one call of ``fn()`` on `gpu` (h200, h100, a100): a model,
    not a measurement. Raises RuntimeError saying what is missing when nvcc or cuobjdump is not here."""
    from . import sass
    spec = _spec(gpu)
    why = sass.missing()
    if why:
        raise RuntimeError(why)
    return predict(record_call(fn, spec.sms, tf32=tf32, prepare=prepare), gpu, tf32)


def _spec(gpu: str) -> gpus.GPU:
    if gpu not in gpus.GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose {', '.join(gpus.GPUS)}")
    return gpus.GPUS[gpu]
