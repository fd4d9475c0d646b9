"""Property-based fuzz (Hypothesis) of gpucnn.functional: one backend against the NumPy backend, and
the NumPy backend against the float64 loop oracle (tests/oracle.py).

Each example draws one op call -- conv2d, conv2d_relu, conv2d_backward, max_pool2d, relu_max_pool2d,
max_pool2d_backward (no / forward / malformed host indices), avg_pool2d(+_backward), relu,
relu_backward, upsample_nearest2d(+_backward), add, concat(+_backward), linear(+_backward), softmax,
log_softmax, softmax_backward, softmax_cross_entropy, dropout(+_backward), batch_norm(+_backward) --
with tiny shapes (zero-size dims included), odd strides/paddings/kernel sizes (huge, negative, 0,
1.5, True now and then), dtypes float32 (mostly), float64, float16, int32, bool, layouts (C,
Fortran, strided and negative-stride views, 0-d, Python lists), values with NaN, +-inf, +-1e30 and
-0.0 sprinkled in, and one malformed argument now and then (dtype, rank, shape, list, None). The
call runs on the NumPy backend and on the backend under test (arrays moved there with F.asarray, or
passed as host arrays), and the outcomes must agree:

- both succeed: same structure, shapes and dtypes, NaN at the same places, equal infinities, finite
  values close (tolerance scaled by the inputs' magnitude; where products of huge inputs may overflow
  float32, NaN against inf is accepted); dropout: mask values in {0, 1/(1-p)}, y == x * mask, one seed
  -> one mask; the NumPy backend also equals the oracle where float64 and float32 agree on NaN/inf;
- both raise a clean error: ValueError/TypeError raised inside gpucnn (not a simulator kernel
  error), the same type on both;
- only the backend raises: allowed for its documented limits (messages naming float32 or 32-bit);
- anything else (another exception type, a NumPy-internal error, a crash) is a failure.

Each op gets its own Hypothesis run (max_examples / number of ops examples, shrunk on failure), so
every op is fuzzed and one failing op does not stop the others. Each case is printed before it runs
(a crash names it); the last line counts the outcomes and, on failure, says how to rerun.

Run:   python tests/fuzz_ops.py --backend {numpy,numba,cupy} --max-examples N --seed S|random
       [--ops conv2d,relu] [--no-shrink]
Long, under pytest (tests/test_fuzz.py): GPUCNN_FUZZ=2000 GPUCNN_FUZZ_SEED=random pytest tests/test_fuzz.py -rA
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable

if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia/version")):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # before anything imports numba (as tests/conftest.py)
    os.environ.setdefault("GPUCNN_CUPY_EMULATE", "1")

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings, strategies as st  # noqa: E402

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle  # noqa: E402

import gpucnn  # noqa: E402
from gpucnn import backend as _backend  # noqa: E402
from gpucnn import functional as F  # noqa: E402

GPUCNN_DIR = os.path.dirname(os.path.abspath(gpucnn.__file__))
SPECIALS = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, -0.0])
NUMPY_INTERNAL = ("array is too big", "zero-size array to reduction", "negative dimensions")
ALLOWED_LIMITS = ("float32", "32-bit")  # what a GPU backend may refuse where NumPy computes
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}
ATOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-11}  # times the case's scale


class Failure(AssertionError):
    pass


# ----------------------------------------------------------------------------- cases

@dataclass(eq=False)
class Arr:
    """An array argument: its values (C order) and how it is passed (layout; `where`: 'any' follows the
    case, 'host' is never moved to the device, 'device' always is)."""
    value: np.ndarray
    layout: str = "C"
    where: str = "any"
    tag: str = ""

    def make(self):
        v = self.value
        if self.layout == "list":
            return v.tolist()
        if self.layout == "F":
            return np.array(v, order="F")
        if self.layout == "strided" and v.ndim:
            buf = np.zeros(v.shape[:-1] + (2 * v.shape[-1],), v.dtype)
            buf[..., ::2] = v
            return buf[..., ::2]
        if self.layout == "reversed" and v.ndim:
            return v[..., ::-1].copy()[..., ::-1]
        return v.copy()

    def __repr__(self):
        extra = "".join(f",{s}" for s in (self.tag, "" if self.layout == "C" else self.layout,
                                           "" if self.where == "any" else self.where) if s)
        return f"{self.value.dtype}{list(self.value.shape)}{{{extra[1:]}}}"


@dataclass(eq=False)
class Case:
    op: str
    args: list
    kwargs: dict = field(default_factory=dict)
    device: bool = True           # arrays moved with F.asarray (else host arrays) on the backend under test
    oracle: Callable | None = None  # host values -> the expected result (float64), for the NumPy backend
    oracle_specials: bool = True  # the oracle holds for NaN/inf inputs (not softmax's: Python's max and NaN)
    degree: int = 1               # the result scales as |input| ** degree (the tolerance does too); >= 2: products,
    # which overflow float32 on huge inputs, to NaN or inf depending on the order of the sum and on FMA
    mutated: tuple = ()           # positions of arguments the op updates in place (compared afterwards)

    def __repr__(self):
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.op}({', '.join(parts)}) [{'device' if self.device else 'host'} arrays]"


def mostly(common, rare, k=8):
    """`common`, and `rare` about one time in k+1 (shrinking prefers `common`)."""
    return st.sampled_from([common] * k + [rare]).flatmap(lambda s: s)  # (one_of would merge the copies)


DTYPES = mostly(st.sampled_from([np.float32] * 3 + [np.float64]), st.sampled_from([np.float16, np.int32, np.bool_]), 12)
KINDS = st.sampled_from(["normal", "normal", "ints", "special"])  # ints: ties, zeros and negatives
LAYOUTS = st.sampled_from(["C"] * 6 + ["F", "strided", "reversed"])
N = mostly(st.integers(1, 2), st.just(0), 4)
C = mostly(st.integers(1, 4), st.just(0), 4)
HW = mostly(st.integers(1, 6), st.sampled_from([0, 7]), 4)
KSIZE = mostly(st.integers(1, 3), st.sampled_from([0, 8]))
SHAPE = st.lists(st.integers(0, 4), max_size=4).map(tuple)  # rank 0 to 4
BAD_INT = st.sampled_from([0, -1, 1.5, True, "2", (1,), (1, 2, 3), None])
STRIDE = mostly(st.sampled_from([1, 2, 3, (1, 2), (2, 1)]), st.one_of(st.just(2**40), BAD_INT))
POOL_STRIDE = mostly(st.sampled_from([None, 1, 2, 3, (2, 1)]), st.one_of(st.just(2**40), BAD_INT))
PADDING = mostly(st.sampled_from([0, 1, 2, 3, "same", "valid", (1, 0), (0, 2)]),
                 st.sampled_from([2**30, -1, (0, -1), "full", 1.5, True]))
POOL_K = mostly(st.sampled_from([1, 2, 3, (2, 1), (1, 3)]), st.one_of(st.just(2**40), BAD_INT, st.just(8)))
SCALE = mostly(st.sampled_from([1, 2, 3, (1, 2), (2, 1)]), st.one_of(st.sampled_from([2**40, (2**40, 2**40)]), BAD_INT))


def values(shape, dtype, kind, seed, positive=False):
    """Values of `kind`: 'normal', 'ints' (in -3..3: ties, zeros) or 'special' (normal, one to three of them
    NaN, +-inf, +-1e30 or -0.0); `positive`: made positive (running_var, save_invstd)."""
    rng = np.random.default_rng(seed)
    v = np.array(rng.integers(-3, 4, shape) if kind == "ints" else rng.standard_normal(shape) * 3, np.float64)
    if kind == "special" and v.size:  # one to three of them
        at = rng.integers(0, v.size, rng.integers(1, 4))
        v.flat[at] = rng.choice(SPECIALS, at.size)
    if positive:
        v = np.abs(v) + (kind != "special")  # away from 0 unless special
    with np.errstate(all="ignore"):
        return np.asarray(v.astype(dtype))


@st.composite
def arr(draw, shape, dtype, positive=False, where="any"):
    kind, seed = draw(KINDS), draw(st.integers(0, 2**32 - 1))
    return Arr(values(shape, dtype, kind, seed, positive), draw(LAYOUTS), where, f"{kind}#{seed}")


@st.composite
def corrupt(draw, case):
    """One array argument malformed: another dtype, rank or shape, a Python list, None or a float."""
    slots = [(c, k) for c, keys in ((case.args, range(len(case.args))), (case.kwargs, list(case.kwargs)))
             for k in keys if isinstance(c[k], Arr)]
    slots += [(a, i) for a in case.args if isinstance(a, list) for i in range(len(a)) if isinstance(a[i], Arr)]
    if not slots:
        return case
    c, k = draw(st.sampled_from(slots))
    a = c[k]
    v = a.value
    how = draw(st.sampled_from(["dtype", "rank+", "rank-", "list", "none", "float"] + (["shape"] if v.ndim else [])))
    if how == "dtype":
        v = v.astype(draw(st.sampled_from([np.float64, np.float32, np.float16, np.int32, np.bool_])))
    elif how == "rank+":
        v = v[None]
    elif how == "rank-":
        v = v[..., 0] if v.ndim and v.shape[-1] else v.reshape(-1)
    elif how == "shape":
        shape = list(v.shape)
        axis = draw(st.integers(0, v.ndim - 1))
        shape[axis] = max(0, shape[axis] + draw(st.sampled_from([1, -1])))
        v = values(tuple(shape), v.dtype, "normal", 0)
    if how in ("none", "float"):
        c[k] = None if how == "none" else 1.0
    else:
        c[k] = Arr(v, "list" if how == "list" else a.layout, a.where, f"{a.tag},{how}")
    for container, key in slots:  # device labels and indices are not checked: a malformed call keeps them on the host
        if isinstance(container[key], Arr) and container[key].value.dtype.kind in "iub":
            container[key].where = "host"
    return case


def pair(v, low=1, high=None):
    """An int or pair of ints in [low, high] as a (h, w) pair, else None."""
    p = (v, v) if isinstance(v, int) else v
    ok = isinstance(p, tuple) and len(p) == 2 and all(
        isinstance(i, int) and not isinstance(i, bool) and low <= i and (high is None or i <= high) for i in p)
    return p if ok else None


def conv_out(h, w, r, s, stride, padding):
    """(P, Q) of a valid conv2d with a small padding, else None."""
    stride = pair(stride)
    if stride is None or r < 1 or s < 1 or padding == "same" and stride != (1, 1):
        return None
    if padding not in ("same", "valid") and pair(padding, 0, 7) is None:
        return None
    t, b, left, right = oracle.resolve_pads(padding, r, s)
    p, q = (h + t + b - r) // stride[0] + 1, (w + left + right - s) // stride[1] + 1
    return (p, q) if p > 0 and q > 0 else None


def pool_out(h, w, kernel, stride):
    """(P, Q) of a valid pooling, else None."""
    kernel, stride = pair(kernel), pair(kernel if stride is None else stride)
    if kernel is None or stride is None or kernel[0] > h or kernel[1] > w:
        return None
    return (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1


def small(draw, pq):
    return pq if pq is not None else (draw(st.integers(0, 3)), draw(st.integers(0, 3)))


# ----------------------------------------------------------------------------- oracles (float64, host)

def _conv_oracle(relu):
    def f(x, w, b=None, stride=1, padding=0):
        if not isinstance(padding, str) and pair(padding, 0, 7) is None:  # huge: a zero-size output
            return None
        y = oracle.conv2d(x, w, b, pair(stride), oracle.resolve_pads(padding, w.shape[2], w.shape[3]))
        return oracle.relu(y) if relu else y
    return f


def _conv_backward_oracle(dy, x, w, stride, padding, input_grad, relu_mask):
    dx, dw, db = oracle.conv2d_backward(dy, x, w, pair(stride), oracle.resolve_pads(padding, w.shape[2], w.shape[3]))
    if x.size == 0:  # an empty input's gradients are zero, even where its padding meets an infinite dy
        dw = np.zeros(w.shape)
    if relu_mask:
        dx = np.where(x <= 0, 0.0, dx)
    return (dx if input_grad else None), dw, db


def _max_pool(x, kernel, stride):
    return oracle.max_pool2d(x, kernel, stride)


def _max_pool_oracle(relu):
    def f(x, kernel, stride=None, return_indices=False):
        y, idx = _max_pool(oracle.relu(x) if relu else x, kernel, stride)
        return (y, idx) if return_indices else y
    return f


def _max_pool_backward_oracle(dy, x, kernel, stride=None, indices=None):
    if indices is None:
        indices = _max_pool(x, kernel, stride)[1]
    n, c, h, w = x.shape
    dx = np.zeros((n, c, h * w))
    for (i, j, p, q), k in np.ndenumerate(indices):
        dx[i, j, k] += dy[i, j, p, q]
    return dx.reshape(x.shape)


def _softmax_oracle(fn):
    return lambda x, dim=1: np.zeros(x.shape) if x.size == 0 else fn(x, dim)


def _softmax_backward_oracle(dy, y, dim=1):
    dy, y = dy.astype(np.float64), y.astype(np.float64)
    return y * (dy - (dy * y).sum(axis=dim, keepdims=True))


def _sce_oracle(logits, labels):
    if logits.shape[0] == 0:
        return None
    labels = labels.argmax(axis=1) if labels.dtype.kind == "f" else labels.reshape(-1)
    loss, grad = oracle.softmax_cross_entropy(logits, labels)
    return np.float64(loss), grad


def _bn_oracle(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1):
    eps = 1e-5
    if training:
        y, mean, var, uvar = oracle.batch_norm_train(x, weight, bias, eps)
        rm = None if running_mean is None else (1 - momentum) * running_mean + momentum * mean
        rv = None if running_var is None else (1 - momentum) * running_var + momentum * uvar
        return (y, mean, 1 / np.sqrt(var + eps)), [rm, rv]
    y = oracle.batch_norm_eval(x, running_mean, running_var, weight, bias, eps)
    return y, running_mean, 1 / np.sqrt(running_var.astype(np.float64) + eps)


# ----------------------------------------------------------------------------- op strategies

@st.composite
def conv_case(draw, op):
    n, c, k, h, w, r, s = draw(N), draw(C), draw(C), draw(HW), draw(HW), draw(KSIZE), draw(KSIZE)
    dt = draw(DTYPES)
    x, wt = draw(arr((n, c, h, w), dt)), draw(arr((k, c, r, s), dt))
    stride, padding = draw(STRIDE), draw(PADDING)
    if op == "conv2d_backward":
        dy = draw(arr((n, k) + small(draw, conv_out(h, w, r, s, stride, padding)), dt))
        kw = {"input_grad": draw(st.booleans()), "relu_mask": draw(st.booleans())}
        return Case(op, [dy, x, wt, stride, padding], kw, oracle=_conv_backward_oracle, degree=2)
    b = draw(st.one_of(arr((k,), dt), st.none()))
    return Case(op, [x, wt, b, stride, padding], oracle=_conv_oracle(op == "conv2d_relu"), degree=2)


@st.composite
def pool_case(draw, op):
    n, c, h, w = draw(N), draw(C), draw(HW), draw(HW)
    dt = draw(DTYPES)
    x = draw(arr((n, c, h, w), dt))
    kernel, stride = draw(POOL_K), draw(POOL_STRIDE)
    if op in ("max_pool2d", "relu_max_pool2d"):
        return Case(op, [x, kernel, stride], {"return_indices": draw(st.booleans())},
                    oracle=_max_pool_oracle(op == "relu_max_pool2d"))
    if op == "avg_pool2d":
        return Case(op, [x, kernel, stride], oracle=oracle.avg_pool2d)
    pq = pool_out(h, w, kernel, stride)
    dy = draw(arr((n, c) + small(draw, pq), dt))
    if op == "avg_pool2d_backward":
        return Case(op, [dy, x, kernel, stride], oracle=oracle.avg_pool2d_backward)
    how = draw(st.sampled_from(["none", "forward", "forward", "moved", "float", "int32"]))
    kw = {}
    if how != "none":  # host indices (device ones are not read back: not fuzzed)
        if pq is not None:
            idx = _max_pool(x.value, kernel, stride)[1]
        else:
            idx = np.zeros((n, c, 1, 1), np.int64)
        if how == "moved" and idx.size:  # one index moved: maybe still in its window, maybe not
            at = draw(st.integers(0, idx.size - 1))
            idx.flat[at] += draw(st.sampled_from([1, -1, w, -w, h * w, -idx.flat[at] - 1, 2**40]))
        idx = idx.astype({"float": np.float64, "int32": np.int32}.get(how, np.int64))
        kw["indices"] = Arr(idx, where="host", tag=how)
    return Case(op, [dy, x, kernel, stride], kw, oracle=_max_pool_backward_oracle)


@st.composite
def elementwise_case(draw, op):
    dt = draw(DTYPES)
    shape = draw(SHAPE)
    a = arr(shape, dt)
    if op == "relu":
        return Case(op, [draw(a)], oracle=oracle.relu)
    if op == "relu_backward":
        return Case(op, [draw(a), draw(a)], oracle=lambda dy, x: np.where(x <= 0, 0.0, dy))
    if op == "add":
        return Case(op, [draw(a), draw(a)], oracle=lambda a, b: a.astype(np.float64) + b)
    if op == "dropout":
        seed = draw(mostly(st.sampled_from([None, 0, 1, 12345, 2**64 - 1]),
                           st.sampled_from([-1, 2**64, 1.5, True, "1", np.uint64(7)])))
        p = draw(mostly(st.sampled_from([0.5, 0.0, 0.1, 0.9, 0.99]), st.sampled_from([1.0, -0.1, float("nan"), True])))
        return Case(op, [draw(a), p, draw(st.booleans()), seed])
    # dropout_backward: a mask as dropout makes them, any values, or None
    p = draw(st.sampled_from([0.5, 0.1]))
    mask = draw(st.sampled_from(["dropout", "any", "none"]))
    m = {"dropout": lambda: Arr((np.random.default_rng(0).random(shape) >= p).astype(dt) / dt(1 - p)
                                if np.dtype(dt).kind == "f" else np.ones(shape, dt)),
         "any": lambda: draw(a), "none": lambda: None}[mask]()
    return Case(op, [draw(a), m], oracle=lambda dy, m: dy if m is None else dy.astype(np.float64) * m, degree=2)


@st.composite
def resample_case(draw, op):
    n, c, h, w = draw(N), draw(C), draw(st.integers(0, 4)), draw(st.integers(0, 4))
    dt = draw(DTYPES)
    scale = draw(SCALE)
    if op == "upsample_nearest2d":  # (the loop oracle only for scales it can walk)
        return Case(op, [draw(arr((n, c, h, w), dt)), scale],
                    oracle=lambda x, scale: oracle.upsample_nearest2d(x, scale) if pair(scale, 1, 64) else None)
    if op == "upsample_nearest2d_backward":
        sh, sw = pair(scale, 1, 7) or (1, 1)
        hh, ww = draw(st.sampled_from([(h * sh, w * sw)] * 3 + [(h * sh + 1, w * sw)]))
        return Case(op, [draw(arr((n, c, hh, ww), dt)), scale], oracle=oracle.upsample_nearest2d_backward)
    channels = draw(st.lists(C, min_size=1, max_size=3))
    if op == "concat":
        xs = [draw(arr((n, ci, h, w), dt)) for ci in channels]
        return Case(op, [draw(mostly(st.just(xs), st.just([])))],
                    oracle=lambda xs: np.concatenate([x.astype(np.float64) for x in xs], axis=1))
    dy = draw(arr((n, sum(channels), h, w), dt))
    counts = draw(mostly(st.just(channels), st.sampled_from([[sum(channels) + 1], [-1, sum(channels) + 1], [1.0],
                                                             [True], "2", (sum(channels),)])))
    return Case(op, [dy, counts], oracle=lambda dy, counts: list(np.split(dy.astype(np.float64),
                                                                          np.cumsum(counts)[:-1], axis=1)))


@st.composite
def dense_case(draw, op):
    n, i, o = draw(st.integers(0, 3)), draw(st.integers(0, 6)), draw(st.integers(0, 6))
    dt = draw(DTYPES)
    x, w = draw(arr((n, i), dt)), draw(arr((o, i), dt))
    if op == "linear":
        return Case(op, [x, w, draw(st.one_of(arr((o,), dt), st.none()))], oracle=oracle.linear, degree=2)
    return Case(op, [draw(arr((n, o), dt)), x, w], oracle=oracle.linear_backward, degree=2)


DIM = mostly(st.integers(-4, 3), st.sampled_from([4, -5, 1.5, True, None]))


@st.composite
def softmax_case(draw, op):
    dt = draw(DTYPES)
    if op == "softmax_cross_entropy":
        n, k = draw(st.integers(0, 4)), draw(st.integers(0, 5))
        logits = draw(arr((n, k), dt))
        how = draw(st.sampled_from(["ok", "ok", "ok", "column", "out of range", "one-hot", "float", "uint8"]))
        lab = np.random.default_rng(draw(st.integers(0, 99))).integers(0, max(k, 1), n)
        labels = {"column": lab[:, None], "one-hot": np.eye(k, dtype=dt)[lab] if k else np.zeros((n, 0), dt),
                  "float": lab.astype(np.float32), "uint8": lab.astype(np.uint8)}.get(how, lab)
        if how == "out of range" and n:
            lab[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1, k, 2**40]))
        where = "any" if how in ("ok", "column") and (n == 0 or k > 0) else "host"  # (device labels unchecked)
        return Case(op, [logits, Arr(labels, where=where, tag=how)], oracle=_sce_oracle, oracle_specials=False)
    x = draw(arr(draw(SHAPE), dt))
    dim = draw(DIM)
    if op == "softmax_backward":
        return Case(op, [draw(arr(x.value.shape, dt)), x, dim], oracle=_softmax_backward_oracle, degree=3,
                    oracle_specials=False)
    fn = oracle.softmax if op == "softmax" else oracle.log_softmax
    return Case(op, [x, dim], oracle=_softmax_oracle(fn), degree=0 if op == "softmax" else 1, oracle_specials=False)


@st.composite
def norm_case(draw, op):
    n, c = draw(st.integers(0, 4)), draw(C)
    spatial = draw(st.sampled_from([(), (), (1, 1), (2, 3), (3, 1)]))
    dt = draw(DTYPES)
    x = draw(arr((n, c) + spatial, dt))
    vec = lambda positive=False, where="any": arr((c,), dt, positive, where)  # noqa: E731
    training = draw(st.booleans())
    if op == "batch_norm":
        stats = "device" if training else "any"  # updated in place: a host array would be refused by the GPU backends
        rm, rv = draw(st.one_of(vec(where=stats), st.none())), draw(st.one_of(vec(True, stats), st.none()))
        weight, bias = draw(st.one_of(vec(), st.none())), draw(st.one_of(vec(), st.none()))
        momentum = draw(st.sampled_from([0.1, 0.0, 1.0, 0.5]))
        return Case(op, [x, rm, rv, weight, bias], {"training": training, "momentum": momentum},
                    oracle=_bn_oracle, oracle_specials=False, degree=2, mutated=(1, 2) if training else ())
    dy = draw(arr(x.value.shape, dt))
    weight = draw(st.one_of(vec(), st.none()))
    return Case(op, [dy, x, weight, draw(vec()), draw(vec(True))], {"training": training}, degree=2)


BUILDERS = {
    **{op: conv_case for op in ("conv2d", "conv2d_relu", "conv2d_backward")},
    **{op: pool_case for op in ("max_pool2d", "relu_max_pool2d", "max_pool2d_backward", "avg_pool2d",
                                "avg_pool2d_backward")},
    **{op: elementwise_case for op in ("relu", "relu_backward", "add", "dropout", "dropout_backward")},
    **{op: resample_case for op in ("upsample_nearest2d", "upsample_nearest2d_backward", "concat",
                                    "concat_backward")},
    **{op: dense_case for op in ("linear", "linear_backward")},
    **{op: softmax_case for op in ("softmax", "log_softmax", "softmax_backward", "softmax_cross_entropy")},
    **{op: norm_case for op in ("batch_norm", "batch_norm_backward")},
}


@st.composite
def cases(draw, op):
    """A call of `op`: its arguments, host or device arrays, and now and then one malformed argument."""
    case = draw(BUILDERS[op](op))
    case.device = draw(st.sampled_from([True, True, False]))
    if draw(st.integers(0, 7)) == 7:
        case = draw(corrupt(case))
    return case


# ----------------------------------------------------------------------------- running and checking

def _build(a, device):
    """An argument as the op gets it on the current backend."""
    if isinstance(a, Arr):
        v = a.make()
        moved = isinstance(v, np.ndarray) and (a.where == "device" or (a.where == "any" and device))
        return F.asarray(v) if moved else v
    if isinstance(a, list):
        return [_build(b, device) for b in a]
    return a


def _host(out):
    if out is None:
        return None
    if isinstance(out, (list, tuple)):
        return [_host(o) for o in out]
    return np.asarray(_backend.get_backend().to_host(out) if hasattr(out, "shape") else out)


def classify(e):
    """'clean' (ValueError/TypeError raised by gpucnn's own code, or a MemoryError: an output the machine cannot
    allocate, e.g. 7 EiB that no size check refuses because an array could address it) or 'internal'."""
    where = traceback.extract_tb(e.__traceback__)[-1].filename if e.__traceback__ else ""
    clean = (isinstance(e, (ValueError, TypeError)) and os.path.abspath(where).startswith(GPUCNN_DIR)
             and "tid=[" not in str(e) and not any(m in str(e) for m in NUMPY_INTERNAL))
    return "clean" if clean or isinstance(e, MemoryError) else "internal"


def run(case, name):
    """(outcome, value): ('ok', the result on the host [+ the in-place arguments after the call]) or
    ('clean' / 'internal', the exception)."""
    with _backend.use_backend(name):
        try:
            args = [_build(a, case.device) for a in case.args]
            kwargs = {k: _build(v, case.device) for k, v in case.kwargs.items()}
            out = getattr(F, case.op)(*args, **kwargs)
            return "ok", (_host(out) if not case.mutated else [_host(out), _host([args[i] for i in case.mutated])])
        except Exception as e:  # noqa: BLE001 - every outcome is classified
            return classify(e), e


def _leaves(a):
    if isinstance(a, Arr):
        return [a.value] if a.value.dtype.kind == "f" else []
    return [v for b in a for v in _leaves(b)] if isinstance(a, (list, tuple)) else []


def magnitude(case):
    """The largest finite |value| of the case's float arrays."""
    vals = _leaves(case.args) + _leaves(list(case.kwargs.values()))
    return float(max((np.abs(v[np.isfinite(v)]).max(initial=0.0) for v in vals), default=0.0))


