"""Launchers for kernels/optim.cu: sgd_step and adam_step, every parameter in ONE launch, in place.

The pointer tables come from `rt.tensor_table` (built and uploaded once per parameter list, then
reused every step). Parameters and optimizer state are updated in place, so on a GPU they must be
device arrays (`rt.in_place`); every array is checked (float32, contiguous) before the launch.
"""
from __future__ import annotations

import numpy as np

from .._base import register
from . import _runtime as rt

B = "cupy"
K = rt.Family("optim", ["sgd_multi", "adam_advance", "adam_multi"])
CHUNK = 16 * rt.THREADS  # elements per chunk: 16 per thread of a block


def _lists(op, **lists):
    """Each list's arrays, checked: updated ones through rt.in_place, gradients through rt.operand."""
    out = []
    for name, seq in lists.items():
        take = rt.operand if name == "grads" else rt.in_place
        out.append([take(op, f"{name}[{i}]", a) for i, a in enumerate(seq)])
    return out


def _launch(kernel, lists, scalars):
    table = rt.tensor_table(lists, CHUNK)
    if table.nchunks == 0:
        return
    grid = (min(table.nchunks, rt.MAX_BLOCKS_1D),), (rt.THREADS,)  # grid-stride over chunks
    K.launch(kernel, *grid, (table.ptrs, table.sizes, table.chunks, rt.i32(table.tensors), rt.i32(table.nchunks),
                             rt.i32(CHUNK), *scalars))


@register("sgd_step", B)
def sgd_step(params, grads, bufs, lr, momentum, dampening, nesterov, weight_decay, first_step):
    if not params:
        return
    if momentum:
        lists = _lists("sgd_step", params=params, grads=grads, momentum_buffers=bufs)
    else:  # the buffers are neither read nor written: the params stand in for them in the table
        lists = _lists("sgd_step", params=params, grads=grads)
        lists.append(lists[0])
    _launch("sgd_multi", lists, (rt.f32(lr), rt.f32(momentum), rt.f32(1 - dampening), rt.f32(weight_decay),
                                 rt.i32(bool(weight_decay)), rt.i32(bool(momentum)), rt.i32(bool(nesterov)),
                                 rt.i32(bool(first_step))))


@register("adam_step", B)
def adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    if not params:
        return
    lists = _lists("adam_step", params=params, grads=grads, exp_avgs=m, exp_avg_sqs=v)
    counter = _step_counter(lists[0], step)
    K.launch("adam_advance", (1,), (32,), (counter.step, counter.scal, rt.f32(lr), rt.f32(beta1), rt.f32(beta2)))
    _launch("adam_multi", lists, (counter.scal, rt.f32(beta1), rt.f32(1 - beta1), rt.f32(beta2),
                                  rt.f32(1 - beta2), rt.f32(eps), rt.f32(weight_decay), rt.i32(bool(weight_decay))))


class _Counter:
    """Adam's step on the device (advanced by adam_advance) and the host's idea of its value."""

    def __init__(self):
        self.step = rt.persistent_empty((1,), np.int32)
        self.scal = rt.persistent_empty((2,), np.float32)
        self.host = None


_COUNTERS: dict = {}


def _step_counter(params, step: int) -> _Counter:
    """The device step counter of this parameter list (one per list, shared by plain and captured steps),
    set to step - 1 only when the host does not know it to be there: consecutive plain steps, and the
    replays of a captured step, advance it on the device alone."""
    key = tuple((rt.pointer(p), int(p.size)) for p in params)
    counter = _COUNTERS.get(key)
    if counter is None:
        if len(_COUNTERS) >= 8:
            _COUNTERS.pop(next(iter(_COUNTERS)))
        counter = _COUNTERS[key] = _Counter()
    if counter.host != step - 1:
        counter.step.fill(step - 1)
    counter.host = step
    return counter
