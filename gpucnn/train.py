"""Training loop: fit / evaluate / predict with Keras' arguments and PyTorch's math.

The loss is softmax cross-entropy on the model's logits (its output before a
final softmax, see Model.forward), mean over the batch. Labels are integer
class indices (N,) or (N, 1) (as Keras' sparse categorical cross-entropy reads
them), or float one-hot rows exactly as wide as the model's output; anything
else is refused before training starts (shapes.class_indices).

On a backend with a batch feeder (cupy) the batches reach the device from
pinned host memory, double buffered; fit checks the device's record of labels
out of range once an epoch, where it reads the epoch's statistics anyway.
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np
from tqdm.auto import tqdm

from . import backend
from . import functional as F
from .data import epoch_order
from .shapes import class_indices


class History:
    """Per-epoch metrics, as Keras' History: history['loss'], ['accuracy'], ['val_loss'], ['val_accuracy']."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        return f"History({self.history})"


def _check_nonempty(x, what):
    if len(x) == 0:
        raise ValueError(f"{what} needs at least one sample, got an empty array of shape {tuple(np.shape(x))}")


def _classes(model) -> int | None:
    """The number of classes the model's output scores (None when its output is not a vector)."""
    out = tuple(model.layers[-1].output_shape) if model.layers else ()
    return int(out[0]) if len(out) == 1 else None


def _labels(y, n, model) -> np.ndarray:
    """Host labels as int64 class indices, checked against the model: (N,) or (N, 1) integers, or float
    one-hot rows as wide as the model's output (shapes.class_indices, as the loss reads them)."""
    if not isinstance(y, np.ndarray):
        y = np.asarray(y)  # lists; a device array refuses (fit and evaluate take host arrays)
    return np.ascontiguousarray(class_indices(y, n, _classes(model)), np.int64)


def train_step(model, xb, yb, yb_host=None):
    """One forward, loss, backward and optimizer step; returns (loss, number correct) as host numbers.
    yb may be on the device; yb_host is then the same labels on the host (for the accuracy)."""
    logits = model.forward(xb, training=True, logits=True)
    loss, dlogits = F.softmax_cross_entropy(logits, yb)
    model.backward(dlogits, input_grad=False)
    model.optimizer.step(model.parameters(), model.grads())
    correct = int((F.to_numpy(logits).argmax(axis=1) == (yb if yb_host is None else yb_host)).sum())
    return float(F.to_numpy(loss)), correct


def _live_bar() -> bool:
    """Whether verbose=1 draws a live progress bar: in a notebook, or when stderr is a terminal. Into a file
    or a pipe it prints one line an epoch instead (a bar's carriage-return updates only clutter a log)."""
    if any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__):  # tqdm.auto picked the notebook widget
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def fit(model, x, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0, shuffle=True, seed=None,
        verbose=1, cuda_graph=False, distributed=False, bucket_bytes=None, sync_batchnorm=False) -> History:
    """Train `model` on host arrays x (N, ...) and labels y; returns a History.

    distributed=True (under mpiexec, see gpucnn.distributed): data-parallel over the MPI job's ranks.
    Every rank must call fit with the same model, data and arguments; batch_size is the global batch
    (divisible by the number of ranks), every rank starts from rank 0's weights, takes its contiguous
    share of each global batch of the seeded epoch order, and the gradients are averaged (in buckets of
    about bucket_bytes, overlapping the backward pass) before the optimizer step; loss, accuracy and the
    validation figures are reduced over ranks and only rank 0 reports. Dropout masks depend on the step
    and the sample's place in the global batch, not on the rank, so the trained model is the same for
    any number of ranks (to float rounding). BatchNorm2D keeps per-rank batch statistics by default (as
    PyTorch's DistributedDataParallel); its running statistics are those of each rank's own batches.
    sync_batchnorm=True (with distributed=True) synchronizes them instead, as PyTorch's SyncBatchNorm:
    every BatchNorm2D normalizes with the global batch's mean and variance, and its running statistics
    are the global batch's, alike on every rank (two small blocking allreduces per layer and step; see
    gpucnn.distributed.DataParallel). With it, batch-norm models too train as in one process.

    cuda_graph=True (cupy backend, models without Dropout): full batches run as one captured CUDA
    graph, replayed with no allocation and no host synchronization per step; loss and accuracy are
    read once an epoch (the progress bar then shows no running loss). A last, smaller batch runs
    as a plain step.
    """
    _check_nonempty(x, "fit")
    y = _labels(y, len(x), model)
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if validation_data is None and validation_split:
        cut = len(x) - int(round(len(x) * validation_split))  # the last fraction, as Keras
        validation_data = (x[cut:], y[cut:])
        x, y = x[:cut], y[:cut]
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if model.optimizer is None:
        model.compile("adam")
    ddp = None
    if sync_batchnorm and not distributed:
        raise ValueError("fit: sync_batchnorm=True synchronizes batch statistics over the ranks of a "
                         "distributed run and needs distributed=True")
    if distributed:
        from . import distributed as dist
        if cuda_graph:
            raise ValueError("fit: cuda_graph=True and distributed=True do not go together (yet)")
        dist.init(model, (x, y))
        if batch_size % dist.size():
            raise ValueError(f"fit: batch_size {batch_size} is the global batch and must divide evenly over the "
                             f"{dist.size()} ranks (a multiple of {dist.size()})")
        dist.broadcast(model)
        ddp = dist.DataParallel(model, sync_batchnorm=sync_batchnorm,
                                **({} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}))
        if dist.rank() != 0:
            verbose = 0
    history = History()
    rng = np.random.default_rng(seed)
    captured = None
    if cuda_graph:
        from .capture import CapturedStep
        captured = CapturedStep(model, batch_size)
    # a device backend with a pinned, double-buffered batch feeder gets its batches through it
    make_feeder = backend.get_backend().batch_feeder
    feeder = make_feeder(x, y, batch_size) if make_feeder is not None and ddp is None else None
    F.clear_label_errors()
    live = verbose == 1 and _live_bar()
    with ddp if ddp is not None else contextlib.nullcontext():
        _epochs(model, x, y, epochs, batch_size, validation_data, shuffle, verbose, rng, captured, feeder, live,
                history, ddp)
    model.history = history
    return history


