"""Launchers for kernels/elementwise.cu: ReLU and the other one-thread-per-element ops."""
from __future__ import annotations

from ...backend import register
from . import _runtime as rt

B = "cupy"
K = rt.Family("elementwise", ["relu_fwd", "relu_bwd"])


@register("relu", B)
def relu(x):
    x = rt.operand("relu", "x", x)
    y = rt.empty(x.shape)
    if x.size:
        K.launch("relu_fwd", *rt.grid_1d(x.size), (x, y, rt.i32(x.size)))
    return y


@register("relu_backward", B)
def relu_backward(dy, x):
    dy, x = rt.operand("relu_backward", "dy", dy), rt.operand("relu_backward", "x", x)
    dx = rt.empty(x.shape)
    if x.size:
        K.launch("relu_bwd", *rt.grid_1d(x.size), (dy, x, dx, rt.i32(x.size)))
    return dx
