"""Whole models on the cupy backend: the zoo's digits_cnn trained with its own kernels, step by step
against the NumPy backend (same initial weights, same batch, dropout off so both see the same net).

Without a GPU, the kernels run emulated on the CPU (tests/cupy_support.py)."""
import numpy as np
import pytest

import gpucnn
from cupy_support import host
from gpucnn import backend, models
from helpers import assert_close


def batch(n=16, seed=0):
    x, y = gpucnn.data.load_digits()
    idx = np.random.default_rng(seed).choice(len(x), n, replace=False)
    return x[idx].astype(np.float32), y[idx]


def grads_after_one_step(name, x, y):
    m = models.get("digits_cnn", seed=0)
    with backend.use_backend(name):
        logits = m.forward(x, training=False, logits=True)
        loss, dl = gpucnn.functional.softmax_cross_entropy(logits, y)
        m.backward(dl, input_grad=False)
        return float(gpucnn.functional.to_numpy(loss)), {k: gpucnn.functional.to_numpy(v) for k, v in m.grads().items()}


def test_digits_cnn_gradients_match_numpy():
    x, y = batch()
    loss_c, g_c = grads_after_one_step("cupy", x, y)
    loss_n, g_n = grads_after_one_step("numpy", x, y)
    assert abs(loss_c - loss_n) < 1e-5 * max(1, abs(loss_n))
    assert set(g_c) == set(g_n)
    for k in g_n:
        assert_close(g_c[k], g_n[k], rtol=1e-3, atol=1e-5 * np.abs(g_n[k]).max(), name=k)


def test_digits_cnn_trains_on_the_cupy_backend():
    """fit() on the cupy backend: parameters stay on the backend, the loss falls, accuracy beats chance."""
    x, y = batch(32, seed=1)
    m = models.get("digits_cnn", seed=0)
    with backend.use_backend("cupy"):
        m.compile(gpucnn.Adam(lr=3e-3))
        hist = m.fit(x, y, epochs=8, batch_size=32, seed=0, verbose=0)
        params = m.parameters()
        assert all(type(host(v)) is np.ndarray for v in params.values())
        loss, acc = m.evaluate(x, y)
    losses = hist.history["loss"]
    assert losses[-1] < losses[0] * 0.9, losses  # (the NumPy backend: 2.30 -> 2.03 on this batch)
    assert acc > 0.3


def test_tf32_mode_gives_close_gradients():
    """TF32 rounds every GEMM operand to 10 mantissa bits. At initialization the logits' gradient
    (softmax minus one-hot, rows summing to zero) makes every data gradient a small difference of
    larger terms, so the hidden layers' gradients move by about 5-6 % (norm-wise, measured) while the
    loss agrees to 1e-5; each TF32 GEMM alone is exact to the TF32-rounded products
    (tests/ops/test_conv.py)."""
    x, y = batch()
    l32, g32 = grads_after_one_step("cupy", x, y)
    with gpucnn.config.tf32(True):
        ltf, gtf = grads_after_one_step("cupy", x, y)
    assert abs(ltf - l32) < 1e-4
    assert any(not np.array_equal(gtf[k], g32[k]) for k in g32), "TF32 mode changed nothing"
    for k in g32:
        assert np.linalg.norm(gtf[k] - g32[k]) <= 0.1 * np.linalg.norm(g32[k]), k
