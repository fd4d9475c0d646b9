"""The op API: stateless NCHW ops, each forward with its backward beside it.

Names and argument meanings follow ``torch.nn.functional``. Every function
checks its inputs once (``gpucnn.shapes``), then dispatches to the current
backend (``gpucnn.use_backend``). Arrays are float32; float64 is accepted for
gradient checks; all floating arrays of one call share a dtype (nothing is cast).
Arrays stay in the backend's own type: NumPy arrays on 'numpy', device arrays
on the GPU backends (move them with ``asarray`` / ``to_numpy``).
"""
from __future__ import annotations

import numbers

from . import shapes
from .backend import dispatch, get_backend

__all__ = [
    "conv2d", "conv2d_relu", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "relu", "relu_backward", "upsample_nearest2d", "upsample_nearest2d_backward",
    "linear", "linear_backward", "softmax", "log_softmax", "softmax_backward",
    "softmax_cross_entropy", "dropout", "dropout_backward", "batch_norm", "batch_norm_backward",
    "sync_batch_norm", "sync_batch_norm_backward", "add", "concat", "concat_backward", "sgd_step", "adam_step",
    "asarray", "to_numpy", "zeros_like", "accumulate_loss_stats", "check_label_errors", "clear_label_errors",
    "check_index_errors",
]


def _fits(op: str, what: str, shape, dtype) -> None:
    """The array `op` would create (an output larger than its inputs) is one the current backend can hold."""
    be = get_backend()
    shapes.check_size(op, what, shape, dtype, be.max_elements, be.name)


# --------------------------------------------------------------------------- convolution

def conv2d(x, w, b=None, stride=1, padding=0):
    """Cross-correlation of x (N,C,H,W) with w (K,C,R,S), plus bias b (K,).

    stride: int or pair; padding: int, pair, 'valid' or 'same' (stride 1 only).
    Output (N, K, floor((H+2p-R)/s)+1, floor((W+2p-S)/s)+1).
    """
    stride_hw, pads, out_shape = shapes.check_conv2d(x, w, b, stride, padding)
    _fits("conv2d", "the output", out_shape, x.dtype)
    return dispatch("conv2d", x, w, b, stride_hw, pads, out_shape)


def conv2d_relu(x, w, b=None, stride=1, padding=0):
    """relu(conv2d(x, w, b, stride, padding)) in one op (the fused epilogue of the GPU backends)."""
    stride_hw, pads, out_shape = shapes.check_conv2d(x, w, b, stride, padding)
    _fits("conv2d_relu", "the output", out_shape, x.dtype)
    return dispatch("conv2d_relu", x, w, b, stride_hw, pads, out_shape)


def conv2d_backward(dy, x, w, stride=1, padding=0, input_grad=True, relu_mask=False):
    """Gradients of conv2d: (dx, dw, db) for the upstream gradient dy (N,K,P,Q).

    input_grad=False skips the data gradient (dx is None), as for a first layer.
    relu_mask=True says x is the output of a ReLU: dx is then the gradient with
    respect to that ReLU's input (zero where x <= 0), the ReLU's backward fused
    into this one (one pass over dx fewer).
    """
    stride_hw, pads, out_shape = shapes.check_conv2d(x, w, None, stride, padding)
    shapes.check_grad_output(dy, "dy", out_shape, x)
    if relu_mask:
        return dispatch("conv2d_backward", dy, x, w, stride_hw, pads, bool(input_grad), relu_mask=True)
    return dispatch("conv2d_backward", dy, x, w, stride_hw, pads, bool(input_grad))


# --------------------------------------------------------------------------- pooling

def max_pool2d(x, kernel_size, stride=None, return_indices=False):
    """Max over each kernel_size window (stride defaults to kernel_size, no padding, floor).

    With return_indices=True also returns, per output, the flat index h*W+w of
    the first maximum of its window in the input plane (as PyTorch does). NaN
    propagates as in PyTorch: a window holding NaN gives NaN, at the index of its
    last NaN in row-major order.
    """
    kernel_hw, stride_hw, out_shape = shapes.check_pool2d(x, kernel_size, stride)
    y, idx = dispatch("max_pool2d", x, kernel_hw, stride_hw, out_shape)
    return (y, idx) if return_indices else y


