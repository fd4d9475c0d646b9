"""Output sizes, input checks and launch-independent geometry: the one source of truth for every backend.

`gpucnn.functional` calls these checks once, before any backend runs, so a
kernel never sees an argument it was not written for. Each check raises
ValueError (wrong shape or value) or TypeError (wrong type or dtype) saying
what was expected and what came.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_BYTES = np.iinfo(np.intp).max  # the most bytes one array can span (NumPy's limit, a 64-bit address space)


# --------------------------------------------------------------------------- sizes

def conv_output_size(n: int, f: int, stride: int = 1, pad_before: int = 0, pad_after: int | None = None) -> int:
    """floor((n + 2p - f) / s) + 1, the output length of a convolution or pooling window."""
    pad_after = pad_before if pad_after is None else pad_after
    return (n + pad_before + pad_after - f) // stride + 1


def check_size(op: str, what: str, shape, dtype, max_elements: int | None = None, backend: str = "") -> None:
    """An array of `shape` and `dtype` that `op` would create is one the backend can hold: at most
    `max_elements` elements (a backend whose kernels index with 32-bit integers says so; None: no such limit)
    and at most MAX_BYTES bytes. Raised before anything is allocated, so a huge padding or scale is a
    message, not an allocation failure."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if max_elements is not None and n > max_elements:
        raise ValueError(f"{op}: {what} would have shape {shape}, {n:,} elements; the {backend} backend's kernels "
                         f"index with 32-bit integers, so an array holds at most {max_elements:,} elements")
    # an empty shape too: no array can have dimensions whose nonzero ones span more bytes than MAX_BYTES
    spanned = math.prod(s for s in shape if s) * np.dtype(dtype).itemsize
    if spanned > MAX_BYTES:
        raise ValueError(f"{op}: {what} would have shape {shape}, whose nonzero dimensions span {spanned:,} bytes, "
                         f"more than an array can hold ({MAX_BYTES:,} bytes)")
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes > MAX_BYTES:
        raise ValueError(f"{op}: {what} would have shape {shape}, {n:,} elements ({nbytes:,} bytes), more than "
                         f"an array can hold ({MAX_BYTES:,} bytes)")


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints as a (height, width) pair of Python ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def positive_pair(value, name: str) -> tuple[int, int]:
    h, w = pair(value, name)
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return h, w


