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


# ----------------------------------------------------------------------------- issue 11: threads, driver, viz, progress
def test_train_threads_sets_the_blas_threads_for_the_run(monkeypatch, capsys):
    from gpucnn._blas import blas_threads
    seen = []
    fit = gpucnn.Model.fit

    def spy(self, *args, **kwargs):
        seen.append(blas_threads())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(gpucnn.Model, "fit", spy)
    before = blas_threads()
    assert cli.main(["train", "--epochs", "1", "--verbose", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("on the numpy backend, 1 BLAS thread") or before is None, out[0]
    assert seen == [1 if before is not None else None]
    assert blas_threads() == before  # restored after the run


def test_info_shows_blas_threads_and_the_cupy_wheel_for_the_driver(monkeypatch, capsys):
    from gpucnn import _driver
    from gpucnn._blas import blas_threads
    for version, wheel in [(12040, "cupy-cuda12x"), (13000, "cupy-cuda13x")]:
        monkeypatch.setattr(_driver, "cuda_driver_version", lambda v=version: v)
        assert cli.main(["info"]) == 0
        lines = capsys.readouterr().out.splitlines()
        blas = [line for line in lines if line.startswith("blas ")]
        assert len(blas) == 1 and f"{blas_threads()} threads" in blas[0] and "--threads" in blas[0], lines
        cuda = [line for line in lines if line.startswith("cuda ")]
        assert len(cuda) == 1 and wheel in cuda[0] and f"gpucnn[cuda{version // 1000}]" in cuda[0], lines
        assert f"CUDA {version // 1000}.{version % 1000 // 10}" in cuda[0]
    monkeypatch.setattr(_driver, "cuda_driver_version", lambda: None)
    assert cli.main(["info"]) == 0
    cuda = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cuda ")]
    assert len(cuda) == 1 and "no CUDA driver" in cuda[0] and "no GPU backend can run" in cuda[0]


def test_driver_version_read_through_ctypes(monkeypatch):
    import ctypes

    from gpucnn import _driver

    class FakeLibcuda:
        def __init__(self, version, status=0):
            self.version, self.status = version, status

        def cuDriverGetVersion(self, ref):  # noqa: N802 - the driver API's name
            ref._obj.value = self.version
            return self.status

    opened = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: opened.append(name) or FakeLibcuda(13010))
    assert _driver.cuda_driver_version() == 13010
    assert opened == ["nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"]
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibcuda(12080, status=3))  # CUDA_ERROR_NOT_INITIALIZED
    assert _driver.cuda_driver_version() is None

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert _driver.cuda_driver_version() is None
    assert [_driver.cupy_wheel(v) for v in (12000, 12090, 13000, 13020, None)] == \
        ["cupy-cuda12x", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda13x", None]


def test_train_save_makes_missing_folders(tmp_path, capsys):
    path = tmp_path / "runs" / "today" / "model.npz"
    assert cli.main(["train", "--epochs", "1", "--verbose", "0", "--save", str(path)]) == 0
    assert f"saved to {path}" in capsys.readouterr().out
    gpucnn.load_model(path)


def test_viz_without_data_draws_every_other_picture(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from skimage import io
    model = tmp_path / "lenet.npz"
    gpucnn.models.lenet_like(seed=0).save(model)  # takes (3, 32, 32): no bundled data for its embedding
    photo = tmp_path / "photo.png"
    io.imsave(photo, (np.random.default_rng(0).random((30, 30, 3)) * 255).astype(np.uint8), check_contrast=False)
    out = tmp_path / "out"
    assert cli.main(["viz", "--model", str(model), "--image", str(photo), "--out", str(out), "--steps", "1",
                     "--stride", "9", "--backend", "numpy"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{kind}.png" for kind in (
        "filters", "feature_maps", "saliency", "occlusion", "activation_maximization"))
    err = capsys.readouterr().err
    assert "embedding" in err and "skipped" in err and "--dataset" in err


class _Stream:
    """A text stream that says whether it is a terminal."""

    def __init__(self, tty):
        import io
        self.buffer, self.tty = io.StringIO(), tty

    def write(self, s):
        return self.buffer.write(s)

    def flush(self):
        pass

    def isatty(self):
        return self.tty


def test_progress_is_a_bar_on_a_terminal_and_a_line_an_epoch_elsewhere(monkeypatch):
    x, y = load_digits()
    x, y = x[:128], y[:128]
    for tty in (False, True):
        stream = _Stream(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        gpucnn.models.digits_cnn(seed=0).fit(x, y, epochs=2, batch_size=64, seed=0, verbose=1)
        monkeypatch.undo()
        text = stream.buffer.getvalue()
        if tty:
            assert "\r" in text and "epoch 2/2" in text  # tqdm's live bar
        else:
            assert "\r" not in text
            assert [line.split()[:2] for line in text.splitlines()] == [["epoch", "1/2"], ["epoch", "2/2"]], text
