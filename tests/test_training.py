"""Optimizers against an independent float64 re-implementation of PyTorch's documented update rules;
fit / evaluate / predict on the bundled digits (and on tiny float64 models checked by finite differences)."""
from __future__ import annotations

import numpy as np
import pytest

import gpucnn
from gpucnn import Adam, Conv2D, Dense, Dropout, Flatten, MaxPool2D, SGD, Sequential
from gpucnn.data import load_digits, one_hot, train_test_split

F64 = np.float64


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def digits_subset(digits):
    x, y = digits
    return x[:500], y[:500]


# ============================================================================ reference optimizers
# Straight from the pseudo-code of torch.optim.SGD and torch.optim.Adam (amsgrad=False, maximize=False).

class RefSGD:
    def __init__(self, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        self.lr, self.mu, self.tau, self.nesterov, self.wd = lr, momentum, dampening, nesterov, weight_decay
        self.b = {}
        self.t = 0

    def step(self, p, g):
        self.t += 1
        out = {}
        for k in p:
            gt = g[k] + self.wd * p[k] if self.wd else g[k].copy()
            if self.mu:
                if self.t > 1:
                    self.b[k] = self.mu * self.b[k] + (1 - self.tau) * gt
                else:
                    self.b[k] = gt.copy()
                gt = gt + self.mu * self.b[k] if self.nesterov else self.b[k]
            out[k] = p[k] - self.lr * gt
        return out


class RefAdam:
    def __init__(self, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.m, self.v = {}, {}
        self.t = 0

    def step(self, p, g):
        self.t += 1
        out = {}
        for k in p:
            gt = g[k] + self.wd * p[k] if self.wd else g[k]
            self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * gt
            self.v[k] = self.b2 * self.v.get(k, 0.0) + (1 - self.b2) * gt ** 2
            m_hat = self.m[k] / (1 - self.b1 ** self.t)
            v_hat = self.v[k] / (1 - self.b2 ** self.t)
            out[k] = p[k] - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return out


def _run_against_reference(opt, ref, dtype, steps=4, grad_scale=1.0, seed=0, rtol=1e-12, atol=1e-14):
    rng = np.random.default_rng(seed)
    shapes = {"conv.weight": (2, 3, 2, 2), "conv.bias": (2,), "dense.weight": (3, 5)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    expected = {k: v.astype(F64) for k, v in params.items()}
    live = dict(params)  # the optimizer updates these arrays in place
    for t in range(steps):
        grads = {k: (rng.standard_normal(s) * grad_scale).astype(dtype) for k, s in shapes.items()}
        opt.step(live, grads)
        expected = ref.step(expected, {k: v.astype(F64) for k, v in grads.items()})
        for k in shapes:
            assert live[k] is params[k], "the step must update the arrays in place"
            assert live[k].dtype == dtype
            np.testing.assert_allclose(live[k], expected[k], rtol=rtol, atol=atol, err_msg=f"{k} step {t + 1}")
    return expected


SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "momentum_dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "weight_decay": dict(lr=0.1, weight_decay=0.05),
    "all": dict(lr=0.02, momentum=0.7, nesterov=True, weight_decay=0.01),
    "momentum_dampening_wd": dict(lr=0.03, momentum=0.5, dampening=0.5, weight_decay=0.2),
}


@pytest.mark.parametrize("case", list(SGD_CASES))
def test_sgd_matches_pytorch_rule_float64(case):
    kw = SGD_CASES[case]
    _run_against_reference(SGD(**kw), RefSGD(**kw), F64, steps=5)


@pytest.mark.parametrize("case", ["momentum_dampening", "all"])
def test_sgd_matches_pytorch_rule_float32(case):
    kw = SGD_CASES[case]
    _run_against_reference(SGD(**kw), RefSGD(**kw), np.float32, steps=4, rtol=1e-5, atol=1e-6)


def test_sgd_cases_are_not_degenerate():
    """The reference cases are not degenerate: momentum, dampening, nesterov change the result."""
    finals = {case: _run_against_reference(SGD(**kw), RefSGD(**kw), F64, steps=3)
              for case, kw in SGD_CASES.items() if case in ("momentum", "momentum_dampening", "nesterov")}
    a, b, c = (finals[k]["dense.weight"] for k in ("momentum", "momentum_dampening", "nesterov"))
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - c).max() > 1e-3


ADAM_CASES = {
    "defaults_lr": (dict(lr=0.01), 1.0),
    "betas": (dict(lr=0.02, betas=(0.8, 0.99)), 1.0),
    "weight_decay": (dict(lr=0.01, weight_decay=0.1), 1.0),
    # eps comparable to sqrt(v_hat): tells eps added to sqrt(v_hat) from other placements
    "big_eps": (dict(lr=0.05, eps=0.05), 0.03),
    "all": (dict(lr=0.03, betas=(0.5, 0.9), eps=0.01, weight_decay=0.05), 0.1),
}


@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_matches_pytorch_rule_float64(case):
    kw, scale = ADAM_CASES[case]
    _run_against_reference(Adam(**kw), RefAdam(**kw), F64, steps=5, grad_scale=scale)


def test_adam_matches_pytorch_rule_float32():
    kw, scale = ADAM_CASES["all"]
    _run_against_reference(Adam(**kw), RefAdam(**kw), np.float32, steps=4, grad_scale=scale, rtol=1e-5, atol=1e-6)


def test_adam_eps_placement_matters_in_the_big_eps_case():
    """Sanity of the case above: eps inside the square root would give a clearly different answer."""
    kw, scale = ADAM_CASES["big_eps"]

    class EpsInside(RefAdam):
        def step(self, p, g):
            self.t += 1
            out = {}
            for k in p:
                self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * g[k]
                self.v[k] = self.b2 * self.v.get(k, 0.0) + (1 - self.b2) * g[k] ** 2
                out[k] = p[k] - self.lr * (self.m[k] / (1 - self.b1 ** self.t)) / np.sqrt(
                    self.v[k] / (1 - self.b2 ** self.t) + self.eps)
            return out

    with pytest.raises(AssertionError):
        _run_against_reference(Adam(**kw), EpsInside(**kw), F64, steps=2, grad_scale=scale, rtol=1e-6)


def test_sgd_parameter_first_seen_later_gets_its_buffer_initialized_with_its_gradient():
    opt = SGD(lr=0.1, momentum=0.9, dampening=0.5)
    a, b = np.ones(2), np.ones(2)
    opt.step({"a": a}, {"a": np.ones(2)})
    opt.step({"a": a, "b": b}, {"a": np.ones(2), "b": np.ones(2)})
    np.testing.assert_allclose(b, 1 - 0.1 * 1.0)  # PyTorch: buf = g on the parameter's first step


def test_optimizer_defaults_are_pytorch_defaults():
    sgd = SGD()
    assert (sgd.lr, sgd.momentum, sgd.dampening, sgd.nesterov, sgd.weight_decay) == (1e-3, 0, 0, False, 0)
    adam = Adam()
    assert (adam.lr, tuple(adam.betas), adam.eps, adam.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0)
    # and the defaults act like the reference with those values
    _run_against_reference(SGD(), RefSGD(lr=1e-3), F64, steps=2)
    _run_against_reference(Adam(), RefAdam(lr=1e-3), F64, steps=3)


def test_optimizer_argument_errors():
    with pytest.raises(ValueError, match="nesterov"):
        SGD(lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError):
        SGD(lr=-1)
    with pytest.raises(ValueError):
        Adam(betas=(0.9, 1.0))
    opt = SGD(lr=0.1)
    p = {"w": np.ones(3)}
    with pytest.raises(ValueError):
        opt.step(p, {"v": np.ones(3)})


def test_compile_choices():
    model = Sequential([Flatten(), Dense(2)], input_shape=(1, 2, 2), seed=0)
    assert isinstance(model.compile("sgd").optimizer, SGD)
    assert isinstance(model.compile("adam").optimizer, Adam)
    opt = SGD(lr=0.5)
    assert model.compile(opt).optimizer is opt
    with pytest.raises(ValueError):
        model.compile("rmsprop")


# ============================================================================ the training step, by hand

def _mean_ce(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def test_one_sgd_step_of_fit_uses_the_mean_cross_entropy_gradient():
    """fit on one full batch with SGD(lr) moves every parameter by -lr * dL/dp, L = mean CE of the logits
    (before the final softmax); dL/dp by central differences in float64."""
    rng = np.random.default_rng(0)
    model = Sequential([Flatten(), Dense(4, activation="relu"), Dense(3, activation="softmax")],
                       input_shape=(1, 2, 3), seed=0, dtype=F64)
    x = rng.standard_normal((5, 1, 2, 3))
    y = np.array([0, 2, 1, 2, 0])
    before = {k: v.copy() for k, v in model.parameters().items()}

    def loss():
        return _mean_ce(model.forward(x, logits=True), y)

    l0 = loss()
    expected = {}
    for k, p in model.parameters().items():
        g = np.zeros(p.size)
        flat = p.reshape(-1)
        for i in range(p.size):
            orig = flat[i]
            flat[i] = orig + 1e-6
            up = loss()
            flat[i] = orig - 1e-6
            down = loss()
            flat[i] = orig
            g[i] = (up - down) / 2e-6
        expected[k] = before[k] - 0.1 * g.reshape(p.shape)
    assert np.abs(expected["dense.weight"] - before["dense.weight"]).max() > 1e-4
    model.compile(SGD(lr=0.1))
    hist = model.fit(x, y, epochs=1, batch_size=5, shuffle=False, verbose=0)
    for k, p in model.parameters().items():
        np.testing.assert_allclose(p, expected[k], rtol=1e-7, atol=1e-9, err_msg=k)
    np.testing.assert_allclose(hist["loss"][0], l0, rtol=1e-12)
    probs = model.forward(x)  # the final softmax still applies in inference
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-12)


def test_epoch_loss_is_the_sample_weighted_mean_over_uneven_batches():
    """With lr=0 the weights never move, so an epoch's loss/accuracy equal evaluate() on the training set,
    whatever the (uneven) batching."""
    rng = np.random.default_rng(1)
    model = Sequential([Flatten(), Dense(6, activation="relu"), Dense(4, activation="softmax")],
                       input_shape=(1, 3, 3), seed=1, dtype=F64)
    x = rng.standard_normal((23, 1, 3, 3))
    y = rng.integers(0, 4, 23)
    model.compile(SGD(lr=0.0))
    hist = model.fit(x, y, epochs=2, batch_size=5, seed=0, verbose=0)
    loss, acc = model.evaluate(x, y)
    np.testing.assert_allclose(hist["loss"], [loss, loss], rtol=1e-12)
    np.testing.assert_allclose(hist["accuracy"], [acc, acc], rtol=1e-12)
    np.testing.assert_allclose(loss, _mean_ce(model.forward(x, logits=True), y), rtol=1e-12)


# ============================================================================ fit on digits

def _small_net(seed=0, dropout=False):
    layers = [Conv2D(8, 3, padding="same", activation="relu"), MaxPool2D(2), Flatten()]
    if dropout:
        layers.append(Dropout(0.3))
    layers.append(Dense(10, activation="softmax"))
    return Sequential(layers, input_shape=(1, 8, 8), seed=seed)


def test_fit_makes_the_loss_fall(digits_subset):
    x, y = digits_subset
    model = _small_net(seed=0).compile(Adam(lr=5e-3))
    hist = model.fit(x, y, epochs=5, batch_size=32, seed=0, verbose=0)
    assert isinstance(hist, gpucnn.train.History) and model.history is hist
    assert hist.epoch == [0, 1, 2, 3, 4]
    assert set(hist.history) == {"loss", "accuracy"}
    assert hist["loss"][-1] < hist["loss"][0] / 2
    assert hist["accuracy"][-1] > 0.8
    assert all(0 <= a <= 1 for a in hist["accuracy"])


def test_fit_validation_split_uses_the_last_fraction(digits_subset):
    x, y = digits_subset
    model = _small_net(seed=1).compile(Adam(lr=5e-3))
    hist = model.fit(x, y, epochs=3, batch_size=50, validation_split=0.2, seed=0, verbose=0)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in hist.history.values())
    # the last epoch's validation metrics are those of the final model on the last 20%
    val_loss, val_acc = model.evaluate(x[400:], y[400:])
    np.testing.assert_allclose(hist["val_loss"][-1], val_loss, rtol=1e-6)
    assert hist["val_accuracy"][-1] == val_acc
    assert hist["val_loss"][-1] < hist["val_loss"][0]


