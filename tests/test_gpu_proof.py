"""benchmarks/gpu_proof.sh, the GPU proof run, checked on the CPU before a GPU machine ever runs it.

`gpu_proof.sh dry` runs every stage's imports, paths and command lines with Numba's CUDA simulator and the
CuPy emulator standing in for the device (install of the checkout included); it must pass here, and a
stage that fails must make it exit non-zero (shown on a copy of the checkout with one thing broken).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/gpu_proof.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="gpu_proof.sh needs bash")


def _run(args, out, cwd=REPO, timeout=600):
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    r = subprocess.run(["bash", SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def _copy_checkout(dst: Path) -> Path:
    """What gpu_proof.sh needs of the checkout (it installs the copy itself), caches left out."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "results", ".ipynb_checkpoints")
    for name in ("gpucnn", "kernels", "benchmarks", "tests"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    return dst


def test_dry_run_passes_every_stage(tmp_path):
    rc, out = _run(["dry"], tmp_path)
    assert rc == 0, out[-6000:]
    for marker in [
        "kernels: gpucnn ",  # the install check: gpucnn and its CUDA C from this checkout
        "gpucnn info:",
        "backends: cupy and numba available (simulated)",
        "gpu_proof: tests: ok",
        "gpu test skipped",  # the gpu marker works
        "cupy memcheck: exit 0",
        "started training (stopped there",  # the numba train command line
        "gpu_proof: sanitize: ok",
        "simulated backends skipped and refused, as expected",
        "gpu_proof: bench: numpy backend, one tiny case: timed, results written",
        "gpu_proof: bench: ok",
        "tiny_cifar cupy (simulated) cuda_graph=True",
        "tiny_digits numba (simulated)",
        "gpu_proof: train: ok",
        "profile: the step ran on the emulator; --compare matched every launch of a planted profile",
        "gpu_proof: profile: ok",
        "gpu_proof: dry: all ok",
    ]:
        assert marker in out, f"{marker!r} not in the output:\n{out[-6000:]}"
    assert "FAILED" not in out
    dry = tmp_path / "dry"
    for name in ("device.txt", "install.txt", "pytest.txt", "cupy-memcheck.txt", "numba-memcheck.txt", "fp32.txt",
                 "tf32.txt", "train.txt", "ncu_planted.csv", "compare.txt"):
        assert (dry / name).is_file(), name
    assert list((dry / "numpy").glob("*.json"))


BREAKS = {
    # a stage's Python import broken: the train stage must fail, not print its summary and pass
    "train_import": ("train", "benchmarks/gpu_proof_train.py", "import numpy as np\n",
                     "import numpy as np\nimport gpucnn.no_such_module\n", "train: 'benchmarks/gpu_proof_train.py"),
    # a failing test, its output piped through tee and tail: pytest's status must still fail the stage
    "tests_failing": ("tests", "tests/test_checkpoints.py", "def test_good_checkpoint_round_trips(saved):\n",
                      "def test_broken_on_purpose():\n    assert False\n\n\ndef test_good_checkpoint_round_trips(saved):\n",
                      "tests: pytest exited with 1"),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_dry_run_fails_when_a_stage_fails(tmp_path, case):
    stage, path, old, new, message = BREAKS[case]
    checkout = _copy_checkout(tmp_path / "checkout")
    text = (checkout / path).read_text()
    assert text.count(old) == 1, f"{path} changed: the break for {case} needs updating"
    (checkout / path).write_text(text.replace(old, new))
    rc, out = _run(["dry", stage], tmp_path / "out", cwd=checkout)
    assert rc == 1, out[-6000:]
    assert f"gpu_proof: {stage}: FAILED" in out and message in out, out[-6000:]
    assert f" from {checkout.resolve()}/gpucnn; CUDA C from {checkout.resolve()}/kernels" in out  # the copy ran


def test_real_stage_refuses_to_start_without_a_gpu(tmp_path):
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("a GPU is present: the real stages would run")
    rc, out = _run(["train"], tmp_path, timeout=300)
    assert rc == 1, out[-4000:]
    assert "the backends this stage needs are not there; nothing run" in out
    assert "gpu_proof_train" not in out


@pytest.mark.parametrize("args", [[], ["nonsense"], ["train", "tests"], ["dry", "nonsense"]])
def test_bad_arguments_exit_2_with_usage(tmp_path, args):
    rc, out = _run(args, tmp_path, timeout=60)
    assert rc == 2 and "usage:" in out
