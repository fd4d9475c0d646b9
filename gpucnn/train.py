"""Training loop: fit / evaluate / predict with Keras' arguments and PyTorch's math.

The loss is softmax cross-entropy on the model's logits (its output before a
final softmax, see Model.forward), mean over the batch. Labels may be integer
class indices (N,) or one-hot rows (N, classes).
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from . import functional as F
from .data import batches


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


def _labels(y, n) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:  # one-hot
        y = y.argmax(axis=1)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be (N,) class indices or (N, classes) one-hot with N={n}, got {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices (or one-hot rows), got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def train_step(model, xb, yb):
    """One forward, loss, backward and optimizer step; returns (loss, number correct) as host numbers."""
    logits = model.forward(xb, training=True, logits=True)
    loss, dlogits = F.softmax_cross_entropy(logits, yb)
    model.backward(dlogits, input_grad=False)
    model.optimizer.step(model.parameters(), model.grads())
    correct = int((F.to_numpy(logits).argmax(axis=1) == yb).sum())
    return float(F.to_numpy(loss)), correct


def fit(model, x, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0, shuffle=True, seed=None,
        verbose=1, cuda_graph=False) -> History:
    """Train `model` on host arrays x (N, ...) and labels y; returns a History.

    cuda_graph=True (cupy backend, models without Dropout): full batches run as one captured CUDA
    graph, replayed with no allocation and no host synchronization per step; loss and accuracy are
    read once an epoch (the progress bar then shows no running loss). A last, smaller batch runs
    as a plain step.
    """
    _check_nonempty(x, "fit")
    y = _labels(y, len(x))
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
    history = History()
    rng = np.random.default_rng(seed)
    captured = None
    if cuda_graph:
        from .backends.cupy.graph import CapturedStep
        captured = CapturedStep(model, batch_size)
    for epoch in range(epochs):
        n_batches = -(-len(x) // batch_size)
        it = batches(x, y, batch_size, shuffle=shuffle, seed=int(rng.integers(2**63)))
        bar = tqdm(it, total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", disable=verbose != 1, leave=True)
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in bar:
            seen += len(xb)
            if captured is not None and len(xb) == batch_size:
                captured.step(xb, yb)
                continue
            loss, ok = train_step(model, xb, yb)
            loss_sum += loss * len(xb)
            correct += ok
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", accuracy=f"{correct / seen:.4f}")
        if captured is not None:
            graph_loss, graph_correct = captured.take_stats()
            loss_sum += graph_loss
            correct += graph_correct
        logs = {"loss": loss_sum / seen, "accuracy": correct / seen}
        if validation_data is not None:
            logs["val_loss"], logs["val_accuracy"] = evaluate(model, *validation_data)
        history.append(epoch, logs)
        if verbose == 2:
            print(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={v:.4f}" for k, v in logs.items()), flush=True)
        elif verbose == 1 and validation_data is not None:
            bar.write(f"  val_loss={logs['val_loss']:.4f} val_accuracy={logs['val_accuracy']:.4f}")
    model.history = history
    return history


def _logits(model, x, batch_size):
    for start in range(0, len(x), batch_size):
        yield model.forward(x[start: start + batch_size], training=False, logits=True)


def evaluate(model, x, y, batch_size=256) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) on x, y in inference mode."""
    _check_nonempty(x, "evaluate")
    y = _labels(y, len(x))
    loss_sum, correct = 0.0, 0
    for i, logits in enumerate(_logits(model, x, batch_size)):
        yb = y[i * batch_size: (i + 1) * batch_size]
        loss, _ = F.softmax_cross_entropy(logits, yb)
        loss_sum += float(F.to_numpy(loss)) * len(yb)
        correct += int((F.to_numpy(logits).argmax(axis=1) == yb).sum())
    return loss_sum / len(x), correct / len(x)


def predict(model, x, batch_size=256) -> np.ndarray:
    """The model's outputs (inference mode) for x, as one host array."""
    _check_nonempty(x, "predict")
    outs = [F.to_numpy(model.forward(x[s: s + batch_size])) for s in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)
