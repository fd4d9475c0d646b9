"""The real gpucnn command (its console script, in a subprocess) answers every mistake with one line.

`gpucnn: error: <message>` on stderr, exit status 1, no traceback (--debug or GPUCNN_DEBUG=1 shows it);
argparse's usage errors keep their usage text and status 2. Also: a closed pipe ends quietly, progress
into a pipe is a line an epoch, and the optimizers refuse a NaN learning rate.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn.data import write_idx

REPO = Path(__file__).resolve().parents[1]


def gpucnn_command() -> list[str]:
    """The installed console script (as a user runs it), else `python -m gpucnn`."""
    script = shutil.which("gpucnn") or shutil.which("gpucnn", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "gpucnn"]


def environment(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("GPUCNN_DEBUG", None)
    env.update(extra)
    return env


def run(*args, timeout=120, env=None):
    return subprocess.run(gpucnn_command() + [str(a) for a in args], cwd=REPO, env=env or environment(),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpucnn: error: "), lines[0]
    assert not lines[0].startswith("gpucnn: error: gpucnn"), lines[0]  # no doubled prefix
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def write_mnist(directory, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return directory


# ----------------------------------------------------------------------------- train's arguments
@pytest.mark.parametrize("args,fragment", [
    (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-2"], "--epochs"),
    (["--momentum", "0.9", "--optimizer", "adam"], "--momentum"),
    (["--momentum", "nan", "--optimizer", "sgd"], "--momentum"),
    (["--threads", "0"], "--threads"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--dataset", "mnist"], "DIR"),
    (["--model", "lenet_like", "--epochs", "1"], "lenet_like"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_train_argument_mistakes_are_one_line(args, fragment):
    assert_one_line_error(run("train", *args), fragment)


def test_usage_errors_stay_argparse_ones_and_value_mistakes_get_status_1():
    proc = run("train", "--epochs", "abc")  # not a number: argparse's usage error, status 2
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "Traceback" not in proc.stderr
    line = assert_one_line_error(run("train", "--epochs", "0"))  # an integer, but not a positive one
    assert "usage" not in line


# ----------------------------------------------------------------------------- data files
def test_missing_data_dir(tmp_path):
    assert_one_line_error(run("train", "--dataset", "mnist", tmp_path / "nowhere", "--epochs", "1"),
                          tmp_path / "nowhere", "train-images-idx3-ubyte")


def test_truncated_mnist_file(tmp_path):
    d = write_mnist(tmp_path / "mnist")
    images = d / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    assert_one_line_error(run("train", "--dataset", "mnist", d, "--epochs", "1"), images, "truncated")


def test_corrupt_gzipped_mnist_file(tmp_path):
    d = write_mnist(tmp_path / "mnist")
    labels = d / "train-labels-idx1-ubyte"
    labels.unlink()
    (d / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    assert_one_line_error(run("train", "--dataset", "mnist", d, "--epochs", "1"), "corrupt gzip")


# ----------------------------------------------------------------------------- backends
def test_unavailable_backend():
    import importlib.util
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here, so --backend cupy may well run")
    env = environment()
    env.pop("GPUCNN_CUPY_EMULATE", None)  # without the tests' CPU emulation, cupy cannot run here
    assert_one_line_error(run("train", "--backend", "cupy", "--epochs", "1", env=env), "cupy")


# ----------------------------------------------------------------------------- --save is checked first
def save_targets(tmp_path):
    regular = tmp_path / "a_file"
    regular.write_text("not a folder")
    targets = [regular / "model.npz", tmp_path]  # under a regular file; a folder
    if sys.platform.startswith("linux") and Path("/proc").is_dir():
        targets.append(Path("/proc/nope/x.npz"))
    return targets


def test_bad_save_path_fails_before_training(tmp_path):
    for target in save_targets(tmp_path):
        start = time.perf_counter()
        # a thousand epochs would take minutes: the check must come first
        proc = run("train", "--epochs", "1000", "--save", target, timeout=90)
        elapsed = time.perf_counter() - start
        assert_one_line_error(proc, "--save", target)
        assert "epoch" not in proc.stdout + proc.stderr and "training" not in proc.stdout, proc.stdout
        assert elapsed < 30, elapsed


# ----------------------------------------------------------------------------- viz
@pytest.fixture(scope="module")
def saved_digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_errors") / "digits.npz"
    gpucnn.models.digits_cnn(seed=0).save(path)
    return path


def test_viz_bad_checkpoint(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 this is no zip archive")
    assert_one_line_error(run("viz", "--model", junk, "--image", "digits:0", "--out", tmp_path / "out"), junk)
    assert_one_line_error(run("viz", "--model", tmp_path / "absent.npz", "--image", "digits:0",
                              "--out", tmp_path / "out"), "absent.npz")
    assert not (tmp_path / "out").exists()


def test_viz_bad_image_path(saved_digits, tmp_path):
    assert_one_line_error(run("viz", "--model", saved_digits, "--image", tmp_path / "no.png", "--out", tmp_path),
                          "no.png")
    not_an_image = tmp_path / "text.png"
    not_an_image.write_text("hello")
    assert_one_line_error(run("viz", "--model", saved_digits, "--image", not_an_image, "--out", tmp_path),
                          "text.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.png"]


# ----------------------------------------------------------------------------- --debug
@pytest.mark.parametrize("how", ["--debug first", "--debug after the command", "GPUCNN_DEBUG=1"])
def test_debug_shows_the_traceback(how):
    if how == "GPUCNN_DEBUG=1":
        proc = run("train", "--lr", "0", env=environment(GPUCNN_DEBUG="1"))
    elif how == "--debug first":
        proc = run("--debug", "train", "--lr", "0")
    else:
        proc = run("train", "--lr", "0", "--debug")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "--lr" in proc.stderr.splitlines()[-1]


# ----------------------------------------------------------------------------- pipes
@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_info_into_a_closed_pipe_ends_quietly(reader):
    line = " ".join(shlex.quote(c) for c in gpucnn_command()) + f" info | {reader}"
    proc = subprocess.run(["bash", "-c", line], cwd=REPO, env=environment(), capture_output=True, text=True,
                          timeout=120)
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.count("\n") == (1 if reader == "head -1" else 0)


def test_progress_into_a_pipe_is_one_line_per_epoch():
    proc = run("train", "--epochs", "2", "--batch-size", "64")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1/2"], ["epoch", "2/2"]], proc.stderr
    assert all("loss=" in line and "accuracy=" in line for line in lines)
    assert proc.stdout.splitlines()[-1].startswith("test accuracy:")


# ----------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("lr", [float("nan"), float("inf")])
@pytest.mark.parametrize("cls", [gpucnn.SGD, gpucnn.Adam])
def test_optimizers_refuse_a_bad_learning_rate(cls, lr):
    with pytest.raises(ValueError):
        cls(lr=lr)


def test_optimizers_refuse_nan_momentum_and_weight_decay():
    with pytest.raises(ValueError):
        gpucnn.SGD(lr=0.1, momentum=float("nan"))
    with pytest.raises(ValueError):
        gpucnn.Adam(weight_decay=float("nan"))
    assert gpucnn.SGD(lr=0.0).lr == 0.0  # PyTorch allows lr=0 in the optimizer; the CLI asks for > 0