def relu_max_pool2d(x, kernel_size, stride=None, return_indices=False):
    """max_pool2d(relu(x)) in one op: the ReLU before a pool fused into it (max and ReLU commute).

    Indices, when returned, are those of max_pool2d on relu(x).
    """
    kernel_hw, stride_hw, out_shape = shapes.check_pool2d(x, kernel_size, stride)
    y, idx = dispatch("relu_max_pool2d", x, kernel_hw, stride_hw, out_shape)
    return (y, idx) if return_indices else y


def max_pool2d_backward(dy, x, kernel_size, stride=None, indices=None):
    """dx: each dy element goes to the first maximum of its window (PyTorch's rule; a window holding NaN
    sends it to its last NaN, as max_pool2d's index says).

    Pass the indices from ``max_pool2d(..., return_indices=True)`` to skip the search. Each index must be
    the position of an element of its own window: host indices are checked here (ValueError); device
    indices are not read back, the GPU kernels give dy only to positions inside the window and record the
    first index outside it for ``check_index_errors``.
    """
    kernel_hw, stride_hw, out_shape = shapes.check_pool2d(x, kernel_size, stride)
    shapes.check_grad_output(dy, "dy", out_shape, x)
    if indices is not None:
        shapes.check_indices(indices, out_shape, tuple(x.shape), kernel_hw, stride_hw)
    return dispatch("max_pool2d_backward", dy, x, kernel_hw, stride_hw, indices)


def avg_pool2d(x, kernel_size, stride=None):
    """Mean over each kernel_size window (stride defaults to kernel_size, no padding, floor)."""
    kernel_hw, stride_hw, out_shape = shapes.check_pool2d(x, kernel_size, stride)
    return dispatch("avg_pool2d", x, kernel_hw, stride_hw, out_shape)


def avg_pool2d_backward(dy, x, kernel_size, stride=None):
    kernel_hw, stride_hw, out_shape = shapes.check_pool2d(x, kernel_size, stride)
    shapes.check_grad_output(dy, "dy", out_shape, x)
    return dispatch("avg_pool2d_backward", dy, x, kernel_hw, stride_hw)


# --------------------------------------------------------------------------- elementwise

def relu(x):
    """max(0, x); NaN passes through (as torch.relu)."""
    shapes.check_array(x, "x")
    return dispatch("relu", x)


def relu_backward(dy, x):
    """0 where x <= 0, else dy (x may also be relu's output: the mask is the same). A NaN x passes dy, and
    an inf or NaN dy where x <= 0 gives 0, as PyTorch's threshold_backward."""
    shapes.check_array(x, "x")
    shapes.check_grad_output(dy, "dy", tuple(x.shape), x)
    return dispatch("relu_backward", dy, x)


def _scale(scale) -> tuple[int, int]:
    return shapes.positive_pair(scale, "scale")


def upsample_nearest2d(x, scale):
    """Nearest-neighbour upsampling by an integer factor (int or pair): each value repeated."""
    shapes.check_array(x, "x", 4)
    sh, sw = _scale(scale)
    n, c, h, w = x.shape
    _fits("upsample_nearest2d", "the output", (n, c, h * sh, w * sw), x.dtype)
    return dispatch("upsample_nearest2d", x, (sh, sw))


def upsample_nearest2d_backward(dy, scale):
    """Sum of dy over each replicated block."""
    shapes.check_array(dy, "dy", 4)
    sh, sw = _scale(scale)
    if dy.shape[2] % sh or dy.shape[3] % sw:
        raise ValueError(f"dy spatial shape {tuple(dy.shape[2:])} is not a multiple of scale {(sh, sw)}")
    return dispatch("upsample_nearest2d_backward", dy, (sh, sw))


def add(a, b):
    """a + b for two arrays of one shape (the Add layer)."""
    shapes.check_array(a, "a")
    shapes.check_array(b, "b")
    shapes.check_same_dtype(a=a, b=b)
    shapes.check_shape(b, "b", tuple(a.shape))
    return dispatch("add", a, b)


