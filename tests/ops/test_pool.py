"""The pool family (max_pool2d, relu_max_pool2d, avg_pool2d and their backwards; kernels/pool.cu,
gpucnn/backends/*/pool.py) on every backend.

NumPy against the loop oracle of tests/oracle.py (float32 and float64, plus float64 central differences),
Numba (simulator) and CuPy (emulator) against NumPy. Max pooling reads distinct values (no ties) or few
values (many ties: the first maximum of a window wins, row-major, as in PyTorch).
"""
import re

import numpy as np
import pytest

import oracle as O
from helpers import BACKENDS, EMU, HOST, SIM, assert_close, check_grad, grid, on, ref

F32, F64 = np.float32, np.float64
DTYPES = {"numpy": (F32, F64), "numba": (F32,), "cupy": (F32,)}
# against the float64 oracle: float32 loosely, float64 tightly; against the NumPy backend: as it computes
ORACLE_TOL = {F32: dict(rtol=1e-4, atol=1e-4), F64: dict(rtol=1e-10, atol=1e-10)}
BACKEND_TOL = {F32: dict(rtol=1e-5, atol=1e-6), F64: dict(rtol=1e-12, atol=1e-12)}
GRAD = dict(rtol=1e-6, atol=1e-7)  # float64 central differences
EXACT = dict(rtol=0, atol=0)


def case_id(shape, k, s):
    return f"{'x'.join(map(str, shape))}_k{k}_s{s}".replace(" ", "")


def cases(*rows):
    return {case_id(*c): (c, backends, *own) for c, backends, *own in rows}


# (x shape, kernel, stride (None: = kernel)): odd and non-divisible sizes (floor leftovers), N=1, C=1,
# square and non-square windows, strides 1-3, overlapping and gapped windows, a window = the whole plane
POOL_CASES = cases(
    (((1, 1, 4, 4), 2, None), SIM),
    (((2, 3, 5, 7), 2, None), HOST),          # floor: last row/col unused
    (((1, 2, 6, 6), 3, 2), HOST),             # overlapping windows
    (((2, 1, 7, 5), (2, 3), (1, 2)), HOST),
    (((1, 1, 5, 5), 3, 1), HOST),
    (((1, 2, 4, 6), (1, 2), None), HOST),
    (((1, 1, 3, 3), 3, None), HOST),          # one window = whole plane
    (((2, 2, 9, 8), 3, 3), HOST),
    (((1, 1, 8, 7), 2, 3), HOST),             # stride > kernel: gaps
    (((1, 1, 1, 6), (1, 3), (1, 2)), HOST),
    (((2, 3, 7, 9), 3, 2), SIM),
    (((1, 2, 8, 7), (2, 3), 1), SIM),
    (((2, 1, 9, 8), 3, 3), SIM),
    (((1, 3, 5, 6), (3, 2), (2, 1)), SIM),
    (((2, 2, 3, 3), 3, 1), SIM),
    (((1, 2, 7, 5), 2, 3), SIM),
    (((1, 2, 5, 7), 2, 2), SIM, {"numba": (F32, F64)}),  # numba specializes per dtype
    (((1, 2, 5, 7), 3, 2), SIM, {"numba": (F32, F64)}),
    (((1, 1, 2, 2), 2, None), EMU),
    (((2, 3, 7, 7), 2, None), EMU),
    (((1, 2, 9, 6), 3, 2), EMU),
    (((2, 2, 8, 11), (2, 3), (1, 2)), EMU),
    (((1, 3, 10, 9), (3, 2), (3, 3)), EMU),
    (((3, 1, 5, 5), 1, None), EMU),
    (((2, 4, 13, 12), 2, 1), EMU),            # 2*4*12*11 = 1056 outputs: more than one 256-thread block
    (((1, 1, 6, 5), (4, 5), 1), EMU),
    # windows that do not overlap (cupy: max_pool_bwd_disjoint), with rows and columns no window covers
    (((2, 2, 11, 10), 3, 3), EMU),            # leftover rows 9-10, column 9
    (((1, 2, 9, 13), (2, 3), (3, 4)), EMU),   # stride > window in both: gap rows/columns, then leftovers
    (((1, 2, 5, 522), 2, None), EMU),         # Q = 261: more than one block along a row of windows
)
# many equal maxima per window: the cases of POOL_CASES the simulator also runs with ties, and one more
TIE_CASES = {**{cid: (c, be if be != SIM else EMU, *own) for cid, (c, be, *own) in POOL_CASES.items()},
             **cases((((2, 2, 7, 7), 3, 2), SIM))}
