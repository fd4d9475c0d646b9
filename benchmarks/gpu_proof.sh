#!/usr/bin/env bash
# The GPU proof run: what a GPU machine must show for the Numba and CuPy backends, in stages that each
# fit one call of the device tool (10 minutes). Run from anywhere in the checkout on the GPU machine:
#
#   bash benchmarks/gpu_proof.sh tests      # the suite with GPUs visible (gpu-marked tests run, the cupy
#                                           # tests run real kernels, no simulator/emulator)
#   bash benchmarks/gpu_proof.sh sanitize   # compute-sanitizer memcheck + racecheck on a small training run
#                                           # of each GPU backend
#   bash benchmarks/gpu_proof.sh bench      # gpucnn bench at batch 128 and 256, FP32 and TF32, whole steps
#   bash benchmarks/gpu_proof.sh train      # cifar10_vgg on CIFAR-shaped data and digits_cnn, per GPU backend
#                                           # (benchmarks/gpu_proof_train.py)
#   bash benchmarks/gpu_proof.sh profile    # Nsight Compute on one cifar10_vgg step (cupy, batch 128, FP32 and
#                                           # TF32: durations, issue slots, shared wavefronts and bank conflicts,
#                                           # occupancy, clock, stall reasons), then `gpucnn kernels --compare`:
#                                           # the static model beside each measured launch, worst ratio first
#   bash benchmarks/gpu_proof.sh dry        # CPU, no GPU: every stage's imports, paths and command lines,
#                                           # Numba's CUDA simulator and gpucnn's CuPy emulator standing in
#                                           # for the device, at tiny sizes (tests/test_gpu_proof.py runs it)
#   bash benchmarks/gpu_proof.sh dry train  # the dry run of some stages only
#
# Before any stage: the checkout is installed without network (pip install --no-deps --no-build-isolation
# --no-index -e . into a throwaway venv layered on the interpreter's packages, or, where pip or setuptools
# cannot, a path finder doing what the editable install does), so `gpucnn.kernels` (the package-dir mapping
# of kernels/) imports; then what was found is printed and kept in $OUT/<stage>/device.txt: the driver
# (nvidia-smi), CuPy, Numba and PyTorch versions, the device, `gpucnn info`. A real stage refuses to start
# unless the cupy and numba backends both run on the device (not simulated).
#
# Nothing passes silently: every stage checks each command's exit status (pipes included) and its output,
# and exits non-zero, naming what failed, if anything did. Logs and results go to $OUT/<stage> (the device
# tool's output folder) or ./gpu_proof_out/<stage>. PYTHON picks the interpreter (default python3; on the
# device image it holds numpy, numba-cuda, cupy, torch, pytest, scikit-image/learn, matplotlib; the notebook
# runner is not there, so the notebook tests are left out).
set -uo pipefail

usage="usage: bash benchmarks/gpu_proof.sh tests|sanitize|bench|train|profile|dry [tests|sanitize|bench|train|profile ...]"
stage=${1:-}
case $stage in
tests | sanitize | bench | train | profile | dry) ;;
*) echo "$usage" >&2; exit 2 ;;
esac
shift
stages=("$@")
if [ "$stage" != dry ] && [ "${#stages[@]}" -ne 0 ]; then
    echo "$usage" >&2
    exit 2
fi
[ "${#stages[@]}" -ne 0 ] || stages=(tests sanitize bench train profile)
for s in "${stages[@]}"; do
    case $s in
    tests | sanitize | bench | train | profile) ;;
    *) echo "$usage" >&2; exit 2 ;;
    esac
