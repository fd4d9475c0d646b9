"""fit reads the device's label-error record once an epoch and raises naming the epoch and the batch.

fit checks host labels before training, so a label out of range reaches the device only when that
check is bypassed (here on purpose, standing in for labels that live on the device): the loss kernel
must then record it, train on without reading labels on the host, and fit must raise at the end of
the epoch, never later and never silently.
"""
import numpy as np
import pytest

import gpucnn
from gpucnn import backend, train
from gpucnn.layers import Dense, Flatten


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["plain", "captured"])
def test_fit_raises_at_the_end_of_the_epoch_naming_the_batch(cuda_graph, monkeypatch):
    if "cupy" not in backend.available_backends():
        pytest.skip("the cupy backend is unavailable here")
    x, y = _data()
    y_bad = y.copy()
    y_bad[13] = 5  # batch 1 (of 8 rows), row 5, with shuffle=False
    monkeypatch.setattr(train, "_labels", lambda labels, n, model: np.ascontiguousarray(labels, np.int64))
    m = gpucnn.Sequential([Flatten(), Dense(3, activation="softmax")], input_shape=(1, 4, 4), seed=0)
    epochs_done = []
    real_append = train.History.append
    monkeypatch.setattr(train.History, "append", lambda self, e, logs: (epochs_done.append(e), real_append(self, e, logs)))
    with backend.use_backend("cupy"):
        m.compile(gpucnn.SGD(lr=0.1))
        with pytest.raises(ValueError, match=r"fit, epoch 1: label 5 at row 5 of loss call 1 .*outside \[0, 3\)"):
            m.fit(x, y_bad, epochs=3, batch_size=8, shuffle=False, verbose=0, cuda_graph=cuda_graph)
    assert epochs_done == []  # raised at the end of the first epoch, before it was recorded


def test_fit_with_good_labels_leaves_no_error_behind():
    if "cupy" not in backend.available_backends():
        pytest.skip("the cupy backend is unavailable here")
    x, y = _data()
    m = gpucnn.Sequential([Flatten(), Dense(3, activation="softmax")], input_shape=(1, 4, 4), seed=0)
    with backend.use_backend("cupy"):
        m.compile(gpucnn.SGD(lr=0.1))
        m.fit(x, y, epochs=2, batch_size=8, verbose=0)
        gpucnn.functional.check_label_errors()  # nothing recorded