# float64 central differences, on the NumPy backend: the small inputs (round-off grows with the sum of a large one)
FD_CASES = {cid: (c, HOST) for cid, (c, _, *_) in POOL_CASES.items() if np.prod(c[0]) <= 300}


def distinct(rng, shape, dtype):
    """Distinct values 0.25 apart (a shuffled arange): no ties in max pooling, FD-safe (eps << gap)."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size / 2) * 0.25).reshape(shape).astype(dtype)


def few(rng, shape, dtype):
    """Few distinct values: many windows hold their maximum more than once."""
    return rng.integers(-2, 3, shape).astype(dtype)


def normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def tol(be, dtype):
    return ORACLE_TOL[dtype] if be.reference else BACKEND_TOL[dtype]


def check_max_pool(be, case, dtype, x, rng):
    shape, k, s = case
    y, idx = be.run("max_pool2d", x, k, s, return_indices=True)
    if be.reference:
        y_want, idx_want = O.max_pool2d(x, k, s)
    else:
        y_want, idx_want = ref("max_pool2d", x, k, s, return_indices=True)
    y_got, idx_got = be.host(y), be.host(idx)
    assert y_got.dtype == dtype and idx_got.dtype == np.int64
    assert_close(y_got, y_want, **EXACT, name="y")
    assert_close(idx_got, idx_want, **EXACT, name="indices")
    assert_close(be.host(be.run("max_pool2d", x, k, s)), y_want, **EXACT, name="y without indices")

    dy = normal(rng, y_want.shape, dtype)
    want = O.max_pool2d_backward(dy, x, k, s) if be.reference else ref("max_pool2d_backward", dy, x, k, s,
                                                                      indices=idx_want)
    variants = {"own indices": idx, "recomputed": None, "host indices": idx_want}
    if be.name == "cupy":  # int32 indices: the <int> instance; other integer types: converted to int64
        variants.update({"int32 indices": idx_got.astype(np.int32), "int16 indices": idx_got.astype(np.int16)})
    for what, indices in variants.items():
        dx = be.host(be.run("max_pool2d_backward", dy, x, k, s, indices=indices))
        assert dx.dtype == dtype
        assert_close(dx, want, **tol(be, dtype), name=f"dx ({what})")


@pytest.mark.parametrize("be,case,dtype", grid(POOL_CASES, DTYPES))
def test_max_pool2d(be, case, dtype):
    rng = np.random.default_rng(4)
    check_max_pool(be, case, dtype, distinct(rng, case[0], dtype), rng)


@pytest.mark.parametrize("be,case,dtype", grid(TIE_CASES, {"numpy": (F64,), "numba": (F32,), "cupy": (F32,)}))
def test_max_pool2d_ties_go_to_first_max(be, case, dtype):
    rng = np.random.default_rng(5)
    check_max_pool(be, case, dtype, few(rng, case[0], dtype), rng)


@pytest.mark.parametrize("be", on(*SIM))
def test_max_pool2d_ties_row_major_first_max_wins(be):
    x = np.array([[1, 3, 3, 0],
                  [3, 2, 3, 3],
                  [0, 3, 1, 3]], F32)[None, None]
    y, idx = be.run("max_pool2d", x, 2, 1, return_indices=True)
    assert_close(be.host(y)[0, 0], [[3, 3, 3], [3, 3, 3]], **EXACT)
    assert_close(be.host(idx)[0, 0], [[1, 1, 2], [4, 6, 6]], **EXACT)  # row-major first maximum
    dy = normal(np.random.default_rng(4), (1, 1, 2, 3), F32)
    assert_close(be.host(be.run("max_pool2d_backward", dy, x, 2, 1)), O.max_pool2d_backward(dy, x, 2, 1),
                 **BACKEND_TOL[F32])


@pytest.mark.parametrize("be", on(*SIM))
def test_max_pool2d_nan_known_values(be):
    """The fuzz's reproducer: window [1, nan, 3, 2] gives NaN at index 1 (PyTorch), not 3 at index 2 or NaN at
    index 0; with two NaNs the last one's index (3); the gradient goes there."""
    for values, at in (([1, np.nan, 3, 2], 1), ([1, np.nan, 3, np.nan], 3), ([np.nan, 5, 6, 7], 0)):
        x = np.array(values, F32).reshape(1, 1, 2, 2)
        for op in ("max_pool2d", "relu_max_pool2d"):
            y, idx = be.run(op, x, 2, return_indices=True)
            assert np.isnan(be.host(y)).all() and be.host(idx).ravel().tolist() == [at], (op, values)
        dx = be.host(be.run("max_pool2d_backward", np.full((1, 1, 1, 1), 5, F32), x, 2))
        assert dx.ravel().tolist() == [5.0 if i == at else 0.0 for i in range(4)], values


