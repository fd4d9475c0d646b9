"""NumPy linear layer: y = x @ w.T + b and its gradients."""
from __future__ import annotations

from .._base import register

B = "numpy"


# --------------------------------------------------------------------------- dense

@register("linear", B)
def linear(x, w, b, out_shape):
    y = x @ w.T
    if b is not None:
        y += b
    return y


@register("linear_backward", B)
def linear_backward(dy, x, w):
    return dy @ w, dy.T @ x, dy.sum(axis=0)
