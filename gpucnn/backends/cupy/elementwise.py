"""Launchers for kernels/elementwise.cu: ReLU, add, dropout, nearest upsampling, concat (forward and backward).

The bandwidth-bound maps run their float4 instance (``<4>``) when every array is 16-byte aligned
(CuPy allocations are; a contiguous view at an odd offset is not) and the scalar one otherwise;
the grid covers n/4 float4 (or n floats), computed in `_map_geometry`.
"""
from __future__ import annotations

import math

import numpy as np

from .._base import register
from . import _runtime as rt

B = "cupy"
MAPS = ("relu_fwd", "relu_bwd", "add_fwd", "mul_fwd", "dropout_fwd")
K = rt.Family("elementwise", [f"{k}<{v}>" for k in MAPS for v in (4, 1)]
              + ["upsample_nearest_fwd", "upsample_nearest_bwd", "copy_rows<4>", "copy_rows<1>"])

SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
MASK64 = 2**64 - 1


def _map_geometry(kernel, n, *arrays):
    """(instance name, grid, block) of a map kernel over n elements: float4 when every array is aligned."""
    v = 4 if rt.aligned(*arrays) else 1
    return (f"{kernel}<{v}>",) + rt.grid_1d(rt.ceil_div(n, v))


def _map(op, kernel, **arrays):
    """out = kernel(*arrays) for same-shape float32 arrays (a new array)."""
    arrays = {name: rt.operand(op, name, a) for name, a in arrays.items()}
    first = next(iter(arrays.values()))
    out = rt.empty(first.shape)
    if first.size:
        name, grid, block = _map_geometry(kernel, first.size, out, *arrays.values())
        K.launch(name, grid, block, (*arrays.values(), out, rt.i32(first.size)))
    return out


@register("relu", B)
def relu(x):
    return _map("relu", "relu_fwd", x=x)


@register("relu_backward", B)
def relu_backward(dy, x):
    return _map("relu_backward", "relu_bwd", dy=dy, x=x)


@register("add", B)
def add(a, b):
    return _map("add", "add_fwd", a=a, b=b)


@register("dropout_backward", B)
def dropout_backward(dy, mask):
    return _map("dropout_backward", "mul_fwd", dy=dy, mask=mask)


def splitmix64(z: int) -> int:
    """SplitMix64's output function on the host (the kernel's splitmix64_mix): seeds become keys."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


@register("dropout", B)
def dropout(x, p, seed):
    """(y, mask): mask 0 or 1/(1-p) (float32), y = x * mask, as the other backends.

    Element i is kept when draw i of a counter-based generator (SplitMix64 output i+1 from the
    key splitmix64(seed), see kernels/elementwise.cu) is >= p, so the mask is a pure function of
    (seed, shape): the same seed gives the same mask on any GPU and under emulation; seed None
    draws a fresh seed from np.random. (The draws are not the NumPy or Numba backend's.)
    """
    x = rt.operand("dropout", "x", x)
    if seed is None:
        seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    key = np.uint64(splitmix64(int(seed)))
    threshold = np.uint64(math.ceil(p * 2**53))  # keep when a 53-bit draw r has r / 2**53 >= p
    scale = np.float32(1) / np.float32(1 - p)  # as the NumPy backend: 1 / (1 - p) in float32
    y, mask = rt.empty(x.shape), rt.empty(x.shape)
    if x.size:
        name, grid, block = _map_geometry("dropout_fwd", x.size, x, y, mask)
        K.launch(name, grid, block, (x, y, mask, rt.i32(x.size), key, threshold, scale))
    return y, mask


@register("upsample_nearest2d", B)
def upsample_nearest2d(x, scale):
    x = rt.operand("upsample_nearest2d", "x", x)
    n, c, h, w = x.shape
    sh, sw = (int(s) for s in scale)
    y = rt.empty((n, c, h * sh, w * sw))
    if y.size:
        rt.check("upsample_nearest2d", y=y)  # the output's size must fit 32-bit indexing too
        K.launch("upsample_nearest_fwd", *rt.grid_1d(y.size),
                 (x, y, rt.i32(n * c), rt.i32(h), rt.i32(w), rt.i32(sh), rt.i32(sw)))
    return y


@register("upsample_nearest2d_backward", B)
def upsample_nearest2d_backward(dy, scale):
    dy = rt.operand("upsample_nearest2d_backward", "dy", dy)
    n, c, hh, ww = dy.shape
    sh, sw = (int(s) for s in scale)
    dx = rt.empty((n, c, hh // sh, ww // sw))
    if dx.size:
        K.launch("upsample_nearest_bwd", *rt.grid_1d(dx.size),
                 (dy, dx, rt.i32(n * c), rt.i32(hh // sh), rt.i32(ww // sw), rt.i32(sh), rt.i32(sw)))
    return dx


def _copy_rows(src, src_stride, src_offset, dst, dst_stride, dst_offset, rows, length):
    """dst[r, dst_offset:+length] = src[r, src_offset:+length] for r < rows (flat row strides)."""
    if rows * length == 0:
        return
    ints = (src_stride, src_offset, dst_stride, dst_offset, length)
    v = 4 if rt.aligned(src, dst) and all(i % 4 == 0 for i in ints) else 1
    K.launch(f"copy_rows<{v}>", *rt.grid_1d(rows * length // v),
             (src, rt.i32(src_stride), rt.i32(src_offset), dst, rt.i32(dst_stride), rt.i32(dst_offset),
              rt.i32(rows), rt.i32(length)))


@register("concat", B)
def concat(xs):
    xs = [rt.operand("concat", f"xs[{i}]", x) for i, x in enumerate(xs)]
    n, _, h, w = xs[0].shape
    channels = sum(int(x.shape[1]) for x in xs)
    y = rt.empty((n, channels, h, w))
    rt.check("concat", y=y)
    offset = 0
    for x in xs:  # one launch per input: its (N, Cs*H*W) rows into the output's channel range
        cs = int(x.shape[1])
        _copy_rows(x, cs * h * w, 0, y, channels * h * w, offset * h * w, n, cs * h * w)
        offset += cs
    return y


@register("concat_backward", B)
def concat_backward(dy, channels):
    dy = rt.operand("concat_backward", "dy", dy)
    n, c, h, w = dy.shape
    parts, offset = [], 0
    for cd in channels:
        cd = int(cd)
        part = rt.empty((n, cd, h, w))
        _copy_rows(dy, c * h * w, offset * h * w, part, cd * h * w, 0, n, cd * h * w)
        parts.append(part)
        offset += cd
    return parts
