"""NumPy softmax family: softmax, log_softmax, softmax_backward, the softmax cross-entropy loss,
and the loss bookkeeping (label_errors, accumulate_loss_stats).
"""
from __future__ import annotations

import numpy as np

from .._base import register

B = "numpy"


# --------------------------------------------------------------------------- softmax and loss

@register("softmax", B)
def softmax(x, dim):
    if x.shape[dim] == 0:  # no classes: nothing to reduce (np.max has no identity)
        return np.empty_like(x)
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


@register("log_softmax", B)
def log_softmax(x, dim):
    if x.shape[dim] == 0:
        return np.empty_like(x)
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


# --------------------------------------------------------------------------- loss bookkeeping

@register("label_errors", B)
def label_errors(reset=True):
    """None: host labels are checked before the loss runs (shapes.class_indices), never recorded."""
    return None


@register("accumulate_loss_stats", B)
def accumulate_loss_stats(logits, labels, loss, loss_sum, correct):
    loss_sum[0] += loss * len(labels)
    correct[0] += int((logits.argmax(axis=1) == labels).sum())
