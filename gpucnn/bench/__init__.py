"""Kernel profiling: every op x backend x shape, the device's ceilings, whole training steps.

    from gpucnn import bench
    doc = bench.run(models=["mnist_cnn"], batches=[32], sweep=True)   # a JSON-ready dict
    print(bench.format_table(doc)); bench.write_results(doc, "benchmarks/results")

What is timed, and how
----------------------
* Cases: the conv, max-pool and ReLU shapes of the zoo's nets (cifar10_vgg,
  mnist_cnn) at several batch sizes, forward and backward, plus an optional
  size sweep (``sweep_cases``). Counts per case (``Case.flops``, ``Case.bytes``)
  are the minimum work and the compulsory memory traffic: a multiply-add is 2
  FLOPs; every input is read once and every output written once, 4 bytes per
  float32 (max-pool indices are not counted).
* Clocks: each backend's own timer (``Backend.timer()``): a backend running on
  the CPU is timed with the monotonic clock (``time.perf_counter_ns``); a GPU
  backend with CUDA events recorded on its stream. A figure is labelled GPU only
  when CUDA events measured it: ``check_clock`` refuses anything else, when a
  measurement is made and again when a table or file is written.
* The first call (compilation, caches, allocator warm-up) is timed apart
  (``first_call_ms``, wall clock), then ``warmup`` calls (``warmup_ms``), then
  the repeats, whose median is the figure. Repeats are at least
  ``min_repeats``, more for fast cases, until about ``min_time_s`` of work.
* Each repeat gets the next of several copies of its inputs, enough copies to
  span ``2 x`` the largest cache (CPU: last-level cache; GPU: L2), so a repeat
  does not find its inputs in the cache the previous one left warm
  (``rotation`` in each row says how many copies and how many bytes).
* Ceilings, measured in the same run on each device timed: a large copy
  (bytes/s, read + write) and a large FP32 matrix product (FLOP/s); on a GPU
  also a TF32 one. Each row's ``pct_peak_flops`` and ``pct_peak_bandwidth``
  are its FLOP/s and bytes/s as percentages of them.
* Reference column: PyTorch on the same device and case, when PyTorch is
  importable: on a GPU cuDNN (convolutions) and PyTorch's CUDA kernels
  (pooling, ReLU), timed with CUDA events, TF32 as ``gpucnn.config.allow_tf32``;
  on the CPU PyTorch's CPU kernels (oneDNN), labelled as such, never cuDNN.
* Model column: every cupy row (each case, and the training step; measured or, with no GPU here, "not
  measured") carries the static kernel model's predicted time (``gpucnn.perf``: ``model_us``, ``model_gpu``,
  ``model_label``; ``measured_over_model`` beside a CUDA-event measurement) for the run's GPU by its name
  (H100, H200, A100; otherwise an H200, said to be assumed), so a GPU run calibrates the model. Every such
  figure is labelled a model; without nvcc/cuobjdump the column says why (``modelled``).

A backend running in a simulator (Numba's CUDA simulator, the CuPy backend's
host emulation) is never timed (its figures would be CPU emulation); it is
listed under ``skipped`` with the reason.

The package, one module per concern: ``cases`` (Case, the zoo's shapes, the sweep,
inputs, counts, rates), ``timers`` (clock labels, which backends are timed,
measure), ``ceilings`` (ceilings, caches, environment), ``torch_twins`` (the
PyTorch reference), ``steps`` (whole training steps), ``modelled`` (the model column), ``reports`` (rows,
validate, tables, files) and ``plots``; ``run`` here ties them together.
"""
from __future__ import annotations

import datetime as _dt
import sys

import numpy as np

from .. import config
from ..backend import CpuTimer, get_backend, use_backend
from .cases import BENCH_MODELS, F32, OPS, Case, gpucnn_impl, host_inputs, input_bytes, model_cases, rates, sweep_cases
from .ceilings import cache_bytes, cpu_ceilings, environment, gpu_backend, gpu_ceilings, gpu_info
from .plots import plot_roofline, plot_sweep
from .reports import (SCHEMA, case_row, device_title, format_table, results_name, step_rows, table_rows, to_markdown,
                      validate, write_results)
