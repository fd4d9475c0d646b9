"""Edge cases a differential fuzz found (issue 25): zero sizes, special values, huge strides and paddings,
malformed arguments. One test per defect, on every backend; each failed before its fix.

What the library does at these edges (README, "Edge cases"): zero-size dimensions compute what PyTorch
computes (a convolution over zero input channels is its bias), NaN propagates as in PyTorch, an output a
backend cannot hold is a ValueError before anything is allocated, and argument errors are gpucnn's own
ValueError/TypeError before any kernel. Reproducers that crashed a process (a segfault, a SIGFPE in the
emulated kernels) run in a child process here, so a regression fails a test instead of the test run.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gpucnn.backend
import gpucnn.functional as F
from helpers import BACKENDS, assert_close, on, ref

F32 = np.float32
EXACT = dict(rtol=0, atol=0)
ROOT = Path(__file__).resolve().parents[2]


def r(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


@pytest.fixture
def no_dispatch(monkeypatch):
    """A refusal must come before any backend runs: dispatch fails the test if reached."""
    def spy(op, *args, **kwargs):
        pytest.fail(f"{op} was dispatched to a backend before the check fired")
    monkeypatch.setattr(gpucnn.backend, "dispatch", spy)
    monkeypatch.setattr(F, "dispatch", spy)


# --------------------------------------------------------------------------- crashes, in a child process

_CHILD = """
import json, os, sys
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1"); os.environ.setdefault("GPUCNN_CUPY_EMULATE", "1")
import numpy as np, gpucnn, gpucnn.functional as F
gpucnn.use_backend(sys.argv[1])
ones = lambda *s: np.ones(s, np.float32)
cases = {
    "concat_backward [5, -1]": lambda: F.concat_backward(ones(1, 4, 2, 2), [5, -1]),
    "conv2d, 0 input channels": lambda: F.conv2d(ones(2, 0, 3, 3), ones(2, 0, 1, 1), np.array([1, -2], np.float32)),
    "conv2d_relu, 0 input channels": lambda: F.conv2d_relu(ones(2, 0, 3, 3), ones(2, 0, 3, 3), np.array([1, -2], np.float32), 1, 1),
    "linear, 0 input features": lambda: F.linear(ones(3, 0), ones(2, 0), np.array([1, -2], np.float32)),
    "linear_backward, 0 output features": lambda: F.linear_backward(ones(3, 0), ones(3, 4), ones(0, 4)),
}
for name, call in cases.items():
    print("running:", name, flush=True)
    try:
        out = call()
        out = out if isinstance(out, (tuple, list)) else (out,)
        res = ["ok", [None if a is None else F.to_numpy(a).tolist() for a in out]]
    except Exception as e:
        res = ["error", type(e).__name__, str(e)]
    print("result:", json.dumps([name, res]), flush=True)
"""


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_crash_reproducers_in_a_child(be):
    """Defect 1 (concat_backward with a negative size: a segfault on cupy, an IndexError inside a numba kernel,
    a silently short split on numpy) and the zero-size GEMMs (a SIGFPE in the emulated conv kernel, an
    invalid grid): clean errors or PyTorch's results, and the child survives."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _CHILD, be.name], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, (f"the child died (exit {proc.returncode}) while {lines[-1] if lines else '?'}\n"
                                  f"{proc.stderr[-2000:]}")
    got = dict(json.loads(ln[len("result: "):]) for ln in lines if ln.startswith("result: "))
    assert got["concat_backward [5, -1]"][:2] == ["error", "ValueError"]
    assert ">= 0" in got["concat_backward [5, -1]"][2]
    assert got["conv2d, 0 input channels"] == ["ok", [np.broadcast_to(np.array([1, -2.0])[:, None, None],
                                                                     (2, 2, 3, 3)).tolist()]]
    assert got["conv2d_relu, 0 input channels"] == ["ok", [np.broadcast_to(np.array([1, 0.0])[:, None, None],
                                                                          (2, 2, 3, 3)).tolist()]]
    assert got["linear, 0 input features"] == ["ok", [[[1.0, -2.0]] * 3]]
    assert got["linear_backward, 0 output features"] == ["ok", [np.zeros((3, 4)).tolist(), [], []]]


