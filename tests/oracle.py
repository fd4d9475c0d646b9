"""Naive reference implementations, written straight from the definitions.

Loops over every output position (and, for the backward passes, scatter of
each output's gradient back onto its input window), float64 throughout, no
im2col, no strided views, nothing shared with gpucnn. Slow: use on small
shapes only. These are the oracle the NumPy backend is tested against.
"""
from __future__ import annotations

import math

import numpy as np


def f64(a):
    return np.array(a, dtype=np.float64)


# ----------------------------------------------------------------------------- convolution

def same_pads(r, s):
    """'same' at stride 1: total padding f-1; an odd total puts the extra row/column at bottom/right."""
    th, tw = r - 1, s - 1
    return th // 2, th - th // 2, tw // 2, tw - tw // 2


def resolve_pads(padding, r, s):
    """(top, bottom, left, right) for an int, a (ph, pw) pair, 'valid' or 'same'."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        return same_pads(r, s)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return ph, ph, pw, pw


def pad2d(x, pads):
    """Zero padding of the last two axes by (top, bottom, left, right)."""
    t, b, l, r = pads
    n, c, h, w = x.shape
    xp = np.zeros((n, c, t + h + b, l + w + r))
    for i in range(h):
        for j in range(w):
            xp[:, :, t + i, l + j] = x[:, :, i, j]
    return xp


def window_starts(n, f, stride):
    """Every start position whose window of length f fits in n, in steps of stride."""
    starts = []
    pos = 0
    while pos + f <= n:
        starts.append(pos)
        pos += stride
    return starts


def conv2d(x, w, b=None, stride=(1, 1), pads=(0, 0, 0, 0)):
    """y[n,k,p,q] = b[k] + sum_{c,i,j} xpad[n, c, p*sh+i, q*sw+j] * w[k,c,i,j]."""
    x, w = f64(x), f64(w)
    n_, c_, _, _ = x.shape
    k_, _, r_, s_ = w.shape
    xp = pad2d(x, pads)
    rows = window_starts(xp.shape[2], r_, stride[0])
    cols = window_starts(xp.shape[3], s_, stride[1])
    y = np.zeros((n_, k_, len(rows), len(cols)))
    for n in range(n_):
        for k in range(k_):
            for p, u in enumerate(rows):
                for q, v in enumerate(cols):
                    acc = 0.0 if b is None else float(b[k])
                    for c in range(c_):
                        for i in range(r_):
                            for j in range(s_):
                                acc += xp[n, c, u + i, v + j] * w[k, c, i, j]
                    y[n, k, p, q] = acc
    return y


def conv2d_backward(dy, x, w, stride=(1, 1), pads=(0, 0, 0, 0)):
    """(dx, dw, db): each output's gradient scattered back over the window that made it."""
    dy, x, w = f64(dy), f64(x), f64(w)
    n_, c_, h_, w_ = x.shape
    k_, _, r_, s_ = w.shape
    t, _, l, _ = pads
    xp = pad2d(x, pads)
    rows = window_starts(xp.shape[2], r_, stride[0])
    cols = window_starts(xp.shape[3], s_, stride[1])
    assert dy.shape == (n_, k_, len(rows), len(cols))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    db = np.zeros(k_)
    for n in range(n_):
        for k in range(k_):
            for p, u in enumerate(rows):
                for q, v in enumerate(cols):
                    g = dy[n, k, p, q]
                    db[k] += g
                    for c in range(c_):
                        for i in range(r_):
                            for j in range(s_):
                                dxp[n, c, u + i, v + j] += g * w[k, c, i, j]
                                dw[k, c, i, j] += g * xp[n, c, u + i, v + j]
    dx = dxp[:, :, t: t + h_, l: l + w_]  # the gradient on the padding is dropped
    return dx, dw, db


# ----------------------------------------------------------------------------- pooling