def concat(xs):
    """Concatenate NCHW arrays along channels (the Concatenate layer)."""
    if not xs:
        raise ValueError("concat needs at least one array")
    for i, x in enumerate(xs):
        shapes.check_array(x, f"xs[{i}]", 4)
        shapes.check_same_dtype(first=xs[0], **{f"xs[{i}]": x})
        if (x.shape[0],) + tuple(x.shape[2:]) != (xs[0].shape[0],) + tuple(xs[0].shape[2:]):
            raise ValueError(
                f"concat needs equal N, H, W; xs[0] has shape {tuple(xs[0].shape)}, xs[{i}] has {tuple(x.shape)}"
            )
    n, _, h, w = xs[0].shape
    _fits("concat", "the output", (n, sum(int(x.shape[1]) for x in xs), h, w), xs[0].dtype)
    return dispatch("concat", list(xs))


def concat_backward(dy, channels):
    """Split dy along channels into pieces of the given channel counts (ints >= 0 adding up to dy's)."""
    shapes.check_array(dy, "dy", 4)
    return dispatch("concat_backward", dy, shapes.channel_counts(channels, int(dy.shape[1])))


# --------------------------------------------------------------------------- dense

def linear(x, w, b=None):
    """x @ w.T + b for x (N, in), w (out, in), b (out,)."""
    out_shape = shapes.check_linear(x, w, b)
    _fits("linear", "the output", out_shape, x.dtype)
    return dispatch("linear", x, w, b, out_shape)


def linear_backward(dy, x, w):
    """(dx, dw, db) of linear for the upstream gradient dy (N, out)."""
    out_shape = shapes.check_linear(x, w, None)
    shapes.check_grad_output(dy, "dy", out_shape, x)
    return dispatch("linear_backward", dy, x, w)


# --------------------------------------------------------------------------- softmax and loss

def _dim(x, dim):
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be an int in [{-x.ndim}, {x.ndim}), got {dim!r}")
    return int(dim) % x.ndim


def softmax(x, dim=1):
    """exp(x) / sum(exp(x)) along dim, computed stably (max subtracted)."""
    shapes.check_array(x, "x")
    return dispatch("softmax", x, _dim(x, dim))


def log_softmax(x, dim=1):
    shapes.check_array(x, "x")
    return dispatch("log_softmax", x, _dim(x, dim))


