"""Datasets, splitting and minibatching for gpucnn (NumPy only).

Every loader returns ``(x, y)``: ``x`` float32 images in NCHW layout scaled
into [0, 1], ``y`` int64 class labels.

File formats read here:

IDX (MNIST)
    A big-endian header: two zero bytes, a dtype code byte (0x08 = unsigned
    byte, the only one accepted), a byte giving the number of dimensions, then
    one uint32 per dimension; then the payload in C order. Images have magic
    0x00000803 (N, rows, cols), labels 0x00000801 (N,). Any file may also be
    gzipped, with a ``.gz`` suffix.

CIFAR-10 binary version (not the pickled one)
    Fixed 3073-byte records: one label byte, then 3072 pixel bytes: 1024 red,
    1024 green, 1024 blue, each a 32x32 plane in row-major order, so the pixels
    reshape directly to (N, 3, 32, 32).

Problems raise errors that name the file: FileNotFoundError for a missing file
(listing every path looked for), ValueError for anything malformed.
"""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["load_digits", "load_mnist", "load_cifar10", "normalize", "one_hot",
           "train_test_split", "batches", "write_idx", "write_cifar10_bin"]

IDX_IMAGES_MAGIC = 0x00000803  # ubyte, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # ubyte, 1 dim
CIFAR_RECORD = 1 + 3 * 32 * 32
NUM_CLASSES = 10


# ----------------------------------------------------------------------------- helpers
def _find(candidates):
    """Return the first existing path among ``candidates``, else FileNotFoundError."""
    candidates = [Path(c) for c in candidates]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("none of these files exist: " + ", ".join(map(str, candidates)))


def _read(path):
    """Read a file's bytes, gunzipping ``*.gz``; a corrupt gzip is a ValueError."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt gzip file ({e})") from e


def _check_labels(labels, path):
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{path}: label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}")


def _check_kind(kind):
    if kind not in ("train", "test"):
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")


def _parse_idx(data, path, magic):
    """Parse IDX bytes into a uint8 array, checking magic and exact payload length."""
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header")
    (got,) = struct.unpack_from(">I", data)
    if got != magic:
        raise ValueError(f"{path}: bad IDX magic 0x{got:08X}, expected 0x{magic:08X} "
                         f"(ubyte data, {magic & 0xFF} dims)")
    ndim = magic & 0xFF
    start = 4 + 4 * ndim
    if len(data) < start:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} of {start} bytes)")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    expected, payload = int(np.prod(dims, dtype=np.int64)), len(data) - start
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: dims {dims} need {expected} payload bytes, "
                         f"found {payload}")
    return np.frombuffer(data, np.uint8, offset=start).reshape(dims)


# ----------------------------------------------------------------------------- loaders
def normalize(images_uint8):
    """Scale uint8 pixels 0..255 into float32 [0, 1] (divide by 255)."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise ValueError(f"normalize expects uint8 pixels, got dtype {images.dtype}")
    return images.astype(np.float32) / np.float32(255)