from .steps import gpucnn_graph_step, gpucnn_step, step_row, train_step_bench
from .timers import (CPU_CLOCK, DEVICES, GPU_CLOCK, GpuFigureError, Timing, check_clock, measure, median, plan_backends,
                     time_case, timer_for_backend)
from .torch_twins import TorchCudaEvents, torch_impl, torch_net, torch_reference, torch_step, torch_tf32

__all__ = [
    "run", "SCHEMA", "OPS", "BENCH_MODELS", "F32", "CPU_CLOCK", "GPU_CLOCK", "DEVICES", "GpuFigureError", "check_clock",
    "Case", "model_cases", "sweep_cases", "host_inputs", "input_bytes", "gpucnn_impl", "rates",
    "CpuTimer", "timer_for_backend", "Timing", "median", "measure", "plan_backends", "time_case",
    "cache_bytes", "cpu_ceilings", "gpu_ceilings", "gpu_backend", "environment", "gpu_info",
    "TorchCudaEvents", "torch_impl", "torch_reference", "torch_tf32", "torch_net", "torch_step",
    "gpucnn_step", "gpucnn_graph_step", "step_row", "train_step_bench",
    "case_row", "validate", "device_title", "table_rows", "step_rows", "format_table", "to_markdown", "results_name",
    "write_results", "plot_roofline", "plot_sweep",
]


def run(backends=None, ops=OPS, models=BENCH_MODELS, batches=(1, 32, 128), sweep=False, sweep_sizes=None,
        reference=True, warmup=2, min_repeats=10, max_repeats=100, min_time_s=0.3, step=True, step_models=None,
        step_batch=128, step_warmup=2, step_repeats=10, ceilings_small=False, rotate_bytes=None, progress=True, seed=0,
        command=None, model=True) -> dict:
    """Time every case on every runnable backend (and PyTorch beside it); return the results document.

    `model`: put the static kernel model's predicted time (``gpucnn.perf``, labelled a model) beside every
    cupy row, measured or not (``bench.modelled``)."""
    names, skipped = plan_backends(backends)
    cases = model_cases(models, batches, ops) if models else []
    if sweep:
        cases += sweep_cases(sizes=sweep_sizes or (8, 16, 32, 64, 128), ops=ops)
    devices = sorted({get_backend(n).device for n in names})
    gpu = gpu_backend(names)  # the GPU backend whose device facts and timer describe the GPU, if one is timed
    ceilings = {}
    for dev in devices:
        if dev == "cpu":
            ceilings["cpu"] = cpu_ceilings(64, 1024, 3) if ceilings_small else cpu_ceilings()
        else:  # pragma: no cover - needs a GPU
            ceilings["gpu"] = gpu_ceilings(256, 4096, 5, gpu) if ceilings_small else gpu_ceilings(backend=gpu)
    refs = {}
    for dev in devices:
        label, timer, tdev = torch_reference(dev) if reference else (None, "not asked for (--no-reference)", None)
        refs[dev] = (label, timer, tdev)
        if label is None:
            skipped.append({"backend": f"reference on {dev}", "reason": timer})
    rng = np.random.default_rng(seed)
    kw = dict(warmup=warmup, min_repeats=min_repeats, max_repeats=max_repeats, min_time_s=min_time_s)
    rows = []
    jobs = [(case, name) for case in cases for name in names]
    bar = _progress(jobs, progress, "cases")
    ref_done = {}
    tf32 = bool(config.allow_tf32)
    rotations = {}  # backend name -> bytes to rotate the inputs over: 2x the largest cache of its device
    for case, name in bar:
        bk = get_backend(name)
        dev = bk.device
        if name not in rotations:
            rotations[name] = rotate_bytes if rotate_bytes is not None else 2 * cache_bytes(dev, bk.device_facts())
        rot = rotations[name]
        with use_backend(name):
            timing, rotation = time_case(case, gpucnn_impl(case), bk.timer(), rng, rot, **kw)
        row = case_row(case, name, f"gpucnn {name}", timing, rotation, ceilings.get(dev),
                       tf32 and case.op in bk.tf32_ops)
        label, rtimer, tdev = refs[dev]
        if label is not None:
            key = (case, dev)
            if key not in ref_done:
                with torch_tf32(tdev, tf32):
                    rt, rrot = time_case(case, torch_impl(case, tdev), rtimer, rng, rot, **kw)
                ref_done[key] = case_row(case, "torch", label, rt, rrot, ceilings.get(dev),
                                         tf32 and dev == "gpu" and case.family == "conv2d")
            ref = ref_done[key]
            row["reference"] = {k: ref[k] for k in ("label", "median_ms", "flop_per_s", "byte_per_s", "pct_peak_flops",
                                                    "pct_peak_bandwidth", "device", "clock", "repeats",
                                                    "first_call_ms", "rotation")}
            row["vs_reference"] = row["median_ms"] / ref["median_ms"]
        rows.append(row)
    step_list = train_step_bench(step_models or models or BENCH_MODELS, step_batch, names, step_warmup, step_repeats,
                                 reference) if step else []
    env = environment(gpu)
    cupy_skipped = next((s["reason"] for s in skipped if s["backend"] == "cupy"), None)
    modelled = None
    if model and ("cupy" in names or cupy_skipped):
        modelled = _put_model(cases, rows, step_list, names, cupy_skipped, env["gpu"], tf32, step_models or models
                              or BENCH_MODELS, step_batch, step, seed)
    doc = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv),
        **env,
        "settings": {"warmup": warmup, "min_repeats": min_repeats, "max_repeats": max_repeats,
                     "min_time_s": min_time_s, "rotate_bytes": rotate_bytes, "allow_tf32": tf32,
                     "backends_timed": names, "dtype": "float32"},
        "ceilings": ceilings,
        "skipped": skipped,
        "cases": rows,
        "train_step": step_list,
    }
    if modelled is not None:
        doc["model"] = modelled
    validate(doc)
    return doc


