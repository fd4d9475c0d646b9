"""Elementwise and data-movement kernels: relu, add, nearest upsampling, concat, dropout.

Kernels (kernels/elementwise.cu's names where they do the same job): `relu_fwd`, `relu_bwd`,
`add_fwd`, `mul_fwd` (dropout's backward), `upsample_nearest_fwd`, `upsample_nearest_bwd`,
`dropout_fwd` (with `seed_states`: its xoroshiro128+ states seeded on the device; elementwise.cu's
dropout is a stateless counter-based hash instead), and concat's channel copies `copy_channels`
and `slice_channels` (elementwise.cu's copy_rows does both).

Every kernel runs one thread per output element with a grid-stride loop, the
geometry coming from `_common.grid_1d` (computed once per launch, in the
launcher). Arrays are viewed flat (1-D) or as (planes, H, W) with planes =
N*C; each kernel bounds-checks through its loop limit.

Float32 discipline: kernels never mix an array value with a Python float or
int (Numba would widen the expression to float64). A typed zero comes from the
array itself (`zero = y.dtype.type(0)`, float32 for float32 arrays, float64 for
float64 ones); scale factors such as dropout's 1/(1-p) are computed on the host
in the array's dtype and passed as kernel arguments.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, uint32, uint64
from numba.cuda.random import xoroshiro128p_dtype, xoroshiro128p_next

from .._base import register
from . import _common

B = "numba"

SPLITMIX_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (2**64 / golden ratio)


# --------------------------------------------------------------------------- kernels

@cuda.jit(cache=True)
def relu_fwd(x, y):
    """y[i] = max(x[i], 0) for flat arrays; NaN passes through (as np.maximum)."""
    zero = y.dtype.type(0)
    start = cuda.grid(1)
    for i in range(start, y.size, cuda.gridsize(1)):
        v = x[i]
        if v <= zero:
            y[i] = zero
        else:
            y[i] = v


@cuda.jit(cache=True)
def relu_bwd(dy, x, dx):
    """dx[i] = 0 where x[i] <= 0, else dy[i] (x may be relu's input or its output; a NaN x passes dy, as
    PyTorch's threshold_backward)."""
    zero = dx.dtype.type(0)
    start = cuda.grid(1)
    for i in range(start, dx.size, cuda.gridsize(1)):
        if x[i] <= zero:
            dx[i] = zero
        else:
            dx[i] = dy[i]


@cuda.jit(cache=True)
def add_fwd(a, b, c):
    """c[i] = a[i] + b[i] for flat arrays of one size."""
    start = cuda.grid(1)
    for i in range(start, c.size, cuda.gridsize(1)):
        c[i] = a[i] + b[i]


@cuda.jit(cache=True)
def mul_fwd(a, b, c):
    """c[i] = a[i] * b[i] for flat arrays of one size (dropout's backward: dy * mask)."""
    start = cuda.grid(1)
    for i in range(start, c.size, cuda.gridsize(1)):
        c[i] = a[i] * b[i]


@cuda.jit(cache=True)
def upsample_nearest_fwd(x, y, sh, sw):
    """y (planes, H*sh, W*sw) from x (planes, H, W): y[p, i, j] = x[p, i // sh, j // sw].

    One thread per output element: the flat output index is split into (p, i, j).
    """
    planes, hh, ww = y.shape
    start = cuda.grid(1)
    for t in range(start, planes * hh * ww, cuda.gridsize(1)):
        j = t % ww
        i = (t // ww) % hh
        p = t // (ww * hh)
        y[p, i, j] = x[p, i // sh, j // sw]


@cuda.jit(cache=True)
def upsample_nearest_bwd(dy, dx, sh, sw):
    """dx (planes, H, W) from dy (planes, H*sh, W*sw): each dx element sums its sh x sw block of dy.

    One thread per dx element; the block is summed in row-major order.
    """
    planes, h, w = dx.shape
    start = cuda.grid(1)
    for t in range(start, planes * h * w, cuda.gridsize(1)):
        c = t % w
        r = (t // w) % h
        p = t // (w * h)
        acc = dx.dtype.type(0)
        for a in range(sh):
            for b in range(sw):
                acc += dy[p, r * sh + a, c * sw + b]
        dx[p, r, c] = acc


@cuda.jit(cache=True)
def copy_channels(src, dst, offset):
    """dst[n, offset + c, k] = src[n, c, k]: one concat input (N, Cs, H*W) into the output (N, C, H*W)."""
    n_, cs, hw = src.shape
    start = cuda.grid(1)
    for t in range(start, n_ * cs * hw, cuda.gridsize(1)):
        k = t % hw
        c = (t // hw) % cs
        n = t // (hw * cs)
        dst[n, offset + c, k] = src[n, c, k]


@cuda.jit(cache=True)
def slice_channels(src, dst, offset):
    """dst[n, c, k] = src[n, offset + c, k]: one piece (N, Cd, H*W) of concat's gradient (N, C, H*W)."""
    n_, cd, hw = dst.shape
    start = cuda.grid(1)
    for t in range(start, n_ * cd * hw, cuda.gridsize(1)):
        k = t % hw
        c = (t // hw) % cd
        n = t // (hw * cd)
        dst[n, c, k] = src[n, offset + c, k]


@cuda.jit(device=True, cache=True)
def splitmix64_mix(z):
    """SplitMix64's output function of its counter z (uint64): a well-mixed uint64."""
    z = (z ^ (z >> uint32(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint32(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint32(31))


@cuda.jit(cache=True)
def seed_states(states, seed):
    """Seed one xoroshiro128+ state per thread of a launch, on the device.

    states[i] gets outputs 2i and 2i+1 of the SplitMix64 sequence started at
    `seed` (uint64), the seeding xoroshiro's authors recommend: distinct,
    well-mixed states for every thread, without numba.cuda.random's host-side
    jump-ahead (2**64 steps per state, on the CPU, then a copy to the device).
    """
    gamma = uint64(SPLITMIX_GAMMA)
    start = cuda.grid(1)
    for i in range(start, states.size, cuda.gridsize(1)):
        states[i]["s0"] = splitmix64_mix(seed + uint64(2 * i + 1) * gamma)
        states[i]["s1"] = splitmix64_mix(seed + uint64(2 * i + 2) * gamma)


@cuda.jit(cache=True)
def dropout_fwd(x, states, threshold, scale, y, mask):
    """Inverted dropout: mask[i] = scale (1/(1-p)) or 0, y[i] = x[i] * mask[i].

    Each element draws a uniform integer r in [0, 2**53) (the top 53 bits of a
    xoroshiro128+ uint64) and is kept when r >= threshold = ceil(p * 2**53),
    i.e. when r / 2**53 >= p: an exact integer test, no float conversion.
    Thread `start` owns state states[start] (one state per thread of the grid)
    and draws for every element of its grid-stride loop in turn. threshold
    (uint64) and scale (x's dtype) are computed on the host.
    """
    zero = y.dtype.type(0)
    start = cuda.grid(1)
    for i in range(start, y.size, cuda.gridsize(1)):
        r = xoroshiro128p_next(states, start) >> uint32(11)
        m = scale if r >= threshold else zero
        mask[i] = m
        y[i] = x[i] * m


# --------------------------------------------------------------------------- launchers

def _planes(a):
    """A contiguous (N, C, H, W) device array viewed as (N*C, H, W) (no copy)."""
    n, c, h, w = a.shape
    return a.reshape(n * c, h, w)


@register("relu", B)
def relu(x):
    x = _common.device(x)
    y = _common.empty(x.shape, x.dtype)
    relu_fwd[_common.grid_1d(y.size)](_common.flat(x), _common.flat(y))
    return y


def _binary(kernel, a, b):
    """Launch an elementwise kernel(a, b, out) over two same-shape arrays; returns out."""
    a, b = _common.device(a), _common.device(b)
    out = _common.empty(a.shape, a.dtype)
    kernel[_common.grid_1d(out.size)](_common.flat(a), _common.flat(b), _common.flat(out))
    return out


@register("relu_backward", B)
def relu_backward(dy, x):
    return _binary(relu_bwd, dy, x)


@register("add", B)
def add(a, b):
    return _binary(add_fwd, a, b)


@register("upsample_nearest2d", B)
def upsample_nearest2d(x, scale):
    x = _common.device(x)
    n, c, h, w = x.shape
    sh, sw = (int(s) for s in scale)
    y = _common.empty((n, c, h * sh, w * sw), x.dtype)
    upsample_nearest_fwd[_common.grid_1d(y.size)](_planes(x), _planes(y), sh, sw)
    return y


@register("upsample_nearest2d_backward", B)
def upsample_nearest2d_backward(dy, scale):
    dy = _common.device(dy)
    n, c, hh, ww = dy.shape
    sh, sw = (int(s) for s in scale)
    dx = _common.empty((n, c, hh // sh, ww // sw), dy.dtype)
    upsample_nearest_bwd[_common.grid_1d(dx.size)](_planes(dy), _planes(dx), sh, sw)
    return dx


@register("concat", B)
def concat(xs):
    xs = [_common.device(x) for x in xs]
    n, _, h, w = xs[0].shape
    channels = sum(x.shape[1] for x in xs)
    y = _common.empty((n, channels, h, w), xs[0].dtype)
    y3 = y.reshape(n, channels, h * w)
    offset = 0
    for x in xs:
        cs = x.shape[1]
        copy_channels[_common.grid_1d(x.size)](x.reshape(n, cs, h * w), y3, offset)
        offset += cs
    return y


@register("concat_backward", B)
def concat_backward(dy, channels):
    dy = _common.device(dy)
    n, c, h, w = dy.shape
    dy3 = dy.reshape(n, c, h * w)
    parts, offset = [], 0
    for cd in channels:
        part = _common.empty((n, int(cd), h, w), dy.dtype)
        slice_channels[_common.grid_1d(part.size)](dy3, part.reshape(n, int(cd), h * w), offset)
        parts.append(part)
        offset += int(cd)
    return parts


@register("dropout", B)
def dropout(x, p, seed):
    """(y, mask): mask 0 or 1/(1-p) in x's dtype, drawn from numba.cuda.random's xoroshiro128+
    generator, one state per thread, seeded on the device from `seed` (seed_states).

    The same seed and shape give the same mask; seed None draws one from np.random.
    (The mask is not the NumPy backend's: the generators differ.)
    """
    x = _common.device(x)
    dt = np.dtype(x.dtype).type
    if seed is None:
        seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    seed = int(seed) & (2**64 - 1)
    y = _common.empty(x.shape, x.dtype)
    mask = _common.empty(x.shape, x.dtype)
    blocks, threads = _common.grid_1d(x.size)
    states = cuda.device_array(blocks * threads, dtype=xoroshiro128p_dtype)  # one per dropout thread
    seed_states[_common.grid_1d(states.size)](states, np.uint64(seed))
    scale = dt(1) / dt(1 - p)  # as the NumPy backend: 1 / (1 - p) in x's dtype
    threshold = np.uint64(math.ceil(p * 2**53))  # keep when a 53-bit draw r has r / 2**53 >= p
    dropout_fwd[blocks, threads](_common.flat(x), states, threshold, scale, _common.flat(y), _common.flat(mask))
    return y, mask


@register("dropout_backward", B)
def dropout_backward(dy, mask):
    return _binary(mul_fwd, dy, mask)
