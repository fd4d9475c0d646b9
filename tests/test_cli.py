"""The gpucnn command: summary, info, train (digits, mnist from IDX files), its errors, and python -m gpucnn."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn import cli
from gpucnn.data import load_digits, train_test_split, write_idx

REPO = Path(__file__).resolve().parents[1]


def test_summary_cifar10_vgg(capsys):
    assert cli.main(["summary", "cifar10_vgg"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 550,570" in out
    for count in ("896", "9,248", "18,496", "36,928", "73,856", "147,584", "262,272", "1,290"):
        assert count in out
    assert "(None, 128, 4, 4)" in out and "(None, 2048)" in out


@pytest.mark.parametrize("name,total", [("mnist_cnn", "208,982"), ("lenet_like", "62,958"),
                                        ("digits_cnn", "151,306")])
def test_summary_other_zoo_models(capsys, name, total):
    assert cli.main(["summary", name]) == 0
    assert f"Total params: {total}" in capsys.readouterr().out


def test_summary_unknown_model_exits(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["summary", "alexnet"])
    assert e.value.code == 2
    assert "alexnet" in capsys.readouterr().err


def test_info_lists_backends_with_reasons(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    lines = {}
    for line in out.splitlines():
        if line.strip():
            lines.setdefault(line.split()[0], line)  # the first line of each backend ("numpy 2.x" comes last)
    assert re.match(r"numpy\s+available, \d+ ops", lines["numpy"])
    assert f"numpy {np.__version__}" in out
    status = gpucnn.info()
    for name in ("numba", "cupy"):
        line = lines[name]
        if status[name]["available"]:
            assert "available" in line and "unavailable" not in line
        else:
            assert line.split(None, 1)[1].startswith("unavailable: ")
            reason = status[name]["reason"]
            assert reason and reason in line
    assert re.search(r"auto\s+-> (numpy|numba|cupy)", out)


def test_train_digits_saves_a_loadable_model(tmp_path, capsys):
    path = tmp_path / "digits.npz"
    assert cli.main(["train", "--epochs", "2", "--verbose", "0", "--save", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("training digits_cnn on digits (1437 train / 360 test)")
    assert out[-1].startswith("test accuracy:")
    assert any(line == f"saved to {path}" for line in out)
    model = gpucnn.load_model(path)
    assert model.name == "digits_cnn"
    # the printed accuracy is the saved model's on the stratified 20% split with seed 0
    x, y = load_digits()
    _, x_test, _, y_test = train_test_split(x, y, test_size=0.2, seed=0)
    with gpucnn.use_backend("numpy"):
        loss, acc = model.evaluate(x_test, y_test)
    m = re.match(r"test accuracy: (\d\.\d{4}) \((\d+)/360 held out\), test loss: (\d+\.\d{4})", out[-1])
    assert m, out[-1]
    assert abs(float(m.group(1)) - acc) <= 2e-4
    assert int(m.group(2)) == round(acc * 360)
    assert abs(float(m.group(3)) - loss) <= 2e-3
    assert acc > 0.5  # two epochs already learn a lot


def test_train_verbose_2_prints_one_line_per_epoch(capsys):
    assert cli.main(["train", "--epochs", "2", "--verbose", "2", "--model", "digits_cnn", "--optimizer", "sgd",
                     "--lr", "0.05", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "SGD(lr=0.05, momentum=0.9" in out[0]
    assert [line.split()[0:2] for line in out if line.startswith("epoch ")] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert out[-1].startswith("test accuracy:")


def _write_mnist(directory, rng, n_train=60, n_test=20, gz=False):
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n, dtype=np.uint8))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_train_on_tiny_mnist_idx_files(tmp_path, capsys, gz):
    rng = np.random.default_rng(0)
    _write_mnist(tmp_path / "mnist", rng, gz=gz)
    assert cli.main(["train", "--dataset", "mnist", str(tmp_path / "mnist"), "--epochs", "1", "--verbose", "0"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("training mnist_cnn on mnist (60 train / 20 test)")
    assert re.match(r"test accuracy: \d\.\d{4} \(\d+/20 held out\), test loss: \d+\.\d{4}$", out[-1]), out[-1]


def test_train_on_tiny_cifar10_binary_files(tmp_path, capsys):
    from gpucnn.data import write_cifar10_bin
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar" / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}.bin", 2) for i in range(1, 6)] + [("test_batch.bin", 4)]:
        write_cifar10_bin(d / name, rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
    assert cli.main(["train", "--dataset", "cifar10", str(tmp_path / "cifar"), "--epochs", "1", "--verbose", "0",
                     "--batch-size", "5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("training cifar10_vgg on cifar10 (10 train / 4 test)")
    assert re.match(r"test accuracy: \d\.\d{4} \(\d+/4 held out\)", out[-1]), out[-1]


def test_train_missing_dataset_dir_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_mnist"
    with pytest.raises((FileNotFoundError, SystemExit)) as e:
        cli.main(["train", "--dataset", "mnist", str(missing), "--epochs", "1", "--verbose", "0"])
    assert str(missing) in str(e.value)


def test_train_dataset_argument_errors():
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", "imagenet", "--epochs", "1"])
    assert "imagenet" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", "mnist", "--epochs", "1"])  # no directory
    assert "DIR" in str(e.value.code)
    with pytest.raises(SystemExit):
        cli.main(["train", "--dataset", "digits", "somewhere", "--epochs", "1"])


def test_train_model_that_does_not_fit_the_dataset_exits():
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--model", "lenet_like", "--epochs", "1", "--verbose", "0"])
    assert "lenet_like" in str(e.value.code)


def test_train_save_path_without_npz_suffix_is_the_file_written(tmp_path, capsys):
    path = tmp_path / "trained_model"
    assert cli.main(["train", "--epochs", "1", "--verbose", "0", "--save", str(path)]) == 0
    assert f"saved to {path}" in capsys.readouterr().out
    gpucnn.load_model(path)


def test_python_dash_m_gpucnn_summary():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "gpucnn", "summary", "digits_cnn"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'Model: "digits_cnn"' in proc.stdout
    assert "Total params: 151,306" in proc.stdout


def test_python_dash_m_gpucnn_without_command_fails():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "gpucnn"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "usage" in proc.stderr
