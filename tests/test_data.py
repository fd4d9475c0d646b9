"""Tests for gpucnn.data: file formats written by hand, errors, splitting, batching."""

import gzip
import struct

import numpy as np
import pytest

from gpucnn import data

RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------- fixtures by hand
def idx_bytes(array, magic=None):
    """IDX bytes built with struct directly, independent of data.write_idx."""
    if magic is None:
        magic = 0x00000800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def mnist_dir(tmp_path, n=7, rows=28, cols=28, prefix="train", gz=False):
    images = RNG.integers(0, 256, (n, rows, cols), dtype=np.uint8)
    labels = RNG.integers(0, 10, n, dtype=np.uint8)
    for name, arr in [(f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)]:
        blob = idx_bytes(arr)
        if gz:
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (tmp_path / name).write_bytes(blob)
    return images, labels


def cifar_bytes(images, labels):
    """CIFAR-10 records by hand: label byte + R plane + G plane + B plane."""
    return b"".join(bytes([int(l)]) + img[0].tobytes() + img[1].tobytes() + img[2].tobytes()
                    for img, l in zip(images, labels))


def random_cifar(n):
    return RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), RNG.integers(0, 10, n, dtype=np.uint8)


# ----------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("kind,prefix", [("train", "train"), ("test", "t10k")])
def test_mnist_hand_written_round_trip(tmp_path, gz, kind, prefix):
    images, labels = mnist_dir(tmp_path, prefix=prefix, gz=gz)
    x, y = data.load_mnist(tmp_path, kind)
    assert x.shape == (7, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (7,) and y.dtype == np.int64
    np.testing.assert_array_equal(x * 255, images[:, None])
    np.testing.assert_array_equal(y, labels)
    assert 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("kind,prefix", [("train", "train"), ("test", "t10k")])
def test_mnist_dotted_file_names(tmp_path, gz, kind, prefix):
    """train-images.idx3-ubyte (a dot before idx, as many mirrors name the files) is read too, gzipped or not."""
    images, labels = mnist_dir(tmp_path, prefix=prefix, gz=gz)
    suffix = ".gz" if gz else ""
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        (tmp_path / (name + suffix)).rename(tmp_path / (name.replace("-idx", ".idx") + suffix))
    x, y = data.load_mnist(tmp_path, kind)
    np.testing.assert_array_equal(x * 255, images[:, None])
    np.testing.assert_array_equal(y, labels)


def test_mnist_missing_file_lists_both_spellings(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load_mnist(tmp_path)
    for name in ("train-images-idx3-ubyte", "train-images.idx3-ubyte", "train-images.idx3-ubyte.gz"):
        assert str(tmp_path / name) in str(e.value)


def test_mnist_shape_from_header_and_write_idx(tmp_path):
    images = RNG.integers(0, 256, (5, 4, 6), dtype=np.uint8)
    labels = RNG.integers(0, 10, 5, dtype=np.uint8)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    assert (tmp_path / "t10k-labels-idx1-ubyte").read_bytes() == idx_bytes(labels)
    assert gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()) == idx_bytes(images)
    x, y = data.load_mnist(str(tmp_path), kind="test")
    assert x.shape == (5, 1, 4, 6)
    np.testing.assert_array_equal(x * 255, images[:, None])
    np.testing.assert_array_equal(y, labels)


def test_mnist_missing_file_names_it(tmp_path):
    mnist_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        data.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        data.load_mnist(tmp_path, "test")


@pytest.mark.parametrize("cut", [1, 3000, 5000, 5500])
def test_mnist_truncated(tmp_path, cut):
    mnist_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)


def test_mnist_trailing_bytes(tmp_path):
    mnist_dir(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="trailing"):
        data.load_mnist(tmp_path)


@pytest.mark.parametrize("magic", [0x00000801, 0x00000C03, 0x08030000])
def test_mnist_bad_magic(tmp_path, magic):
    mnist_dir(tmp_path)
    images = RNG.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images, magic))
    with pytest.raises(ValueError, match="magic"):
        data.load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    mnist_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(ValueError, match="7 images.*6 labels"):
        data.load_mnist(tmp_path)


def test_mnist_label_out_of_range(tmp_path):
    mnist_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(7, 10, np.uint8)))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*out of range"):
        data.load_mnist(tmp_path)


@pytest.mark.parametrize("blob", [b"not gzip at all", "truncated"])
def test_mnist_corrupt_gzip(tmp_path, blob):
    mnist_dir(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100] if blob == "truncated" else blob)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        data.load_mnist(tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("subfolder", [True, False])
def test_cifar_train_hand_written(tmp_path, subfolder):
    folder = tmp_path / "cifar-10-batches-bin" if subfolder else tmp_path
    folder.mkdir(exist_ok=True)
    parts = [random_cifar(n) for n in (2, 3, 1, 2, 4)]
    for i, (imgs, labs) in enumerate(parts, 1):
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_bytes(imgs, labs))
    x, y = data.load_cifar10(tmp_path, "train")
    assert x.shape == (12, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x * 255, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in parts]))


