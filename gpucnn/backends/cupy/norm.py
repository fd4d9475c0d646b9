"""Launchers for kernels/norm.cu: batch_norm (train and eval) and batch_norm_backward, one launch each.

One block per channel (`_channel_grid`); x is seen as (N, C, HW). Running statistics are updated
in place by the training forward, so on a GPU they must already be device arrays (`rt.in_place`).
Absent weight / bias / running arrays are replaced by a dummy array and a flag (never read).
"""
from __future__ import annotations

import numpy as np

from .._base import register
from . import _runtime as rt

B = "cupy"
K = rt.Family("norm", ["bn_fwd<true>", "bn_fwd<false>", "bn_bwd"])


def _channel_grid(channels):
    """One block of rt.THREADS per channel (grid-stride over channels beyond the 1-D grid limit)."""
    return (max(1, min(int(channels), rt.MAX_BLOCKS_1D)),), (rt.THREADS,)


def _geometry(x):
    """(N, C, HW) as kernel integers, and m = N*HW values per channel."""
    n, c = int(x.shape[0]), int(x.shape[1])
    hw = int(np.prod(x.shape[2:], dtype=np.int64))
    return (rt.i32(n), rt.i32(c), rt.i32(hw)), n * hw


@register("batch_norm", B)
def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps):
    op = "batch_norm"
    x = rt.operand(op, "x", x)
    weight, bias = rt.operand(op, "weight", weight), rt.operand(op, "bias", bias)
    if training:
        running_mean = rt.in_place(op, "running_mean", running_mean)
        running_var = rt.in_place(op, "running_var", running_var)
    else:
        running_mean = rt.operand(op, "running_mean", running_mean)
        running_var = rt.operand(op, "running_var", running_var)
    ints, m = _geometry(x)
    c = int(x.shape[1])
    y, save_mean, save_invstd = rt.empty(x.shape), rt.empty((c,)), rt.empty((c,))
    if c == 0:
        return y, save_mean, save_invstd
    dummy = save_mean  # stands in for absent arrays; the flags keep the kernel from reading it
    unbias = m / (m - 1) if m > 1 else 0.0
    args = (x, y, dummy if weight is None else weight, dummy if bias is None else bias,
            dummy if running_mean is None else running_mean, dummy if running_var is None else running_var,
            save_mean, save_invstd, *ints, rt.i32(weight is not None), rt.i32(bias is not None),
            rt.i32(running_mean is not None), rt.i32(running_var is not None),
            rt.f32(momentum), rt.f32(1 - momentum), rt.f32(unbias), rt.f32(eps))
    K.launch(f"bn_fwd<{'true' if training else 'false'}>", *_channel_grid(c), args)
    return y, save_mean, save_invstd


@register("batch_norm_backward", B)
def batch_norm_backward(dy, x, weight, save_mean, save_invstd, training):
    op = "batch_norm_backward"
    dy, x = rt.operand(op, "dy", dy), rt.operand(op, "x", x)
    weight = rt.operand(op, "weight", weight)
    save_mean, save_invstd = rt.operand(op, "save_mean", save_mean), rt.operand(op, "save_invstd", save_invstd)
    ints, _ = _geometry(x)
    c = int(x.shape[1])
    dx = rt.empty(x.shape)
    dweight, dbias = (rt.empty((c,)), rt.empty((c,))) if weight is not None else (None, None)
    if c:
        dummy = save_mean
        K.launch("bn_bwd", *_channel_grid(c),
                 (dy, x, dummy if weight is None else weight, save_mean, save_invstd, dx,
                  dummy if dweight is None else dweight, dummy if dbias is None else dbias, *ints,
                  rt.i32(weight is not None), rt.i32(training)))
    return dx, dweight, dbias