# --------------------------------------------------------------------------- 1. concat_backward's sizes

@pytest.mark.parametrize("be", on(*BACKENDS))
def test_concat_backward_sizes(be, no_dispatch):
    dy = np.ones((1, 4, 2, 2), F32)
    for channels, exc, match in (([5, -1], ValueError, r">= 0, got \[5, -1\]"),
                                 ([2, 1], ValueError, r"\[2, 1\] do not add up to dy's 4"),
                                 ([2, 2.0], TypeError, "list or tuple of ints"),
                                 ([True, 3], TypeError, "list or tuple of ints"),
                                 (4, TypeError, "list or tuple of ints")):
        with pytest.raises(exc, match=match):
            be.run("concat_backward", dy, channels)


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_concat_backward_zero_channel_parts(be):
    dy = r(2, 3, 2, 2)
    parts = be.run("concat_backward", dy, (0, 3, 0))
    assert [be.host(p).shape for p in parts] == [(2, 0, 2, 2), (2, 3, 2, 2), (2, 0, 2, 2)]
    assert_close(be.host(parts[1]), dy, **EXACT)


# --------------------------------------------------------------------------- 2 and 13. sizes a backend cannot hold

@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_outputs_over_32_bit_refused_before_anything(be, no_dispatch):
    """Inputs were checked, outputs were not: conv2d and linear launched kernels whose int M = N*P*Q wrapped."""
    one = np.ones((1, 1, 1, 1), F32)
    with gpucnn.backend.use_backend("cupy"):
        for call in (lambda: F.conv2d(one, one, None, 1, 23170), lambda: F.conv2d_relu(one, one, None, 1, 23170),
                     lambda: F.linear(np.ones((46341, 1), F32), np.ones((46341, 1), F32)),
                     lambda: F.upsample_nearest2d(np.ones((1, 1, 2, 2), F32), 23171),
                     lambda: F.conv2d(one, one, None, 1, 2**30)):
            with pytest.raises(ValueError, match=r"would have shape .* the cupy backend's kernels index with 32-bit"):
                call()


@pytest.mark.parametrize("be", on("numpy", "numba"))
def test_outputs_over_the_address_space_refused(be, no_dispatch):
    """padding=2**30 gave NumPy's "array is too big" from inside the backend; now gpucnn's own size message."""
    x, w = np.ones((1, 1, 3, 3), F32), np.ones((1, 1, 3, 3), F32)
    with gpucnn.backend.use_backend(be.name):
        with pytest.raises(ValueError, match=r"conv2d: the output would have shape \(1, 1, 2147483649, 2147483649\)"
                                             r".*more than an array can hold"):
            F.conv2d(x, w, None, 1, 2**30)


@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_refuses_a_huge_broadcast_input_before_uploading_it(be, monkeypatch):
    """A zero-strided host view of 2^31+8 elements was copied to the device (8.6 GB) and only then refused."""
    from gpucnn.backends.cupy import _runtime as rt
    monkeypatch.setattr(rt, "device", lambda a: pytest.fail("uploaded before the size check"))
    x = np.broadcast_to(np.float32(1), (2**31 + 8,))
    with pytest.raises(ValueError, match=r"relu: x has 2,147,483,656 elements; the kernels index with 32-bit"):
        be.run("relu", x)


@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_refuses_a_padded_input_past_32_bit(be):
    """Each argument fit an int, but the kernels' oh*sh - pt + r reaches the padded input's far edge."""
    x, w = np.ones((1, 1, 3, 3), F32), np.ones((1, 1, 3, 3), F32)
    with pytest.raises(ValueError, match="padded input .* does not fit the cupy backend's 32-bit"):
        be.run("conv2d", x, w, None, 2**30, 2**30)


# --------------------------------------------------------------------------- 4 and 8. zero-size dimensions

