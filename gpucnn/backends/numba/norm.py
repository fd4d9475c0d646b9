"""Batch normalization as Numba CUDA kernels, for x (N, C) and (N, C, H, W), train and eval.

x is viewed flat as (N, C, HW) (HW = 1 for 2-D inputs). Kernels, each beside its launcher:

kernels/norm.cu does each direction in one kernel (bn_fwd<TRAIN>, bn_bwd); here each is in pieces,
named after it:

- `bn_fwd_stats` (one per float dtype, built by `make_bn_fwd_stats`): one block per channel;
  REDUCE_THREADS threads stride over the channel's N*HW values and a shared-memory tree
  (`_common.tree_sum`) sums them: the mean, then (a second pass) the biased variance; thread 0 writes
  save_mean, save_invstd and updates the running statistics in place (unbiased variance, as PyTorch).
- `bn_fwd_eval_stats`: eval mode, one thread per channel: save_mean = running_mean, save_invstd.
- `bn_fwd_apply`: elementwise y = (x - mean) * invstd (* weight) (+ bias).
- `bn_bwd_reduce` (per dtype, built by `make_bn_bwd_reduce`): one block per channel, one shared-memory
  tree over two rows: sum(dy) and sum(dy * xhat) (dbias and dweight), and the per-channel terms of the
  training-mode dx.
- `bn_bwd_dx`: elementwise dx.

Scalars (eps, momentum, 1 - momentum, m/(m-1), m, zero, one) are made on the host in the array
dtype and passed to the kernels (no float64 in a float32 kernel).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .._base import register
from . import _common
from ._common import REDUCE_THREADS, tree_sum

B = "numba"


def _geometry(x):
    """(C, HW, m): channels, values per channel per sample, values per channel."""
    c = int(x.shape[1])
    hw = int(np.prod(x.shape[2:], dtype=np.int64))
    return c, hw, int(x.shape[0]) * hw


# --------------------------------------------------------------------------- forward

@cuda.jit(device=True, cache=True)
def inv_sqrt(v, zero, one, nan):
    """1/sqrt(v); NaN (the typed `nan`) for v < 0 or NaN, as a GPU's sqrt gives it (the simulator's
    math.sqrt would raise). zero, one, nan: of v's dtype (no float64 constant in a float32 kernel)."""
    if v >= zero:
        return one / math.sqrt(v)
    return nan


def make_bn_fwd_stats(dt):
    @cuda.jit
    def bn_fwd_stats(x, channels, hw, m, eps, mom, keep, unbias, update_mean, update_var,
                 running_mean, running_var, save_mean, save_invstd, zero, one, nan):
        """Block c: mean and biased variance of channel c of x (flat (N, C, HW)); running stats in place."""
        s = cuda.shared.array((1, REDUCE_THREADS), dt)
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        count = x.size // channels
        acc = zero
        if c < channels:
            for i in range(tid, count, REDUCE_THREADS):
                n = i // hw
                acc += x[(n * channels + c) * hw + (i - n * hw)]
        s[0, tid] = acc
        tree_sum(s, tid, REDUCE_THREADS, 1)
        mean = s[0, 0] / m
        cuda.syncthreads()  # everyone has read s[0, 0] before it is overwritten
        acc = zero
        if c < channels:
            for i in range(tid, count, REDUCE_THREADS):
                n = i // hw
                d = x[(n * channels + c) * hw + (i - n * hw)] - mean
                acc += d * d
        s[0, tid] = acc
        tree_sum(s, tid, REDUCE_THREADS, 1)
        if tid == 0 and c < channels:
            var = s[0, 0] / m
            save_mean[c] = mean
            save_invstd[c] = inv_sqrt(var + eps, zero, one, nan)
            if update_mean:
                running_mean[c] = running_mean[c] * keep + mom * mean
            if update_var:
                running_var[c] = running_var[c] * keep + mom * var * unbias

    return bn_fwd_stats


_bn_fwd_stats_kernels: dict = {}


@cuda.jit(cache=True)
def bn_fwd_eval_stats(running_mean, running_var, eps, zero, one, nan, save_mean, save_invstd):
    start = cuda.grid(1)
    for c in range(start, save_mean.size, cuda.gridsize(1)):
        save_mean[c] = running_mean[c]
        save_invstd[c] = inv_sqrt(running_var[c] + eps, zero, one, nan)