@pytest.mark.parametrize("k,s", [(2, 2), (2, 1), (3, 2)])  # disjoint windows (cupy's own kernel), overlapping
@pytest.mark.parametrize("be", on(*SIM))
def test_max_pool2d_nan_as_pytorch(be, k, s):
    """NaN against the loop oracle (PyTorch's rule), forward and backward, max_pool2d and relu_max_pool2d
    (relu(NaN) is NaN): windows with one NaN, two NaNs, NaN beside -inf, and windows without."""
    x = distinct(np.random.default_rng(16), (1, 2, 5, 5), F32)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan
    x[0, 1, 3, 3] = np.nan
    x[0, 1, 2, 2] = x[0, 1, 2, 3] = -np.inf
    for op, xin in (("max_pool2d", x), ("relu_max_pool2d", O.relu(x))):
        y, idx = be.run(op, x, k, s, return_indices=True)
        y_want, idx_want = O.max_pool2d(xin, k, s)
        assert np.isnan(y_want).sum() >= 2
        np.testing.assert_array_equal(be.host(y), y_want.astype(F32), err_msg=f"{op} y")
        np.testing.assert_array_equal(be.host(idx), idx_want, err_msg=f"{op} indices")
    dy = np.arange(1.0, 1.0 + y_want.size, dtype=F32).reshape(y_want.shape)
    want = O.max_pool2d_backward(dy, x, k, s)
    _, idx = be.run("max_pool2d", x, k, s, return_indices=True)
    for what, indices in (("recomputed", None), ("own indices", idx)):
        assert_close(be.host(be.run("max_pool2d_backward", dy, x, k, s, indices=indices)), want, **EXACT,
                     name=f"dx ({what})")


@pytest.mark.parametrize("be", on(*SIM))
def test_max_pool2d_backward_uses_given_indices(be):
    """Passed indices replace the search: dy goes where they point, even if that is not the max."""
    x = distinct(np.random.default_rng(31), (1, 2, 4, 4), F32)
    dy = np.arange(1.0, 9.0, dtype=F32).reshape(1, 2, 2, 2)
    idx = np.array([[[[0, 3], [12, 15]], [[5, 6], [9, 10]]]])  # window corners / window centres
    dx = be.host(be.run("max_pool2d_backward", dy, x, 2, indices=be.device(idx)))
    expected = np.zeros((1, 2, 16))
    for c in range(2):
        for p in range(2):
            for q in range(2):
                expected[0, c, idx[0, c, p, q]] += dy[0, c, p, q]
    assert_close(dx, expected.reshape(1, 2, 4, 4), **EXACT)


@pytest.mark.parametrize("be,case,dtype", grid(POOL_CASES, DTYPES))
def test_relu_max_pool2d(be, case, dtype):
    """max_pool2d(relu(x)) in one op, indices those of max_pool2d on relu(x)."""
    shape, k, s = case
    x = distinct(np.random.default_rng(9), shape, dtype)
    x.flat[::3] = -np.abs(x.flat[::3])  # plenty of negative values, some all-negative windows
    y, idx = be.run("relu_max_pool2d", x, k, s, return_indices=True)
    if be.reference:
        y_want, idx_want = O.max_pool2d(O.relu(x), k, s)
    else:
        y_want, idx_want = ref("relu_max_pool2d", x, k, s, return_indices=True)
    assert_close(be.host(y), y_want, **EXACT, name="y")
    assert_close(be.host(idx), idx_want, **EXACT, name="indices")


@pytest.mark.parametrize("be,case,dtype", grid(POOL_CASES, DTYPES))
def test_avg_pool2d(be, case, dtype):
    shape, k, s = case
    rng = np.random.default_rng(7)
    x = normal(rng, shape, dtype)
    want = O.avg_pool2d(x, k, s) if be.reference else ref("avg_pool2d", x, k, s)
    y = be.host(be.run("avg_pool2d", x, k, s))
    assert y.dtype == dtype
    assert_close(y, want, **tol(be, dtype), name="avg_pool2d")
    dy = normal(rng, want.shape, dtype)
    want = O.avg_pool2d_backward(dy, x, k, s) if be.reference else ref("avg_pool2d_backward", dy, x, k, s)
    dx = be.host(be.run("avg_pool2d_backward", dy, x, k, s))
    assert dx.dtype == dtype
    assert_close(dx, want, **tol(be, dtype), name="avg_pool2d dx")