def softmax_backward(dy, y, dim=1):
    """Gradient through softmax given its output y: y * (dy - sum(dy * y))."""
    shapes.check_array(y, "y")
    shapes.check_grad_output(dy, "dy", tuple(y.shape), y)
    return dispatch("softmax_backward", dy, y, _dim(y, dim))


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    logits (N, classes); labels: integer class indices (N,) or (N, 1), or on
    the host float one-hot rows (N, classes). Returns (loss, dlogits): loss a
    0-d array of the logits' dtype, stable for large logits; dlogits =
    (softmax(logits) - one_hot(labels)) / N.

    Host labels out of range raise ValueError here. Device labels are not read
    back to check them (a synchronization per call, illegal in a CUDA-graph
    capture): a row with a label out of range gets a NaN loss and a zero
    gradient, and the kernel records it for ``check_label_errors``.
    """
    shapes.check_array(logits, "logits", 2)
    labels = shapes.class_indices(labels, logits.shape[0], logits.shape[1])
    return dispatch("softmax_cross_entropy", logits, labels)


def check_label_errors(reset=True) -> None:
    """Raise ValueError if a softmax_cross_entropy on device labels met a label out of range.

    The loss kernels record the first such label on the device; this reads the
    record (one device-to-host copy: call it where you synchronize anyway, as
    ``fit`` does once an epoch) and, with reset=True, clears it. The error names
    the loss call, counted from 0 since the last reset (in fit: the batch of
    the epoch), the row, the label and the number of classes.
    """
    err = dispatch("label_errors", bool(reset))
    if err is not None:
        call, row, label, classes = err
        raise ValueError(f"label {label} at row {row} of loss call {call} (counted from 0 since the last check; "
                         f"in fit, the batch of the epoch) is outside [0, {classes}): labels must be class indices "
                         f"below the number of classes")


def check_index_errors(reset=True) -> None:
    """Raise ValueError if a max_pool2d_backward on device indices met an index outside its own window.

    Host indices are checked before any kernel runs; device indices are not read back (a synchronization
    per backward step). The GPU kernels give dy only to positions inside each window and record the first
    index outside it; this reads the record (one device-to-host copy) and, with reset=True, clears it.
    Indices from max_pool2d(..., return_indices=True), as the layers pass them, never get here.
    """
    err = dispatch("index_errors", bool(reset))
    if err is not None:
        at, index = err
        raise ValueError(f"max_pool2d_backward (since the last check) met index {index} at position {at} of the "
                         f"pooled output (flat over N, C, P, Q), outside its window: indices must be positions of "
                         f"elements of their own window, as max_pool2d(..., return_indices=True) returns them; that "
                         f"window's gradient went nowhere")


# --------------------------------------------------------------------------- regularization

def dropout(x, p=0.5, training=True, seed=None):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    Returns (y, mask) where mask holds 0 or 1/(1-p) (pass it to
    dropout_backward); in eval mode (training=False) or p=0, returns (x, None).
    seed: an int in [0, 2**64) for a reproducible mask (the same on every call of one
    backend; each backend draws its own), None for a fresh one.
    """
    shapes.check_array(x, "x")
    if not (isinstance(p, numbers.Real) and 0 <= p < 1):
        raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"dropout seed must be None or an int in [0, 2**64), got {seed!r}")
        if not 0 <= seed < 2**64:
            raise ValueError(f"dropout seed must be None or an int in [0, 2**64), got {seed!r}")
        seed = int(seed)
    if not training or p == 0:
        return x, None
    return dispatch("dropout", x, float(p), seed)


def dropout_backward(dy, mask):
    shapes.check_array(dy, "dy")
    if mask is None:
        return dy
    shapes.check_grad_output(mask, "mask", tuple(dy.shape), dy)
    return dispatch("dropout_backward", dy, mask)


