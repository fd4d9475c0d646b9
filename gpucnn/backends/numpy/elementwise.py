"""NumPy elementwise and data-movement ops: relu, add, concat, nearest upsampling, dropout (+ backwards)."""
from __future__ import annotations

import numpy as np

from .._base import register

B = "numpy"


# --------------------------------------------------------------------------- elementwise

# (np.asarray: a 0-d input gives a 0-d array, not a NumPy scalar)

@register("relu", B)
def relu(x):
    return np.asarray(np.maximum(x, 0))  # NaN passes through, as torch.relu


@register("relu_backward", B)
def relu_backward(dy, x):
    """0 where x <= 0, else dy: PyTorch's threshold_backward (a NaN x passes dy; inf * 0 never happens)."""
    return np.asarray(np.where(x <= 0, dy.dtype.type(0), dy))


@register("upsample_nearest2d", B)
def upsample_nearest2d(x, scale):
    n, c, h, w = x.shape
    sh, sw = scale
    if x.size == 0:  # (no (h, sh, w, sw) view: its dimensions could span more than an array can)
        return np.empty((n, c, h * sh, w * sw), x.dtype)
    out = np.empty((n, c, h, sh, w, sw), x.dtype)
    out[...] = x[:, :, :, None, :, None]
    return out.reshape(n, c, h * sh, w * sw)


@register("upsample_nearest2d_backward", B)
def upsample_nearest2d_backward(dy, scale):
    n, c, hh, ww = dy.shape
    sh, sw = scale
    if dy.size == 0:
        return np.zeros((n, c, hh // sh, ww // sw), dy.dtype)
    return dy.reshape(n, c, hh // sh, sh, ww // sw, sw).sum(axis=(3, 5))


@register("add", B)
def add(a, b):
    return np.asarray(a + b)


@register("concat", B)
def concat(xs):
    return np.concatenate(xs, axis=1)


@register("concat_backward", B)
def concat_backward(dy, channels):
    return [part.copy() for part in np.split(dy, np.cumsum(channels)[:-1], axis=1)]



# --------------------------------------------------------------------------- dropout

@register("dropout", B)
def dropout(x, p, seed):
    keep = np.random.default_rng(seed).random(x.shape, dtype=x.dtype) >= p
    mask = np.asarray(keep.astype(x.dtype) / x.dtype.type(1 - p))
    return np.asarray(x * mask), mask


@register("dropout_backward", B)
def dropout_backward(dy, mask):
    return np.asarray(dy * mask)
