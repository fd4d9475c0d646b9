"""The profile stage of benchmarks/gpu_proof.sh: one training step on the cupy backend, the step `gpucnn kernels`
models (gpucnn.perf.launches: the zoo model compiled with SGD, momentum 0.9, random data), between
cudaProfilerStart and cudaProfilerStop, so that `ncu --profile-from-start off` profiles that step's launches only.
Two steps run before it (the first builds the optimizer's state and the kernels' modules), as the model records
the second step.

    python benchmarks/gpu_proof_profile.py [--model cifar10_vgg] [--batch 128] [--tf32]

--expect simulated runs it on the CuPy emulator (the dry run: no profiler there, the step only).
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar10_vgg")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--expect", choices=["device", "simulated"], default="device")
    args = p.parse_args(argv)

    from gpucnn import backend, config, functional as F
    from gpucnn.perf.launches import training_model
    from gpucnn.train import train_step
    if backend.simulated("cupy") != (args.expect == "simulated"):
        sys.exit(f"gpu_proof_profile: the cupy backend is {'simulated' if backend.simulated('cupy') else 'on a GPU'}, "
                 f"expected {args.expect}")
    model, x, y = training_model(args.model, args.batch)
    with backend.use_backend("cupy"), config.tf32(args.tf32):
        xd = F.asarray(x)
        for _ in range(2):
            train_step(model, xd, y)
        backend.get_backend().synchronize()
        profiler = None
        if args.expect == "device":
            import cupy
            profiler = cupy.cuda.profiler
            profiler.start()
        train_step(model, xd, y)
        backend.get_backend().synchronize()
        if profiler is not None:
            profiler.stop()
    print(f"gpu_proof_profile: one {args.model} step at batch {args.batch} ({'TF32' if args.tf32 else 'FP32'}) "
          f"{'profiled' if profiler else 'run (no profiler: simulated)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
