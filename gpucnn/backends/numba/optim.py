"""Optimizer updates as Numba CUDA kernels, in place, with PyTorch's rules (torch.optim.SGD, Adam).

Kernels: `sgd_update`, `adam_update`, one elementwise launch per parameter (each parameter, gradient
and state array viewed flat), the math copied from the NumPy backend term by term. kernels/optim.cu's
sgd_multi and adam_multi do the same updates for all parameters of a model in one launch (a table of
pointers and offsets); that fusion here is future work.

Parameters and optimizer state are updated in place, so they must be the caller's device arrays
(a host NumPy array would only update a copy: TypeError). Hyper-parameters are made on the host
as values of the parameter dtype and passed to the kernels (no float64 in a float32 kernel).
"""
from __future__ import annotations

import math

from numba import cuda

from .._base import register
from . import _common

B = "numba"


@cuda.jit(cache=True)
def sgd_update(p, g, buf, lr, momentum, one_minus_dampening, weight_decay, use_weight_decay, use_momentum,
         nesterov, first_step):
    start = cuda.grid(1)
    for i in range(start, p.size, cuda.gridsize(1)):
        d = g[i]
        if use_weight_decay:
            d = d + weight_decay * p[i]
        if use_momentum:
            if first_step:
                b = d
            else:
                b = buf[i] * momentum
                b = b + one_minus_dampening * d
            buf[i] = b
            if nesterov:
                d = d + momentum * b
            else:
                d = b
        p[i] = p[i] - lr * d


@register("sgd_step", B)
def sgd_step(params, grads, bufs, lr, momentum, dampening, nesterov, weight_decay, first_step):
    for k, (p, g, buf) in enumerate(zip(params, grads, bufs)):
        p = _common.in_place(p, f"params[{k}]")
        buf = _common.in_place(buf, f"momentum_buffers[{k}]") if momentum else p  # untouched without momentum
        if p.size == 0:
            continue
        g = _common.device(g)
        lr_t, mom_t, damp_t, wd_t = _common.scalars(p.dtype, lr, momentum, 1 - dampening, weight_decay)
        sgd_update[_common.grid_1d(p.size)](_common.flat(p), _common.flat(g), _common.flat(buf), lr_t, mom_t, damp_t,
                                      wd_t, bool(weight_decay), bool(momentum), bool(nesterov), bool(first_step))


@cuda.jit(cache=True)
def adam_update(p, g, m, v, step_size, beta1, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps,
          weight_decay, use_weight_decay):
    start = cuda.grid(1)
    for i in range(start, p.size, cuda.gridsize(1)):
        d = g[i]
        if use_weight_decay:
            d = d + weight_decay * p[i]
        mi = m[i] * beta1
        mi = mi + one_minus_beta1 * d
        m[i] = mi
        vi = v[i] * beta2
        vi = vi + one_minus_beta2 * (d * d)
        v[i] = vi
        p[i] = p[i] - step_size * mi / (math.sqrt(vi) / bc2_sqrt + eps)


@register("adam_step", B)
def adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    bc1 = 1 - beta1 ** step
    bc2_sqrt = math.sqrt(1 - beta2 ** step)
    for k, (p, g, m_, v_) in enumerate(zip(params, grads, m, v)):
        p = _common.in_place(p, f"params[{k}]")
        m_ = _common.in_place(m_, f"exp_avgs[{k}]")
        v_ = _common.in_place(v_, f"exp_avg_sqs[{k}]")
        if p.size == 0:
            continue
        g = _common.device(g)
        scalars = _common.scalars(p.dtype, lr / bc1, beta1, 1 - beta1, beta2, 1 - beta2, bc2_sqrt, eps, weight_decay)
        adam_update[_common.grid_1d(p.size)](_common.flat(p), _common.flat(g), _common.flat(m_), _common.flat(v_),
                                       *scalars, bool(weight_decay))
