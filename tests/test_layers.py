"""Layers through tiny models: float64 central-difference gradient checks, forward values against
independent NumPy references, PyTorch's default initialization, and graph-wiring errors.

Every gradient check uses L = sum(model.forward(x, training=True) * R) for a random R and compares
model.backward(R) (dx) and model.grads() (every parameter) with central differences of L, perturbing
x and the arrays of model.parameters() in place.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpucnn
from gpucnn import (Add, AvgPool2D, BatchNorm2D, Concatenate, Conv2D, Dense, Dropout, Flatten, Input, MaxPool2D,
                    Model, ReLU, Sequential, Softmax, UpSampling2D)

from helpers import assert_close, numeric_grad

F64 = np.float64


# ============================================================================ helpers

def _assert_close(actual, expected, rtol=1e-6, atol=1e-9, name="value"):
    assert_close(actual, expected, rtol=rtol, atol=atol, name=name)


def grad_check(model, x, *, training=True, logits=False, seed=1, rtol=1e-5, atol=1e-8, check_params=True):
    """Check dx and every parameter gradient of `model` at x against central differences."""
    assert model.dtype == F64 and x.dtype == F64
    rng = np.random.default_rng(seed)
    out = model.forward(x, training=training, logits=logits)
    r = rng.standard_normal(np.shape(out))
    dx = np.array(model.backward(r))
    grads = {k: np.array(v) for k, v in model.grads().items()} if model.parameters() else {}
    assert list(grads) == list(model.parameters())

    def loss():
        return float(np.sum(np.asarray(model.forward(x, training=training, logits=logits), F64) * r))

    num_dx = numeric_grad(loss, x)
    assert np.abs(num_dx).max() > 1e-6, "degenerate check: dL/dx is all zero"
    _assert_close(dx, num_dx, rtol=rtol, atol=atol, name="dx")
    if check_params:
        for key, p in model.parameters().items():
            num = numeric_grad(loss, p)
            assert np.abs(num).max() > 1e-6, f"degenerate check: dL/d{key} is all zero"
            _assert_close(grads[key], num, rtol=rtol, atol=atol, name=f"d{key}")
    return dx, grads


def _rand(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def _distinct(rng, shape):
    """Distinct values (a shuffled arange scaled): no ties in max pooling."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size / 2) * 0.1).reshape(shape).astype(F64)


def _torch_same_pads(k):
    """PyTorch padding='same' at stride 1: total k-1, the extra one after (bottom/right)."""
    total = k - 1
    return total // 2, total - total // 2


def _naive_conv(x, w, b, stride, pads):
    """Direct cross-correlation; pads = (top, bottom, left, right)."""
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    t, bo, le, ri = pads
    sh, sw = stride
    xp = np.zeros((n, c, h + t + bo, wd + le + ri))
    xp[:, :, t:t + h, le:le + wd] = x
    p = (h + t + bo - r) // sh + 1
    q = (wd + le + ri - s) // sw + 1
    out = np.zeros((n, k, p, q))
    for i in range(p):
        for j in range(q):
            patch = xp[:, :, i * sh:i * sh + r, j * sw:j * sw + s]
            out[:, :, i, j] = np.einsum("ncrs,kcrs->nk", patch, w)
    if b is not None:
        out += b[None, :, None, None]
    return out


