#!/usr/bin/env bash
# The GPU proof run: what a GPU machine must show for the Numba and CuPy backends, in stages that each
# fit one call of the device tool (10 minutes). Run from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_proof.sh tests      # the whole suite with GPUs visible (gpu-marked tests run,
#                                           # the cupy tests run real kernels, no simulator/emulator)
#   bash benchmarks/gpu_proof.sh sanitize   # compute-sanitizer memcheck + racecheck on a small training run
#                                           # of each GPU backend
#   bash benchmarks/gpu_proof.sh bench      # gpucnn bench at batch 128 and 256, FP32 and TF32, whole steps
#   bash benchmarks/gpu_proof.sh train      # cifar10_vgg on CIFAR-shaped data and digits_cnn, per GPU backend
#
# Logs and results go to $OUT (the device tool's output folder) or ./gpu_proof_out. Nothing is
# installed: the device image has numpy, numba-cuda, cupy, torch, pytest, scikit-image/learn, matplotlib
# (the notebook runner is not there: the notebook tests are deselected).
set -uo pipefail
stage=${1:?usage: gpu_proof.sh tests|sanitize|bench|train}
out=${OUT:-gpu_proof_out}/$stage
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
{ nvidia-smi; $py -c "import gpucnn, cupy, numba, torch; print(gpucnn.__version__, cupy.__version__, numba.__version__, torch.__version__)"; $py -m gpucnn info; } > "$out/device.txt" 2>&1

case $stage in
tests)
    $py -m pytest -q -rs -p no:cacheprovider --ignore=tests/test_notebooks.py tests 2>&1 | tee "$out/pytest.txt" | tail -25
    ;;
sanitize)
    for backend in cupy numba; do
        for tool in memcheck racecheck; do
            compute-sanitizer --tool "$tool" --error-exitcode 3 $py -m gpucnn train --backend "$backend" \
                --epochs 1 --verbose 0 > "$out/$backend-$tool.txt" 2>&1
            echo "$backend $tool: exit $? ($(grep -c '=========' "$out/$backend-$tool.txt") sanitizer lines)"
        done
    done
    ;;
bench)
    $py -m gpucnn bench --backend cupy numba --batch 128 256 --no-progress --out "$out" > "$out/fp32.txt" 2>&1
    $py -m gpucnn bench --backend cupy --batch 128 256 --tf32 --no-step --no-progress --out "$out/tf32" > "$out/tf32.txt" 2>&1
    tail -30 "$out/fp32.txt"; tail -15 "$out/tf32.txt"
    ;;
train)
    $py - <<'PY' 2>&1 | tee "$out/train.txt"
import time, numpy as np, gpucnn
from gpucnn import data, models
rng = np.random.default_rng(0)
x = rng.random((5120, 3, 32, 32), dtype=np.float32); y = rng.integers(0, 10, 5120)   # CIFAR-shaped
xd, yd = data.load_digits(); xtr, xte, ytr, yte = data.train_test_split(xd, yd, test_size=0.2, seed=0)
for backend in ("cupy", "numba"):
    with gpucnn.use_backend(backend):
        for graph in ((False, True) if backend == "cupy" else (False,)):
            m = models.cifar10_vgg(seed=0).compile(gpucnn.Adam(lr=1e-3))
            t = time.perf_counter(); h = m.fit(x, y, epochs=3, batch_size=128, seed=0, verbose=0, cuda_graph=graph)
            print(f"cifar10_vgg {backend} cuda_graph={graph}: {(time.perf_counter() - t) / 3:.2f} s/epoch, "
                  f"loss {h.history['loss'][0]:.3f} -> {h.history['loss'][-1]:.3f}", flush=True)
        m = models.digits_cnn(seed=0).compile(gpucnn.Adam(lr=2e-3))
        t = time.perf_counter(); m.fit(xtr, ytr, epochs=20, batch_size=32, seed=0, verbose=0)
        loss, acc = m.evaluate(xte, yte)
        print(f"digits_cnn {backend}: {(time.perf_counter() - t) / 20:.2f} s/epoch, held-out accuracy {acc:.4f}", flush=True)
PY
    ;;
*) echo "unknown stage $stage"; exit 2 ;;
esac
