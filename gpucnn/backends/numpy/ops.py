"""The NumPy backend: the reference every kernel is checked against, and the CPU fallback.

No Python loops over pixels or channels. Convolution forward, data gradient
and weight gradient are each one im2col (a copy per kernel offset, R*S slices)
plus one BLAS matrix product; pooling works on strided window views. Arguments
arrive already checked and resolved by `gpucnn.functional`; dtype is kept
(float32, or float64 for gradient checks).

Speed notes (2 cores, OpenBLAS, cifar10_vgg at batch 64; see README): the
matrix products take about half of a training step. Tried and measured slower
here, so not kept: Winograd F(2x2, 3x3) written with NumPy (its tile
transforms cost more than the multiplications they save), and running batch
chunks on two threads with single-threaded BLAS. Chunk sizes from 1 to 64 MB
made no difference beyond run-to-run noise.
"""
from __future__ import annotations

import threading

import numpy as np

from ...backend import register

B = "numpy"


# --------------------------------------------------------------------------- convolution
#
# im2col works on "planes": the input transposed to (C, N, H, W) and zero-padded,
# so that for stride-1 rows every kernel offset (i, j) reads one contiguous run of
# P full padded rows per plane (a near-memcpy copy). The product is then computed
# on padded-width rows and the extra columns are dropped. The batch is processed
# in chunks whose columns fit in cache, so each chunk's im2col is still hot when
# its matrix product runs.

_CHUNK_BYTES = 4 << 20
_workspace = threading.local()


def _scratch(name, shape, dtype, zero=False):
    """A reusable per-thread temporary (never returned to callers): fresh large arrays cost
    first-touch page faults on every call, reused ones do not."""
    size = int(np.prod(shape))
    pool = _workspace.__dict__
    buf = pool.get(name)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = pool[name] = np.empty(max(size, 1), dtype)
    view = buf[:size].reshape(shape)
    if zero:
        view.fill(0)
    return view


def _planes(x, pads, extra_rows=0, name="planes"):
    """x (N,C,H,W) as zero-padded planes (C, N, H+t+b+extra_rows, W+l+r); negative pads crop.

    The planes live in the workspace slot `name` until the next call that uses it."""
    t, b, l, r = pads
    x = x[:, :, max(0, -t): x.shape[2] - max(0, -b), max(0, -l): x.shape[3] - max(0, -r)]
    t, b, l, r = max(0, t), max(0, b), max(0, l), max(0, r)
    n, c, h, w = x.shape
    buf = _scratch(name, (c, n, h + t + b + extra_rows, w + l + r), x.dtype, zero=True)
    buf[:, :, t: t + h, l: l + w] = x.transpose(1, 0, 2, 3)
    return buf


def _row_width(planes, stride, q):
    """Columns computed per output row: the padded width for stride-1 rows (extras dropped later), else Q."""
    return planes.shape[3] if stride[1] == 1 else q


def _columns(planes, r, s, stride, p, q, buf):
    """im2col into `buf`: cols[(c,i,j), (n,u,v)] = planes[c, n, u*sh + i, v*sw + j], shape (C*R*S, n*P*Qs)."""
    c, n, hb, wp = planes.shape
    sh, sw = stride
    qs = _row_width(planes, stride, q)
    cols = buf[: c * r * s * n * p * qs].reshape(c, r, s, n, p, qs)
    if sw == 1:  # needs sh spare rows at the bottom of each plane (see _planes' extra_rows)
        flat = planes.reshape(c, n, hb * wp)
        for i in range(r):
            for j in range(s):
                start = i * wp + j
                cols[:, i, j] = flat[:, :, start: start + p * sh * wp].reshape(c, n, p, sh * wp)[..., :wp]
    else:
        for i in range(r):
            for j in range(s):
                cols[:, i, j] = planes[:, :, i: i + sh * (p - 1) + 1: sh, j: j + sw * (q - 1) + 1: sw]
    return cols.reshape(c * r * s, n * p * qs)


