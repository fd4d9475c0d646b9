"""NumPy batch normalization, for x (N, C) and (N, C, H, W), train and eval, forward and backward."""
from __future__ import annotations

import numpy as np

from .._base import register

B = "numpy"


# --------------------------------------------------------------------------- batch norm

def _bn_axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _per_channel(a, x):
    return a.reshape((1, -1) + (1,) * (x.ndim - 2))


@register("batch_norm", B)
def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps):
    axes = _bn_axes(x)
    if training:
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)
        m = x.size // x.shape[1] if x.shape[1] else 0  # no channels: nothing to update
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * var * (m / (m - 1))
    else:
        mean, var = running_mean, running_var
    invstd = (1 / np.sqrt(var + x.dtype.type(eps))).astype(x.dtype)
    y = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    if weight is not None:
        y = y * _per_channel(weight, x)
    if bias is not None:
        y = y + _per_channel(bias, x)
    return y, mean.astype(x.dtype, copy=True), invstd


@register("batch_norm_backward", B)
def batch_norm_backward(dy, x, weight, save_mean, save_invstd, training):
    axes = _bn_axes(x)
    xhat = (x - _per_channel(save_mean, x)) * _per_channel(save_invstd, x)
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    g = dy if weight is None else dy * _per_channel(weight, x)
    if training:  # the batch statistics depend on x too
        gmean = g.mean(axis=axes, keepdims=True)
        gxhat = (g * xhat).mean(axis=axes, keepdims=True)
        dx = (g - gmean - xhat * gxhat) * _per_channel(save_invstd, x)
    else:
        dx = g * _per_channel(save_invstd, x)
    if weight is None:
        return dx, None, None
    return dx, dweight, dbias