@pytest.mark.parametrize("be,case", grid(FD_CASES))
def test_max_pool2d_grad_fd(be, case):
    shape, k, s = case
    rng = np.random.default_rng(6)
    x = distinct(rng, shape, F64)
    y, idx = be.run("max_pool2d", x, k, s, return_indices=True)
    dy = normal(rng, y.shape, F64)
    pool = lambda x_: be.run("max_pool2d", x_, k, s)
    check_grad(pool, [x], 0, be.run("max_pool2d_backward", dy, x, k, s), dy, **GRAD, name="dx (search)")
    check_grad(pool, [x], 0, be.run("max_pool2d_backward", dy, x, k, s, indices=idx), dy, **GRAD,
               name="dx (indices)")


@pytest.mark.parametrize("be,case", grid(FD_CASES))
def test_avg_pool2d_grad_fd(be, case):
    shape, k, s = case
    rng = np.random.default_rng(8)
    x = normal(rng, shape, F64)
    dy = normal(rng, be.run("avg_pool2d", x, k, s).shape, F64)
    check_grad(lambda x_: be.run("avg_pool2d", x_, k, s), [x], 0, be.run("avg_pool2d_backward", dy, x, k, s), dy,
               **GRAD)


# --------------------------------------------------------------------------- cupy: the backward's two kernels

# (kernel, stride) -> the max-pool backward kernel: windows that do not overlap (stride >= window in both
# dimensions) run one thread per pooled output, overlapping ones the general gather per input element
BWD_KERNELS = [((2, 2), None, "max_pool_bwd_disjoint"), ((3, 3), None, "max_pool_bwd_disjoint"),
               ((2, 3), (3, 4), "max_pool_bwd_disjoint"), ((1, 1), None, "max_pool_bwd_disjoint"),
               ((1, 2), (5, 2), "max_pool_bwd_disjoint"),
               ((3, 3), (2, 2), "max_pool_bwd"), ((2, 3), (1, 2), "max_pool_bwd"), ((3, 2), (3, 1), "max_pool_bwd"),
               ((2, 2), (1, 2), "max_pool_bwd")]


@pytest.mark.parametrize("k,s,kernel", BWD_KERNELS, ids=[f"k{k}_s{s}".replace(" ", "") for k, s, _ in BWD_KERNELS])
@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_max_pool_backward_kernel_choice(be, k, s, kernel, cupy_launches):
    """The backward picks its kernel by overlap, for both index types, and both give NumPy's dx (ties too)."""
    rng = np.random.default_rng(12)
    x = few(rng, (2, 3, 10, 11), F32)
    y, idx = ref("max_pool2d", x, k, s, return_indices=True)
    dy = normal(rng, y.shape, F32)
    want = ref("max_pool2d_backward", dy, x, k, s, indices=idx)
    for itype, c_type in ((np.int64, "long long"), (np.int32, "int")):
        cupy_launches.clear()
        dx = be.host(be.run("max_pool2d_backward", dy, x, k, s, indices=idx.astype(itype)))
        assert cupy_launches == [f"{kernel}<{c_type}>"]
        assert_close(dx, want, **BACKEND_TOL[F32], name=f"dx ({c_type} indices)")


@pytest.mark.parametrize("shape", [(2, 3, 21, 129), (8, 10, 6, 7)], ids=["rows", "planes"])
@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_max_pool_backward_disjoint_grid_stride(be, shape, monkeypatch):
    """max_pool_bwd_disjoint with gridDim.y and gridDim.z capped at 2 (as the caps at 65535 leave a huge
    input): its grid-stride loops over window rows (21x129: 10 rows, 4 a block) and planes (80 planes,
    28 a block) still write every element of dx, leftover row and column included."""
    from gpucnn.backends.cupy import _runtime, pool
    monkeypatch.setattr(pool, "MAX_GRID_YZ", 2)
    launched = []
    real = _runtime.Family.launch
    monkeypatch.setattr(_runtime.Family, "launch",
                        lambda self, name, grid, block, args: (launched.append((name, grid, block)),
                                                               real(self, name, grid, block, args))[1])
    rng = np.random.default_rng(13)
    x = distinct(rng, shape, F32)
    y, idx = ref("max_pool2d", x, 2, None, return_indices=True)
    dy = normal(rng, y.shape, F32)
    dx = be.host(be.run("max_pool2d_backward", dy, x, 2, indices=idx))
    assert_close(dx, ref("max_pool2d_backward", dy, x, 2, indices=idx), **EXACT)
    (name, grid, block), = launched
    planes, p, q = shape[0] * shape[1], shape[2] // 2, shape[3] // 2
    assert name == "max_pool_bwd_disjoint<long long>" and max(grid[1:]) <= 2
    assert grid[1] * block[1] < p or grid[2] * block[2] < planes  # the loop it exercises takes > 1 trip