def _put_model(cases, rows, step_list, names, cupy_skipped, gpu, tf32, step_models, step_batch, step, seed) -> dict:
    """The model fields on every cupy row, in place; a "not measured" cupy row (with the model) for each case
    and step no GPU timed here. Returns the run's model summary (doc["model"])."""
    from . import modelled as M
    result = M.run_model(cases, [(m, step_batch) for m in step_models] if step else [], gpu, tf32, seed)
    for row, case in zip(rows, [c for c in cases for _ in names]):
        if row["impl"] == "cupy":
            row.update(M.fields(result, result["cases"].get(case), row["median_ms"]))
    if cupy_skipped:
        per = len(names)
        merged = []
        for i, case in enumerate(cases):
            merged += rows[i * per:(i + 1) * per]
            merged.append(M.not_measured_case_row(case, cupy_skipped) | M.fields(result, result["cases"].get(case)))
        rows[:] = merged
    for row in step_list:
        if row["impl"] in ("cupy", "cupy-cuda-graph") and "median_ms" in row:
            row.update(M.fields(result, result["steps"].get((row["model"], row["batch"])), row["median_ms"]))
    if cupy_skipped and step:
        for m in step_models:
            at = next((i for i, r in enumerate(step_list) if r["model"] == m and r["impl"].startswith("torch")),
                      max([i + 1 for i, r in enumerate(step_list) if r["model"] == m], default=len(step_list)))
            step_list.insert(at, {"model": m, "batch": step_batch, "impl": "cupy", "label": "gpucnn cupy",
                                  "device": "gpu", "not_measured": cupy_skipped}
                             | M.fields(result, result["steps"].get((m, step_batch))))
    return {"gpu": result["gpu"], "gpu_name": result["gpu_name"], "assumed": result["assumed"],
            "label": result["label"], "absent": result["absent"], "tf32": result["tf32"]}


def _progress(items, enabled, desc):
    if not enabled or not items:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="case", file=sys.stderr, dynamic_ncols=True)

