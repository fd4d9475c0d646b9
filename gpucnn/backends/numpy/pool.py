"""NumPy pooling: max (with first-max indices) and average pooling on strided window views, the
reference relu_max_pool2d, and their backwards.
"""
from __future__ import annotations

import numpy as np

from .._base import register
from .elementwise import relu

B = "numpy"


# --------------------------------------------------------------------------- pooling

def _window_offsets(kernel):
    return [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]


def _window_view(a, i, j, stride, p, q):
    """The (N, C, P, Q) strided view of `a` seen by window offset (i, j)."""
    return a[:, :, i: i + stride[0] * (p - 1) + 1: stride[0], j: j + stride[1] * (q - 1) + 1: stride[1]]


@register("max_pool2d", B)
def max_pool2d(x, kernel, stride, out_shape):
    """A running maximum over the kh*kw window offsets (each a strided view), then the flat
    index h*W+w of the first offset, in row-major window order, that holds the maximum. A window
    holding NaN gives NaN (np.maximum propagates it) at its last NaN, as PyTorch's max pooling."""
    _, _, p, q = out_shape
    w = x.shape[3]
    views = [(i * w + j, _window_view(x, i, j, stride, p, q)) for i, j in _window_offsets(kernel)]
    y = views[0][1].copy()
    for _, v in views[1:]:
        np.maximum(y, v, out=y)
    # the first window offset holding the maximum, as a small int, then one lookup to flat indices
    first = np.zeros(y.shape, np.int8 if len(views) < 128 else np.int32)
    found = views[0][1] == y
    for k, (_, v) in enumerate(views[1:], 1):
        hit = v == y
        hit &= ~found
        found |= hit
        first += hit * first.dtype.type(k)
    if np.isnan(y).any():  # no offset equals NaN: those windows take their last NaN's offset
        for k, (_, v) in enumerate(views):
            first[np.isnan(v)] = k
    offsets = np.array([off for off, _ in views], np.int64)
    idx = offsets[first]
    idx += np.arange(p)[:, None] * stride[0] * w + np.arange(q)[None, :] * stride[1]
    return y, idx


@register("relu_max_pool2d", B)
def relu_max_pool2d(x, kernel, stride, out_shape):
    """max_pool2d(relu(x)): the reference for the GPU backends' fused op."""
    return max_pool2d(relu(x), kernel, stride, out_shape)


@register("max_pool2d_backward", B)
def max_pool2d_backward(dy, x, kernel, stride, indices):
    n, c, h, w = x.shape
    if indices is None:
        _, indices = max_pool2d(x, kernel, stride, dy.shape)
    plane = (np.arange(n * c) * (h * w)).reshape(n, c, 1, 1)
    dx = np.bincount((indices.astype(np.int64, copy=False) + plane).ravel(), weights=dy.ravel(), minlength=n * c * h * w)
    return dx.astype(x.dtype, copy=False).reshape(x.shape)


@register("index_errors", B)
def index_errors(reset=True):
    """None: host indices are checked before the backward runs (shapes.check_indices), never recorded."""
    return None


@register("avg_pool2d", B)
def avg_pool2d(x, kernel, stride, out_shape):
    _, _, p, q = out_shape
    y = np.zeros(out_shape, x.dtype)
    for i, j in _window_offsets(kernel):  # kh*kw slices, each vectorized over N, C, P, Q
        y += _window_view(x, i, j, stride, p, q)
    y /= x.dtype.type(kernel[0] * kernel[1])
    return y


@register("avg_pool2d_backward", B)
def avg_pool2d_backward(dy, x, kernel, stride):
    _, _, p, q = dy.shape
    dx = np.zeros_like(x)
    g = dy / dy.dtype.type(kernel[0] * kernel[1])
    for i, j in _window_offsets(kernel):
        _window_view(dx, i, j, stride, p, q)[...] += g
    return dx
