"""Training batches to the device: gathered into pinned host memory, copied on a stream of their own,
double buffered, so the host prepares batch i + 1 while the GPU still runs batch i.

For batch i, slot s = i % 2 holds a pinned host buffer and a device buffer for x and for y:
1. the host waits for the copy of batch i - 2 (slot s's last copy) to finish before it overwrites
   the pinned buffer: an event two batches old, normally long done;
2. it gathers the batch's rows straight into the pinned buffer (one copy, no temporary);
3. the copy stream waits until the compute stream has finished with batch i - 2 (it read slot s's
   device buffer), then copies pinned -> device asynchronously (pinned memory is what lets
   cudaMemcpyAsync run without the host waiting) and records `copied`;
4. the compute stream waits on `copied` before the step that reads the batch.
Batch i + 1 is issued before batch i is handed out, so its copy overlaps batch i's step.

Emulated (no GPU), streams and events do nothing (work runs at once, in order), pinned memory is
NumPy memory, and the device buffers are emucupy arrays: the order of operations is the same.
"""
from __future__ import annotations

import numpy as np

from . import _runtime as rt


class _Slot:
    def __init__(self, shape_x, dtype_x, shape_y, dtype_y, pinned_empty):
        self.host_x, self.host_y = pinned_empty(shape_x, dtype_x), pinned_empty(shape_y, dtype_y)
        self.dev_x, self.dev_y = rt.persistent_empty(shape_x, dtype_x), rt.persistent_empty(shape_y, dtype_y)
        self.copied = self.consumed = None  # events of the last copy into, and the last step from, this slot


class BatchFeeder:
    """Device batches (x, y) of `x[idx], y[idx]` for index arrays of at most `batch_size` rows."""

    DEPTH = 2

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int):
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        pinned = rt.xp.empty_pinned if rt.EMULATED else _cupyx_pinned()
        self.slots = [_Slot((self.batch_size,) + x.shape[1:], x.dtype, (self.batch_size,) + y.shape[1:], y.dtype,
                            pinned) for _ in range(self.DEPTH)]
        self.copy_stream = rt.new_stream()
        self.uploads = 0

    def _issue(self, i: int, idx: np.ndarray) -> tuple:
        """Start the copy of batch i (rows idx) into slot i % DEPTH; returns what `_hand_out` needs."""
        slot, n = self.slots[i % self.DEPTH], len(idx)
        if slot.copied is not None:
            slot.copied.synchronize()  # the pinned buffer's last copy is done: safe to overwrite it
        np.take(self.x, idx, axis=0, out=slot.host_x[:n])
        np.take(self.y, idx, axis=0, out=slot.host_y[:n])
        with self.copy_stream:
            if slot.consumed is not None:
                self.copy_stream.wait_event(slot.consumed)  # the step that read this device buffer is done
            slot.dev_x[:n].set(slot.host_x[:n], stream=self.copy_stream)
            slot.dev_y[:n].set(slot.host_y[:n], stream=self.copy_stream)
            slot.copied = self.copy_stream.record()
        self.uploads += 1
        return slot, n

    def epoch(self, order: np.ndarray):
        """Yield (x, y, y_host) for consecutive `batch_size` chunks of `order`: x and y on the device, ready
        for the current stream; y_host the same labels in the pinned buffer (valid until the next batch but
        one is issued: for this step's accuracy)."""
        starts = range(0, len(order), self.batch_size)
        chunks = [order[s:s + self.batch_size] for s in starts]
        pending = self._issue(0, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            slot, n = pending
            pending = self._issue(i + 1, chunks[i + 1]) if i + 1 < len(chunks) else None
            compute = _current_stream()
            compute.wait_event(slot.copied)
            yield slot.dev_x[:n], slot.dev_y[:n], slot.host_y[:n]
            slot.consumed = compute.record()  # the step on this batch has been enqueued after this point


def _current_stream():
    if rt.EMULATED:
        return rt.xp.Stream()
    import cupy  # pragma: no cover - needs a GPU
    return cupy.cuda.get_current_stream()  # pragma: no cover


def _cupyx_pinned():  # pragma: no cover - needs a GPU
    import cupyx
    return cupyx.empty_pinned