done
[ "$stage" = dry ] || stages=("$stage")
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P) || exit 2
cd "$repo" || exit 2
out=${OUT:-$repo/gpu_proof_out}/$stage
mkdir -p "$out" && out=$(cd "$out" && pwd -P) || exit 2
base=${PYTHON:-python3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu_proof.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
export PYTHONUNBUFFERED=1
failures=()

say() { printf 'gpu_proof: %s\n' "$*"; }
fail() { say "FAILED: $*"; failures+=("$*"); }

if [ "$stage" = dry ]; then
    export NUMBA_ENABLE_CUDASIM=1 GPUCNN_CUPY_EMULATE=1 # the simulator and the emulator stand in for the GPU
    expect=simulated
else
    unset NUMBA_ENABLE_CUDASIM GPUCNN_CUPY_EMULATE # a proof must run the real kernels on the device
    expect=device
fi

# ------------------------------------------------------------------------------------------- install
# Sets py (the interpreter every stage uses) and how (what was done). kernels/ is importable only as the
# installed package gpucnn.kernels (pyproject's package-dir), so running the checkout through PYTHONPATH
# alone would leave the cupy backend without its CUDA C (unless _runtime.kernels_dir() falls back to it).
install_checkout() {
    local venv=$tmp/venv log=$out/install.txt site
    : >"$log"
    if ! "$base" -m venv --without-pip "$venv" >>"$log" 2>&1; then
        say "could not make a venv with $base (log: $log); running the checkout through PYTHONPATH instead"
        export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
        py=$base
        how="none (no venv could be made): PYTHONPATH=$repo; kernels/ only through kernels_dir()'s checkout fallback"
        return
    fi
    py=$venv/bin/python
    site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    # Every package of $base stays visible: a venv made from a venv (the device's python3 is one) would see
    # only the base interpreter's site-packages, even with --system-site-packages, so $base's own site
    # folders are added, .pth files included, after the venv's own (where gpucnn goes).
    "$base" - "$site/zz_gpu_proof_base.pth" >>"$log" 2>&1 <<'PY' || return 1
import site, sys
folders = list(site.getsitepackages()) + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
with open(sys.argv[1], "w") as f:
    f.writelines(f"import site; site.addsitedir({d!r})\n" for d in folders)
PY
    if "$py" -m pip install --no-deps --no-build-isolation --no-index --no-cache-dir --disable-pip-version-check \
        -e "$repo" >>"$log" 2>&1; then
        how="pip install --no-deps --no-build-isolation --no-index -e $repo, into a venv layered on $base's packages"
        return
    fi
    # No pip, or setuptools too old or absent for an offline PEP 660 build (setuptools < 70.1 also needs the
    # wheel package): map gpucnn and gpucnn.kernels to the checkout as the editable install would.
    say "pip install -e did not work here (last lines of $log below); mapping the checkout with a path finder instead"
    tail -n 3 "$log" | sed 's/^/    /'
    cat >"$site/_gpu_proof_checkout.py" <<PY
"""gpu_proof.sh: import gpucnn and gpucnn.kernels from $repo (what pip install -e would do)."""
import importlib.util
import sys

MAPPING = {"gpucnn": "$repo/gpucnn", "gpucnn.kernels": "$repo/kernels"}


class CheckoutFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        where = MAPPING.get(fullname)
        if where is None:
            return None
        return importlib.util.spec_from_file_location(fullname, where + "/__init__.py",
                                                      submodule_search_locations=[where])


sys.meta_path.insert(0, CheckoutFinder)
PY
    echo "import _gpu_proof_checkout" >"$site/_gpu_proof_checkout.pth"
    how="a path finder in a venv layered on $base's packages (gpucnn -> $repo/gpucnn, gpucnn.kernels -> $repo/kernels); pip install -e failed, see $log"
}

# Checks, from a folder outside the checkout, that gpucnn and gpucnn.kernels come from this checkout.
check_install() {
    (cd "$tmp" && "$py" - "$repo" 2>&1 <<'PY')
import os, sys
repo = os.path.realpath(sys.argv[1])
import gpucnn
where = os.path.realpath(os.path.dirname(gpucnn.__file__))
if where != os.path.join(repo, "gpucnn"):
    sys.exit(f"gpucnn is imported from {where}, not from this checkout ({repo})")
try:
    from importlib import resources
    kernels = os.path.realpath(str(resources.files("gpucnn.kernels")))
    how = "the package gpucnn.kernels"
except ModuleNotFoundError:
    try:
        from gpucnn.backends.cupy._runtime import kernels_dir
    except ImportError as e:
        sys.exit(f"gpucnn.kernels is not importable and the cupy backend cannot be imported to look further ({e})")
    kernels, how = os.path.realpath(kernels_dir()), "kernels_dir()'s checkout fallback (gpucnn.kernels not importable)"
if kernels != os.path.join(repo, "kernels") or not os.path.isfile(os.path.join(kernels, "common.cuh")):
    sys.exit(f"the CUDA C would come from {kernels}, not from {repo}/kernels")
print(f"gpucnn {gpucnn.__version__} from {where}; CUDA C from {kernels} ({how})")
PY
}

# ------------------------------------------------------------------------------------------- report
report() {
    echo "== gpu_proof $stage, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -srm)"
    echo "checkout: $repo at $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')$(
        [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' (with uncommitted changes)')"
    echo "python: $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"
    echo "install: $how"
    echo "kernels: $install_check"
    if [ "$stage" = dry ]; then
        echo "mode: dry (NUMBA_ENABLE_CUDASIM=1, GPUCNN_CUPY_EMULATE=1: kernels run on the CPU)"
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 ||
            echo "nvidia-smi --query-gpu failed"
        nvidia-smi 2>&1 | grep -m1 'CUDA Version' || true
    else
        echo "nvidia-smi: not found"
    fi
    command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2 | head -n 1
    if command -v compute-sanitizer >/dev/null 2>&1; then
        echo "compute-sanitizer: $(compute-sanitizer --version 2>&1 | grep -m1 -i version)"
    else
        echo "compute-sanitizer: not found"
    fi
    "$py" - <<'PY' 2>&1
import importlib.metadata as md
import os

def version(*dists):
    for d in dists:
        try:
            return f"{md.version(d)} ({d})"
        except md.PackageNotFoundError:
            pass
    return "not installed"

print("numpy:", version("numpy"))
print("numba:", version("numba"), "| numba-cuda:", version("numba-cuda"))
print("cupy:", version("cupy-cuda13x", "cupy-cuda12x", "cupy"))
print("torch:", version("torch"))
if os.environ.get("GPUCNN_CUPY_EMULATE") == "1":
    print("cupy device: none (GPUCNN_CUPY_EMULATE=1: gpucnn's emulator runs kernels/*.cu on the CPU)")
else:
    try:
        import cupy
        rt = cupy.cuda.runtime
        p = rt.getDeviceProperties(0)
        print(f"cupy device: {p['name'].decode()}, sm_{p['major']}{p['minor']}, {p['totalGlobalMem'] / 2**30:.0f} GiB, "
              f"{p['multiProcessorCount']} SMs; driver CUDA {rt.driverGetVersion()}, runtime {rt.runtimeGetVersion()}")
    except Exception as e:
        print(f"cupy device: none ({type(e).__name__}: {e})")
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    print("numba device: none (NUMBA_ENABLE_CUDASIM=1: Numba's CUDA simulator)")
else:
    try:
        from numba import cuda
        print(f"numba device: {cuda.get_current_device().name.decode()}" if cuda.is_available() else
              "numba device: none (numba.cuda.is_available() is False)")
    except Exception as e:
        print(f"numba device: none ({type(e).__name__}: {e})")
if os.environ.get("GPUCNN_CUPY_EMULATE") != "1":
    try:
        import torch
        print(f"torch device: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if torch.cuda.is_available()
              else "torch device: none (torch.cuda.is_available() is False)")
    except Exception as e:
        print(f"torch device: none ({type(e).__name__}: {e})")
PY
    echo "gpucnn info:"
    "$py" -m gpucnn info 2>&1 | sed 's/^/    /'
}

# Refuses to go on unless the cupy and numba backends run here as this stage needs: on the device (real
# stages) or in the simulator/emulator (dry).
check_backends() {
    "$py" - "$expect" <<'PY'
import sys
expect, problems = sys.argv[1], []
try:
    from gpucnn.backend import info
    backends = info()
except Exception as e:
    sys.exit(f"backends: gpucnn.backend.info() failed ({type(e).__name__}: {e})")
for name in ("cupy", "numba"):
    e = backends.get(name, {"available": False, "reason": "gpucnn.backend.info() does not list it"})
    if not e["available"]:
        problems.append(f"{name} is not available: {e['reason']}")
    elif expect == "device" and e["simulated"]:
        problems.append(f"{name} runs in a simulator here, not on a GPU")
    elif expect == "simulated" and not e["simulated"]:
        problems.append(f"{name} is not simulated, but a dry run must not touch a GPU")
if problems:
    sys.exit("backends: " + "; ".join(problems))
print(f"backends: cupy and numba available ({'on the device' if expect == 'device' else 'simulated'})")
PY
}

# ------------------------------------------------------------------------------------------- stages
stage_tests() {
    local args log=$out/pytest.txt rc
    if [ "$stage" = dry ]; then # a few tests of each kind: emulated cupy, simulated numba, a gpu-marked one
        args=(tests/test_checkpoints.py "tests/ops/test_elementwise.py::test_relu[cupy-7-float32]"
            "tests/ops/test_elementwise.py::test_relu[numba-7-float32]"
            "tests/test_numba_model.py::test_loss_falls[digits_cnn]")
    else # the whole suite but the notebooks (no runner on the device) and this script's CPU dry run
        args=(--ignore=tests/test_notebooks.py --ignore=tests/test_gpu_proof.py tests)
    fi
    "$py" -m pytest -q -rs -p no:cacheprovider "${args[@]}" 2>&1 | tee "$log" | tail -n 25
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { fail "tests: pytest exited with $rc (log: $log)"; return; }
    if [ "$stage" = dry ]; then
        grep -q "gpu test skipped" "$log" || fail "tests: the gpu-marked test was not skipped on the CPU"
    elif grep -q "gpu test skipped" "$log"; then
        fail "tests: gpu-marked tests were skipped on the GPU machine (log: $log)"
    fi
}

# compute-sanitizer, or where it is absent (dry runs), a stand-in that drops its options and runs the program
no_sanitizer() {
    while [ $# -gt 0 ]; do
        case $1 in
        --tool | --error-exitcode) shift 2 ;;
        *) break ;;
        esac
    done
    exec "$@"
}