def test_fit_validation_split_trains_on_the_first_part_only(digits_subset):
    """Same seed: validation_split=0.2 on x trains exactly like fit on x[:400]."""
    x, y = digits_subset
    a = _small_net(seed=2).compile(Adam(lr=5e-3))
    a.fit(x, y, epochs=2, batch_size=50, validation_split=0.2, seed=3, verbose=0)
    b = _small_net(seed=2).compile(Adam(lr=5e-3))
    b.fit(x[:400], y[:400], epochs=2, batch_size=50, seed=3, verbose=0)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)


def test_fit_validation_data(digits):
    x, y = digits
    xv, yv = x[1500:1600], y[1500:1600]
    model = _small_net(seed=3).compile(Adam(lr=5e-3))
    hist = model.fit(x[:300], y[:300], epochs=2, batch_size=32, validation_data=(xv, yv), seed=0, verbose=0)
    assert len(hist["val_loss"]) == len(hist["val_accuracy"]) == 2
    loss, acc = model.evaluate(xv, yv)
    np.testing.assert_allclose(hist["val_loss"][-1], loss, rtol=1e-6)
    assert hist["val_accuracy"][-1] == acc


def test_fit_verbose_levels(digits_subset, capsys):
    x, y = digits_subset
    x, y = x[:100], y[:100]
    model = _small_net(seed=4)
    model.fit(x, y, epochs=2, batch_size=50, seed=0, verbose=0)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    model.fit(x, y, epochs=3, batch_size=50, validation_split=0.2, seed=0, verbose=2)
    out, _ = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {i}/3 ")
        assert "loss=" in line and "val_accuracy=" in line
    model.fit(x, y, epochs=1, batch_size=50, validation_split=0.2, seed=0, verbose=1)
    out, err = capsys.readouterr()
    assert "epoch 1/1" in out + err
    with pytest.raises(ValueError):
        model.fit(x, y, epochs=1, verbose=3)