def _softmax(z, axis=1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _seq(layers, input_shape, seed=0):
    return Sequential(layers, input_shape=input_shape, seed=seed, dtype=F64)


# ============================================================================ Conv2D

# (layer kwargs, per-sample input shape, PyTorch-style pads (top, bottom, left, right), stride)
CONV_CASES = {
    "valid3": (dict(filters=3, kernel_size=3), (2, 5, 5), (0, 0, 0, 0), (1, 1)),
    "same3": (dict(filters=3, kernel_size=3, padding="same"), (2, 4, 5), (1, 1, 1, 1), (1, 1)),
    "same2_even": (dict(filters=2, kernel_size=2, padding="same"), (2, 4, 4), _torch_same_pads(2) * 2, (1, 1)),
    "same4x3_even": (dict(filters=2, kernel_size=(4, 3), padding="same"), (1, 5, 4),
                     _torch_same_pads(4) + _torch_same_pads(3), (1, 1)),
    "stride2": (dict(filters=2, kernel_size=3, strides=2), (2, 7, 6), (0, 0, 0, 0), (2, 2)),
    "int_pad_stride2": (dict(filters=2, kernel_size=3, strides=2, padding=1), (2, 5, 5), (1, 1, 1, 1), (2, 2)),
    "pair_pad_stride": (dict(filters=2, kernel_size=(3, 2), strides=(1, 2), padding=(2, 1)), (1, 4, 5),
                        (2, 2, 1, 1), (1, 2)),
    "no_bias": (dict(filters=3, kernel_size=3, use_bias=False), (2, 4, 4), (0, 0, 0, 0), (1, 1)),
    "relu": (dict(filters=3, kernel_size=3, padding="same", activation="relu"), (2, 4, 4), (1, 1, 1, 1), (1, 1)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_forward_matches_naive_cross_correlation(case):
    kwargs, in_shape, pads, stride = CONV_CASES[case]
    rng = np.random.default_rng(10)
    model = _seq([Conv2D(**kwargs)], in_shape)
    x = _rand(rng, (2,) + in_shape)
    layer = model.layers[0]
    w, b = layer.params["weight"], layer.params.get("bias")
    assert (b is None) == (kwargs.get("use_bias", True) is False)
    expected = _naive_conv(x, w, b, stride, pads)
    if kwargs.get("activation") == "relu":
        assert (expected < 0).any() and (expected > 0).any()
        expected = np.maximum(expected, 0)
    y = model.forward(x)
    assert y.shape[1:] == layer.output_shape
    if kwargs.get("padding") == "same":
        assert y.shape[2:] == in_shape[1:]
    _assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_gradients(case):
    kwargs, in_shape, _, _ = CONV_CASES[case]
    rng = np.random.default_rng(11)
    model = _seq([Conv2D(**kwargs)], in_shape)
    x = _rand(rng, (2,) + in_shape)
    _, grads = grad_check(model, x)
    assert ("conv2d.bias" in grads) == kwargs.get("use_bias", True)


def test_conv2d_relu_gradient_is_masked():
    """With activation='relu', parameter gradients ignore outputs that ReLU zeroed (checked by hand)."""
    rng = np.random.default_rng(12)
    model = _seq([Conv2D(2, 1, activation="relu")], (3, 3, 3))
    x = _rand(rng, (2, 3, 3, 3))
    y = model.forward(x, training=True)
    r = rng.standard_normal(y.shape)
    model.backward(r)
    w = model.layers[0].params["weight"]
    z = np.einsum("nchw,kc->nkhw", x, w[:, :, 0, 0]) + model.layers[0].params["bias"][None, :, None, None]
    g = r * (z > 0)
    assert 0 < (z > 0).mean() < 1
    _assert_close(model.grads()["conv2d.bias"], g.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    _assert_close(model.grads()["conv2d.weight"][:, :, 0, 0], np.einsum("nkhw,nchw->kc", g, x),
                  rtol=1e-12, atol=1e-12)


def test_conv_then_pool_then_dense_chain_gradients():
    rng = np.random.default_rng(13)
    model = _seq([Conv2D(3, 3, padding="same", activation="relu"), MaxPool2D(2), Flatten(),
                  Dense(4, activation="relu"), Dense(3)], (2, 4, 4))
    x = _rand(rng, (3, 2, 4, 4))
    grad_check(model, x)


# ============================================================================ Dense

@pytest.mark.parametrize("activation", [None, "relu"])
def test_dense_forward_and_gradients(activation):
    rng = np.random.default_rng(20)
    model = _seq([Dense(4, activation=activation)], (5,))
    x = _rand(rng, (3, 5))
    w, b = model.layers[0].params["weight"], model.layers[0].params["bias"]
    assert w.shape == (4, 5) and b.shape == (4,)
    expected = x @ w.T + b
    if activation == "relu":
        assert (expected < 0).any() and (expected > 0).any()
        expected = np.maximum(expected, 0)
    _assert_close(model.forward(x), expected, rtol=1e-12, atol=1e-12)
    grad_check(model, x)


def test_dense_without_bias_gradients():
    rng = np.random.default_rng(21)
    model = _seq([Dense(3, use_bias=False)], (4,))
    assert list(model.parameters()) == ["dense.weight"]
    _, grads = grad_check(model, _rand(rng, (2, 4)))
    assert list(grads) == ["dense.weight"]


def test_dense_softmax_forward_returns_probabilities_and_logits():
    rng = np.random.default_rng(22)
    model = _seq([Dense(5, activation="softmax")], (4,))
    x = _rand(rng, (3, 4), scale=2.0)
    w, b = model.layers[0].params["weight"], model.layers[0].params["bias"]
    z = x @ w.T + b
    _assert_close(model.forward(x, logits=True), z, rtol=1e-12, atol=1e-12)
    p = model.forward(x)
    _assert_close(p, _softmax(z), rtol=1e-12, atol=1e-14)
    _assert_close(p.sum(axis=1), np.ones(3), rtol=1e-12)


@pytest.mark.parametrize("logits", [False, True], ids=["through_softmax", "logits"])
def test_dense_softmax_gradients(logits):
    """logits=False: backward(R) is the gradient of sum(softmax(z) * R); logits=True: of sum(z * R)."""
    rng = np.random.default_rng(23)
    model = _seq([Flatten(), Dense(4, activation="softmax")], (2, 2, 2))
    x = _rand(rng, (3, 2, 2, 2))
    dx, _ = grad_check(model, x, logits=logits)
    # the two paths must differ (the softmax Jacobian is not the identity)
    model.forward(x, training=True, logits=not logits)
    r = np.random.default_rng(1).standard_normal((3, 4))
    other = model.backward(r)
    assert np.abs(other - dx).max() > 1e-3


# ============================================================================ pooling and upsampling

POOL_CASES = {
    "2x2": (dict(pool_size=2), (2, 4, 4)),
    "2x2_floor": (dict(pool_size=2), (1, 5, 5)),
    "3x3_stride2_overlap": (dict(pool_size=3, strides=2), (2, 5, 5)),
    "3_stride1_overlap": (dict(pool_size=3, strides=1), (1, 4, 4)),
    "2x3_rect": (dict(pool_size=(2, 3), strides=(2, 1)), (1, 4, 5)),
}


def _naive_pool(x, pool, stride, reduce):
    n, c, h, w = x.shape
    p, q = (h - pool[0]) // stride[0] + 1, (w - pool[1]) // stride[1] + 1
    out = np.zeros((n, c, p, q))
    for i in range(p):
        for j in range(q):
            win = x[:, :, i * stride[0]:i * stride[0] + pool[0], j * stride[1]:j * stride[1] + pool[1]]
            out[:, :, i, j] = reduce(win, axis=(2, 3))
    return out


def _pool_geometry(kwargs):
    pool = kwargs["pool_size"]
    pool = (pool, pool) if isinstance(pool, int) else pool
    stride = kwargs.get("strides", pool)
    stride = (stride, stride) if isinstance(stride, int) else stride
    return pool, stride


@pytest.mark.parametrize("cls,reduce", [(MaxPool2D, np.max), (AvgPool2D, np.mean)], ids=["max", "avg"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pool_forward_and_gradients(cls, reduce, case):
    kwargs, in_shape = POOL_CASES[case]
    rng = np.random.default_rng(30)
    model = _seq([cls(**kwargs)], in_shape)
    x = _distinct(rng, (2,) + in_shape)  # a permutation: no ties for max pooling
    pool, stride = _pool_geometry(kwargs)
    _assert_close(model.forward(x), _naive_pool(x, pool, stride, reduce), rtol=1e-12, atol=1e-12)
    assert model.layers[0].param_count() == 0
    grad_check(model, x, check_params=False)


def test_maxpool_gradient_goes_to_the_window_maximum():
    """By hand: a 2x2/2 max pool sends each dy to its window's argmax, zeros elsewhere."""
    x = np.array([[1, 7, 7.5, 2], [3, 8, 6, 3], [4, 7.2, 4.1, 7.3], [6, 6.1, 2, 6.2]], F64)[None, None]
    model = _seq([MaxPool2D(2)], (1, 4, 4))
    y = model.forward(x, training=True)
    _assert_close(y[0, 0], [[8, 7.5], [7.2, 7.3]])
    dx = model.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((4, 4))
    expected[1, 1], expected[0, 2], expected[2, 1], expected[2, 3] = 1, 2, 3, 4
    _assert_close(dx[0, 0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("size,in_shape", [(2, (2, 2, 3)), ((2, 3), (1, 3, 2)), (1, (1, 2, 2))])
def test_upsampling_forward_and_gradients(size, in_shape):
    rng = np.random.default_rng(31)
    model = _seq([UpSampling2D(size)], in_shape)
    x = _rand(rng, (2,) + in_shape)
    sh, sw = (size, size) if isinstance(size, int) else size
    expected = np.repeat(np.repeat(x, sh, axis=2), sw, axis=3)
    _assert_close(model.forward(x), expected, rtol=0, atol=0)
    assert model.layers[0].output_shape == (in_shape[0], in_shape[1] * sh, in_shape[2] * sw)
    grad_check(model, x, check_params=False)


def test_upsampling_spec_example_through_the_layer():
    model = Sequential([UpSampling2D(2)], input_shape=(1, 2, 2))
    x = np.array([[8, 6], [7, 7]], np.float32)[None, None]
    expected = [[8, 8, 6, 6], [8, 8, 6, 6], [7, 7, 7, 7], [7, 7, 7, 7]]
    np.testing.assert_array_equal(model.forward(x)[0, 0], expected)


def test_maxpool_spec_example_through_the_layer():
    model = Sequential([MaxPool2D(2)], input_shape=(1, 4, 4))
    x = np.array([[1, 7, 7, 2], [3, 8, 6, 3], [4, 7, 4, 7], [6, 6, 2, 6]], np.float32)[None, None]
    np.testing.assert_array_equal(model.forward(x)[0, 0], [[8, 7], [7, 7]])


# ============================================================================ ReLU, Softmax, Flatten

def test_relu_layer_forward_and_gradients():
    rng = np.random.default_rng(40)
    shape = (2, 2, 3, 3)
    x = rng.choice([-1.0, 1.0], size=shape) * (0.1 + rng.random(shape))  # |x| >= 0.1: far from the kink
    assert (x < 0).any() and (x > 0).any()
    model = _seq([ReLU()], shape[1:])
    _assert_close(model.forward(x), np.maximum(x, 0), rtol=0, atol=0)
    dx, _ = grad_check(model, x, check_params=False)
    assert np.all(dx[x < 0] == 0)


def test_relu_after_dense_gradients():
    rng = np.random.default_rng(41)
    model = _seq([Dense(6), ReLU(), Dense(2)], (3,))
    grad_check(model, _rand(rng, (4, 3)))


@pytest.mark.parametrize("in_shape", [(5,), (3, 2, 2)], ids=["features", "channels"])
@pytest.mark.parametrize("logits", [False, True], ids=["through_softmax", "logits"])
def test_softmax_layer_forward_and_gradients(in_shape, logits):
    rng = np.random.default_rng(42)
    model = _seq([Softmax()], in_shape)
    x = _rand(rng, (3,) + in_shape, scale=2.0)
    y = model.forward(x, logits=logits)
    _assert_close(y, x if logits else _softmax(x, axis=1), rtol=1e-12, atol=1e-14)
    dx, _ = grad_check(model, x, logits=logits, check_params=False)
    if not logits:  # gradient of sum(softmax * R) is orthogonal to constant shifts along the softmax axis
        _assert_close(dx.sum(axis=1), np.zeros(dx.sum(axis=1).shape), atol=1e-12)


def test_softmax_layer_in_the_middle_is_always_applied():
    """Only a final softmax is skipped with logits=True; one in the middle stays."""
    rng = np.random.default_rng(43)
    model = _seq([Dense(4), Softmax(), Dense(3)], (3,))
    x = _rand(rng, (2, 3))
    d1, d2 = model.layers[0], model.layers[2]
    expected = _softmax(x @ d1.params["weight"].T + d1.params["bias"]) @ d2.params["weight"].T + d2.params["bias"]
    _assert_close(model.forward(x, logits=True), expected, rtol=1e-12, atol=1e-12)
    grad_check(model, x, logits=True)


def test_flatten_forward_and_gradients():
    rng = np.random.default_rng(44)
    model = _seq([Flatten(), Dense(3)], (2, 3, 2))
    assert model.layers[0].output_shape == (12,)
    assert model.layers[1].params["weight"].shape == (3, 12)
    x = _rand(rng, (2, 2, 3, 2))
    d = model.layers[1]
    _assert_close(model.forward(x), x.reshape(2, 12) @ d.params["weight"].T + d.params["bias"], rtol=1e-12)
    grad_check(model, x)


# ============================================================================ Dropout

def test_dropout_training_mask_and_backward():
    rng = np.random.default_rng(50)
    model = _seq([Dropout(0.4)], (4, 10, 10), seed=3)
    x = _rand(rng, (3, 4, 10, 10))
    y = model.forward(x, training=True)
    mask = model.layers[0]._mask
    assert mask.shape == x.shape
    assert set(np.unique(mask)) == {0.0, 1 / 0.6}
    assert 0.33 < (mask == 0).mean() < 0.47  # 1200 draws at p = 0.4
    _assert_close(y, x * mask, rtol=1e-15, atol=0)
    r = rng.standard_normal(y.shape)
    _assert_close(model.backward(r), r * mask, rtol=1e-15, atol=0)
    # a second training forward draws a fresh mask
    model.forward(x, training=True)
    assert not np.array_equal(model.layers[0]._mask, mask)


def test_dropout_eval_is_identity():
    rng = np.random.default_rng(51)
    model = _seq([Dropout(0.5)], (6,), seed=0)
    x = _rand(rng, (4, 6))
    np.testing.assert_array_equal(model.forward(x, training=False), x)
    r = rng.standard_normal((4, 6))
    np.testing.assert_array_equal(model.backward(r), r)


def test_dropout_rate_zero_is_identity_in_training():
    rng = np.random.default_rng(52)
    model = _seq([Dropout(0.0)], (6,), seed=0)
    x = _rand(rng, (4, 6))
    np.testing.assert_array_equal(model.forward(x, training=True), x)


def test_dropout_between_dense_layers_gradient_by_hand():
    """dx of Dense -> Dropout -> Dense with the stored mask: ((R W2) * mask) W1, and dW1 = ((R W2) * mask)^T x."""
    rng = np.random.default_rng(53)
    model = _seq([Dense(8), Dropout(0.5), Dense(3)], (4,), seed=2)
    x = _rand(rng, (5, 4))
    model.forward(x, training=True)
    mask = model.layers[1]._mask
    assert (mask == 0).any() and (mask != 0).any()
    r = rng.standard_normal((5, 3))
    dx = model.backward(r)
    w1, w2 = model.layers[0].params["weight"], model.layers[2].params["weight"]
    g = (r @ w2) * mask
    _assert_close(dx, g @ w1, rtol=1e-12, atol=1e-12)
    _assert_close(model.grads()["dense.weight"], g.T @ x, rtol=1e-12, atol=1e-12)
    _assert_close(model.grads()["dense.bias"], g.sum(axis=0), rtol=1e-12, atol=1e-12)


def test_dropout_masks_follow_the_model_seed():
    x = np.random.default_rng(54).standard_normal((2, 50))

    def masks(seed):
        model = _seq([Dropout(0.5)], (50,), seed=seed)
        out = []
        for _ in range(2):
            model.forward(x, training=True)
            out.append(model.layers[0]._mask.copy())
        return out

    a, b, c = masks(7), masks(7), masks(8)
    for ma, mb in zip(a, b):
        np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])


def test_dropout_rejects_bad_rate():
    for rate in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            Dropout(rate)


# ============================================================================ BatchNorm2D

def _randomize_bn(layer, rng, running=False):
    c = layer.params["weight"].shape[0]
    layer.params["weight"][...] = 0.5 + rng.random(c)
    layer.params["bias"][...] = rng.standard_normal(c)
    if running:
        layer.buffers["running_mean"][...] = rng.standard_normal(c)
        layer.buffers["running_var"][...] = 0.5 + rng.random(c)


def test_batchnorm_training_forward_values():
    rng = np.random.default_rng(60)
    model = _seq([BatchNorm2D()], (3, 3, 4))
    bn = model.layers[0]
    _randomize_bn(bn, rng)
    x = _rand(rng, (4, 3, 3, 4)) * 2 + 1
    y = model.forward(x, training=True)
    mean = x.mean(axis=(0, 2, 3))[None, :, None, None]
    var = x.var(axis=(0, 2, 3))[None, :, None, None]  # biased, as PyTorch normalizes
    w, b = bn.params["weight"][None, :, None, None], bn.params["bias"][None, :, None, None]
    _assert_close(y, (x - mean) / np.sqrt(var + 1e-5) * w + b, rtol=1e-10, atol=1e-12)


def test_batchnorm_training_gradients():
    rng = np.random.default_rng(61)
    # a conv bias right before a training-mode batch norm has a zero gradient: leave it out
    model = _seq([Conv2D(3, 2, use_bias=False), BatchNorm2D(), ReLU(), Conv2D(2, 1)], (2, 4, 4))
    _randomize_bn(model.layers[1], rng)
    x = _rand(rng, (3, 2, 4, 4))
    grad_check(model, x, training=True)


def test_batchnorm_training_gradients_on_input():
    rng = np.random.default_rng(65)
    model = _seq([BatchNorm2D()], (3, 2, 3))
    _randomize_bn(model.layers[0], rng)
    grad_check(model, _rand(rng, (2, 3, 2, 3)) + 0.5, training=True)


def test_batchnorm_training_gradients_on_features():
    rng = np.random.default_rng(62)
    model = _seq([Dense(4, use_bias=False), BatchNorm2D(), Dense(2)], (3,))
    _randomize_bn(model.layers[1], rng)
    grad_check(model, _rand(rng, (5, 3)), training=True)


def test_batchnorm_eval_forward_and_gradients():
    rng = np.random.default_rng(63)
    model = _seq([BatchNorm2D(), Conv2D(2, 2)], (3, 3, 3))
    bn = model.layers[0]
    _randomize_bn(bn, rng, running=True)
    x = _rand(rng, (2, 3, 3, 3))
    rm, rv = bn.buffers["running_mean"].copy(), bn.buffers["running_var"].copy()
    y_bn = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5) \
        * bn.params["weight"][None, :, None, None] + bn.params["bias"][None, :, None, None]
    conv = model.layers[1]
    expected = _naive_conv(y_bn, conv.params["weight"], conv.params["bias"], (1, 1), (0, 0, 0, 0))
    _assert_close(model.forward(x, training=False), expected, rtol=1e-10, atol=1e-12)
    grad_check(model, x, training=False)
    # eval mode never touches the running statistics
    np.testing.assert_array_equal(bn.buffers["running_mean"], rm)
    np.testing.assert_array_equal(bn.buffers["running_var"], rv)


def test_batchnorm_running_stats_update():
    rng = np.random.default_rng(64)
    model = _seq([BatchNorm2D(momentum=0.3)], (2, 3, 3))
    bn = model.layers[0]
    np.testing.assert_array_equal(bn.buffers["running_mean"], [0, 0])
    np.testing.assert_array_equal(bn.buffers["running_var"], [1, 1])
    rm, rv = np.zeros(2), np.ones(2)
    for step in range(3):
        x = _rand(rng, (4, 2, 3, 3)) * (1 + step) + 2 * step - 1
        model.forward(x, training=True)
        rm = 0.7 * rm + 0.3 * x.mean(axis=(0, 2, 3))
        rv = 0.7 * rv + 0.3 * x.var(axis=(0, 2, 3), ddof=1)  # unbiased, as PyTorch
        _assert_close(bn.buffers["running_mean"], rm, rtol=1e-12, atol=1e-14, name=f"running_mean step {step}")
        _assert_close(bn.buffers["running_var"], rv, rtol=1e-12, atol=1e-14, name=f"running_var step {step}")
    assert set(model.state_dict()) == {"batch_norm2d.weight", "batch_norm2d.bias", "batch_norm2d.running_mean",
                                       "batch_norm2d.running_var"}
    assert list(model.parameters()) == ["batch_norm2d.weight", "batch_norm2d.bias"]


# ============================================================================ graphs: Add, Concatenate

def test_encoder_decoder_with_concatenate_skip_gradients():
    rng = np.random.default_rng(70)
    x_in = Input((2, 4, 4))
    e = Conv2D(3, 3, padding="same", activation="relu")(x_in)
    d = Conv2D(2, 3, padding="same", activation="relu")(MaxPool2D(2)(e))
    cat = Concatenate()([UpSampling2D(2)(d), e])
    y = Conv2D(2, 1)(cat)
    model = Model(x_in, y, seed=0, dtype=F64)
    assert cat.shape == (5, 4, 4)
    assert model.layers[-1].params["weight"].shape == (2, 5, 1, 1)
    x = _rand(rng, (2, 2, 4, 4))
    grad_check(model, x)


def test_concatenate_forward_order_and_gradient_split():
    rng = np.random.default_rng(71)
    x_in = Input((2, 3, 3))
    a = Conv2D(2, 1, name="a")(x_in)
    b = Conv2D(3, 1, name="b")(x_in)
    model = Model(x_in, Concatenate()([a, b]), seed=0, dtype=F64)
    x = _rand(rng, (2, 2, 3, 3))
    y = model.forward(x, training=True)
    la, lb = model.layers[0], model.layers[1]
    ya = _naive_conv(x, la.params["weight"], la.params["bias"], (1, 1), (0, 0, 0, 0))
    yb = _naive_conv(x, lb.params["weight"], lb.params["bias"], (1, 1), (0, 0, 0, 0))
    _assert_close(y, np.concatenate([ya, yb], axis=1), rtol=1e-12, atol=1e-12)
    r = rng.standard_normal(y.shape)
    model.backward(r)
    _assert_close(model.grads()["a.bias"], r[:, :2].sum(axis=(0, 2, 3)), rtol=1e-12)
    _assert_close(model.grads()["b.bias"], r[:, 2:].sum(axis=(0, 2, 3)), rtol=1e-12)
    grad_check(model, x)


def test_residual_add_gradients():
    """x feeds both the conv branch and the Add: its gradient accumulates from both paths."""
    rng = np.random.default_rng(72)
    x_in = Input((2, 4, 4))
    h = Conv2D(2, 3, padding="same", activation="relu")(x_in)
    h = Conv2D(2, 3, padding="same")(h)
    s = Add()([h, x_in])
    model = Model(x_in, ReLU()(s), seed=0, dtype=F64)
    x = _rand(rng, (2, 2, 4, 4))
    grad_check(model, x)


def test_add_forward_values():
    rng = np.random.default_rng(73)
    x_in = Input((3,))
    a = Dense(4, name="a")(x_in)
    b = Dense(4, name="b")(x_in)
    c = Dense(4, name="c")(x_in)
    model = Model(x_in, Add()([a, b, c]), seed=0, dtype=F64)
    x = _rand(rng, (2, 3))
    expected = sum(x @ model.layers[i].params["weight"].T + model.layers[i].params["bias"] for i in range(3))
    _assert_close(model.forward(x), expected, rtol=1e-12, atol=1e-12)
    grad_check(model, x)


@pytest.mark.parametrize("merge", [Add, Concatenate])
def test_node_consumed_twice_accumulates_gradient(merge):
    rng = np.random.default_rng(74)
    x_in = Input((1, 3, 3))
    h = Conv2D(2, 2, name="h")(x_in)
    out = merge()([h, h])
    model = Model(x_in, Conv2D(1, 1)(out), seed=0, dtype=F64)
    x = _rand(rng, (2, 1, 3, 3))
    _, grads = grad_check(model, x)
    # by hand: dL/dh = the sum of the merge's two branch gradients
    y = model.forward(x, training=True)
    r = rng.standard_normal(y.shape)
    model.backward(r)
    w1 = model.layers[-1].params["weight"][:, :, 0, 0]  # (1, channels of out)
    dout = np.einsum("nkhw,kc->nchw", r, w1)
    dh = dout + dout if merge is Add else dout[:, :2] + dout[:, 2:]
    _assert_close(model.grads()["h.bias"], dh.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)


def test_graph_layer_outputs_used_by_two_later_layers():
    """A diamond: e -> (branch1, branch2) -> Add; plus the input reused by Concatenate."""
    rng = np.random.default_rng(75)
    x_in = Input((2, 4, 4))
    e = Conv2D(2, 3, padding="same", activation="relu")(x_in)
    b1 = Conv2D(2, 1)(e)
    b2 = AvgPool2D(1)(e)
    s = Add()([b1, b2])
    out = Conv2D(1, 1)(Concatenate()([s, x_in]))
    model = Model(x_in, out, seed=0, dtype=F64)
    grad_check(model, _rand(rng, (2, 2, 4, 4)))


# ============================================================================ initialization

def _check_uniform(a, bound, name, tol=0.05):
    a = np.asarray(a, F64).ravel()
    assert np.abs(a).max() <= bound, f"{name}: values outside +-{bound}"
    assert np.abs(a).max() > 0.98 * bound, f"{name}: does not reach the bound {bound}"
    std = a.std()
    assert abs(std - bound / math.sqrt(3)) <= tol * bound / math.sqrt(3), f"{name}: std {std}, bound {bound}"
    assert abs(a.mean()) < 0.05 * bound
    # uniform, not normal or truncated: ten equal bins hold about a tenth each
    hist, _ = np.histogram(a, bins=10, range=(-bound, bound))
    frac = hist / a.size
    assert np.all(np.abs(frac - 0.1) < max(0.02, 4 * math.sqrt(0.09 / a.size))), f"{name}: bins {frac}"


def test_conv2d_default_init_is_pytorch_kaiming_uniform():
    model = Sequential([Conv2D(64, 3)], input_shape=(32, 5, 5), seed=0)
    w, b = model.layers[0].params["weight"], model.layers[0].params["bias"]
    assert w.dtype == np.float32 and b.dtype == np.float32
    bound = 1 / math.sqrt(32 * 3 * 3)
    _check_uniform(w, bound, "conv weight")
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.5 * bound


def test_conv2d_rectangular_kernel_fan_in():
    model = Sequential([Conv2D(128, (3, 5))], input_shape=(4, 6, 6), seed=1)
    bound = 1 / math.sqrt(4 * 3 * 5)
    _check_uniform(model.layers[0].params["weight"], bound, "conv weight")
    b = model.layers[0].params["bias"]
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.8 * bound


def test_dense_default_init_is_pytorch_uniform():
    model = Sequential([Flatten(), Dense(256)], input_shape=(4, 10, 10), seed=0)
    w, b = model.layers[1].params["weight"], model.layers[1].params["bias"]
    assert w.shape == (256, 400)
    bound = 1 / math.sqrt(400)
    _check_uniform(w, bound, "dense weight")
    _check_uniform(b, bound, "dense bias", tol=0.15)


def test_same_seed_same_parameters_and_different_seeds_differ():
    def build(seed):
        return Sequential([Conv2D(4, 3, activation="relu"), MaxPool2D(2), Flatten(), Dense(5)],
                          input_shape=(2, 6, 6), seed=seed)

    a, b, c = build(5), build(5), build(6)
    assert list(a.parameters()) == list(b.parameters())
    for k in a.parameters():
        np.testing.assert_array_equal(a.parameters()[k], b.parameters()[k])
        assert not np.array_equal(a.parameters()[k], c.parameters()[k]), k
    # distinct layers of one model do not reuse one stream
    assert not np.allclose(a.parameters()["conv2d.bias"][:4], a.parameters()["dense.bias"][:4])


def test_input_channels_are_inferred():
    model = Sequential([Conv2D(4, 3), Conv2D(5, (3, 1), padding="same"), MaxPool2D(2), Flatten(), Dense(7),
                        Dense(3)], input_shape=(3, 8, 8), seed=0)
    shapes = [tuple(p.shape) for p in model.parameters().values()]
    assert shapes == [(4, 3, 3, 3), (4,), (5, 4, 3, 1), (5,), (7, 5 * 3 * 3), (7,), (3, 7), (3,)]
    assert [layer.output_shape for layer in model.layers] == [(4, 6, 6), (5, 6, 6), (5, 3, 3), (45,), (7,), (3,)]


# ============================================================================ wiring errors

def test_calling_a_layer_twice_raises():
    layer = Conv2D(2, 3)
    layer(Input((1, 5, 5)))
    with pytest.raises(ValueError, match="already"):
        layer(Input((1, 5, 5)))
    dense = Dense(3)
    Sequential([dense], input_shape=(4,))
    with pytest.raises(ValueError):
        Sequential([dense], input_shape=(4,))


def test_dense_on_image_input_mentions_flatten():
    with pytest.raises(ValueError, match="Flatten"):
        Sequential([Dense(3)], input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="Flatten"):
        Sequential([Conv2D(2, 3), Dense(3)], input_shape=(1, 4, 4))


def test_conv_kernel_larger_than_padded_input_raises_at_construction():
    with pytest.raises(ValueError, match="larger"):
        Sequential([Conv2D(2, 5)], input_shape=(1, 4, 4))
    with pytest.raises(ValueError):
        Sequential([Conv2D(2, (3, 6), padding=1)], input_shape=(1, 4, 3))
    # with padding 1 the padded input is 6x6: a 5x5 kernel fits and gives 2x2
    model = Sequential([Conv2D(2, 5, padding=1)], input_shape=(1, 4, 4))
    assert model.layers[0].output_shape == (2, 2, 2)


def test_same_padding_with_stride_raises():
    with pytest.raises(ValueError):
        Conv2D(2, 3, strides=2, padding="same")


def test_merge_layers_check_shapes():
    x_in = Input((2, 4, 4))
    a = Conv2D(3, 1)(x_in)
    b = Conv2D(3, 3)(x_in)  # 2x2
    with pytest.raises(ValueError):
        Add()([a, x_in])  # channels differ
    with pytest.raises(ValueError):
        Concatenate()([a, b])  # spatial sizes differ
    with pytest.raises(TypeError):
        Sequential([Add()], input_shape=(2, 4, 4))


def test_bad_layer_arguments_raise():
    with pytest.raises(ValueError):
        Conv2D(0, 3)
    with pytest.raises(ValueError):
        Conv2D(2, 3, activation="tanh")
    with pytest.raises(ValueError):
        Dense(-1)
    with pytest.raises(ValueError):
        Conv2D(2, 3, padding="full")