def conv_padding(padding, kernel_hw: tuple[int, int], stride_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Resolve padding to (top, bottom, left, right).

    int or (ph, pw): symmetric zero padding. 'valid': none. 'same': output size
    equals input size; only at stride 1, as in PyTorch. An even kernel puts the
    extra row/column at the bottom/right, as PyTorch and TensorFlow do.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if stride_hw != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (as in PyTorch), got stride {stride_hw}")
            (r, s) = kernel_hw
            return (r - 1) // 2, r // 2, (s - 1) // 2, s // 2
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return ph, ph, pw, pw


# --------------------------------------------------------------------------- launch-independent geometry
#
# How a kernel family sees its arrays, the same on every backend (the launch grid itself is each
# backend's own).

def softmax_rows(shape, dim: int) -> tuple[int, int, int]:
    """(rows, D, inner): a contiguous array of `shape` seen as (outer, D, inner) along `dim` (resolved to
    [0, ndim)): rows = outer * inner softmax rows of D elements each, `inner` apart (0 rows when D is 0)."""
    d = int(shape[dim])
    inner = int(np.prod(shape[dim + 1:], dtype=np.int64))
    rows = int(np.prod(shape, dtype=np.int64)) // d if d else 0
    return rows, d, inner


def pool_geometry(x_shape, out_shape, kernel, stride) -> tuple[int, ...]:
    """(planes, H, W, P, Q, kh, kw, sh, sw) as Python ints: a pooling of an (N, C, H, W) input into
    (N, C, P, Q) seen as planes = N*C independent (H, W) -> (P, Q) planes."""
    n, c, h, w = (int(s) for s in x_shape)
    return (n * c, h, w, int(out_shape[2]), int(out_shape[3]), int(kernel[0]), int(kernel[1]),
            int(stride[0]), int(stride[1]))


# --------------------------------------------------------------------------- arrays

def _describe(a) -> str:
    return f"{type(a).__name__} of shape {tuple(a.shape)} and dtype {a.dtype}"


def check_array(a, name: str, ndim: int | tuple[int, ...] | None = None) -> None:
    """An array (any backend's) with a float32/float64 dtype and, if given, this rank."""
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 (or float64 for gradient checks), got {_describe(a)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if len(a.shape) not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have rank {want}, got {_describe(a)}")


def check_same_dtype(**arrays) -> None:
    """All given (non-None) arrays share one dtype; nothing is ever cast silently."""
    given = {k: v for k, v in arrays.items() if v is not None}
    dtypes = {np.dtype(v.dtype) for v in given.values()}
    if len(dtypes) > 1:
        listed = ", ".join(f"{k}: {np.dtype(v.dtype)}" for k, v in given.items())
        raise TypeError(f"arrays must share one dtype, got {listed}")


def check_shape(a, name: str, expected: tuple) -> None:
    if tuple(a.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(a.shape)}")


def class_indices(labels, n: int, num_classes: int | None, what: str = "labels"):
    """Labels as (n,) integer class indices: the one reading of labels for fit, evaluate and the loss.

    Accepted: integer class indices of shape (n,) or (n, 1) (what pandas and Keras users hold; Keras's
    sparse categorical cross-entropy reads (n, 1) so), and, on the host, float one-hot rows (n,
    num_classes) with exactly one 1 per row. Anything else -- another width, (n, k) integers, rows that
    are not one-hot, float class indices -- is an error saying what came and what was expected.

    Host (NumPy) labels are checked to lie in [0, num_classes) here. Device labels are never read on
    the host (that would synchronize on every loss call, and is illegal inside a CUDA-graph capture):
    the loss kernels record a label out of range on the device instead (see
    functional.check_label_errors). Returns the labels as class indices (a view where possible).
    """
    if not (hasattr(labels, "shape") and hasattr(labels, "dtype")):
        raise TypeError(f"{what} must be an array of integer class indices, got {type(labels).__name__}")
    shape, dtype = tuple(labels.shape), np.dtype(labels.dtype)
    host = isinstance(labels, np.ndarray)
    indices = f"class indices of shape ({n},) or ({n}, 1)"
    expected = indices + (f", or float one-hot rows of shape ({n}, {num_classes})" if num_classes else "")
    if len(shape) == 2 and dtype.kind == "f":
        if not host:
            raise TypeError(f"{what}: one-hot rows on the device cannot be checked without a host copy; "
                            f"pass {indices} (argmax the rows yourself), got {_describe(labels)}")
        if shape[0] != n or (num_classes is not None and shape[1] != num_classes):
            raise ValueError(f"{what}: expected {expected}, got one-hot rows of shape {shape}"
                             + (f" (the model has {num_classes} outputs)" if num_classes else ""))
        ones = labels == 1
        bad = ~((ones | (labels == 0)).all(axis=1) & (ones.sum(axis=1) == 1))
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{what}: float rows must be one-hot (exactly one 1, the rest 0), but row {row} is "
                             f"{np.array2string(labels[row], threshold=12)}; expected {expected}")
        return ones.argmax(axis=1)
    if dtype.kind not in "iu":
        raise TypeError(f"{what} must be integer class indices ({expected}), got {_describe(labels)}")
    if len(shape) == 2 and shape[1] == 1 and shape[0] == n:
        labels = labels.reshape(n)
    elif shape != (n,):
        extra = (" (integer rows of several columns are ambiguous: one-hot rows must be float)"
                 if len(shape) == 2 and shape[0] == n else "")
        raise ValueError(f"{what}: expected {expected}, got shape {shape}{extra}")
    if host and n and num_classes is not None:
        low, high = labels.min(), labels.max()
        if low < 0 or high >= num_classes:
            row = int(np.argmax((labels < 0) | (labels >= num_classes)))
            raise ValueError(f"{what} must lie in [0, {num_classes}), got values from {low} to {high} "
                             f"(first bad one: {labels[row]} at row {row})")
    return labels


def check_indices(indices, out_shape: tuple, x_shape: tuple, kernel_hw: tuple, stride_hw: tuple) -> None:
    """Max-pool indices: integers of the pooled shape, each the flat position h*W+w of an element of its own
    window (what max_pool2d(..., return_indices=True) returns; the one rule of every backend).

    Host arrays are checked here, range and window. Device arrays are not read back (a synchronization per
    backward step): the GPU kernels give dy only to a position inside its window and record the first index
    outside it on the device, see functional.check_index_errors."""
    if not (hasattr(indices, "shape") and hasattr(indices, "dtype")) or np.dtype(indices.dtype).kind not in "iu":
        raise TypeError(f"indices must be an integer array from max_pool2d(..., return_indices=True), "
                        f"got {getattr(indices, 'dtype', type(indices).__name__)}")
    check_shape(indices, "indices", out_shape)
    if not isinstance(indices, np.ndarray) or not indices.size:
        return
    plane = int(x_shape[2]) * int(x_shape[3])
    if indices.min() < 0 or indices.max() >= plane:
        raise ValueError(f"indices must lie in [0, {plane}) (flat positions in an input plane), "
                         f"got values from {indices.min()} to {indices.max()}")
    (kh, kw), (sh, sw), (p, q) = kernel_hw, stride_hw, out_shape[2:]
    row, col = np.divmod(indices.astype(np.int64), int(x_shape[3]))
    di = row - (np.arange(p) * sh)[:, None]
    dj = col - (np.arange(q) * sw)[None, :]
    outside = (di < 0) | (di >= kh) | (dj < 0) | (dj >= kw)
    if outside.any():
        at = tuple(int(i) for i in np.argwhere(outside)[0])
        oh, ow = at[2:]
        raise ValueError(f"indices{list(at)} = {indices[at]} (row {row[at]}, column {col[at]}) is outside its "
                         f"window, rows {oh * sh}..{oh * sh + kh - 1} and columns {ow * sw}..{ow * sw + kw - 1}: "
                         f"each index must be the position of an element of its own window, as "
                         f"max_pool2d(..., return_indices=True) returns them")


def channel_counts(channels, total: int) -> list[int]:
    """concat_backward's channel counts: a sequence of ints >= 0 that add up to `total`."""
    if not isinstance(channels, (list, tuple)) or not all(
            isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in channels):
        raise TypeError(f"channel counts must be a list or tuple of ints, got {channels!r}")
    counts = [int(c) for c in channels]
    if any(c < 0 for c in counts):
        raise ValueError(f"channel counts must be >= 0, got {counts}")
    if sum(counts) != total:
        raise ValueError(f"channel counts {counts} do not add up to dy's {total} channels")
    return counts


# --------------------------------------------------------------------------- op checks

def check_conv2d(x, w, b, stride, padding):
    """Validate a conv2d call; return (stride_hw, pads (top, bottom, left, right), output shape)."""
    check_array(x, "x", 4)
    check_array(w, "w", 4)
    if b is not None:
        check_array(b, "b", 1)
    check_same_dtype(x=x, w=w, b=b)
    n, c, h, wd = x.shape
    k, cw, r, s = w.shape
    if cw != c:
        raise ValueError(
            f"channel mismatch: x has {c} channels (shape {tuple(x.shape)}) but w expects {cw} "
            f"(w shape {tuple(w.shape)} is (K, C, R, S))"
        )
    if b is not None and tuple(b.shape) != (k,):
        raise ValueError(f"bias must have shape ({k},), one per filter, got {tuple(b.shape)}")
    if r < 1 or s < 1:
        raise ValueError(f"the kernel must be at least 1x1, got {r}x{s} (w shape {tuple(w.shape)} is (K, C, R, S))")
    stride_hw = positive_pair(stride, "stride")
    pads = conv_padding(padding, (r, s), stride_hw)
    hp, wp = h + pads[0] + pads[1], wd + pads[2] + pads[3]
    if r > hp or s > wp:
        raise ValueError(f"kernel {r}x{s} is larger than the padded input {hp}x{wp}")
    p = conv_output_size(h, r, stride_hw[0], pads[0], pads[1])
    q = conv_output_size(wd, s, stride_hw[1], pads[2], pads[3])
    return stride_hw, pads, (n, k, p, q)


def check_pool2d(x, kernel_size, stride):
    """Validate a pooling call; return (kernel_hw, stride_hw, output shape). stride=None means kernel_size."""
    check_array(x, "x", 4)
    kernel_hw = positive_pair(kernel_size, "kernel_size")
    stride_hw = kernel_hw if stride is None else positive_pair(stride, "stride")
    n, c, h, w = x.shape
    if kernel_hw[0] > h or kernel_hw[1] > w:
        raise ValueError(f"pool window {kernel_hw[0]}x{kernel_hw[1]} is larger than the input {h}x{w}")
    p = conv_output_size(h, kernel_hw[0], stride_hw[0])
    q = conv_output_size(w, kernel_hw[1], stride_hw[1])
    return kernel_hw, stride_hw, (n, c, p, q)


def check_grad_output(dy, name: str, expected: tuple, like) -> None:
    """The upstream gradient has the forward output's shape and the input's dtype."""
    check_array(dy, name)
    check_shape(dy, name, expected)
    check_same_dtype(**{name: dy, "x": like})


def check_linear(x, w, b):
    check_array(x, "x", 2)
    check_array(w, "w", 2)
    if b is not None:
        check_array(b, "b", 1)
    check_same_dtype(x=x, w=w, b=b)
    n, i = x.shape
    o, iw = w.shape
    if iw != i:
        raise ValueError(
            f"linear shape mismatch: x has {i} features (shape {tuple(x.shape)}) but w (out, in) "
            f"has shape {tuple(w.shape)}"
        )
    if b is not None and tuple(b.shape) != (o,):
        raise ValueError(f"bias must have shape ({o},), got {tuple(b.shape)}")
    return (n, o)
