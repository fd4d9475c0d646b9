"""Forward + backward + SGD step time of the zoo's nets on the CPU: gpucnn's NumPy backend vs PyTorch.

    python benchmarks/cpu_train_step.py [--batch 64] [--repeats 10] [--json OUT]

A thin front to ``gpucnn.bench.train_step_bench`` (the whole-training-step
benchmark that ``gpucnn bench`` runs at batch 128 on every backend): the
median over `repeats` steps after `warmup` steps, per model, for the NumPy
backend and, when PyTorch is importable, for PyTorch's CPU build with the
same architecture on all cores (PyTorch is not a dependency).
"""
from __future__ import annotations

import argparse
import json

from gpucnn import bench


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--models", nargs="+", default=["cifar10_vgg", "mnist_cnn"])
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args()
    env = bench.environment(gpu=False)
    print(f"batch {args.batch}, {env['host']['cores']} cores, {env['host']['cpu']}, numpy {env['versions']['numpy']} "
          f"({env['versions']['blas']}), torch {env['versions']['torch'] or 'not installed'}")
    rows = bench.train_step_bench(args.models, args.batch, ["numpy"], args.warmup, args.repeats)
    print(f"{'model':14s} {'gpucnn numpy ms':>16s} {'torch cpu ms':>13s} {'ratio':>7s}")
    for name in args.models:
        ours = next(r for r in rows if r["model"] == name and r["impl"] == "numpy")
        theirs = next((r for r in rows if r["model"] == name and r["impl"] == "torch" and "median_ms" in r), None)
        ratio = f"{ours['median_ms'] / theirs['median_ms']:.2f}x" if theirs else "-"
        print(f"{name:14s} {ours['median_ms']:16.1f} {theirs['median_ms'] if theirs else float('nan'):13.1f} "
              f"{ratio:>7s}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**env, "train_step": rows}, f, indent=2)


if __name__ == "__main__":
    main()
