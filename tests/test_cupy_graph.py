"""fit(..., cuda_graph=True): the training step captured once and replayed must train exactly like
plain steps, allocate nothing after the first step, and refuse what it cannot capture.

Without a GPU the capture records the emulated kernel launches and a replay re-runs them (see
gpucnn/backends/cupy/_runtime.Graph): anything a step does outside a kernel launch, or any
per-step value frozen into a kernel argument, would make the replayed training differ.
"""
import numpy as np
import pytest

import gpucnn
from cupy_support import host
from gpucnn import backend
from gpucnn.backends.cupy import _runtime as rt
from gpucnn import capture as cgraph
from gpucnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D


def small(seed=0, dropout=False):
    layers = [Conv2D(4, 3, padding="same", activation="relu"), MaxPool2D(2),
              Conv2D(6, 3, padding="same", activation="relu"), MaxPool2D(2), Flatten(),
              Dense(12, activation="relu")] + ([Dropout(0.5)] if dropout else []) + [Dense(3, activation="softmax")]
    return gpucnn.Sequential(layers, input_shape=(1, 8, 8), seed=seed)


def data(n=44, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, n)


def train(cuda_graph, opt, epochs=3):
    x, y = data()
    m = small()
    with backend.use_backend("cupy"):
        m.compile(opt)
        hist = m.fit(x, y, epochs=epochs, batch_size=8, seed=0, verbose=0, cuda_graph=cuda_graph)
        return hist.history, {k: host(v).copy() for k, v in m.parameters().items()}


@pytest.mark.parametrize("make_opt", [lambda: gpucnn.Adam(lr=1e-2), lambda: gpucnn.SGD(lr=5e-2, momentum=0.9)],
                         ids=["adam", "sgd_momentum"])
def test_replayed_graph_trains_exactly_like_plain_steps(make_opt):
    plain_hist, plain = train(False, make_opt())
    graph_hist, graphed = train(True, make_opt())
    for k in plain:
        assert np.array_equal(plain[k], graphed[k]), f"{k} differs after training with cuda_graph=True"
    assert np.allclose(plain_hist["loss"], graph_hist["loss"], rtol=1e-5)
    assert plain_hist["accuracy"] == graph_hist["accuracy"]
    assert plain_hist["loss"][-1] < plain_hist["loss"][0]


def test_no_allocation_after_the_first_step_and_the_graph_replays():
    x, y = data(32)
    m = small()
    with backend.use_backend("cupy"):
        m.compile(gpucnn.Adam())
        step = cgraph.CapturedStep(m, 8)
        step.step(x[:8], y[:8])
        after_first = step.arena.allocations
        assert after_first >= 1
        for i in range(1, 4):
            step.step(x[8 * i: 8 * i + 8], y[8 * i: 8 * i + 8])
        assert step.arena.allocations == after_first, "the arena grew after the first step"
        assert step.replays == 2 and step.graph.operations > 20
        assert m.optimizer.steps == 4
        loss_sum, correct = step.take_stats()
        assert np.isfinite(loss_sum) and loss_sum > 0 and 0 <= correct <= 32


def test_a_replay_uses_the_new_batch():
    """Negative control: if the batch were not copied into the captured input buffer, replays would
    train on the captured batch again, and the weights would differ from plain training."""
    plain_hist, plain = train(False, gpucnn.Adam(lr=1e-2), epochs=1)
    real_copy = rt.copy_into
    try:
        frozen = {"n": 0}

        def copy_only_twice(dst, src):
            if frozen["n"] < 2 * (cgraph.EAGER_STEPS + 1):  # x and y of the eager steps and the captured one
                real_copy(dst, src)
            frozen["n"] += 1

        rt.copy_into = copy_only_twice
        _, graphed = train(True, gpucnn.Adam(lr=1e-2), epochs=1)
    finally:
        rt.copy_into = real_copy
    assert any(not np.array_equal(plain[k], graphed[k]) for k in plain)


def test_refuses_dropout_and_other_backends():
    with backend.use_backend("cupy"):
        with pytest.raises(ValueError, match="dropout"):
            cgraph.CapturedStep(small(dropout=True), 8)
        m = small()
        m.compile(gpucnn.Adam())
        with pytest.raises(ValueError, match="batches of 8"):
            cgraph.CapturedStep(m, 8).step(*data(4))
    with backend.use_backend("numpy"):
        with pytest.raises(ValueError, match="can capture a step"):
            cgraph.CapturedStep(small(), 8)


def test_arena_reuses_addresses_and_aligns():
    arena = rt.Arena()
    addresses = []
    for _ in range(2):
        with rt.workspace(arena):
            a, b = rt.empty((3, 5)), rt.empty((7,), np.int64)
            addresses.append((rt.pointer(a), rt.pointer(b)))
            assert rt.pointer(a) % 256 == 0 and rt.pointer(b) % 256 == 0
    assert addresses[0] == addresses[1] and arena.allocations == 1
    outside, chunk = rt.pointer(rt.empty((2,))), arena.chunks[0]
    assert not rt.pointer(chunk) <= outside < rt.pointer(chunk) + chunk.nbytes  # outside the workspace: fresh



def test_the_benchmark_closure_replays_after_two_plain_steps():
    from gpucnn import bench
    with backend.use_backend("cupy"):
        step = bench.gpucnn_graph_step("lenet_like", 2)
        before = step.captured.model.state_dict()
        for _ in range(5):
            step()
        after = step.captured.model.state_dict()
    assert step.captured.eager == 2 and step.captured.replays == 3
    assert all(not np.array_equal(before[k], after[k]) for k in before)