def _column_chunks(planes, w, stride, p, q):
    """im2col of the batch in chunks of about _CHUNK_BYTES, one buffer reused for all of them
    (fresh memory would page-fault on every chunk): yields (n0, n1, cols (C*R*S, (n1-n0)*P*Qs))."""
    c, n = planes.shape[:2]
    r, s = w.shape[2:]
    per_sample = w[0].size * p * _row_width(planes, stride, q)
    step = max(1, min(n, _CHUNK_BYTES // (per_sample * planes.itemsize)))
    buf = _scratch("columns", (per_sample * step,), planes.dtype)
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        yield n0, n1, _columns(planes[:, n0:n1], r, s, stride, p, q, buf)


def _correlate(planes, w, stride, p, q):
    """Valid cross-correlation of planes with w (K,C,R,S), chunk by chunk.

    Yields (n0, n1, y): y (K, n1-n0, P, Qs) contiguous, valid in its first Q columns.
    """
    k = w.shape[0]
    w2 = w.reshape(k, -1)
    qs = _row_width(planes, stride, q)
    ybuf = None
    for n0, n1, cols in _column_chunks(planes, w, stride, p, q):
        if ybuf is None:
            ybuf = _scratch("product", (k * cols.shape[1],), planes.dtype)
        y = np.matmul(w2, cols, out=ybuf[: k * cols.shape[1]].reshape(k, cols.shape[1]))
        yield n0, n1, y.reshape(k, n1 - n0, p, qs)


def _conv2d(x, w, b, stride, pads, out_shape, relu):
    n, k, p, q = out_shape
    out = np.empty(out_shape, x.dtype)
    for n0, n1, y in _correlate(_planes(x, pads, stride[0]), w, stride, p, q):
        if b is not None:  # the epilogue runs on the contiguous chunk, then one transposing copy
            y += b[:, None, None, None]
        if relu:
            np.maximum(y, 0, out=y)
        out[n0:n1] = y[..., :q].transpose(1, 0, 2, 3)
    return out


@register("conv2d", B)
def conv2d(x, w, b, stride, pads, out_shape):
    return _conv2d(x, w, b, stride, pads, out_shape, relu=False)


@register("conv2d_relu", B)
def conv2d_relu(x, w, b, stride, pads, out_shape):
    return _conv2d(x, w, b, stride, pads, out_shape, relu=True)


def _weight_grad(dy, x, w, stride, pads):
    """dW (K, C*R*S) = dy (K, N*P*Q) @ cols(x)^T, accumulated over batch chunks."""
    k = w.shape[0]
    _, _, p, q = dy.shape
    planes = _planes(x, pads, stride[0])
    qs = _row_width(planes, stride, q)
    dw = np.zeros((k, w[0].size), dy.dtype)
    dy_wide = _scratch("dy_wide", (k, dy.shape[0], p, qs), dy.dtype)
    dy_wide[..., q:] = 0  # the dropped padded-width columns
    dy_wide[..., :q] = dy.transpose(1, 0, 2, 3)
    for n0, n1, cols in _column_chunks(planes, w, stride, p, q):
        dw += dy_wide[:, n0:n1].reshape(k, -1) @ cols.T
    return dw.reshape(w.shape)


def _data_grad(dy, x_shape, w, stride, pads):
    """dx: dy scattered onto the window starts of the padded input (zeros between them for
    stride > 1), then a full correlation with the flipped, channel-transposed kernel; the
    padding is cropped away by where that correlation starts."""
    n, c, h, wd = x_shape
    k, _, r, s = w.shape
    _, _, p, q = dy.shape
    sh, sw = stride
    t, _, l, _ = pads
    hz, wz = h + pads[0] + pads[1] - r + 1, wd + pads[2] + pads[3] - s + 1  # window starts at stride 1
    if (sh, sw) == (1, 1):
        z = dy
    else:
        z = np.zeros((n, k, hz, wz), dy.dtype)
        z[:, :, ::sh, ::sw][:, :, :p, :q] = dy
    planes = _planes(z, (r - 1 - t, h + t - hz, s - 1 - l, wd + l - wz), 1, name="planes_dy")
    w_flip = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, K, R, S)
    dx = np.empty(x_shape, dy.dtype)
    for n0, n1, y in _correlate(planes, w_flip, (1, 1), h, wd):
        dx[n0:n1] = y[..., :wd].transpose(1, 0, 2, 3)
    return dx


@register("conv2d_backward", B)
def conv2d_backward(dy, x, w, stride, pads, input_grad=True, relu_mask=False):
    db = dy.sum(axis=(0, 2, 3))
    dx = _data_grad(dy, x.shape, w, stride, pads) if input_grad else None
    if relu_mask and dx is not None:
        dx[x <= 0] = 0
    return dx, _weight_grad(dy, x, w, stride, pads), db


# --------------------------------------------------------------------------- pooling

def _window_offsets(kernel):
    return [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]


def _window_view(a, i, j, stride, p, q):
    """The (N, C, P, Q) strided view of `a` seen by window offset (i, j)."""
    return a[:, :, i: i + stride[0] * (p - 1) + 1: stride[0], j: j + stride[1] * (q - 1) + 1: stride[1]]


@register("max_pool2d", B)
def max_pool2d(x, kernel, stride, out_shape):
    """A running maximum over the kh*kw window offsets (each a strided view), then the flat
    index h*W+w of the first offset, in row-major window order, that holds the maximum."""
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
    dx = np.bincount((indices + plane).ravel(), weights=dy.ravel(), minlength=n * c * h * w)
    return dx.astype(x.dtype, copy=False).reshape(x.shape)


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


# --------------------------------------------------------------------------- elementwise

@register("relu", B)
def relu(x):
    return np.maximum(x, 0)


@register("relu_backward", B)
def relu_backward(dy, x):
    return dy * (x > 0)


@register("upsample_nearest2d", B)
def upsample_nearest2d(x, scale):
    n, c, h, w = x.shape
    sh, sw = scale
    out = np.empty((n, c, h, sh, w, sw), x.dtype)
    out[...] = x[:, :, :, None, :, None]
    return out.reshape(n, c, h * sh, w * sw)


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
    return [part.copy() for part in np.split(dy, np.cumsum(channels)[:-1], axis=1)]


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


# --------------------------------------------------------------------------- loss bookkeeping

@register("label_errors", B)
def label_errors(reset=True):
    """None: host labels are checked before the loss runs (shapes.class_indices), never recorded."""
    return None


@register("accumulate_loss_stats", B)
def accumulate_loss_stats(logits, labels, loss, loss_sum, correct):
    loss_sum[0] += loss * len(labels)
    correct[0] += int((logits.argmax(axis=1) == labels).sum())