def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def max_pool2d(x, kernel, stride=None):
    """(y, indices): max of each window and the flat h*W+w index of its first maximum (row-major scan); a NaN
    replaces the running maximum too (PyTorch's `v > max || isnan(v)`), so a window holding NaN gives NaN
    at its last NaN."""
    x = f64(x)
    kh, kw = _pair(kernel)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    n_, c_, h_, w_ = x.shape
    rows, cols = window_starts(h_, kh, sh), window_starts(w_, kw, sw)
    y = np.zeros((n_, c_, len(rows), len(cols)))
    idx = np.zeros((n_, c_, len(rows), len(cols)), dtype=np.int64)
    for n in range(n_):
        for c in range(c_):
            for p, u in enumerate(rows):
                for q, v in enumerate(cols):
                    best, best_at = x[n, c, u, v], u * w_ + v  # the first element (an all -inf window's)
                    for i in range(kh):
                        for j in range(kw):
                            v_ = x[n, c, u + i, v + j]
                            if v_ > best or math.isnan(v_):  # strict: ties keep the first
                                best, best_at = x[n, c, u + i, v + j], (u + i) * w_ + (v + j)
                    y[n, c, p, q], idx[n, c, p, q] = best, best_at
    return y, idx


def max_pool2d_backward(dy, x, kernel, stride=None):
    dy = f64(dy)
    _, idx = max_pool2d(x, kernel, stride)
    n_, c_, h_, w_ = x.shape
    dx = np.zeros((n_, c_, h_, w_))
    for n in range(n_):
        for c in range(c_):
            for p in range(dy.shape[2]):
                for q in range(dy.shape[3]):
                    flat = idx[n, c, p, q]
                    dx[n, c, flat // w_, flat % w_] += dy[n, c, p, q]
    return dx


def avg_pool2d(x, kernel, stride=None):
    x = f64(x)
    kh, kw = _pair(kernel)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    n_, c_, h_, w_ = x.shape
    rows, cols = window_starts(h_, kh, sh), window_starts(w_, kw, sw)
    y = np.zeros((n_, c_, len(rows), len(cols)))
    for n in range(n_):
        for c in range(c_):
            for p, u in enumerate(rows):
                for q, v in enumerate(cols):
                    total = 0.0
                    for i in range(kh):
                        for j in range(kw):
                            total += x[n, c, u + i, v + j]
                    y[n, c, p, q] = total / (kh * kw)
    return y


def avg_pool2d_backward(dy, x, kernel, stride=None):
    dy = f64(dy)
    kh, kw = _pair(kernel)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    n_, c_, h_, w_ = x.shape
    rows, cols = window_starts(h_, kh, sh), window_starts(w_, kw, sw)
    dx = np.zeros((n_, c_, h_, w_))
    for n in range(n_):
        for c in range(c_):
            for p, u in enumerate(rows):
                for q, v in enumerate(cols):
                    for i in range(kh):
                        for j in range(kw):
                            dx[n, c, u + i, v + j] += dy[n, c, p, q] / (kh * kw)
    return dx


# ----------------------------------------------------------------------------- elementwise / resampling

def upsample_nearest2d(x, scale):
    x = f64(x)
    sh, sw = _pair(scale)
    n_, c_, h_, w_ = x.shape
    y = np.zeros((n_, c_, h_ * sh, w_ * sw))
    for i in range(h_ * sh):
        for j in range(w_ * sw):
            y[:, :, i, j] = x[:, :, i // sh, j // sw]
    return y


def upsample_nearest2d_backward(dy, scale):
    dy = f64(dy)
    sh, sw = _pair(scale)
    n_, c_, hh, ww = dy.shape
    dx = np.zeros((n_, c_, hh // sh, ww // sw))
    for i in range(hh):
        for j in range(ww):
            dx[:, :, i // sh, j // sw] += dy[:, :, i, j]
    return dx


def relu(x):
    """max(x, 0) with NaN passing through (torch.relu)."""
    x = f64(x)
    return np.where(x <= 0, 0.0, x)


# ----------------------------------------------------------------------------- dense

def linear(x, w, b=None):
    x, w = f64(x), f64(w)
    n_, i_ = x.shape
    o_ = w.shape[0]
    y = np.zeros((n_, o_))
    for n in range(n_):
        for o in range(o_):
            acc = 0.0 if b is None else float(b[o])
            for i in range(i_):
                acc += x[n, i] * w[o, i]
            y[n, o] = acc
    return y


def linear_backward(dy, x, w):
    dy, x, w = f64(dy), f64(x), f64(w)
    n_, i_ = x.shape
    o_ = w.shape[0]
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros(o_)
    for n in range(n_):
        for o in range(o_):
            db[o] += dy[n, o]
            for i in range(i_):
                dx[n, i] += dy[n, o] * w[o, i]
                dw[o, i] += dy[n, o] * x[n, i]
    return dx, dw, db


# ----------------------------------------------------------------------------- softmax and loss

def _logsumexp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def _rows(x, dim):
    """x with `dim` moved last, flattened to rows, and a function putting such rows back."""
    moved = np.moveaxis(f64(x), dim, -1)
    shape = moved.shape
    return moved.reshape(-1, shape[-1]), lambda r: np.moveaxis(r.reshape(shape), -1, dim)


def softmax(x, dim=1):
    rows, back = _rows(x, dim)
    out = np.zeros_like(rows)
    for r in range(rows.shape[0]):
        lse = _logsumexp(list(rows[r]))
        for j in range(rows.shape[1]):
            out[r, j] = math.exp(rows[r, j] - lse)
    return back(out)


def log_softmax(x, dim=1):
    rows, back = _rows(x, dim)
    out = np.zeros_like(rows)
    for r in range(rows.shape[0]):
        lse = _logsumexp(list(rows[r]))
        for j in range(rows.shape[1]):
            out[r, j] = rows[r, j] - lse
    return back(out)


def softmax_cross_entropy(logits, labels):
    """(loss, dlogits): mean over rows of logsumexp(z) - z[label]; grad (softmax - one_hot) / N."""
    z = f64(logits)
    n_, k_ = z.shape
    loss = 0.0
    grad = np.zeros_like(z)
    for n in range(n_):
        lse = _logsumexp(list(z[n]))
        loss += lse - z[n, int(labels[n])]
        for k in range(k_):
            grad[n, k] = (math.exp(z[n, k] - lse) - (1.0 if k == int(labels[n]) else 0.0)) / n_
    return loss / n_, grad


# ----------------------------------------------------------------------------- batch norm

def batch_norm_train(x, weight=None, bias=None, eps=1e-5):
    """(y, mean, biased var, unbiased var) with per-channel statistics over N (and H, W)."""
    x = f64(x)
    c_ = x.shape[1]
    y = np.zeros_like(x)
    means, vars_, uvars = np.zeros(c_), np.zeros(c_), np.zeros(c_)
    for c in range(c_):
        vals = list(x[:, c].ravel())
        m = len(vals)
        mean = sum(vals) / m
        sq = sum((v - mean) ** 2 for v in vals)
        means[c], vars_[c], uvars[c] = mean, sq / m, sq / (m - 1)
        g = 1.0 if weight is None else float(weight[c])
        b = 0.0 if bias is None else float(bias[c])
        y[:, c] = (x[:, c] - mean) / math.sqrt(vars_[c] + eps) * g + b
    return y, means, vars_, uvars


def batch_norm_eval(x, running_mean, running_var, weight=None, bias=None, eps=1e-5):
    x = f64(x)
    y = np.zeros_like(x)
    for c in range(x.shape[1]):
        g = 1.0 if weight is None else float(weight[c])
        b = 0.0 if bias is None else float(bias[c])
        y[:, c] = (x[:, c] - running_mean[c]) / math.sqrt(running_var[c] + eps) * g + b
    return y


# ----------------------------------------------------------------------------- optimizers (torch.optim docs)

class SGD:
    """torch.optim.SGD's documented algorithm, float64, one parameter list."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        self.params = [f64(p) for p in params]
        self.lr, self.mu, self.tau, self.nesterov, self.wd = lr, momentum, dampening, nesterov, weight_decay
        self.bufs = [None] * len(params)

    def step(self, grads):
        for i, g in enumerate(grads):
            g = f64(g)
            if self.wd != 0:
                g = g + self.wd * self.params[i]
            if self.mu != 0:
                if self.bufs[i] is None:
                    self.bufs[i] = g.copy()
                else:
                    self.bufs[i] = self.mu * self.bufs[i] + (1 - self.tau) * g
                g = g + self.mu * self.bufs[i] if self.nesterov else self.bufs[i]
            self.params[i] = self.params[i] - self.lr * g


class Adam:
    """torch.optim.Adam's documented algorithm (no amsgrad), float64."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.params = [f64(p) for p in params]
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        for i, g in enumerate(grads):
            g = f64(g)
            if self.wd != 0:
                g = g + self.wd * self.params[i]
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            m_hat = self.m[i] / (1 - self.b1 ** self.t)
            v_hat = self.v[i] / (1 - self.b2 ** self.t)
            self.params[i] = self.params[i] - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