stage_sanitize() {
    local backend tool log rc sanitizer data=() tools=(memcheck racecheck)
    if [ "$stage" = dry ]; then
        # the emulated/simulated kernels make no CUDA calls: there is nothing for compute-sanitizer to watch
        sanitizer=no_sanitizer
        tools=(memcheck) # (racecheck: the same command line)
        "$py" - "$tmp/idx" <<'PY' || { fail "sanitize: could not write the tiny dataset"; return; }
import os, sys
import numpy as np
from gpucnn import data
x, y = data.load_digits()  # 8x8 digits as MNIST-format files: digits_cnn takes them, 4 train + 4 test
os.makedirs(sys.argv[1], exist_ok=True)
img = np.round(x[:, 0] * 255).astype(np.uint8)
for kind, sl in (("train", slice(0, 4)), ("t10k", slice(4, 8))):
    data.write_idx(f"{sys.argv[1]}/{kind}-images-idx3-ubyte", img[sl])
    data.write_idx(f"{sys.argv[1]}/{kind}-labels-idx1-ubyte", y[sl].astype(np.uint8))
PY
        data=(--dataset mnist "$tmp/idx" --model digits_cnn)
    elif command -v compute-sanitizer >/dev/null 2>&1; then
        sanitizer=compute-sanitizer
    else
        fail "sanitize: compute-sanitizer not found"
        return
    fi
    for backend in cupy numba; do
        for tool in "${tools[@]}"; do
            log=$out/$backend-$tool.txt
            local cmd=("$py" -m gpucnn train --backend "$backend" --epochs 1 --verbose 0 "${data[@]}")
            if [ "$stage" = dry ] && [ "$backend" = numba ]; then
                # One digits_cnn step takes minutes in Numba's simulator: check that the command line gets as
                # far as training (arguments, data, model, backend chosen), then stop it.
                ("$sanitizer" --tool "$tool" --error-exitcode 3 "${cmd[@]}") >"$log" 2>&1 &
                local pid=$! i
                for ((i = 0; i < 240; i++)); do
                    grep -q "on the numba backend" "$log" && break
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.25
                done
                if grep -q "on the numba backend" "$log"; then
                    kill "$pid" 2>/dev/null
                    wait "$pid" 2>/dev/null
                    say "sanitize: numba: '${cmd[*]:1}' started training (stopped there: the simulator takes minutes a step)"
                else
                    kill "$pid" 2>/dev/null
                    wait "$pid"
                    fail "sanitize: numba: the train command did not start training (log: $log)"
                    tail -n 5 "$log"
                fi
                continue
            fi
            ("$sanitizer" --tool "$tool" --error-exitcode 3 "${cmd[@]}") >"$log" 2>&1
            rc=$?
            echo "$backend $tool: exit $rc ($(grep -c '^=========' "$log") sanitizer lines)"
            grep '^=========' "$log" | tail -n 3
            if [ "$rc" -ne 0 ]; then
                fail "sanitize: $backend $tool exited with $rc (log: $log)"
                tail -n 5 "$log"
            elif ! grep -q "^test accuracy:" "$log"; then
                fail "sanitize: $backend $tool: the training run did not finish (log: $log)"
            elif [ "$sanitizer" = compute-sanitizer ] && ! grep -Eq "(ERROR|RACECHECK) SUMMARY: 0 (errors|hazards)" "$log"; then
                fail "sanitize: $backend $tool: no clean sanitizer summary (log: $log)"
            fi
        done
    done
    if [ "$stage" = dry ]; then
        say "sanitize: the GPU run's train command line, on 8x8 digits as MNIST files, compute-sanitizer replaced by a stand-in"
    fi
}