def test_cifar_test_with_writer(tmp_path):
    imgs, labs = random_cifar(3)
    data.write_cifar10_bin(tmp_path / "test_batch.bin", imgs, labs)
    assert (tmp_path / "test_batch.bin").read_bytes() == cifar_bytes(imgs, labs)
    x, y = data.load_cifar10(str(tmp_path), kind="test")
    np.testing.assert_array_equal(x * 255, imgs)
    np.testing.assert_array_equal(y, labs)


def test_cifar_missing_batch(tmp_path):
    for i in (1, 2, 3, 5):
        data.write_cifar10_bin(tmp_path / f"data_batch_{i}.bin", *random_cifar(1))
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin"):
        data.load_cifar10(tmp_path)


@pytest.mark.parametrize("size", [0, 3072, 3074, 2 * 3073 - 1])
def test_cifar_bad_size(tmp_path, size):
    (tmp_path / "test_batch.bin").write_bytes(bytes(size))
    with pytest.raises(ValueError, match="test_batch.bin.*3073"):
        data.load_cifar10(tmp_path, "test")


def test_cifar_label_out_of_range(tmp_path):
    imgs, _ = random_cifar(2)
    (tmp_path / "test_batch.bin").write_bytes(cifar_bytes(imgs, [3, 200]))
    with pytest.raises(ValueError, match="test_batch.bin.*out of range"):
        data.load_cifar10(tmp_path, "test")


def test_bad_kind(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        data.load_mnist(tmp_path, "val")
    with pytest.raises(ValueError, match="kind"):
        data.load_cifar10(tmp_path, "val")


# ----------------------------------------------------------------------------- digits
def test_load_digits():
    from sklearn.datasets import load_digits as sk_load_digits

    x, y = data.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    sk = sk_load_digits()
    np.testing.assert_array_equal(y, sk.target)
    np.testing.assert_array_equal(x[:, 0] * 16, sk.images)


# ----------------------------------------------------------------------------- utilities
def test_normalize():
    pixels = np.arange(256, dtype=np.uint8)
    x = data.normalize(pixels)
    assert x.dtype == np.float32 and x[0] == 0.0 and x[-1] == 1.0
    np.testing.assert_array_equal(x * 255, pixels)
    with pytest.raises(ValueError):
        data.normalize(pixels.astype(np.float32))


def test_one_hot():
    out = data.one_hot(np.array([2, 0, 1, 2]), 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(ValueError, match="range"):
            data.one_hot(np.array(bad), 3)
    with pytest.raises(ValueError, match="integer"):
        data.one_hot(np.array([0.0, 1.0]), 3)


def test_train_test_split_stratified_and_deterministic():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    x = RNG.random((len(y), 1, 2, 2)).astype(np.float32)
    x_tr, x_te, y_tr, y_te = data.train_test_split(x, y, test_size=0.2, seed=3)
    assert len(x_te) == len(y_te) == 20 and len(x_tr) == len(y_tr) == 80
    for c, total in enumerate([50, 30, 15, 5]):
        assert abs(np.sum(y_te == c) - 0.2 * total) <= 1
    again = data.train_test_split(x, y, test_size=0.2, seed=3)
    for a, b in zip((x_tr, x_te, y_tr, y_te), again):
        np.testing.assert_array_equal(a, b)
    # Pairs stay aligned and nothing is lost.
    np.testing.assert_array_equal(np.sort(np.concatenate([y_tr, y_te])), y)
    unstrat = data.train_test_split(x, y, test_size=0.2, seed=3, stratify=False)
    assert len(unstrat[1]) == 20


def test_batches_cover_everything_once():
    x = np.arange(23, dtype=np.float32).reshape(23, 1, 1, 1)
    y = np.arange(23)
    got = list(data.batches(x, y, 5, seed=7))
    assert [len(b[0]) for b in got] == [5, 5, 5, 5, 3]
    seen = np.concatenate([yb for _, yb in got])
    np.testing.assert_array_equal(np.sort(seen), y)
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)
    again = np.concatenate([yb for _, yb in data.batches(x, y, 5, seed=7)])
    np.testing.assert_array_equal(seen, again)
    assert not np.array_equal(seen, y)  # shuffled
    plain = np.concatenate([yb for _, yb in data.batches(x, y, 23, shuffle=False)])
    np.testing.assert_array_equal(plain, y)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4"])
def test_batches_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(np.zeros(4), np.zeros(4), bad)


def test_batches_length_mismatch():
    with pytest.raises(ValueError, match="samples"):
        data.batches(np.zeros(4), np.zeros(3), 2)
