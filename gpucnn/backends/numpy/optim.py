"""NumPy optimizer steps (in place), with torch.optim's rules: sgd_step, adam_step."""
from __future__ import annotations

import numpy as np

from .._base import register

B = "numpy"


# --------------------------------------------------------------------------- optimizers (in place)

@register("sgd_step", B)
def sgd_step(params, grads, bufs, lr, momentum, dampening, nesterov, weight_decay, first_step):
    for p, g, buf in zip(params, grads, bufs):
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            if first_step:
                buf[...] = g
            else:
                buf *= momentum
                buf += (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p -= lr * g


@register("adam_step", B)
def adam_step(params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay):
    bc1 = 1 - beta1 ** step
    bc2_sqrt = np.sqrt(1 - beta2 ** step)
    for p, g, m_, v_ in zip(params, grads, m, v):
        if weight_decay:
            g = g + weight_decay * p
        m_ *= beta1
        m_ += (1 - beta1) * g
        v_ *= beta2
        v_ += (1 - beta2) * (g * g)
        p -= (lr / bc1) * m_ / (np.sqrt(v_) / bc2_sqrt + eps)