# dry: gpucnn bench with these arguments must refuse the simulated backends (exit 1), naming each skipped
bench_refused() {
    local log=$1 rc
    shift
    "$py" -m gpucnn bench "$@" >"$log" 2>&1
    rc=$?
    if [ "$rc" -eq 1 ] && grep -q "no backend could be timed here" "$log" && grep -q "^skipped cupy" "$log"; then
        say "bench: 'gpucnn bench $*' parsed; the simulated backends skipped and refused, as expected"
    else
        fail "bench: 'gpucnn bench $*' did not refuse the simulated backends as expected (exit $rc, log: $log)"
        tail -n 5 "$log"
    fi
}

stage_bench() {
    local rc log
    # the two runs of the GPU proof, exactly
    local fp32=(--backend cupy numba --batch 128 256 --no-progress --out "$out")
    local tf32=(--backend cupy --batch 128 256 --tf32 --no-step --no-progress --out "$out/tf32")
    if [ "$stage" = dry ]; then
        # gpucnn bench never times a simulated backend: with the exact arguments it must parse them, plan both
        # backends, list them as skipped and refuse (exit 1); then the numpy backend on one tiny case runs the
        # timing and the writing of results (json, md, png) for real.
        bench_refused "$out/fp32.txt" "${fp32[@]}"
        bench_refused "$out/tf32.txt" "${tf32[@]}"
        log=$out/numpy.txt
        "$py" -m gpucnn bench --backend numpy --model mnist_cnn --op relu --batch 1 --repeats 1 --no-step \
            --no-reference --no-progress --out "$out/numpy" >"$log" 2>&1
        rc=$?
        if [ "$rc" -ne 0 ] || ! ls "$out"/numpy/*.json >/dev/null 2>&1; then
            fail "bench: the numpy backend's tiny run failed or wrote no results (exit $rc, log: $log)"
            tail -n 5 "$log"
        else
            say "bench: numpy backend, one tiny case: timed, results written ($(cd "$out/numpy" && echo *))"
        fi
        return
    fi
    "$py" -m gpucnn bench "${fp32[@]}" >"$out/fp32.txt" 2>&1 || fail "bench: FP32 run exited with $? (log: $out/fp32.txt)"
    "$py" -m gpucnn bench "${tf32[@]}" >"$out/tf32.txt" 2>&1 || fail "bench: TF32 run exited with $? (log: $out/tf32.txt)"
    tail -n 30 "$out/fp32.txt"
    tail -n 15 "$out/tf32.txt"
    ls "$out"/*.json >/dev/null 2>&1 || fail "bench: no FP32 results written"
    ls "$out"/tf32/*.json >/dev/null 2>&1 || fail "bench: no TF32 results written"
}

run_train() {
    local rc
    "$py" benchmarks/gpu_proof_train.py --expect "$expect" "$@" 2>&1 | tee -a "$out/train.txt"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || fail "train: 'benchmarks/gpu_proof_train.py $*' exited with $rc (log: $out/train.txt)"
}

stage_train() {
    : >"$out/train.txt"
    if [ "$stage" = dry ]; then # the same code at tiny sizes; a simulated numba step takes seconds: one each
        local tiny=(--nets tiny --cifar-batch 1 --cifar-epochs 1 --digits-samples 2 --digits-test-samples 2
            --digits-batch 2 --digits-epochs 1 --min-digits-accuracy 0)
        run_train --backends cupy --cifar-samples 4 "${tiny[@]}" # 4 batches: 2 plain steps, capture, replay
        run_train --backends numba --cifar-samples 1 "${tiny[@]}"
    else
        run_train
    fi
}

# The metrics the compare reads (gpucnn/perf/compare.py's METRICS), and the stall reasons' section.
NCU_METRICS=gpu__time_duration.sum,sm__inst_issued.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,sm__warps_active.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg.per_second

stage_profile() {
    local mode flag log gpu name
    if [ "$stage" = dry ]; then
        # the profiled program on the emulator, then the compare on a planted profile made from the model itself
        log=$out/profile.txt
        "$py" benchmarks/gpu_proof_profile.py --model mnist_cnn --batch 2 --expect simulated >"$log" 2>&1 ||
            { fail "profile: benchmarks/gpu_proof_profile.py failed (log: $log)"; tail -n 5 "$log"; return; }
        "$py" -m gpucnn.perf.compare --plant "$out/ncu_planted.csv" --model mnist_cnn --batch 16 >>"$log" 2>&1 ||
            { fail "profile: could not plant a profile (log: $log)"; tail -n 5 "$log"; return; }
        "$py" -m gpucnn kernels --model mnist_cnn --batch 16 --compare "$out/ncu_planted.csv" >"$out/compare.txt" 2>&1 ||
            { fail "profile: gpucnn kernels --compare failed (log: $out/compare.txt)"; tail -n 5 "$out/compare.txt"; return; }
        if grep -q " launches matched" "$out/compare.txt" && ! grep -q "^unmatched" "$out/compare.txt"; then
            say "profile: the step ran on the emulator; --compare matched every launch of a planted profile"
        else
            fail "profile: --compare did not match the planted profile (log: $out/compare.txt)"
        fi
        return
    fi
    command -v ncu >/dev/null 2>&1 || { fail "profile: ncu (Nsight Compute) not found"; return; }
    name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    case $name in
    *H200*) gpu=h200 ;; *A100*) gpu=a100 ;; *) gpu=h100 ;;
    esac
    for mode in fp32 tf32; do
        flag=()
        [ "$mode" = tf32 ] && flag=(--tf32)
        log=$out/ncu_$mode.log
        # the clocks as the card runs them (METHOD.md: leave them alone), the step between cudaProfilerStart/Stop
        ncu --profile-from-start off --clock-control none --metrics "$NCU_METRICS" --section WarpStateStats \
            -f -o "$out/step_$mode" "$py" benchmarks/gpu_proof_profile.py "${flag[@]}" >"$log" 2>&1 ||
            { fail "profile: ncu ($mode) exited with $? (log: $log)"; tail -n 8 "$log"; continue; }
        ncu --import "$out/step_$mode.ncu-rep" --csv --page raw --print-units base >"$out/ncu_$mode.csv" 2>>"$log" ||
            { fail "profile: ncu --import ($mode) failed (log: $log)"; continue; }
        "$py" -m gpucnn kernels --gpu "$gpu" "${flag[@]}" --compare "$out/ncu_$mode.csv" >"$out/compare_$mode.txt" 2>&1 ||
            { fail "profile: gpucnn kernels --compare ($mode) failed (log: $out/compare_$mode.txt)"; continue; }
        head -n 12 "$out/compare_$mode.txt"
        grep -E "^(matched|unmatched)" "$out/compare_$mode.txt"
    done
}

# ------------------------------------------------------------------------------------------- run
how=""
install_checkout || { say "FAILED: install (log: $out/install.txt)"; exit 1; }
install_check=$(check_install) || { say "FAILED: install check: $install_check"; exit 1; }
report 2>&1 | tee "$out/device.txt"
check_backends 2>&1 | tee -a "$out/device.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { say "FAILED: the backends this stage needs are not there; nothing run"; exit 1; }

for s in "${stages[@]}"; do
    before=${#failures[@]}
    say "== $s"
    start=$SECONDS
    "stage_$s"
    if [ "${#failures[@]}" -eq "$before" ]; then
        say "$s: ok ($((SECONDS - start)) s)"
    else
        say "$s: FAILED ($((SECONDS - start)) s)"
    fi
done
if [ "${#failures[@]}" -ne 0 ]; then
    say "$stage: FAILED:"
    printf '    %s\n' "${failures[@]}"
    exit 1
fi
say "$stage: all ok"