@pytest.mark.parametrize("be", on("numba", "cupy"))
def test_device_indices_outside_their_window_are_dropped_and_recorded(be):
    """The one rule: an index must lie in its own window. Device indices are not read back, so the kernels
    define dx as a gather over the windows containing each element: an index pointing outside its own
    window (into the gap after it, or into another window) sends its dy nowhere, and the first one is
    recorded for check_index_errors (which then raises, and is clean after its reset)."""
    x = distinct(np.random.default_rng(14), (1, 1, 6, 6), F32)
    for k, s in (((2, 2), (3, 3)), ((2, 2), (2, 2)), ((2, 2), (1, 1))):  # gaps, tiling, overlapping
        y, idx = ref("max_pool2d", x, k, s, return_indices=True)
        dy = np.arange(1.0, 1.0 + y.size, dtype=F32).reshape(y.shape)
        # the first four windows (row-major) point at (2, 1), (0, 5), (0, 0), (2, 2): none in its own window; at
        # stride 3 a gap row (in a window's columns), a gap column (in a window's row), another window, a gap
        bad = idx.copy()
        bad.flat[:4] = [2 * 6 + 1, 5, 0, 2 * 6 + 2]
        want = ref("max_pool2d_backward", dy, x, k, s, indices=idx).reshape(-1)
        np.subtract.at(want, idx.flat[:4], dy.flat[:4])  # small integers: exact
        be.run("check_index_errors")  # clean record
        got = be.host(be.run("max_pool2d_backward", dy, x, k, s, indices=be.device(bad))).reshape(-1)
        assert_close(got, want, **EXACT, name=f"dx (window {k}, stride {s})")
        with pytest.raises(ValueError, match=r"met index (\d+) at position ([0-3]) of the pooled output") as e:
            be.run("check_index_errors")
        at, index = (int(v) for v in re.search(r"index (\d+) at position (\d+)", str(e.value)).groups()[::-1])
        assert bad.flat[at] == index, (at, index)
        be.run("check_index_errors")  # reset by the read: clean again
        be.run("max_pool2d_backward", dy, x, k, s, indices=be.device(idx))  # max_pool2d's own: nothing recorded
        be.run("check_index_errors")


@pytest.mark.parametrize("be", on(*BACKENDS))
def test_host_indices_outside_their_window_are_refused(be):
    """Host indices are checked before any kernel, on every backend: an index outside its window (in range)
    is a ValueError naming it, as one out of range is."""
    x = distinct(np.random.default_rng(15), (1, 2, 5, 5), F32)
    _, idx = ref("max_pool2d", x, 2, 2, return_indices=True)
    dy = np.ones((1, 2, 2, 2), F32)
    bad = idx.copy()
    bad[0, 1, 1, 0] = 0  # window (1, 0) of plane 1 covers rows 2..3, columns 0..1
    with pytest.raises(ValueError, match=r"indices\[0, 1, 1, 0\] = 0 \(row 0, column 0\) is outside its window, "
                                         r"rows 2..3 and columns 0..1"):
        be.run("max_pool2d_backward", dy, x, 2, 2, indices=bad)
    bad[0, 1, 1, 0] = 2 * 5 + 4  # the column after the window (a leftover column): outside too
    with pytest.raises(ValueError, match="outside its window"):
        be.run("max_pool2d_backward", dy, x, 2, 2, indices=bad)


# --------------------------------------------------------------------------- cupy: refusals of the launchers

@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_pool_refuses_float64_and_strided_inputs(be, op):
    x = normal(np.random.default_rng(1), (2, 3, 8, 8), F32)
    with pytest.raises(TypeError, match="float32"):
        be.run(op, x.astype(F64), 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run(op, be.device(np.ones((2, 3, 8, 16), F32))[..., ::2], 2)
    dy = np.ones((2, 3, 4, 4), F32)
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run(f"{op}_backward", be.device(np.ones((2, 3, 4, 8), F32))[..., ::2], x, 2)
    with pytest.raises(TypeError, match="float32"):
        be.run(f"{op}_backward", dy.astype(F64), x.astype(F64), 2)


@pytest.mark.parametrize("be", on("cupy"))
def test_cupy_max_pool_backward_refuses_strided_indices(be):
    x = normal(np.random.default_rng(1), (1, 2, 4, 4), F32)
    dy = np.ones((1, 2, 2, 2), F32)
    idx = be.device(np.zeros((1, 2, 2, 4), np.int64))[..., ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        be.run("max_pool2d_backward", dy, x, 2, indices=idx)