def load_digits():
    """scikit-learn's bundled 8x8 digits (1,797 images, no download).

    Pixels there are integers 0..16, so x is divided by 16 (not 255) to land
    in [0, 1]. Returns x float32 (1797, 1, 8, 8) and y int64 (1797,).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = (d.images.astype(np.float32) / np.float32(16)).reshape(-1, 1, 8, 8)
    return x, d.target.astype(np.int64)


def load_mnist(directory, kind="train"):
    """Load MNIST (or any ubyte IDX image/label pair) from ``directory``.

    Reads ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (kind
    'train') or the ``t10k-*`` pair (kind 'test'), also spelled with a dot
    (``train-images.idx3-ubyte``, as many mirrors and archives name them),
    plain or ``.gz``. The first that exists of: dashed, dotted, dashed ``.gz``,
    dotted ``.gz``. Returns x float32 (N, 1, rows, cols) in [0, 1] and y int64
    (N,).
    """
    _check_kind(kind)
    directory, prefix = Path(directory), "train" if kind == "train" else "t10k"

    def read(name, magic):
        dotted = name.replace("-idx", ".idx")  # train-images-idx3-ubyte -> train-images.idx3-ubyte
        path = _find([directory / name, directory / dotted, directory / (name + ".gz"), directory / (dotted + ".gz")])
        return _parse_idx(_read(path), path, magic), path

    images, ipath = read(f"{prefix}-images-idx3-ubyte", IDX_IMAGES_MAGIC)
    labels, lpath = read(f"{prefix}-labels-idx1-ubyte", IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{ipath} has {len(images)} images but {lpath} has {len(labels)} labels")
    _check_labels(labels, lpath)
    return normalize(images)[:, None], labels.astype(np.int64)


def load_cifar10(directory, kind="train"):
    """Load the CIFAR-10 binary version from ``directory``.

    Train is ``data_batch_1.bin`` .. ``data_batch_5.bin`` (all required,
    concatenated in order), test is ``test_batch.bin``; each file may sit in
    ``directory`` or its ``cifar-10-batches-bin/`` subfolder. Returns x float32
    (N, 3, 32, 32) in [0, 1] and y int64 (N,).
    """
    _check_kind(kind)
    directory = Path(directory)
    names = ([f"data_batch_{i}.bin" for i in range(1, 6)] if kind == "train"
             else ["test_batch.bin"])
    xs, ys = [], []
    for name in names:
        path = _find([directory / "cifar-10-batches-bin" / name, directory / name])
        data = path.read_bytes()
        if not data or len(data) % CIFAR_RECORD:
            raise ValueError(f"{path}: size {len(data)} bytes is not a positive multiple "
                             f"of the {CIFAR_RECORD}-byte record")
        records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD)
        _check_labels(records[:, 0], path)
        ys.append(records[:, 0])
        xs.append(records[:, 1:].reshape(-1, 3, 32, 32))
    return normalize(np.concatenate(xs)), np.concatenate(ys).astype(np.int64)


# ----------------------------------------------------------------------------- utilities
def one_hot(labels, num_classes):
    """Integer labels (N,) -> float32 one-hot matrix (N, num_classes)."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"one_hot needs integer labels, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"one_hot needs 1-D labels, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, "
                         f"got range {labels.min()}..{labels.max()}")
    out = np.zeros((len(labels), num_classes), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def train_test_split(x, y, test_size=0.2, seed=0, stratify=True):
    """Shuffled split -> ``x_train, x_test, y_train, y_test`` (sklearn's, seeded).

    With ``stratify`` each class keeps its proportion in both parts.
    """
    from sklearn.model_selection import train_test_split as sk_split

    return sk_split(x, y, test_size=test_size, random_state=seed,
                    stratify=y if stratify else None)


def epoch_order(n: int, shuffle=True, seed=None) -> np.ndarray:
    """The order an epoch visits n samples in: ``np.random.default_rng(seed).permutation(n)``, or 0..n-1."""
    return np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)


def batches(x, y, batch_size, shuffle=True, seed=None):
    """Iterate over ``(xb, yb)`` minibatches covering every sample once.

    The last batch may be smaller. Shuffling uses ``np.random.default_rng(seed)``,
    so a fixed seed gives a fixed order. Arguments are checked at call time.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    n = len(x)
    order = epoch_order(n, shuffle, seed)

    def generate():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]

    return generate()


# ----------------------------------------------------------------------------- writers
def write_idx(path, array):
    """Write a uint8 array as an IDX file (gzipped if ``path`` ends in .gz)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx supports uint8 only, got dtype {array.dtype}")
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
    return path


def write_cifar10_bin(path, images_uint8, labels):
    """Write (N, 3, 32, 32) uint8 images and labels 0..9 as a CIFAR-10 .bin file."""
    images, labels = np.asarray(images_uint8), np.asarray(labels)
    if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"images must be uint8 (N, 3, 32, 32), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"labels must be {len(images)} integers in 0..9")
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], 1)
    path = Path(path)
    path.write_bytes(records.tobytes())
    return path
