"""A training step captured once as a CUDA graph and replayed: fit(..., cuda_graph=True).

What makes a step capturable, and how this module gets it:
- no device allocation in the step: every launcher output comes from a `_runtime.Arena` carved by
  a bump pointer, the same addresses every step (allocated during the first, eager steps);
- no host synchronization: the loss and the count of correct predictions accumulate on the device
  (`xent_stats`), read once an epoch;
- nothing the host changes between steps baked into a kernel argument: the batch is copied into
  fixed input buffers before each replay; Adam's step count and bias corrections live on the device
  (`adam_advance`); SGD's first step (momentum buffers set from the gradient) runs eagerly before the
  capture. Dropout draws a fresh seed on the host every step, so a model with Dropout is refused.

Emulated (no GPU), the capture records the kernel launches and a replay runs them again: the tests
check that replays give the weights of plain steps, which fails if the step did anything a replay
would not repeat.
"""
from __future__ import annotations

import numpy as np

from ... import functional as F
from ...layers import Dropout
from . import _runtime as rt
from .softmax import accumulate_stats

EAGER_STEPS = 2  # before the capture: arena sizing, optimizer state, SGD's first step


class CapturedStep:
    """Train `model` on batches of exactly `batch_size` rows through one captured graph."""

    def __init__(self, model, batch_size: int, labels_dtype=np.int64):
        from ...backend import current_backend
        if current_backend() != "cupy":
            raise ValueError(f"cuda_graph=True needs the cupy backend (use_backend('cupy')), not {current_backend()!r}")
        dropouts = [layer.name for layer in model.layers if isinstance(layer, Dropout)]
        if dropouts:
            raise ValueError(f"cuda_graph=True: {', '.join(dropouts)} draw a new dropout seed on the host every step, "
                             "which a captured graph would freeze; train this model without cuda_graph")
        self.model = model
        self.batch_size = int(batch_size)
        self.x = rt.persistent_empty((self.batch_size,) + tuple(model.input_shape), np.float32)
        self.y = rt.persistent_empty((self.batch_size,), labels_dtype)
        self.arena = rt.Arena()
        self.loss_sum = rt.zeros((1,), np.float32)
        self.correct = rt.zeros((1,), np.int32)
        self.graph = None
        self.eager = 0
        self.replays = 0
        # Every step, replay, batch copy and statistics read of this step runs on this non-blocking
        # stream, so they are ordered with each other and never with other streams' work; fit runs
        # its whole epoch loop (plain steps for a short last batch too) inside `with step.stream:`.
        self.stream = rt.new_stream()

    def _step(self):
        m = self.model
        with rt.workspace(self.arena):
            logits = m.forward(self.x, training=True, logits=True)
            loss, dlogits = F.softmax_cross_entropy(logits, self.y)
            m.backward(dlogits, input_grad=False)
            m.optimizer.step(m.parameters(), m.grads())
            accumulate_stats(logits, self.y, loss, self.loss_sum, self.correct)

    def step(self, xb, yb) -> None:
        """One training step on this batch (host or device arrays of the fixed batch size)."""
        if len(xb) != self.batch_size:
            raise ValueError(f"a captured step takes batches of {self.batch_size} rows, got {len(xb)}")
        with self.stream:
            _copy_into(self.x, xb)
            _copy_into(self.y, yb)
            if self.eager < EAGER_STEPS:
                self._step()
                self.eager += 1
                return
            if self.graph is None:  # captured, not run: the optimizer counted this step already
                self.graph = rt.Graph(self._step, self.stream)
            else:
                self.model.optimizer.steps += 1   # a replay runs no Python: keep the host's step count
            self.graph.launch()
            self.replays += 1

    def take_stats(self) -> tuple[float, int]:
        """(sum of batch losses x batch sizes, correct predictions) since the last call; one host read."""
        with self.stream:
            loss = float(F.to_numpy(self.loss_sum)[0])
            correct = int(F.to_numpy(self.correct)[0])
            self.loss_sum.fill(0)
            self.correct.fill(0)
        return loss, correct


def _copy_into(dst, src) -> None:
    """Copy a batch (a host array: uploaded; a device array: a device copy) into a fixed input buffer.
    Only widening conversions (int32 labels into int64), never a silent narrowing."""
    if not np.can_cast(src.dtype, dst.dtype, "safe"):
        raise TypeError(f"a captured step's input of dtype {dst.dtype} cannot take a batch of dtype {src.dtype}")
    if isinstance(src, np.ndarray):
        dst.set(np.ascontiguousarray(src.reshape(dst.shape), dst.dtype))
    else:
        dst[...] = src.reshape(dst.shape)
