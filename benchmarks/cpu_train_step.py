"""Forward + backward + SGD step time of the zoo's nets on the CPU: gpucnn's NumPy backend vs PyTorch.

    python benchmarks/cpu_train_step.py [--batch 64] [--repeats 10] [--json OUT]

Reports the median over `repeats` steps after `warmup` steps, per model, for
the NumPy backend and, when PyTorch is importable, for PyTorch's CPU build
with the same architecture and thread count (PyTorch is not a dependency).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

import gpucnn
from gpucnn import models


def median_step_ms(step, warmup: int, repeats: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


def gpucnn_step(name: str, batch: int):
    model = models.get(name, seed=0)
    model.compile(gpucnn.SGD(lr=0.01, momentum=0.9))
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + model.input_shape, dtype=np.float32)
    y = rng.integers(0, 10, batch)
    from gpucnn.train import train_step
    return lambda: train_step(model, x, y)


def torch_step(name: str, batch: int):
    import torch
    from torch import nn
    ref = models.get(name, seed=0)
    layers = []
    for layer in ref.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            layers += [nn.Conv2d(layer.input_shape[0], layer.filters, layer.kernel_size, layer.strides,
                                 padding=layer.padding)]
            layers += [nn.ReLU()] if layer.activation == "relu" else []
        elif kind == "MaxPool2D":
            layers.append(nn.MaxPool2d(layer.pool_size, layer.strides))
        elif kind == "Flatten":
            layers.append(nn.Flatten())
        elif kind == "Dense":
            layers.append(nn.Linear(layer.input_shape[0], layer.units))
            layers += [nn.ReLU()] if layer.activation == "relu" else []
        elif kind == "Dropout":
            layers.append(nn.Dropout(layer.rate))
    net = nn.Sequential(*layers)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand((batch,) + ref.input_shape)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--models", nargs="+", default=["cifar10_vgg", "mnist_cnn"])
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()
    try:
        import torch
        torch.set_num_threads(os.cpu_count())
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    results = []
    blas = gpucnn.blas_info()
    print(f"batch {args.batch}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"numpy {np.__version__} ({blas}), torch {torch_version or 'not installed'}")
    print(f"{'model':14s} {'gpucnn numpy ms':>16s} {'torch cpu ms':>13s} {'ratio':>7s}")
    with gpucnn.use_backend("numpy"):
        for name in args.models:
            ours, ours_all = median_step_ms(gpucnn_step(name, args.batch), args.warmup, args.repeats)
            theirs = theirs_all = None
            if torch_version:
                theirs, theirs_all = median_step_ms(torch_step(name, args.batch), args.warmup, args.repeats)
            ratio = f"{ours / theirs:.2f}x" if theirs else "-"
            print(f"{name:14s} {ours:16.1f} {theirs if theirs else float('nan'):13.1f} {ratio:>7s}", flush=True)
            results.append({"model": name, "batch": args.batch, "gpucnn_numpy_ms": ours, "torch_cpu_ms": theirs,
                            "gpucnn_numpy_all_ms": ours_all, "torch_cpu_all_ms": theirs_all})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"numpy": np.__version__, "blas": blas, "torch": torch_version, "cores": os.cpu_count(),
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
