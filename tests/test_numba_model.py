"""A tiny training run on the numba backend (the CUDA simulator without a GPU): gradients match
the NumPy backend's for the same weights and batch, and the loss falls. In the simulator the net is
digits_cnn's layer stack with 4 and 8 filters (the real one takes minutes per step there); on a GPU
the tests also run digits_cnn itself."""
import numpy as np
import pytest

pytest.importorskip("numba")

import gpucnn
from gpucnn import backend, data, models
from gpucnn.train import train_step

NEEDED = ("conv2d_relu", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "relu", "relu_backward",
          "linear", "linear_backward", "softmax", "softmax_backward", "softmax_cross_entropy", "dropout",
          "dropout_backward", "adam_step", "sgd_step")


def _numba_ready():
    entry = backend.info()["numba"]
    if not entry["available"]:
        return "numba backend unavailable: " + entry["reason"]
    missing = [op for op in NEEDED if op not in entry["ops"]]
    return f"numba backend lacks {missing}" if missing else None


def small_digits_cnn(seed):
    """digits_cnn's layers (conv, conv, pool, dropout, flatten, dense, dropout, softmax) at a width the simulator can run."""
    from gpucnn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, Sequential
    layers = [Conv2D(4, 3, padding="same", activation="relu"), Conv2D(8, 3, padding="same", activation="relu"),
              MaxPool2D(2), Dropout(0.25), Flatten(), Dense(16, activation="relu"), Dropout(0.5),
              Dense(10, activation="softmax")]
    return Sequential(layers, input_shape=(1, 8, 8), seed=seed)


NETS = [pytest.param(small_digits_cnn, id="small_digits_cnn"),
        pytest.param(models.digits_cnn, id="digits_cnn", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def batch():
    x, y = data.load_digits()
    return x[:2], y[:2]


@pytest.mark.parametrize("make", NETS)
def test_gradients_match_numpy(batch, make):
    reason = _numba_ready()
    if reason:
        pytest.skip(reason)
    x, y = batch
    grads = {}
    for name in ("numpy", "numba"):
        with gpucnn.use_backend(name):
            model = make(seed=3)
            logits = model.forward(x, training=False, logits=True)  # no dropout: identical masks not needed
            loss, dlogits = gpucnn.functional.softmax_cross_entropy(logits, y)
            model.backward(dlogits)
            grads[name] = {k: np.array(gpucnn.functional.to_numpy(v)) for k, v in model.grads().items()}
    for key, ref in grads["numpy"].items():
        np.testing.assert_allclose(grads["numba"][key], ref, rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("make", NETS)
def test_loss_falls(batch, make):
    reason = _numba_ready()
    if reason:
        pytest.skip(reason)
    x, y = batch
    with gpucnn.use_backend("numba"):
        model = make(seed=3).compile(gpucnn.SGD(lr=0.05, momentum=0.9))
        losses = [train_step(model, x, y)[0] for _ in range(2)]
    assert losses[-1] < losses[0], losses