def test_fit_is_deterministic_for_a_seed(digits_subset):
    x, y = digits_subset
    x, y = x[:200], y[:200]

    def train(model_seed, fit_seed):
        model = _small_net(seed=model_seed, dropout=True).compile(Adam(lr=5e-3))
        hist = model.fit(x, y, epochs=2, batch_size=32, seed=fit_seed, verbose=0)
        return model.state_dict(), hist["loss"]

    (a, la), (b, lb), (c, lc) = train(0, 0), train(0, 0), train(0, 1)
    assert la == lb
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)  # another shuffle order (and dropout masks)


def test_evaluate_matches_manual_computation_from_predict(digits_subset):
    x, y = digits_subset
    model = _small_net(seed=5).compile(Adam(lr=5e-3))
    model.fit(x[:300], y[:300], epochs=2, batch_size=32, seed=0, verbose=0)
    xt, yt = x[300:], y[300:]
    probs = model.predict(xt, batch_size=64)
    assert probs.shape == (200, 10)
    manual_loss = -np.mean(np.log(probs.astype(F64)[np.arange(200), yt]))
    manual_acc = np.mean(probs.argmax(axis=1) == yt)
    loss, acc = model.evaluate(xt, yt, batch_size=64)
    np.testing.assert_allclose(loss, manual_loss, rtol=1e-4)
    assert acc == pytest.approx(manual_acc, abs=1e-12)
    assert 0.3 < acc <= 1.0  # trained: far above chance
    # batch size does not change the result
    loss2, acc2 = model.evaluate(xt, yt, batch_size=7)
    np.testing.assert_allclose(loss2, loss, rtol=1e-5)
    assert acc2 == acc