@pytest.mark.parametrize("be", on(*BACKENDS))
def test_conv_zero_input_channels(be):
    """A convolution over zero channels is its bias (numpy: ZeroDivisionError; cupy: db = 0, not sum(dy))."""
    x, w, b = np.ones((2, 0, 4, 4), F32), np.ones((3, 0, 3, 3), F32), np.array([1, -2, 0.5], F32)
    want = np.broadcast_to(b[:, None, None], (2, 3, 2, 2))
    assert_close(be.host(be.run("conv2d", x, w, b)), want, **EXACT)
    assert_close(be.host(be.run("conv2d_relu", x, w, b)), np.maximum(want, 0), **EXACT)
    dy = r(2, 3, 2, 2)
    dx, dw, db = (be.host(g) for g in be.run("conv2d_backward", dy, x, w))
    assert dx.shape == x.shape and dw.shape == w.shape
    assert_close(db, dy.sum(axis=(0, 2, 3)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_conv_zero_filters_and_zero_batch(be):
    """Zero filters: an empty output (numpy: "cannot reshape array of size 0"); an empty batch: zero dw."""
    x = r(2, 3, 4, 4)
    assert be.host(be.run("conv2d", x, np.ones((0, 3, 3, 3), F32))).shape == (2, 0, 2, 2)
    dx, dw, db = (be.host(g) for g in be.run("conv2d_backward", np.ones((2, 0, 2, 2), F32), x, np.ones((0, 3, 3, 3), F32)))
    assert_close(dx, np.zeros_like(x), **EXACT)
    assert dw.shape == (0, 3, 3, 3) and db.shape == (0,)
    dx, dw, db = (be.host(g) for g in be.run("conv2d_backward", np.ones((0, 2, 2, 2), F32), x[:0], r(2, 3, 3, 3)))
    assert dx.shape == (0, 3, 4, 4)
    assert_close(dw, np.zeros((2, 3, 3, 3)), **EXACT)
    assert_close(db, np.zeros(2), **EXACT)


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_conv_kernel_of_zero_size_refused(be, no_dispatch):
    with pytest.raises(ValueError, match=r"the kernel must be at least 1x1, got 0x3"):
        be.run("conv2d", r(1, 1, 3, 3), np.ones((1, 1, 0, 3), F32))


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_linear_zero_features(be):
    """Zero output features: cupy's backward launched an invalid grid; zero inputs: the bias."""
    dx, dw, db = (be.host(g) for g in be.run("linear_backward", np.ones((3, 0), F32), r(3, 4), np.ones((0, 4), F32)))
    assert_close(dx, np.zeros((3, 4)), **EXACT)
    assert dw.shape == (0, 4) and db.shape == (0,)
    b = np.array([1, -2], F32)
    assert_close(be.host(be.run("linear", np.ones((3, 0), F32), np.ones((2, 0), F32), b)), np.tile(b, (3, 1)), **EXACT)


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_batch_norm_zero_channels(be):
    """(4, 0) in training: ZeroDivisionError in the shared check on every backend; now empty results."""
    for shape in ((4, 0), (4, 0, 2, 2)):
        x = np.ones(shape, F32)
        for training, stats in ((True, (None, None)), (False, (np.ones(0, F32), np.ones(0, F32)))):
            y, mean, invstd = be.run("batch_norm", x, *stats, training=training)
            assert be.host(y).shape == shape and be.host(mean).shape == (0,) and be.host(invstd).shape == (0,)
            dx, dw, dbias = be.run("batch_norm_backward", x, x, np.ones(0, F32), mean, invstd, training=training)
            assert be.host(dx).shape == shape and be.host(dw).shape == (0,)


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_softmax_over_zero_classes(be):
    """NumPy: "zero-size array to reduction operation maximum"; the others returned the empty result."""
    for op in ("softmax", "log_softmax"):
        assert be.host(be.run(op, np.ones((2, 0), F32))).shape == (2, 0)
        assert be.host(be.run(op, np.ones((0, 3), F32))).shape == (0, 3)


# --------------------------------------------------------------------------- 6. ReLU and NaN, as PyTorch

@pytest.mark.parametrize("be", on(*BACKENDS))
def test_relu_backward_is_threshold_backward(be):
    """0 where x <= 0, else dy: NumPy computed dy * (x > 0), so inf * 0 = NaN; a NaN x passes dy (PyTorch)."""
    dy = np.array([np.inf, np.nan, 1, 3, -np.inf, 7], F32)
    x = np.array([-1, 0, 2, np.nan, -0.0, np.inf], F32)
    got = be.host(be.run("relu_backward", dy, x))
    np.testing.assert_array_equal(got, np.array([0, 0, 1, 3, 0, 7], F32))
    np.testing.assert_array_equal(be.host(be.run("relu", x)), np.array([0, 0, 2, np.nan, 0, np.inf], F32))


# (x shape, w shape): the cupy backend's direct first-layer kernel, its tap-ordered and general GEMMs, split-K
FUSED_RELU_SHAPES = [((1, 1, 6, 6), (2, 1, 3, 3)), ((1, 16, 3, 3), (4, 16, 1, 1)), ((1, 3, 5, 5), (4, 3, 2, 2)),
                     ((2, 16, 4, 4), (2, 16, 3, 3))]


@pytest.mark.parametrize("xs,ws", FUSED_RELU_SHAPES)
@pytest.mark.parametrize("be", on(*BACKENDS))
def test_fused_relu_keeps_nan(be, xs, ws):
    """conv2d_relu's fused epilogue used fmaxf(v, 0), which turns NaN into 0 (cupy); relu(NaN) is NaN."""
    x, w = r(*xs, seed=1), r(*ws, seed=2)
    x[0, 0, 1, 1] = np.nan
    got, want = be.host(be.run("conv2d_relu", x, w, None, 1, 1)), np.maximum(ref("conv2d", x, w, None, 1, 1), 0)
    assert np.isnan(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert_close(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-4, atol=1e-4)
    # the fused ReLU mask of the data gradient passes dy where x is NaN, as relu_backward does
    dy = r(*want.shape, seed=3)
    xm = np.abs(x)
    xm[0, 0, 0, 0] = -1.0
    dx = be.host(be.run("conv2d_backward", dy, xm, w, 1, 1, relu_mask=True)[0])
    want_dx = ref("relu_backward", ref("conv2d_backward", dy, xm, w, 1, 1)[0], xm)
    assert dx[0, 0, 0, 0] == 0 and np.isnan(want_dx).sum() == np.isnan(dx).sum()


# --------------------------------------------------------------------------- 9. 0-d arrays

@pytest.mark.parametrize("be", on(*BACKENDS))
def test_zero_d_arrays_keep_their_shape(be):
    """Numba returned shape (1,) for a 0-d relu input (np.ascontiguousarray makes it 1-D)."""
    x, y = np.array(-2.0, F32), np.array(3.0, F32)
    assert be.host(be.run("relu", x)).shape == ()
    assert be.host(be.run("relu_backward", y, y)).shape == ()
    assert be.host(be.run("add", x, y)).shape == ()
    assert be.host(be.device(x)).shape == ()


# --------------------------------------------------------------------------- 10. dropout seeds

@pytest.mark.parametrize("be", on(*BACKENDS))
def test_dropout_seed_checked(be, no_dispatch):
    """seed=-1 was numpy's own ValueError on NumPy and accepted elsewhere; seed=1.7 truncated to 1."""
    x = np.ones((4, 4), F32)
    for seed, exc in ((-1, ValueError), (2**64, ValueError), (1.7, TypeError), (True, TypeError), ("3", TypeError)):
        with pytest.raises(exc, match=r"dropout seed must be None or an int in \[0, 2\*\*64\)"):
            be.run("dropout", x, 0.5, seed=seed)
    with pytest.raises(TypeError, match="dropout seed"):
        be.run("dropout", x, 0.5, training=False, seed=1.5)  # checked in eval mode too, as p is


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_dropout_seed_range(be):
    x = np.ones((8, 8), F32)
    for seed in (0, 2**64 - 1, np.uint64(5), np.int8(3)):
        m1, m2 = (be.host(be.run("dropout", x, 0.5, seed=seed)[1]) for _ in range(2))
        assert_close(m1, m2, **EXACT, name=f"mask of seed {seed!r}")
        assert set(np.unique(m1)) <= {0.0, 2.0}


# --------------------------------------------------------------------------- 11. strides wider than the input

@pytest.mark.parametrize("be", on(*BACKENDS))
def test_huge_stride(be):
    """Stride 2^40 on a 3x3 input is a 1x1 output (PyTorch); NumPy asked for 24 TiB (its planes were padded by
    the stride). The cupy backend refuses a stride past its 32-bit arguments instead."""
    x, w = r(1, 2, 3, 3, seed=4), r(2, 2, 3, 3, seed=5)
    if be.name == "cupy":
        with pytest.raises(ValueError, match="32-bit"):
            be.run("conv2d", x, w, None, 2**40)
        return
    want = np.einsum("nchw,kchw->nk", x.astype(np.float64), w)[:, :, None, None]
    assert_close(be.host(be.run("conv2d", x, w, None, 2**40)), want, rtol=1e-5, atol=1e-5)
    dy = r(1, 2, 1, 1, seed=6)
    dx, dw, _ = (be.host(g) for g in be.run("conv2d_backward", dy, x, w, 2**40))
    assert_close(dx, np.einsum("nk,kchw->nchw", dy[:, :, 0, 0], w), rtol=1e-5, atol=1e-5)
    assert_close(dw, np.einsum("nk,nchw->kchw", dy[:, :, 0, 0], x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("be", on("numpy", "numba"))
def test_huge_padding_with_huge_stride_is_the_small_problem(be):
    """Padding p and stride p on a 3x3 input (3x3 kernel) reach the input with the middle window only, for any
    p >= 3: p = 2^30 must give what p = 5 gives, without a (2^31)^2 padded plane."""
    x, w, b = r(2, 2, 3, 3, seed=7), r(3, 2, 3, 3, seed=8), r(3, seed=9)
    small, huge = ref("conv2d", x, w, b, 5, 5), be.host(be.run("conv2d", x, w, b, 2**30, 2**30))
    assert_close(huge, small, rtol=1e-5, atol=1e-5)
    dy = r(*small.shape, seed=10)
    for got, want in zip(be.run("conv2d_backward", dy, x, w, 2**30, 2**30), ref("conv2d_backward", dy, x, w, 5, 5)):
        assert_close(be.host(got), want, rtol=1e-5, atol=1e-5)


def test_numpy_strided_conv_matches_the_oracle_where_windows_leave_gaps():
    """The NumPy backend gathers the rows and columns windows read when the stride exceeds the kernel; against
    the loop oracle on gapped, padded, non-square cases, forward and backward."""
    import oracle as O
    for (xs, ws, stride, pads) in (((2, 2, 7, 9), (3, 2, 2, 1), (3, 2), (1, 2)), ((1, 1, 5, 5), (2, 1, 1, 1), (2, 2), (0, 0)),
                                   ((1, 3, 6, 4), (2, 3, 3, 2), (4, 3), (2, 1))):
        x, w, b = r(*xs, seed=11).astype(np.float64), r(*ws, seed=12).astype(np.float64), r(ws[0], seed=13).astype(np.float64)
        pp = (pads[0], pads[0], pads[1], pads[1])
        y = F.conv2d(x, w, b, stride, pads)
        assert_close(y, O.conv2d(x, w, b, stride, pp), rtol=1e-10, atol=1e-10)
        dy = r(*y.shape, seed=14).astype(np.float64)
        dx, dw, db = F.conv2d_backward(dy, x, w, stride, pads)
        for got, want in zip((dx, dw, db), O.conv2d_backward(dy, x, w, stride, pp)):
            assert_close(got, want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- 13. batch norm with a negative variance

@pytest.mark.parametrize("be", on(*BACKENDS))
def test_batch_norm_negative_running_variance_is_nan(be):
    """Numba raised "math domain error" (the simulator's math.sqrt) where a GPU, NumPy and PyTorch give NaN."""
    x = r(3, 2)
    y, _, invstd = be.run("batch_norm", x, np.zeros(2, F32), np.array([-1, 1], F32), training=False)
    y, invstd = be.host(y), be.host(invstd)
    assert np.isnan(invstd[0]) and np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1]).all()


# --------------------------------------------------------------------------- found by the project's own fuzz

@pytest.mark.parametrize("be", on(*BACKENDS))
def test_batch_norm_backward_needs_its_saved_statistics(be, no_dispatch):
    """save_mean / save_invstd of None went through the check: a segfault on cupy, an IndexError in a numba
    kernel, an AttributeError in NumPy."""
    x = r(2, 3)
    for saved in ((None, np.ones(3, F32)), (np.ones(3, F32), None)):
        with pytest.raises(TypeError, match="batch_norm_backward needs save_(mean|invstd), the array batch_norm"):
            be.run("batch_norm_backward", x, x, np.ones(3, F32), *saved)


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_empty_arrays_with_huge_scales(be):
    """An empty upsample with a scale of 2^40 is empty (NumPy built a (h, sh, w, sw) view NumPy cannot hold);
    an empty output whose nonzero dimensions span more than an array can address is refused, not crashed on."""
    assert be.host(be.run("upsample_nearest2d", np.zeros((1, 2, 0, 3), F32), 2**40)).shape == (1, 2, 0, 3 * 2**40)
    assert be.host(be.run("upsample_nearest2d_backward", np.zeros((1, 1, 0, 0), F32), 2**40)).shape == (1, 1, 0, 0)
    with pytest.raises(ValueError, match="whose nonzero dimensions span"):
        be.run("upsample_nearest2d", np.zeros((0, 1, 1, 4), F32), (2**40, 2**40))
    with pytest.raises(ValueError, match="whose nonzero dimensions span"):
        be.run("conv2d", np.zeros((1, 2, 5, 3), F32), np.zeros((0, 2, 2, 2), F32), None, 1, 2**30)


# (dy, x, w, stride, padding) -> the definition's (PyTorch CPU's) dx or dw, where an infinity or NaN meets
# the padding or a strided gap: the NumPy backend's correlation and padded-width tricks multiplied zeros by them
NONFINITE_BACKWARD = [
    ("dx", [[[[0.5]]]], np.zeros((1, 1, 2, 1)), [[[[np.nan], [1]]]], 1, 0, [np.nan, 0.5]),
    ("dx", np.ones((1, 1, 1, 2)), np.zeros((1, 1, 1, 3)), [[[[np.inf, 1]]]], 1, 0, [np.inf, np.inf, 1]),
    ("dx", np.ones((1, 1, 1, 2)), np.zeros((1, 1, 1, 3)), [[[[np.inf]]]], 2, 0, [np.inf, 0, np.inf]),
    ("dw", np.ones((1, 1, 1, 1)), [[[[np.inf]]]], np.zeros((1, 1, 1, 3)), 1, (0, 1), [0, np.inf, 0]),
    ("dw", [[[[np.inf]]]], [[[[1.0]]]], np.zeros((1, 1, 1, 3)), 1, (0, 1), [np.nan, np.inf, np.nan]),
]


@pytest.mark.parametrize("which,dy,x,w,stride,padding,want", NONFINITE_BACKWARD)
def test_numpy_conv_backward_with_infinities_follows_the_definition(which, dy, x, w, stride, padding, want):
    dy, x, w = (np.asarray(a, np.float64) for a in (dy, x, w))
    dx, dw, _ = F.conv2d_backward(dy, x, w, stride, padding)
    np.testing.assert_array_equal((dx if which == "dx" else dw).ravel(), np.array(want, np.float64))
