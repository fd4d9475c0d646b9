"""Labels as users hold them, and labels out of range on the device.

Host labels are read by one function (shapes.class_indices) in fit, evaluate and the loss: class
indices (N,) or (N, 1), float one-hot rows of exactly the model's width. Device labels are never
read on the host: the loss kernels record a label out of range, and check_label_errors (fit calls
it once an epoch) raises naming the batch.
"""
import numpy as np
import pytest

import gpucnn
from gpucnn import backend
from gpucnn import functional as F
from gpucnn.layers import Dense, Flatten
from helpers import assert_close


def _logits(n=6, k=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


def test_loss_reads_n_by_1_integers_and_one_hot_rows_as_class_indices():
    logits, labels = _logits(), np.array([3, 0, 2, 2, 1, 0])
    loss, d = F.softmax_cross_entropy(logits, labels)
    for other in (labels[:, None], labels[:, None].astype(np.int32), np.eye(4, dtype=np.float32)[labels]):
        loss2, d2 = F.softmax_cross_entropy(logits, other)
        assert_close(loss2, loss, rtol=0, atol=0)
        assert_close(d2, d, rtol=0, atol=0)


def small_model(seed=0):
    return gpucnn.Sequential([Flatten(), Dense(16, activation="relu"), Dense(3, activation="softmax")],
                             input_shape=(1, 4, 4), seed=seed)


def blobs(n=150, seed=0):
    """Three separable classes: the class decides the sign pattern of the pixels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[1, -1], [-1, 1], [1, 1]], np.float32)[y]
    x = np.repeat(centres, 8, axis=1).reshape(n, 1, 4, 4) + 0.3 * rng.standard_normal((n, 1, 4, 4))
    return x.astype(np.float32), y


def test_n_by_1_labels_train_to_the_same_model_as_flat_labels():
    """Before: (N, 1) integers were read as one-column one-hot rows, every label became class 0 and fit
    reported 100% accuracy on a model that predicts one class."""
    x, y = blobs()
    results = []
    for labels in (y, y[:, None]):
        m = small_model().compile(gpucnn.Adam(lr=1e-2))
        hist = m.fit(x, labels, epochs=5, batch_size=16, seed=0, verbose=0)
        results.append((hist.history, m.evaluate(x, labels), m.state_dict()))
    (h1, ev1, w1), (h2, ev2, w2) = results
    assert h1 == h2 and ev1 == ev2
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert ev1[1] > 0.9 and len(np.unique(y)) == 3  # learned all three classes, not "everything is class 0"


@pytest.mark.parametrize("labels,match", [
    (lambda y: np.eye(4, dtype=np.float32)[y], r"one-hot rows of shape \(150, 3\), got one-hot rows of shape \(150, 4\)"),
    (lambda y: np.stack([y, y], 1), r"integer rows of several columns are ambiguous"),
    (lambda y: np.full((150, 3), 1 / 3, np.float32), r"float rows must be one-hot"),
    (lambda y: y[:, None] + 3, r"labels must lie in \[0, 3\)"),
    (lambda y: y[:100], r"expected class indices of shape \(150,\)"),
])
@pytest.mark.parametrize("call", ["fit", "evaluate"])
def test_fit_and_evaluate_refuse_labels_that_do_not_fit_the_model(labels, match, call):
    x, y = blobs()
    m = small_model()
    with pytest.raises(ValueError, match=match):
        if call == "fit":
            m.fit(x, labels(y), epochs=1, verbose=0)
        else:
            m.evaluate(x, labels(y))


def test_float_class_indices_are_refused_with_what_to_do():
    x, y = blobs()
    with pytest.raises(TypeError, match=r"integer class indices"):
        small_model().fit(x, y.astype(np.float64), epochs=1, verbose=0)


# --------------------------------------------------------------------------- labels on the device

DEVICE_BACKENDS = [b for b in ("cupy", "numba") if b in backend.available_backends()]


def _to_device(name, a):
    with backend.use_backend(name):
        return F.asarray(a)


@pytest.mark.parametrize("name", DEVICE_BACKENDS)
def test_a_bad_device_label_is_recorded_not_read_on_the_host(name, monkeypatch):
    logits, labels = _logits(5, 3), np.array([0, 2, 1, 1, 0])
    with backend.use_backend(name):
        F.check_label_errors()  # start clean
        good = F.softmax_cross_entropy(_to_device(name, logits), _to_device(name, labels))
        bad_labels = labels.copy()
        bad_labels[3] = 7
        dev = _to_device(name, bad_labels)
        # the host never reads device labels: a label check that copied them to the host would fail here
        device_logits = _to_device(name, logits)
        copy_out = "get" if hasattr(dev, "get") else "copy_to_host"
        monkeypatch.setattr(type(dev), copy_out, lambda *a, **k: pytest.fail("device labels read on the host"))
        loss, d = F.softmax_cross_entropy(device_logits, dev)
        monkeypatch.undo()
        loss, d, good_d = F.to_numpy(loss), F.to_numpy(d), F.to_numpy(good[1])
        assert np.isnan(loss)                      # the loss says something is wrong
        assert np.all(d[3] == 0)                   # the bad row's gradient is zero, never read out of its row
        assert_close(d[[0, 1, 2, 4]], good_d[[0, 1, 2, 4]], rtol=0, atol=0)  # the other rows are untouched
        with pytest.raises(ValueError, match=r"label 7 at row 3 of loss call 1 .* outside \[0, 3\)"):
            F.check_label_errors()
        F.check_label_errors()  # reset: nothing left
        F.softmax_cross_entropy(_to_device(name, logits), _to_device(name, np.array([0, 0, -2, 0, 0])))
        with pytest.raises(ValueError, match=r"label -2 at row 2 of loss call 0"):
            F.check_label_errors()


def test_host_labels_out_of_range_raise_before_any_kernel():
    with backend.use_backend("numpy"):
        with pytest.raises(ValueError, match=r"first bad one: 9 at row 1"):
            F.softmax_cross_entropy(_logits(3, 4), np.array([0, 9, 1]))