def _check_bn(x, running_mean, running_var, weight, bias):
    shapes.check_array(x, "x", (2, 4))
    c = x.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if a is not None:
            shapes.check_array(a, name, 1)
            shapes.check_shape(a, name, (c,))
    shapes.check_same_dtype(x=x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalization over N (and H, W) per channel of x (N,C) or (N,C,H,W).

    training=True normalizes with the batch statistics and updates
    running_mean / running_var in place (unbiased variance, as PyTorch);
    training=False uses the running statistics. Returns (y, save_mean,
    save_invstd) — the mean and 1/sqrt(var+eps) used, for batch_norm_backward.
    """
    _check_bn(x, running_mean, running_var, weight, bias)
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm in eval mode (training=False) needs running_mean and running_var")
    if training and x.shape[1] and x.size // x.shape[1] < 2:
        raise ValueError(f"batch_norm in training needs more than one value per channel, got x of shape {tuple(x.shape)}")
    return dispatch("batch_norm", x, running_mean, running_var, weight, bias, bool(training), float(momentum), float(eps))


def batch_norm_backward(dy, x, weight, save_mean, save_invstd, training=True):
    """(dx, dweight, dbias) of batch_norm; dweight/dbias are None when weight is None."""
    for name, a in (("save_mean", save_mean), ("save_invstd", save_invstd)):
        if a is None:
            raise TypeError(f"batch_norm_backward needs {name}, the array batch_norm returned, got None")
    _check_bn(x, save_mean, save_invstd, weight, None)
    shapes.check_grad_output(dy, "dy", tuple(x.shape), x)
    return dispatch("batch_norm_backward", dy, x, weight, save_mean, save_invstd, bool(training))


# Synchronized batch norm (PyTorch's SyncBatchNorm) for data-parallel training: the training-mode batch_norm
# of the global batch, each rank holding some of its rows. `allreduce(v)` sums a small host float64 vector
# over the ranks (a blocking collective: every rank calls these two functions for the same layers in the
# same order, a rank with no rows too, with x of 0 rows). Only the backend's own kernels run on the
# arrays (batch_norm, batch_norm_backward, add); the per-channel statistics meet on the host.

def _host64(a):
    import numpy as np
    return np.array(get_backend().to_host(a), np.float64)  # a copy (the NumPy backend's to_host is the array)


def sync_batch_norm(x, running_mean, running_var, weight, bias, allreduce, momentum=0.1, eps=1e-5):
    """Training-mode batch_norm with the statistics of the global batch: one allreduce of this rank's
    per-channel [count, sum, sum of squares] (2C + 1 float64), then the global mean and biased variance
    normalize x and the running statistics take the global mean and the global unbiased variance.

    Returns (y, save_mean, save_invstd, count, running_mean, running_var): save_* for
    sync_batch_norm_backward, count the global number of values per channel, and the updated running
    statistics as new arrays (None where none was given; the arrays given are not written)."""
    import numpy as np
    _check_bn(x, running_mean, running_var, weight, bias)
    be = get_backend()
    c = int(x.shape[1])
    m = x.size // c if c else 0
    mean, var = np.zeros(c), np.zeros(c)
    if m >= 2:  # this rank's mean and biased variance from the kernel (momentum 1: the running arrays get them)
        rm, rv = be.zeros((c,), x.dtype), be.zeros((c,), x.dtype)
        dispatch("batch_norm", x, rm, rv, None, None, True, 1.0, float(eps))
        mean, var = _host64(rm), _host64(rv) * ((m - 1) / m)  # the kernel stored the unbiased variance
    elif m == 1:  # one value per channel: it is the mean, the variance is 0
        mean = _host64(x).reshape(c)
    total = np.asarray(allreduce(np.concatenate([[m], m * mean, m * (var + mean * mean)])), np.float64)
    count = total[0]
    if count < 2:
        raise ValueError(f"batch_norm in training needs more than one value per channel over all ranks, got "
                         f"{count:g} (x of shape {tuple(x.shape)} on this rank)")
    gmean = total[1:c + 1] / count
    gvar = np.maximum(total[c + 1:] / count - gmean * gmean, 0.0)
    dt = np.dtype(x.dtype)
    new_rm = new_rv = None
    if running_mean is not None:
        new_rm = be.asarray(((1 - momentum) * _host64(running_mean) + momentum * gmean).astype(dt))
    if running_var is not None:
        unbiased = gvar * (count / (count - 1))
        new_rv = be.asarray(((1 - momentum) * _host64(running_var) + momentum * unbiased).astype(dt))
    # normalize with the global statistics: batch_norm in eval mode with them as its "running" statistics
    y, save_mean, save_invstd = dispatch("batch_norm", x, be.asarray(gmean.astype(dt)),
                                         be.asarray(gvar.astype(dt)), weight, bias, False, float(momentum),
                                         float(eps))
    return y, save_mean, save_invstd, count, new_rm, new_rv


def sync_batch_norm_backward(dy, x, weight, save_mean, save_invstd, count, allreduce, dy_scale=1.0):
    """(dx, dweight, dbias) of sync_batch_norm: one allreduce of this rank's per-channel sum(dy) and
    sum(dy * xhat) (2C float64), so dx is batch_norm_backward's over the global batch of `count` values per
    channel. dweight / dbias are this rank's sums (None when weight is None), for the gradient averaging.

    dy_scale: this rank's dy times dy_scale is on a scale shared by every rank (1 when every rank's loss is
    on one scale; gpucnn.distributed.DataParallel, whose ranks take the mean loss over their own rows, passes
    rows * ranks / global rows, the factor its gradients get before the mean over ranks)."""
    import numpy as np
    _check_bn(x, save_mean, save_invstd, weight, None)
    shapes.check_grad_output(dy, "dy", tuple(x.shape), x)
    be = get_backend()
    c = int(x.shape[1])
    dt = np.dtype(x.dtype)
    w = weight if weight is not None else be.asarray(np.ones(c, dt))
    sum_dy = sum_dy_xhat = np.zeros(c)
    if x.size:  # eval-mode backward: dx0 = dy * w * invstd, and the sums over this rank's values
        dx0, dw, db = dispatch("batch_norm_backward", dy, x, w, save_mean, save_invstd, False)
        sum_dy_xhat, sum_dy = _host64(dw), _host64(db)
    else:
        dx0, dw, db = dy, be.zeros((c,), dt), be.zeros((c,), dt)
    total = np.asarray(allreduce(np.concatenate([dy_scale * sum_dy, dy_scale * sum_dy_xhat])), np.float64)
    dx = dx0
    if x.size:
        # dx = (g - mean(g) - xhat * mean(g * xhat)) * invstd, g = dy * w, the means over the global batch:
        # dx0 + xhat * a + b per channel, added as an eval-mode batch_norm of x with mean save_mean,
        # variance 1 and eps 0 (so its own 1/sqrt is exactly 1), weight invstd * a and bias b.
        w_h, inv = _host64(w), _host64(save_invstd)
        k = -w_h * inv / (dy_scale * count)
        a, b = k * total[c:], k * total[:c]
        corr, _, _ = dispatch("batch_norm", x, save_mean, be.asarray(np.ones(c, dt)),
                              be.asarray((inv * a).astype(dt)), be.asarray(b.astype(dt)), False, 0.0, 0.0)
        dx = add(dx0, corr)
    if weight is None:
        return dx, None, None
    return dx, dw, db


# --------------------------------------------------------------------------- optimizer updates (in place)

def _check_param_lists(**lists):
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"parameter lists differ in length: {lengths}")
    first = next(iter(lists))
    for i, p in enumerate(lists[first]):
        for name, seq in lists.items():
            shapes.check_array(seq[i], f"{name}[{i}]")
            shapes.check_shape(seq[i], f"{name}[{i}]", tuple(p.shape))
            shapes.check_same_dtype(param=p, **{f"{name}[{i}]": seq[i]})


def sgd_step(params, grads, momentum_buffers, lr, momentum=0.0, dampening=0.0, nesterov=False,
             weight_decay=0.0, first_step=False):
    """One torch.optim.SGD update of every parameter, in place (buffers too).

    first_step=True initializes each momentum buffer with the gradient, as PyTorch does.
    """
    _check_param_lists(params=params, grads=grads, momentum_buffers=momentum_buffers)
    dispatch("sgd_step", params, grads, momentum_buffers, float(lr), float(momentum), float(dampening),
             bool(nesterov), float(weight_decay), bool(first_step))


def adam_step(params, grads, exp_avgs, exp_avg_sqs, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
              weight_decay=0.0):
    """One torch.optim.Adam update (L2 weight decay added to the gradient), in place; step counts from 1."""
    _check_param_lists(params=params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs)
    if step < 1:
        raise ValueError(f"adam step counts from 1, got {step}")
    dispatch("adam_step", params, grads, exp_avgs, exp_avg_sqs, int(step), float(lr), float(beta1),
             float(beta2), float(eps), float(weight_decay))


# --------------------------------------------------------------------------- arrays

def asarray(a):
    """A host array as the current backend's array (a copy to the device on GPU backends)."""
    return get_backend().asarray(a)


def to_numpy(a):
    """Any backend's array as a NumPy array on the host."""
    return get_backend().to_host(a)


def zeros_like(a):
    return get_backend().zeros(a.shape, a.dtype)


def accumulate_loss_stats(logits, labels, loss, loss_sum, correct) -> None:
    """Training statistics without a host read, in place: loss_sum[0] += loss * rows, correct[0] += the
    rows whose first maximal logit is at their label. A captured step (CUDA graph) accumulates them on
    the device and reads them once an epoch."""
    shapes.check_array(logits, "logits", 2)
    labels = shapes.class_indices(labels, logits.shape[0], logits.shape[1])
    dispatch("accumulate_loss_stats", logits, labels, loss, loss_sum, correct)


def clear_label_errors() -> None:
    """Forget what the loss kernels recorded so far (fit starts so); see check_label_errors."""
    dispatch("label_errors", True)
