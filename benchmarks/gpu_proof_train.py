"""The train stage of benchmarks/gpu_proof.sh, and of its CPU dry run at tiny sizes (same code).

Per backend: cifar10_vgg on CIFAR-shaped random data (on the cupy backend plain and as a captured CUDA
graph, fit(cuda_graph=True)), seconds per epoch and the first and last epoch's loss; then digits_cnn on
the bundled digits (stratified 80/20 split, seed 0), seconds per epoch and held-out accuracy.

    python benchmarks/gpu_proof_train.py                       # the GPU run's sizes, real devices only
    python benchmarks/gpu_proof_train.py --expect simulated --nets tiny --cifar-samples 4 --cifar-batch 1 \\
        --cifar-epochs 1 --digits-samples 2 --digits-test-samples 2 --digits-batch 2 --digits-epochs 1 \\
        --min-digits-accuracy 0                                  # the dry run (see gpu_proof.sh dry)

--nets tiny swaps the zoo nets for stand-ins with the same input shapes and layer kinds (conv + ReLU, max
pool, dropout, dense, softmax) at a width of 2 filters: in Numba's CUDA simulator every CUDA thread is a
Python thread, and one step of cifar10_vgg or digits_cnn takes minutes there.

Exits non-zero (nothing passes silently) when a backend is not available, when it is simulated and
--expect device (the default: a GPU proof must not run in the CUDA simulator or the CuPy emulator) or
real and --expect simulated, when a loss is not finite, when digits_cnn's held-out accuracy is below
--min-digits-accuracy, or when the sizes leave the captured-graph run without a replay (it needs four full
batches an epoch: two plain steps, the capture, a replay).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=["cupy", "numba"], choices=["cupy", "numba", "numpy"])
    p.add_argument("--expect", choices=["device", "simulated", "any"], default="device",
                   help="device: refuse simulated backends (default); simulated: refuse real ones")
    p.add_argument("--nets", choices=["zoo", "tiny"], default="zoo",
                   help="zoo: cifar10_vgg and digits_cnn (default); tiny: 2-filter stand-ins (dry runs)")
    p.add_argument("--cifar-samples", type=int, default=5120, help="CIFAR-shaped random images (default 5120)")
    p.add_argument("--cifar-batch", type=int, default=128)
    p.add_argument("--cifar-epochs", type=int, default=3)
    p.add_argument("--digits-samples", type=int, default=0, help="training digits used (default 0: all 1437)")
    p.add_argument("--digits-test-samples", type=int, default=0, help="held-out digits used (default 0: all 360)")
    p.add_argument("--digits-batch", type=int, default=32)
    p.add_argument("--digits-epochs", type=int, default=20)
    p.add_argument("--min-digits-accuracy", type=float, default=0.97,
                   help="fail below this held-out accuracy (default 0.97; the NumPy backend reaches 0.986)")
    args = p.parse_args(argv)
    for name in ("cifar_samples", "cifar_batch", "cifar_epochs", "digits_batch", "digits_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if "cupy" in args.backends and args.cifar_samples // args.cifar_batch < 4:
        p.error("the cupy backend's captured-graph run needs at least 4 full batches an epoch (two plain steps, "
                "the capture, a replay): raise --cifar-samples or lower --cifar-batch")
    return args


def _nets(kind):
    """(the CIFAR-shaped net, the digits net) as functions of a seed."""
    from gpucnn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, Sequential, models
    if kind == "zoo":
        return models.cifar10_vgg, models.digits_cnn

    def tiny_cifar(seed):
        return Sequential([MaxPool2D(4), Conv2D(2, 3, padding="same", activation="relu"), MaxPool2D(2), Flatten(),
                           Dense(10, activation="softmax")], input_shape=(3, 32, 32), seed=seed, name="tiny_cifar")

    def tiny_digits(seed):
        return Sequential([Conv2D(2, 3, padding="same", activation="relu"), MaxPool2D(2), Dropout(0.25), Flatten(),
                           Dense(10, activation="softmax")], input_shape=(1, 8, 8), seed=seed, name="tiny_digits")
    return tiny_cifar, tiny_digits


def _check_backend(name, expect):
    from gpucnn.backend import info
    entry = info()[name]
    if not entry["available"]:
        raise SystemExit(f"gpu_proof_train: backend {name} is not available here: {entry['reason']}")
    simulated = bool(entry.get("simulated"))
    if expect == "device" and simulated:
        raise SystemExit(f"gpu_proof_train: backend {name} runs in a simulator here; a GPU proof needs the device "
                         "(unset NUMBA_ENABLE_CUDASIM / GPUCNN_CUPY_EMULATE, or pass --expect simulated)")
    if expect == "simulated" and not simulated:
        raise SystemExit(f"gpu_proof_train: backend {name} is not simulated here, but --expect simulated")
    return "simulated" if simulated else "device"


def _finite(history, what):
    losses = history.history["loss"]
    if not all(math.isfinite(v) for v in losses):
        raise SystemExit(f"gpu_proof_train: {what}: loss not finite: {losses}")
    return losses


def main(argv=None) -> int:
    args = _args(argv)
    import gpucnn
    from gpucnn import data
    cifar_net, digits_net = _nets(args.nets)

    rng = np.random.default_rng(0)
    x = rng.random((args.cifar_samples, 3, 32, 32), dtype=np.float32)  # CIFAR-shaped
    y = rng.integers(0, 10, args.cifar_samples)
    xd, yd = data.load_digits()
    xtr, xte, ytr, yte = data.train_test_split(xd, yd, test_size=0.2, seed=0)
    if args.digits_samples:
        xtr, ytr = xtr[:args.digits_samples], ytr[:args.digits_samples]
    if args.digits_test_samples:
        xte, yte = xte[:args.digits_test_samples], yte[:args.digits_test_samples]
    cifar_name, digits_name = cifar_net(seed=0).name, digits_net(seed=0).name
    print(f"gpu_proof_train: {cifar_name} on {len(x)} random 3x32x32 images, batch {args.cifar_batch}, "
          f"{args.cifar_epochs} epochs; {digits_name} on {len(xtr)} digits ({len(xte)} held out), batch "
          f"{args.digits_batch}, {args.digits_epochs} epochs", flush=True)
    for backend in args.backends:
        where = _check_backend(backend, args.expect)
        with gpucnn.use_backend(backend):
            for graph in ((False, True) if backend == "cupy" else (False,)):
                m = cifar_net(seed=0).compile(gpucnn.Adam(lr=1e-3))
                t = time.perf_counter()
                h = m.fit(x, y, epochs=args.cifar_epochs, batch_size=args.cifar_batch, seed=0, verbose=0,
                          cuda_graph=graph)
                losses = _finite(h, f"{cifar_name} {backend} cuda_graph={graph}")
                print(f"{cifar_name} {backend} ({where}) cuda_graph={graph}: "
                      f"{(time.perf_counter() - t) / args.cifar_epochs:.2f} s/epoch, "
                      f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
            m = digits_net(seed=0).compile(gpucnn.Adam(lr=2e-3))
            t = time.perf_counter()
            h = m.fit(xtr, ytr, epochs=args.digits_epochs, batch_size=args.digits_batch, seed=0, verbose=0)
            _finite(h, f"{digits_name} {backend}")
            seconds = (time.perf_counter() - t) / args.digits_epochs
            loss, acc = m.evaluate(xte, yte)
            print(f"{digits_name} {backend} ({where}): {seconds:.2f} s/epoch, held-out accuracy {acc:.4f}",
                  flush=True)
            if not acc >= args.min_digits_accuracy:
                raise SystemExit(f"gpu_proof_train: {digits_name} on {backend}: held-out accuracy {acc:.4f} is below "
                                 f"{args.min_digits_accuracy}")
    print("gpu_proof_train: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
