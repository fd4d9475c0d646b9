"""A tiny training run of digits_cnn on the numba backend (the CUDA simulator without a GPU):
its gradients match the NumPy backend's for the same weights and batch, and its loss falls."""
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


@pytest.fixture(scope="module")
def batch():
    x, y = data.load_digits()
    return x[:2], y[:2]


def test_digits_cnn_gradients_match_numpy(batch):
    reason = _numba_ready()
    if reason:
        pytest.skip(reason)
    x, y = batch
    grads = {}
    for name in ("numpy", "numba"):
        with gpucnn.use_backend(name):
            model = models.digits_cnn(seed=3)
            logits = model.forward(x, training=False, logits=True)  # no dropout: identical masks not needed
            loss, dlogits = gpucnn.functional.softmax_cross_entropy(logits, y)
            model.backward(dlogits)
            grads[name] = {k: np.array(gpucnn.functional.to_numpy(v)) for k, v in model.grads().items()}
    for key, ref in grads["numpy"].items():
        np.testing.assert_allclose(grads["numba"][key], ref, rtol=1e-4, atol=1e-6, err_msg=key)


def test_digits_cnn_loss_falls(batch):
    reason = _numba_ready()
    if reason:
        pytest.skip(reason)
    x, y = batch
    with gpucnn.use_backend("numba"):
        model = models.digits_cnn(seed=3).compile(gpucnn.SGD(lr=0.05, momentum=0.9))
        losses = [train_step(model, x, y)[0] for _ in range(3)]
    assert losses[-1] < losses[0], losses
