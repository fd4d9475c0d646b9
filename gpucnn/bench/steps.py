"""Whole training steps (forward, loss, backward, SGD with momentum) in images per second: gpucnn's step
per backend, its captured step (``gpucnn.capture.CapturedStep``) where the backend has a capture
primitive, and beside them PyTorch eager and, on a GPU, PyTorch replaying a CUDA graph.
"""
from __future__ import annotations

import numpy as np

from .. import config
from .. import functional as F
from ..backend import current_backend, get_backend, host_backend, use_backend
from .cases import BENCH_MODELS
from .timers import Timing, measure, plan_backends
from .torch_twins import torch_reference, torch_step, torch_tf32


def gpucnn_step(name: str, batch: int):
    """A closure running one gpucnn training step (forward, loss, backward, SGD with momentum) on the current backend."""
    from .. import models
    from ..optim import SGD
    from ..train import train_step
    model = models.get(name, seed=0).compile(SGD(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + model.input_shape, dtype=np.float32)
    y = rng.integers(0, 10, batch)
    if current_backend() != host_backend():
        x = F.asarray(x)  # on the device once, as a data loader that prefetches would leave it
    return lambda: train_step(model, x, y)


def gpucnn_graph_step(name: str, batch: int):
    """A closure running the same step as gpucnn_step through fit's captured step (a backend with a capture
    primitive: a CUDA graph):
    the first two calls are plain steps, the third captures and launches, every later call is a replay."""
    from .. import models
    from ..capture import CapturedStep
    from ..optim import SGD
    model = models.get(name, seed=0).compile(SGD(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = F.asarray(rng.random((batch,) + model.input_shape, dtype=np.float32))
    y = F.asarray(rng.integers(0, 10, batch))
    captured = CapturedStep(model, batch)

    def step():
        captured.step(x, y)
    step.captured = captured
    return step


def step_row(model, batch, impl, label, timing: Timing) -> dict:
    med = timing.median_ms
    return {"model": model, "batch": batch, "impl": impl, "label": label, "device": timing.device,
            "clock": timing.clock, "median_ms": med, "images_per_s": batch / (med / 1e3),
            "repeats": len(timing.times_ms), "times_ms": [round(t, 6) for t in timing.times_ms],
            "first_call_ms": timing.first_call_ms, "warmup_ms": timing.warmup_ms}


def train_step_bench(models=BENCH_MODELS, batch=128, backends=None, warmup=2, repeats=10, reference=True) -> list:
    """Images per second of a whole training step, per backend, beside PyTorch eager and PyTorch + CUDA graphs."""
    names = list(backends) if backends is not None else plan_backends()[0]
    kw = dict(warmup=warmup, min_repeats=repeats, max_repeats=repeats, min_time_s=0)
    rows = []
    for model in models:
        for name in names:
            bk = get_backend(name)
            if bk.simulated:
                raise ValueError(f"backend {name!r} runs in the CUDA simulator: not benchmarked")
            with use_backend(name):
                timing = measure(gpucnn_step(model, batch), [()], bk.timer(), **kw)
            rows.append(step_row(model, batch, name, f"gpucnn {name}", timing))
            # a capture primitive: the captured step too (warm-up covers the plain steps and the capture)
            if bk.capture is not None:  # pragma: no cover - needs a GPU
                with use_backend(name):
                    timing = measure(gpucnn_graph_step(model, batch), [()], bk.timer(),
                                     **dict(kw, warmup=max(2, warmup)))
                rows.append(step_row(model, batch, f"{name}-cuda-graph", f"gpucnn {name} CUDA graph", timing))
        if not reference:
            continue
        for dev in sorted({get_backend(n).device for n in names}):
            label, timer, tdev = torch_reference(dev)
            if label is None:
                rows.append({"model": model, "batch": batch, "impl": "torch", "label": f"PyTorch on {dev}",
                             "device": dev, "not_measured": timer})
                continue
            version = label.split("PyTorch ")[1].split()[0]
            name = f"PyTorch {version} {'CUDA' if tdev == 'cuda' else 'CPU'} eager"
            with torch_tf32(tdev, bool(config.allow_tf32)):
                rows.append(step_row(model, batch, "torch", name, measure(torch_step(model, batch, tdev), [()],
                                                                          timer, **kw)))
                if tdev == "cuda":  # pragma: no cover - needs a GPU
                    rows.append(step_row(model, batch, "torch-cuda-graphs", f"PyTorch {version} CUDA graphs",
                                         measure(torch_step(model, batch, tdev, graphs=True), [()], timer, **kw)))
            if tdev == "cpu":
                rows.append({"model": model, "batch": batch, "impl": "torch-cuda-graphs",
                             "label": "PyTorch CUDA graphs", "device": "gpu",
                             "not_measured": "CUDA graphs need a CUDA GPU; none here"})
    return rows
