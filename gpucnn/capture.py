"""A training step captured once as a CUDA graph and replayed: fit(..., cuda_graph=True).

Written against `functional` and the current backend's capture primitive (`Backend.capture`: a step
arena, a graph, a stream, device buffers; see backends/cupy) and nothing else. What makes a step
capturable, and how this module gets it:
- no device allocation in the step: every launcher output comes from the arena, carved by a bump
  pointer, the same addresses every step (allocated during the first, eager steps);
- no host synchronization: the loss and the count of correct predictions accumulate on the device
  (`functional.accumulate_loss_stats`), read once an epoch; labels are never read on the host (a
  label out of range is recorded on the device, see functional.check_label_errors);
- nothing the host changes between steps baked into a kernel argument: the batch is copied into
  fixed input buffers before each replay; Adam's step count and bias corrections live on the device;
  SGD's first step (momentum buffers set from the gradient) runs eagerly before the capture. Dropout
  draws a fresh seed on the host every step, so a model with Dropout is refused.

Emulated (no GPU), the capture records the kernel launches, fills and copies, refuses any host read
during it, and a replay runs the records again: the tests check that replays give the weights of
plain steps, which fails if the step did anything a replay would not repeat.
"""
from __future__ import annotations

import numpy as np

from . import backend
from . import functional as F
from .layers import Dropout

EAGER_STEPS = 2  # before the capture: arena sizing, optimizer state, SGD's first step


class CapturedStep:
    """Train `model` on batches of exactly `batch_size` rows through one captured graph."""

    def __init__(self, model, batch_size: int, labels_dtype=np.int64):
        here = backend.get_backend()
        if here.capture is None:
            capturing = [name for name in backend.names() if backend.get_backend(name).capture is not None]
            raise ValueError(f"cuda_graph=True needs a backend that can capture a step ({', '.join(capturing)}), "
                             f"not {here.name!r}")
        cap = self.capture = here.capture
        dropouts = [layer.name for layer in model.layers if isinstance(layer, Dropout)]
        if dropouts:
            raise ValueError(f"cuda_graph=True: {', '.join(dropouts)} draw a new dropout seed on the host every step, "
                             "which a captured graph would freeze; train this model without cuda_graph")
        self.model = model
        self.batch_size = int(batch_size)
        self.x = cap.empty((self.batch_size,) + tuple(model.input_shape), np.float32)
        self.y = cap.empty((self.batch_size,), labels_dtype)
        self.arena = cap.arena()
        self.loss_sum = cap.zeros((1,), np.float32)
        self.correct = cap.zeros((1,), np.int32)
        self.graph = None
        self.eager = 0
        self.replays = 0
        # Every step, replay, batch copy and statistics read of this step runs on this non-blocking
        # stream, so they are ordered with each other and never with other streams' work; fit runs
        # its whole epoch loop (plain steps for a short last batch too) inside `with step.stream:`.
        self.stream = cap.stream()

    def _step(self):
        m = self.model
        with self.capture.workspace(self.arena):
            logits = m.forward(self.x, training=True, logits=True)
            loss, dlogits = F.softmax_cross_entropy(logits, self.y)
            m.backward(dlogits, input_grad=False)
            m.optimizer.step(m.parameters(), m.grads())
            F.accumulate_loss_stats(logits, self.y, loss, self.loss_sum, self.correct)

    def step(self, xb, yb) -> None:
        """One training step on this batch (host or device arrays of the fixed batch size)."""
        if len(xb) != self.batch_size:
            raise ValueError(f"a captured step takes batches of {self.batch_size} rows, got {len(xb)}")
        with self.stream:
            self.capture.copy_into(self.x, xb)
            self.capture.copy_into(self.y, yb)
            if self.eager < EAGER_STEPS:
                self._step()
                self.eager += 1
                return
            if self.graph is None:  # captured, not run: the optimizer counted this step already
                self.graph = self.capture.graph(self._step, self.stream)
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
