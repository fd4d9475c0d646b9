"""The NumPy backend: the reference every kernel is checked against, and the CPU fallback.

No Python loops over pixels or channels. Convolution forward, data gradient
and weight gradient are each one im2col (a copy per kernel offset, R*S slices)
plus one BLAS matrix product; pooling works on strided window views. Arguments
arrive already checked and resolved by `gpucnn.functional`; dtype is kept
(float32, or float64 for gradient checks).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..backend import register
from ..shapes import _to_host

B = "numpy"


# --------------------------------------------------------------------------- convolution

def _pad(x, pads):
    """Zero-pad the last two axes by (top, bottom, left, right); negative values crop."""
    t, b, l, r = pads
    if not any(pads):
        return x
    x = x[..., max(0, -t): x.shape[-2] - max(0, -b), max(0, -l): x.shape[-1] - max(0, -r)]
    t, b, l, r = max(0, t), max(0, b), max(0, l), max(0, r)
    if not (t or b or l or r):
        return x
    out = np.zeros(x.shape[:-2] + (x.shape[-2] + t + b, x.shape[-1] + l + r), x.dtype)
    out[..., t: t + x.shape[-2], l: l + x.shape[-1]] = x
    return out


def _im2col(xp, r, s, stride, p, q):
    """cols[(c,i,j), (n,u,v)] = xp[n, c, u*sh + i, v*sw + j], shape (C*R*S, N*P*Q)."""
    n, c = xp.shape[:2]
    sh, sw = stride
    cols = np.empty((c, r, s, n, p, q), xp.dtype)
    xt = xp.transpose(1, 0, 2, 3)  # (C, N, Hp, Wp): each slice below copies as one strided block
    for i in range(r):
        for j in range(s):
            cols[:, i, j] = xt[:, :, i: i + sh * (p - 1) + 1: sh, j: j + sw * (q - 1) + 1: sw]
    return cols.reshape(c * r * s, n * p * q)


def _conv_valid(xp, w, stride, p, q):
    """Valid cross-correlation of a padded input; output (K, N*P*Q)."""
    k, c, r, s = w.shape
    return w.reshape(k, c * r * s) @ _im2col(xp, r, s, stride, p, q)


def _to_nchw(y_knpq, n, p, q):
    k = y_knpq.shape[0]
    return np.ascontiguousarray(y_knpq.reshape(k, n, p, q).transpose(1, 0, 2, 3))


@register("conv2d", B)
def conv2d(x, w, b, stride, pads, out_shape):
    n, k, p, q = out_shape
    y = _conv_valid(_pad(x, pads), w, stride, p, q)
    if b is not None:
        y += b[:, None]
    return _to_nchw(y, n, p, q)


@register("conv2d_relu", B)
def conv2d_relu(x, w, b, stride, pads, out_shape):
    y = conv2d(x, w, b, stride, pads, out_shape)
    return np.maximum(y, 0, out=y)


@register("conv2d_backward", B)
def conv2d_backward(dy, x, w, stride, pads):
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    _, _, p, q = dy.shape
    sh, sw = stride
    dy_k = dy.transpose(1, 0, 2, 3).reshape(k, n * p * q)

    # weight gradient: dW (K, CRS) = dy (K, NPQ) @ cols(x)^T
    dw = (dy_k @ _im2col(_pad(x, pads), r, s, stride, p, q).T).reshape(w.shape)
    db = dy_k.sum(axis=1)

    # data gradient: scatter dy onto the window starts of the padded input
    # (zeros between them for stride > 1), then a full correlation with the
    # flipped, channel-transposed kernel; the padding is cropped away by
    # choosing where the full correlation starts.
    hp, wp = h + pads[0] + pads[1], wd + pads[2] + pads[3]
    hz, wz = hp - r + 1, wp - s + 1  # window starts, stride 1
    if (sh, sw) == (1, 1):
        z = dy
    else:
        z = np.zeros((n, k, hz, wz), dy.dtype)
        z[:, :, ::sh, ::sw][:, :, :p, :q] = dy
    zp = _pad(z, (r - 1 - pads[0], h + pads[0] - hz, s - 1 - pads[2], wd + pads[2] - wz))
    w_flip = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, K, R, S)
    dx = _to_nchw(_conv_valid(zp, w_flip, (1, 1), h, wd), n, h, wd)
    return dx, dw, db


# --------------------------------------------------------------------------- pooling

def _windows(x, kernel, stride, out_shape):
    """(N, C, P, Q, kh, kw) strided view of every pooling window."""
    _, _, p, q = out_shape
    v = sliding_window_view(x, kernel, axis=(2, 3))
    return v[:, :, : stride[0] * (p - 1) + 1: stride[0], : stride[1] * (q - 1) + 1: stride[1]]


def _window_offsets(kernel):
    return [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]


@register("max_pool2d", B)
def max_pool2d(x, kernel, stride, out_shape):
    n, c, p, q = out_shape
    win = _windows(x, kernel, stride, out_shape)
    if kernel == stride:  # non-overlapping: a reshape, no window copy
        blocks = x[:, :, : p * kernel[0], : q * kernel[1]].reshape(n, c, p, kernel[0], q, kernel[1])
        flat = blocks.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, p, q, -1)
    else:
        flat = win.reshape(n, c, p, q, -1)
    local = flat.argmax(axis=-1)  # first maximum in row-major window order, as PyTorch
    y = np.take_along_axis(flat, local[..., None], axis=-1)[..., 0]
    li, lj = np.divmod(local, kernel[1])
    rows = np.arange(p)[:, None] * stride[0] + li
    cols = np.arange(q)[None, :] * stride[1] + lj
    return y, rows * x.shape[3] + cols


@register("max_pool2d_backward", B)
def max_pool2d_backward(dy, x, kernel, stride, indices):
    n, c, h, w = x.shape
    if indices is None:
        _, indices = max_pool2d(x, kernel, stride, dy.shape)
    plane = (np.arange(n * c) * (h * w)).reshape(n, c, 1, 1)
    dx = np.bincount((indices + plane).ravel(), weights=dy.ravel(), minlength=n * c * h * w)
    return dx.astype(x.dtype, copy=False).reshape(x.shape)


@register("avg_pool2d", B)
def avg_pool2d(x, kernel, stride, out_shape):
    return _windows(x, kernel, stride, out_shape).mean(axis=(-2, -1), dtype=x.dtype)


@register("avg_pool2d_backward", B)
def avg_pool2d_backward(dy, x, kernel, stride):
    _, _, p, q = dy.shape
    dx = np.zeros_like(x)
    g = dy / dy.dtype.type(kernel[0] * kernel[1])
    for i, j in _window_offsets(kernel):  # R*S slices, each vectorized over N, C, P, Q
        dx[:, :, i: i + stride[0] * (p - 1) + 1: stride[0], j: j + stride[1] * (q - 1) + 1: stride[1]] += g
    return dx


# --------------------------------------------------------------------------- elementwise

@register("relu", B)
def relu(x):
    return np.maximum(x, 0)


@register("relu_backward", B)
def relu_backward(dy, x):
    return np.where(x > 0, dy, dy.dtype.type(0))


@register("upsample_nearest2d", B)
def upsample_nearest2d(x, scale):
    n, c, h, w = x.shape
    sh, sw = scale
    return np.broadcast_to(x[:, :, :, None, :, None], (n, c, h, sh, w, sw)).reshape(n, c, h * sh, w * sw)


@register("upsample_nearest2d_backward", B)
def upsample_nearest2d_backward(dy, scale):
    n, c, hh, ww = dy.shape
    sh, sw = scale
    return dy.reshape(n, c, hh // sh, sh, ww // sw, sw).sum(axis=(3, 5))


@register("add", B)
def add(a, b):
    return a + b


@register("concat", B)
def concat(xs):
    return np.concatenate(xs, axis=1)


@register("concat_backward", B)
def concat_backward(dy, channels):
    return [np.ascontiguousarray(part) for part in np.split(dy, np.cumsum(channels)[:-1], axis=1)]


# --------------------------------------------------------------------------- dense

@register("linear", B)
def linear(x, w, b, out_shape):
    y = x @ w.T
    if b is not None:
        y += b
    return y


@register("linear_backward", B)
def linear_backward(dy, x, w):
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# --------------------------------------------------------------------------- softmax and loss

@register("softmax", B)
def softmax(x, dim):
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


@register("log_softmax", B)
def log_softmax(x, dim):
    shifted = x - x.max(axis=dim, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))


@register("softmax_backward", B)
def softmax_backward(dy, y, dim):
    return y * (dy - (dy * y).sum(axis=dim, keepdims=True))


@register("softmax_cross_entropy", B)
def softmax_cross_entropy(logits, labels):
    n = logits.shape[0]
    logp = log_softmax(logits, 1)
    rows = np.arange(n)
    loss = -logp[rows, labels].mean(dtype=logits.dtype)
    d = np.exp(logp)
    d[rows, labels] -= 1
    d /= logits.dtype.type(n)
    return np.asarray(loss, logits.dtype), d


# --------------------------------------------------------------------------- regularization

@register("dropout", B)
def dropout(x, p, seed):
    keep = np.random.default_rng(seed).random(x.shape, dtype=x.dtype) >= p
    mask = keep.astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, mask


@register("dropout_backward", B)
def dropout_backward(dy, mask):
    return dy * mask


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
        m = x.size // x.shape[1]
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


# --------------------------------------------------------------------------- optimizers (in place)

@register("sgd_step", B)
def sgd_step(params, grads, bufs, lr, momentum, dampening, nesterov, weight_decay, first_step):
    for p, g, buf in zip(params, grads, bufs):
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            if first_step:
                buf[...] = g
            else:
                buf *= momentum
                buf += (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p -= lr * g


@register("adam_step", B)
def adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    bc1 = 1 - beta1 ** step
    bc2_sqrt = np.sqrt(1 - beta2 ** step)
    for p, g, m_, v_ in zip(params, grads, m, v):
        if weight_decay:
            g = g + weight_decay * p
        m_ *= beta1
        m_ += (1 - beta1) * g
        v_ *= beta2
        v_ += (1 - beta2) * (g * g)
        p -= (lr / bc1) * m_ / (np.sqrt(v_) / bc2_sqrt + eps)


# --------------------------------------------------------------------------- arrays

@register("asarray", B)
def asarray(a):
    return np.ascontiguousarray(_to_host(a))


@register("to_numpy", B)
def to_numpy(a):
    return _to_host(a)


@register("zeros_like", B)
def zeros_like(a):
    return np.zeros_like(a)
