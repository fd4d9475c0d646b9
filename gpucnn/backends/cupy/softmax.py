"""Launchers for kernels/softmax.cu: softmax, log_softmax, softmax_backward, fused softmax cross-entropy.

`dim` arrives resolved to [0, ndim) by gpucnn.functional; the array is seen as (outer, D, inner)
(`gpucnn.shapes.softmax_rows`). inner == 1 runs the warp-per-row kernels (a grid of 32 threads per
row), inner > 1 the thread-per-row strided ones.
"""
from __future__ import annotations

import numpy as np

from ... import shapes
from .._base import register
from . import _runtime as rt

B = "cupy"
K = rt.Family("softmax", ["softmax_rows<false>", "softmax_rows<true>", "softmax_strided<false>",
                          "softmax_strided<true>", "softmax_bwd_rows", "softmax_bwd_strided",
                          "softmax_xent<int>", "softmax_xent<long long>", "xent_mean", "xent_stats<int>",
                          "xent_stats<long long>"])
WARP = 32


def _launch(kind, arrays, shape, dim):
    """One softmax-family kernel over every row: warp per row when rows are contiguous, else thread per row."""
    rows, d, inner = shapes.softmax_rows(shape, dim)
    if not rows:
        return
    if inner == 1:
        K.launch(kind.format("rows"), *rt.grid_1d(rows * WARP), (*arrays, rt.i32(rows), rt.i32(d)))
    else:
        K.launch(kind.format("strided"), *rt.grid_1d(rows), (*arrays, rt.i32(rows), rt.i32(d), rt.i32(inner)))


def _softmax(op, x, dim, log):
    x = rt.operand(op, "x", x)
    out = rt.empty(x.shape)
    _launch("softmax_{}<" + ("true" if log else "false") + ">", (x, out), x.shape, dim)
    return out


@register("softmax", B)
def softmax(x, dim):
    return _softmax("softmax", x, dim, log=False)


@register("log_softmax", B)
def log_softmax(x, dim):
    return _softmax("log_softmax", x, dim, log=True)


@register("softmax_backward", B)
def softmax_backward(dy, y, dim):
    dy, y = rt.operand("softmax_backward", "dy", dy), rt.operand("softmax_backward", "y", y)
    dx = rt.empty(y.shape)
    _launch("softmax_bwd_{}", (dy, y, dx), y.shape, dim)
    return dx


@register("softmax_cross_entropy", B)
def softmax_cross_entropy(logits, labels):
    """(loss, dlogits): a rows kernel and a one-block deterministic mean; loss a 0-d float32 array (NaN for
    an empty batch, as NumPy's mean). Labels out of range are not checked here (that would read them on
    the host): the kernel records them in the device's error record, see `label_errors`."""
    logits = rt.operand("softmax_cross_entropy", "logits", logits)
    labels = rt.int_operand("softmax_cross_entropy", "labels", labels)
    n, c = (int(s) for s in logits.shape)
    dlogits = rt.empty((n, c))
    loss = rt.empty(())
    if n == 0 or c == 0:
        loss.fill(np.nan)
        return loss, dlogits
    row_loss = rt.empty((n,))
    err = _LABELS.array()
    K.launch(f"softmax_xent<{rt.c_type(labels.dtype)}>", *rt.grid_1d(n * WARP),
             (logits, labels, dlogits, row_loss, err, rt.i32(n), rt.i32(c), rt.f32(n)))
    K.launch("xent_mean", (1,), (rt.THREADS,), (row_loss, loss, err, rt.i32(n), rt.f32(n)))
    return loss, dlogits


# kernels/softmax.cu's XENT_ERR_*: first bad launch (-1 none), its row, its label, its classes, launches
_LABELS = rt.ErrorRecord([-1, 0, 0, 0, 0])


@register("label_errors", B)
def label_errors(reset=True):
    """None, or (launch, row, label, classes) of the first label out of range the loss kernels met since the
    last reset (launch: loss launches counted from that reset, 0-based). One device-to-host read."""
    launch, row, label, classes, _ = _LABELS.read(reset)
    return None if launch < 0 else (launch, row, label, classes)


@register("accumulate_loss_stats", B)
def accumulate_loss_stats(logits, labels, loss, loss_sum, correct):
    """loss_sum += loss * rows, correct += rows predicted right: on the device (no host round trip)."""
    n, c = (int(s) for s in logits.shape)
    K.launch(f"xent_stats<{rt.c_type(labels.dtype)}>", (1,), (rt.THREADS,),
             (logits, labels, loss, rt.i32(n), rt.i32(c), loss_sum, correct))
