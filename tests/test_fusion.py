"""Graph-level fusion: a ReLU's backward moves into its one consumer (a Conv2D's data gradient or a
MaxPool2D), and a ReLU layer before a max pool runs inside the pool (relu_max_pool2d).

Fused and unfused runs of the same model must give the same outputs and gradients (float64, NumPy
backend: exactly, since masking commutes with the products), and the fused run must dispatch fewer ops.
"""
import numpy as np
import pytest

import gpucnn
from gpucnn import backend
from gpucnn import functional as F
from gpucnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from helpers import assert_close


def model(dtype=np.float64):
    return gpucnn.Sequential([
        Conv2D(4, 3, padding="same", activation="relu"),   # -> conv: mask in its data gradient
        Conv2D(5, 3, padding="same", activation="relu"),   # -> pool: mask on the pooled gradient
        MaxPool2D(2),
        Conv2D(6, 3),
        ReLU(),                                            # -> pool: forward fused too
        MaxPool2D(2),
        Flatten(),
        Dense(7, activation="relu"),                       # -> dense: not fused
        Dense(3, activation="softmax"),
    ], input_shape=(2, 12, 12), seed=0, dtype=dtype)


def run(m, x, dl):
    y = m.forward(x, training=True, logits=True)
    dx = m.backward(dl)
    return y, dx, {k: np.array(v) for k, v in m.grads().items()}


def test_the_plan_names_the_fusable_pairs():
    m = model()
    plan = {c.layer.name: p.layer.name for c, p in m._relu_fusions().values()}
    assert plan == {"conv2d_1": "conv2d", "max_pool2d": "conv2d_1", "max_pool2d_1": "re_lu"}


def test_fused_equals_unfused_and_dispatches_fewer_ops(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 12, 12))
    dl = rng.standard_normal((3, 3))
    calls = []
    real = backend.get_op

    def counting(op, name=None):
        calls.append(op)
        return real(op, name)

    monkeypatch.setattr(backend, "get_op", counting)
    fused = model()
    y1, dx1, g1 = run(fused, x, dl)
    fused_calls = list(calls)
    calls.clear()
    plain = model()
    plain._fusion_plan = {}  # no fusion
    y2, dx2, g2 = run(plain, x, dl)
    assert_close(y1, y2, rtol=0, atol=0)
    assert_close(dx1, dx2, rtol=0, atol=1e-15)
    for k in g2:
        assert_close(g1[k], g2[k], rtol=0, atol=1e-15, name=k)
    assert "relu_max_pool2d" in fused_calls and "relu_max_pool2d" not in calls
    # three ReLU backwards on big tensors gone (conv2d's, conv2d_1's, re_lu's), one on a pooled tensor added
    assert fused_calls.count("relu_backward") == calls.count("relu_backward") - 3 + 2
    assert fused_calls.count("relu") == calls.count("relu") - 1


def test_intermediate_outputs_run_unfused():
    """Asking for a layer's output (feature maps) must give that layer's true output, ReLU applied."""
    m = model()
    x = np.random.default_rng(1).standard_normal((2, 2, 12, 12))
    out = m.forward(x, outputs="re_lu")
    assert np.all(out >= 0) and np.any(out == 0)


@pytest.mark.parametrize("shape,k", [((2, 3, 6, 7), 2), ((1, 2, 9, 9), 3)])
def test_relu_max_pool2d_equals_pool_of_relu(shape, k):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    y, idx = F.relu_max_pool2d(x, k, return_indices=True)
    y2, idx2 = F.max_pool2d(np.maximum(x, 0), k, return_indices=True)
    assert_close(y, y2, rtol=0, atol=0)
    assert np.array_equal(idx, idx2)
