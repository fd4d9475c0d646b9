"""The static kernel model beside the measurement: every cupy row of a bench run (each op case, and the
training step) gets the time ``gpucnn.perf`` predicts for its launches on the GPU the run used (H100, H200
or A100 by the device's name; otherwise an assumed one, said so), and measured / model where a CUDA-event
measurement exists. Where no GPU measured it (a CPU machine), the row says "not measured" and still carries
the model. Every such figure is labelled a model: ``model_label`` on each row, ``doc["model"]`` for the run.

Each case is recorded once (``perf.record_call``: the launchers choose tile, split-K and grid for the real
shape, no kernel runs); each kernel file is compiled once a run (``perf.model.compile_families``; nvcc's
output is cached by content under ~/.cache/gpucnn/perf). Without nvcc/cuobjdump the model column says why.
"""
from __future__ import annotations

import numpy as np

from .cases import Case, gpucnn_impl, host_inputs

MODEL_LABEL = "model: gpucnn kernels' static kernel model, predicted from the SASS, not measured"
DEFAULT_GPU = "h200"


def choose_gpu(gpu: dict | None) -> tuple[str, str | None]:
    """(key of gpucnn.perf.GPUS, why it was assumed or None): the device's name picks H100/H200/A100."""
    name = str((gpu or {}).get("name") or "")
    for key in ("h200", "h100", "a100"):
        if key in name.lower():
            return key, None
    if not gpu:
        return DEFAULT_GPU, f"no GPU in this run: {DEFAULT_GPU.upper()} assumed"
    return DEFAULT_GPU, f"GPU {name!r} is not one the model knows (H100, H200, A100): {DEFAULT_GPU.upper()} assumed"


def run_model(cases: list[Case], steps: list[tuple[str, int]], gpu: dict | None, tf32: bool, seed: int = 0) -> dict:
    """{"gpu", "gpu_name", "assumed", "label", "absent", "tf32", "cases": {case: us or why}, "steps": {...}}."""
    from ..perf import gpus, sass
    key, assumed = choose_gpu(gpu)
    spec = gpus.GPUS[key]
    out = {"gpu": key, "gpu_name": spec.name, "assumed": assumed, "label": MODEL_LABEL, "absent": sass.missing(),
           "tf32": bool(tf32), "cases": {}, "steps": {}}
    if out["absent"]:
        return out
    from ..perf import calls, launches as perf_launches, model
    recorded = {}
    rng = np.random.default_rng(seed)
    for case in dict.fromkeys(cases):
        try:
            recorded[("case", case)] = _record_case(case, spec.sms, tf32, rng)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            out["cases"][case] = f"model failed: {type(e).__name__}: {e}"
    for name, batch in dict.fromkeys(steps):
        try:
            recorded[("step", (name, batch))] = perf_launches.record_step(name, batch, spec.sms, tf32=tf32)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            out["steps"][(name, batch)] = f"model failed: {type(e).__name__}: {e}"
    families = {la.family for launches in recorded.values() for la in launches}
    try:
        compiled = model.compile_families(families, spec.arch)
    except (RuntimeError, OSError) as e:  # nvcc refused: the column says so
        out["absent"] = f"model failed to compile the kernels: {e}"
        return out
    for (kind, what), launches in recorded.items():
        try:
            _, us = calls.predict(launches, key, tf32, compiled)
        except (RuntimeError, ValueError, KeyError) as e:
            us = f"model failed: {type(e).__name__}: {e}"
        out["cases" if kind == "case" else "steps"][what] = us
    return out


def _record_case(case: Case, sms: int, tf32: bool, rng):
    from ..perf import calls
    prepare, call = gpucnn_impl(case)
    host = host_inputs(case, rng)
    phase = "backward" if case.op.endswith("_backward") else "forward"
    return calls.record_call(call, sms, tf32=tf32 and case.family == "conv2d", prepare=lambda: prepare(host),
                             layer=case.source or case.op, phase=phase)


def fields(result: dict, us, measured_ms: float | None = None) -> dict:
    """The model fields of one cupy row: model_us (or None and model_absent), model_gpu, model_label and,
    with a measurement, measured_over_model."""
    gpu = result["gpu_name"] + (" (assumed)" if result["assumed"] else "")
    row = {"model_gpu": gpu, "model_label": result["label"]}
    if result["absent"] or not isinstance(us, float):
        row["model_us"] = None
        row["model_absent"] = result["absent"] or us or "not modelled"
        return row
    row["model_us"] = us
    if measured_ms is not None:
        row["measured_over_model"] = measured_ms * 1e3 / us if us > 0 else None
    return row


def not_measured_case_row(case: Case, reason: str) -> dict:
    """A cupy case no GPU timed here: its shape and why, for the model figure to stand beside."""
    return {"op": case.op, "source": case.source, "shape": case.shape_text, "n": case.n, "c": case.c, "h": case.h,
            "w": case.w, "k": case.k, "r": case.r, "s": case.s, "stride": case.stride, "pad": case.pad,
            "impl": "cupy", "label": "gpucnn cupy", "device": "gpu", "flops": case.flops, "bytes": case.bytes,
            "not_measured": reason}