@cuda.jit(cache=True)
def bn_fwd_apply(x, mean, invstd, weight, bias, has_weight, has_bias, channels, hw, y):
    start = cuda.grid(1)
    for i in range(start, x.size, cuda.gridsize(1)):
        c = (i // hw) % channels
        v = (x[i] - mean[c]) * invstd[c]
        if has_weight:
            v = v * weight[c]
        if has_bias:
            v = v + bias[c]
        y[i] = v


@register("batch_norm", B)
def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps):
    x = _common.device(x)
    c, hw, m = _geometry(x)
    save_mean = _common.empty((c,), x.dtype)
    save_invstd = _common.empty((c,), x.dtype)
    zero, one, nan, eps_t = _common.scalars(x.dtype, 0, 1, math.nan, eps)
    if training and c:
        running_mean = _common.in_place(running_mean, "running_mean")
        running_var = _common.in_place(running_var, "running_var")
        mom, keep, unbias, m_t = _common.scalars(x.dtype, momentum, 1 - momentum, m / (m - 1), m)
        kernel = _common.specialize(_bn_fwd_stats_kernels, make_bn_fwd_stats, x.dtype)
        kernel[c, REDUCE_THREADS](  # one block per channel
            _common.flat(x), c, hw, m_t, eps_t, mom, keep, unbias, running_mean is not None,
            running_var is not None, save_mean if running_mean is None else running_mean,
            save_invstd if running_var is None else running_var, save_mean, save_invstd, zero, one, nan)
    elif not training:
        running_mean, running_var = _common.device(running_mean), _common.device(running_var)
        bn_fwd_eval_stats[_common.grid_1d(c)](running_mean, running_var, eps_t, zero, one, nan, save_mean,
                                              save_invstd)
    y = _common.empty(x.shape, x.dtype)
    if x.size:
        w = save_mean if weight is None else _common.device(weight)  # a dummy 1-D array where absent (never read)
        b = save_mean if bias is None else _common.device(bias)
        bn_fwd_apply[_common.grid_1d(x.size)](_common.flat(x), save_mean, save_invstd, w, b, weight is not None,
                                           bias is not None, c, hw, _common.flat(y))
    return y, save_mean, save_invstd


# --------------------------------------------------------------------------- backward

def make_bn_bwd_reduce(dt):
    @cuda.jit
    def bn_bwd_reduce(dy, x, mean, invstd, weight, has_weight, channels, hw, m, zero, one,
                           sum_dy, sum_dy_xhat, gmean, gxhat):
        """Block c: sum(dy), sum(dy * xhat) over channel c; gmean = mean(g), gxhat = mean(g * xhat), g = dy * w."""
        s = cuda.shared.array((2, REDUCE_THREADS), dt)  # row 0: sum(dy), row 1: sum(dy * xhat)
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        count = x.size // channels
        acc1 = zero
        acc2 = zero
        if c < channels:
            mu = mean[c]
            inv = invstd[c]
            for i in range(tid, count, REDUCE_THREADS):
                n = i // hw
                k = (n * channels + c) * hw + (i - n * hw)
                acc1 += dy[k]
                acc2 += dy[k] * ((x[k] - mu) * inv)
        s[0, tid] = acc1
        s[1, tid] = acc2
        tree_sum(s, tid, REDUCE_THREADS, 2)
        if tid == 0 and c < channels:
            sum_dy[c] = s[0, 0]
            sum_dy_xhat[c] = s[1, 0]
            w = weight[c] if has_weight else one
            gmean[c] = w * s[0, 0] / m
            gxhat[c] = w * s[1, 0] / m

    return bn_bwd_reduce


_bn_bwd_reduce_kernels: dict = {}


@cuda.jit(cache=True)
def bn_bwd_dx(dy, x, mean, invstd, weight, has_weight, gmean, gxhat, training, channels, hw, dx):
    start = cuda.grid(1)
    for i in range(start, x.size, cuda.gridsize(1)):
        c = (i // hw) % channels
        g = dy[i]
        if has_weight:
            g = g * weight[c]
        if training:  # the batch statistics depend on x too
            xhat = (x[i] - mean[c]) * invstd[c]
            dx[i] = (g - gmean[c] - xhat * gxhat[c]) * invstd[c]
        else:
            dx[i] = g * invstd[c]


@register("batch_norm_backward", B)
def batch_norm_backward(dy, x, weight, save_mean, save_invstd, training):
    dy, x, save_mean, save_invstd = _common.device(dy), _common.device(x), _common.device(save_mean), _common.device(save_invstd)
    w = None if weight is None else _common.device(weight)
    c, hw, m = _geometry(x)
    zero, one, m_t = _common.scalars(x.dtype, 0, 1, m)
    w_arg = save_mean if w is None else w  # a dummy 1-D array where absent (never read)
    sum_dy = sum_dy_xhat = gmean = gxhat = save_mean  # dummies when no reduction is needed
    if training or w is not None:
        sum_dy, sum_dy_xhat = _common.empty((c,), x.dtype), _common.empty((c,), x.dtype)
        gmean, gxhat = _common.empty((c,), x.dtype), _common.empty((c,), x.dtype)
        kernel = _common.specialize(_bn_bwd_reduce_kernels, make_bn_bwd_reduce, x.dtype)
        kernel[c, REDUCE_THREADS](_common.flat(dy), _common.flat(x), save_mean, save_invstd, w_arg, w is not None,
                                  c, hw, m_t, zero, one, sum_dy, sum_dy_xhat, gmean, gxhat)
    dx = _common.empty(x.shape, x.dtype)
    if x.size:
        bn_bwd_dx[_common.grid_1d(x.size)](_common.flat(dy), _common.flat(x), save_mean, save_invstd, w_arg,
                                                 w is not None, gmean, gxhat, training, c, hw, _common.flat(dx))
    if w is None:
        return dx, None, None
    return dx, sum_dy_xhat, sum_dy
