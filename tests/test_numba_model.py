"""A tiny training run on the numba backend (the CUDA simulator without a GPU): gradients match
the NumPy backend's for the same weights and batch, and the loss falls. In the simulator the net is
digits_cnn's layer stack with 4 and 8 filters (the real one takes minutes per step there) and one SGD
step; on a GPU the tests also run digits_cnn itself, and two whole training steps of it."""
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
    """The same weights and batch give the numba backend NumPy's gradients; then one SGD step of each backend's
    optimizer op lowers the loss, to the same new loss (in the simulator this stands in for a training run:
    a step there takes tens of seconds)."""
    reason = _numba_ready()
    if reason:
        pytest.skip(reason)
    x, y = batch
    F = gpucnn.functional
    grads, before, after = {}, {}, {}
    for name in ("numpy", "numba"):
        with gpucnn.use_backend(name):
            model = make(seed=3)
            logits = model.forward(x, training=False, logits=True)  # no dropout: identical masks not needed
            before[name], dlogits = F.softmax_cross_entropy(logits, y)
            model.backward(dlogits)
            grads[name] = {k: np.array(F.to_numpy(v)) for k, v in model.grads().items()}
            params, g = list(model.parameters().values()), list(model.grads().values())
            F.sgd_step(params, g, [F.zeros_like(p) for p in params], lr=0.5, first_step=True)
            after[name] = F.softmax_cross_entropy(model.forward(x, training=False, logits=True), y)[0]
    for key, ref in grads["numpy"].items():
        np.testing.assert_allclose(grads["numba"][key], ref, rtol=1e-4, atol=1e-6, err_msg=key)
    loss = {k: (float(F.to_numpy(before[k])), float(F.to_numpy(after[k]))) for k in before}
    assert loss["numba"][1] < loss["numba"][0], loss
    np.testing.assert_allclose(loss["numba"], loss["numpy"], rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("make", [models.digits_cnn])
def test_loss_falls(batch, make):
    """Two training steps (forward, fused loss, backward, SGD with momentum) of digits_cnn on a GPU."""
    reason = _numba_ready()
    if reason:
        pytest.skip(reason)
    x, y = batch
    with gpucnn.use_backend("numba"):
        model = make(seed=3).compile(gpucnn.SGD(lr=0.05, momentum=0.9))
        losses = [train_step(model, x, y)[0] for _ in range(2)]
    assert losses[-1] < losses[0], losses