def test_one_hot_labels_train_like_integer_labels(digits_subset):
    x, y = digits_subset
    x, y = x[:160], y[:160]
    a = _small_net(seed=6).compile(Adam(lr=5e-3))
    ha = a.fit(x, y, epochs=2, batch_size=32, seed=0, verbose=0)
    b = _small_net(seed=6).compile(Adam(lr=5e-3))
    hb = b.fit(x, one_hot(y, 10), epochs=2, batch_size=32, seed=0, verbose=0)
    assert ha.history == hb.history
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    assert b.evaluate(x, one_hot(y, 10)) == a.evaluate(x, y)


def test_fit_input_errors(digits_subset):
    x, y = digits_subset
    model = _small_net(seed=7)
    with pytest.raises(TypeError):
        model.fit(x[:10].astype(F64), y[:10], epochs=1, verbose=0)
    with pytest.raises(TypeError):
        model.fit(x[:10], y[:10].astype(np.float32), epochs=1, verbose=0)
    with pytest.raises(ValueError):
        model.fit(x[:10], y[:9], epochs=1, verbose=0)
    with pytest.raises(ValueError):
        model.fit(x[:10], y[:10], epochs=1, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError):
        model.fit(x[:10], y[:10] + 10, epochs=1, verbose=0)  # labels out of range


@pytest.mark.slow
def test_digits_cnn_with_the_cli_defaults_reaches_97_percent(digits):
    """`gpucnn train`'s defaults: digits_cnn, Adam lr 2e-3, batch 32, 20 epochs, seed 0, stratified 80/20 split."""
    x, y = digits
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, seed=0)
    assert len(x_test) == 360
    # stratified: every class keeps its share (within one sample)
    counts_all, counts_test = np.bincount(y, minlength=10), np.bincount(y_test, minlength=10)
    assert np.all(np.abs(counts_test - counts_all * 0.2) <= 1)
    model = gpucnn.models.digits_cnn(seed=0).compile(Adam(lr=2e-3))
    hist = model.fit(x_train, y_train, epochs=20, batch_size=32, seed=0, verbose=0)
    loss, acc = model.evaluate(x_test, y_test)
    assert acc >= 0.97, f"held-out accuracy {acc:.4f}"
    assert hist["loss"][-1] < hist["loss"][0] / 5