def huge(case):
    """Products of the inputs may overflow float32 (NaN or inf, by the order of the sum and FMA)."""
    return case.degree >= 2 and magnitude(case) > 1e15


def scale(case, ref):
    """The magnitude the result's rounding errors scale with: sqrt(size) * (1 + max |input|) ** degree
    (batch norm: times the inverse standard deviations, which amplify them)."""
    mag = magnitude(case)
    size = max((v.size for v in _leaves(case.args)), default=1)
    s = np.sqrt(max(size, 1)) * (1 + mag) ** case.degree
    if case.op == "batch_norm":
        inv = (ref[0] if case.mutated else ref)[2]
    elif case.op == "batch_norm_backward":
        inv = case.args[4].value if isinstance(case.args[4], Arr) else 0.0
    else:
        return s
    inv = np.abs(np.asarray(inv, np.float64))
    return s * (1 + mag) * (1 + float(inv[np.isfinite(inv)].max(initial=0.0))) ** 2


def compare(got, exp, s, cast=False, overflow=False, path="result"):
    """None when `got` matches `exp` (tolerance: ATOL * s + RTOL * |exp|), else what differs. cast: `exp`
    is the float64 oracle, rounded to got's dtype first; overflow: NaN against +-inf is no difference."""
    if got is None or exp is None:
        return None if got is exp else f"{path}: got {type(got).__name__}, expected {type(exp).__name__}"
    if isinstance(exp, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(exp):
            return f"{path}: got {type(got).__name__}, expected {len(exp)} items"
        return next((d for i, (g, e) in enumerate(zip(got, exp))
                     if (d := compare(g, e, s, cast, overflow, f"{path}[{i}]"))), None)
    g, e = np.asarray(got), np.asarray(exp)
    if cast and g.shape == e.shape:
        with np.errstate(all="ignore"):
            e = e.astype(g.dtype)
    if g.shape != e.shape or g.dtype != e.dtype:
        return f"{path}: got {g.dtype}{list(g.shape)}, expected {e.dtype}{list(e.shape)}"
    if e.dtype.kind != "f":
        bad = g != e
    else:
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        with np.errstate(all="ignore"):
            close = np.abs(g64 - e64) <= ATOL[e.dtype] * s + RTOL[e.dtype] * np.abs(e64)
        nan_g, nan_e, inf_g, inf_e = np.isnan(g64), np.isnan(e64), np.isinf(g64), np.isinf(e64)
        bad = (nan_g != nan_e) | ((inf_g | inf_e) & (g64 != e64) & ~nan_g & ~nan_e)
        bad |= ~nan_g & ~inf_g & ~inf_e & ~close
        if overflow:
            bad &= ~((nan_g & inf_e) | (inf_g & nan_e))
    if not bad.any():
        return None
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{path}: {int(bad.sum())} of {bad.size} differ; at {at} got {g[at]!r}, expected {e[at]!r}"


def implementation_defined(case, got, ref):
    """conv2d_backward's gradients where an infinity or NaN meets a structural zero (padding, a gap between
    strided windows, an edge column): the GPU backends' implicit GEMMs multiply their zero-filled operands
    (0 x inf = NaN) where the definition, the NumPy reference and PyTorch's CPU kernels skip the product or
    keep it (README, "Edge cases"). So dx is compared only where dy and w are finite, dw only where dy and x
    are; db always. Elsewhere: unchanged."""
    if case.op != "conv2d_backward" or not isinstance(got, list) or not isinstance(ref, list):
        return got, ref
    finite = [all(np.isfinite(v).all() for v in _leaves([a])) for a in case.args[:3]]  # dy, x, w
    keep = (finite[0] and finite[2], finite[0] and finite[1], True)
    return ([g if k else None for g, k in zip(got, keep)], [r if k else None for r, k in zip(ref, keep)])


def check_dropout(case, out, name):
    """The properties every backend's dropout holds (the masks themselves differ between backends)."""
    (x, p, training, seed), (y, mask) = [_value(a) for a in case.args], out
    if not training or p == 0:
        return compare(y, x, 1.0) or (None if mask is None else "mask: expected None")
    if mask.shape != x.shape or mask.dtype != x.dtype:
        return f"mask: got {mask.dtype}{list(mask.shape)}, expected {x.dtype}{list(x.shape)}"
    keep = x.dtype.type(1 / (1 - p))
    ulp = float(np.spacing(keep))
    if not np.all((mask == 0) | (np.abs(mask.astype(np.float64) - 1 / (1 - p)) <= ulp)):
        return f"mask: values {np.unique(mask)[:6]} are not all 0 or 1/(1-p) = {1 / (1 - p)}"
    with np.errstate(all="ignore"):
        if not np.array_equal(y, x * mask, equal_nan=True) or y.dtype != x.dtype:
            return f"y: {y.dtype}{list(y.shape)} is not x * mask exactly"
    if seed is None:
        return None
    again = run(case, name)
    return None if again[0] == "ok" and np.array_equal(again[1][1], mask) else "the same seed gave another mask"


def fail(what, case, detail=None):
    if isinstance(detail, BaseException):
        detail = "".join(traceback.format_exception(type(detail), detail, detail.__traceback__)[-6:])
    msg = f"FAIL {what}\n  case: {case!r}" + (f"\n  {detail}" if detail else "")
    print(msg, flush=True)
    raise Failure(msg)


def check(case, name, stats):
    stats["cases"] += 1
    print(f"case {stats['cases']}: {case!r}", flush=True)
    ref = run(case, "numpy")
    got = ref if name == "numpy" else run(case, name)  # even after a numpy failure: a crash here shows
    if got[0] == "internal":
        fail(f"{name} backend: internal error", case, got[1])
    if ref[0] == "internal":
        fail("numpy backend: internal error", case, ref[1])
    if ref[0] == "ok" and got[0] == "ok":
        if case.op == "dropout":
            problem = check_dropout(case, got[1], name)
        elif name != "numpy":
            got_v, ref_v = implementation_defined(case, got[1], ref[1])
            problem = compare(got_v, ref_v, scale(case, ref[1]), overflow=huge(case))
        else:
            problem = check_oracle(case, ref[1], stats)
        if problem:
            fail(f"{name} result differs from {'numpy' if name != 'numpy' else 'the oracle'}", case, problem)
        stats["ok and equal"] += 1
    elif ref[0] == "clean" and got[0] == "clean":
        if type(ref[1]) is not type(got[1]):
            fail(f"numpy raised {type(ref[1]).__name__}, {name} {type(got[1]).__name__}", case,
                 f"numpy: {ref[1]}\n  {name}: {got[1]}")
        stats["both clean errors"] += 1
    elif ref[0] == "ok" and any(m in str(got[1]) for m in ALLOWED_LIMITS):
        stats["refused (allowed limit)"] += 1
    elif ref[0] == "ok":
        fail(f"{name} refused what numpy computes", case, got[1])
    else:
        fail(f"{name} computed what numpy refuses ({type(ref[1]).__name__}: {ref[1]})", case)


def check_oracle(case, result, stats):
    """The NumPy backend's result against the float64 loop oracle (tiny shapes), where float64 and float32
    agree on NaN and inf: no products that overflow float32, and no NaN/inf for the softmax family."""
    vals = _leaves(case.args) + _leaves(list(case.kwargs.values()))
    if case.oracle is None or huge(case) or not (case.oracle_specials or all(np.isfinite(v).all() for v in vals)):
        return None
    with np.errstate(all="ignore"):
        expected = case.oracle(*[_value(a) for a in case.args], **{k: _value(v) for k, v in case.kwargs.items()})
    if expected is None:
        return None
    stats["against the oracle"] += 1
    return compare(result, expected, scale(case, result), cast=True)


def _value(a):
    return a.value if isinstance(a, Arr) else [_value(b) for b in a] if isinstance(a, list) else a


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("numpy", "numba", "cupy"), required=True)
    ap.add_argument("--max-examples", type=int, default=100, help="in all, shared out evenly between the ops")
    ap.add_argument("--seed", default="0", help="an int, or 'random'")
    ap.add_argument("--ops", default=",".join(sorted(BUILDERS)), help="comma-separated (default: all)")
    ap.add_argument("--no-shrink", action="store_true", help="report the first failing example as drawn")
    opts = ap.parse_args(argv)
    fuzz_seed = random.randrange(2**32) if opts.seed == "random" else int(opts.seed)
    ops = opts.ops.split(",")
    print(f"fuzz seed {fuzz_seed} (backend {opts.backend}, {opts.max_examples} examples over {len(ops)} ops)",
          flush=True)
    warnings.simplefilter("ignore")  # NumPy's overflow/invalid warnings on the special values
    _backend.resolve(opts.backend)  # cannot run here: BackendError, exit 1
    poisoned = {"numba": "gpucnn.backends.numba._common", "cupy": "gpucnn.backends.cupy._runtime"}
    if opts.backend in poisoned:  # outputs start as NaN: an element a kernel forgets to write shows
        sys.modules[poisoned[opts.backend]].POISON = True
    stats = collections.Counter()
    failed = []
    per_op = -(-opts.max_examples // len(ops))
    start = time.monotonic()
    for op in ops:  # one Hypothesis run per op: every op is fuzzed, a failure stops only its own
        @hypothesis_seed(fuzz_seed)
        @settings(database=None, deadline=None, max_examples=per_op,
                  phases=[Phase.generate] if opts.no_shrink else [Phase.generate, Phase.shrink],
                  suppress_health_check=list(HealthCheck))
        @given(cases(op))
        def fuzz(case):
            check(case, opts.backend, stats)

        try:
            fuzz()
        except Exception:  # noqa: BLE001 - Hypothesis has printed the falsifying example
            traceback.print_exc(limit=1, file=sys.stdout)
            failed.append(op)
    counts = ", ".join(f"{stats[k]} {k}" for k in ("ok and equal", "against the oracle", "both clean errors",
                                                    "refused (allowed limit)"))
    print(f"fuzz {opts.backend}: {stats['cases']} cases: {counts}; {time.monotonic() - start:.1f} s; seed {fuzz_seed}"
          + (f" -- FAILED: {', '.join(failed)} (rerun: python tests/fuzz_ops.py --backend {opts.backend} "
             f"--max-examples {per_op * len(failed)} --seed {fuzz_seed} --ops {','.join(failed)})" if failed else ""),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