def _shards(x, y, batch_size, order):
    """This rank's rows of every global batch: (xb, yb, offset in the global batch, global rows)."""
    from . import distributed as dist
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        lo, hi = dist.shard(len(idx))
        yield x[idx[lo:hi]], y[idx[lo:hi]], lo, len(idx)  # (xb, yb, offset, global rows)


def _epochs(model, x, y, epochs, batch_size, validation_data, shuffle, verbose, rng, captured, feeder, live, history,
            ddp):
    for epoch in range(epochs):
        n_batches = -(-len(x) // batch_size)
        order = epoch_order(len(x), shuffle, int(rng.integers(2**63)))  # the order data.batches takes
        if ddp is not None:
            it = ((xb, yb, yb, lo, rows) for xb, yb, lo, rows in _shards(x, y, batch_size, order))
        elif feeder is not None:  # fed from pinned memory
            it = feeder.epoch(order)
        else:
            it = ((x[idx], y[idx], y[idx]) for idx in (order[s:s + batch_size] for s in range(0, len(x), batch_size)))
        bar = tqdm(it, total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not live, leave=True)
        loss_sum, correct, seen = 0.0, 0, 0
        with captured.stream if captured is not None else contextlib.nullcontext():
            for xb, yb, yb_host, *rows in bar:
                seen += len(xb)
                if ddp is not None:  # this rank's rows: offset in the global batch, the global batch's rows
                    part_loss, ok = ddp.step(xb, yb, *rows)
                    loss_sum += part_loss
                    correct += ok
                    bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", accuracy=f"{correct / max(seen, 1):.4f}")
                    continue
                if captured is not None and len(xb) == batch_size:
                    captured.step(xb, yb)
                    continue
                loss, ok = train_step(model, xb, yb, yb_host)
                loss_sum += loss * len(xb)
                correct += ok
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", accuracy=f"{correct / seen:.4f}")
            if captured is not None:
                graph_loss, graph_correct = captured.take_stats()
                loss_sum += graph_loss
                correct += graph_correct
        try:  # labels out of range that only the device saw (one read, where the epoch synchronizes anyway)
            F.check_label_errors()
        except ValueError as e:
            raise ValueError(f"fit, epoch {epoch + 1}: {e}") from None
        if ddp is not None:  # the epoch's sums over every rank
            from . import distributed as dist
            loss_sum, correct, seen = dist.allreduce_sum_host([loss_sum, correct, seen])
        logs = {"loss": loss_sum / seen, "accuracy": correct / seen}
        if validation_data is not None:
            logs["val_loss"], logs["val_accuracy"] = evaluate(model, *validation_data, distributed=ddp is not None)
        history.append(epoch, logs)
        line = f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={v:.4f}" for k, v in logs.items())
        if verbose == 2:
            print(line, flush=True)
        elif verbose == 1 and not live:  # where the bar would have gone: stderr
            print(line, file=sys.stderr, flush=True)
        elif verbose == 1 and validation_data is not None:
            bar.write(f"  val_loss={logs['val_loss']:.4f} val_accuracy={logs['val_accuracy']:.4f}")


def _logits(model, x, batch_size):
    for start in range(0, len(x), batch_size):
        yield model.forward(x[start: start + batch_size], training=False, logits=True)


def evaluate(model, x, y, batch_size=256, distributed=False) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) on x, y in inference mode.

    distributed=True (gpucnn.distributed, every rank calling it with the same x, y): each rank evaluates
    its contiguous share and the sums are reduced over the ranks."""
    _check_nonempty(x, "evaluate")
    y = _labels(y, len(x), model)
    if not distributed:
        loss_sum, correct = _evaluate_sums(model, x, y, batch_size)
        return loss_sum / len(x), correct / len(x)
    from . import distributed as dist
    lo, hi = dist.shard(len(x))
    loss_sum, correct = _evaluate_sums(model, x[lo:hi], y[lo:hi], batch_size)
    loss_sum, correct, n = dist.allreduce_sum_host([loss_sum, correct, hi - lo])
    return float(loss_sum / n), float(correct / n)


def _evaluate_sums(model, x, y, batch_size) -> tuple[float, int]:
    """(sum of per-sample losses, correct predictions) over host x and checked labels y (may be empty)."""
    loss_sum, correct = 0.0, 0
    for i, logits in enumerate(_logits(model, x, batch_size)):
        yb = y[i * batch_size: (i + 1) * batch_size]
        loss, _ = F.softmax_cross_entropy(logits, yb)
        loss_sum += float(F.to_numpy(loss)) * len(yb)
        correct += int((F.to_numpy(logits).argmax(axis=1) == yb).sum())
    return loss_sum, correct


def predict(model, x, batch_size=256) -> np.ndarray:
    """The model's outputs (inference mode) for x, as one host array."""
    _check_nonempty(x, "predict")
    outs = [F.to_numpy(model.forward(x[s: s + batch_size])) for s in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)
