"""The model zoo against SPEC.md's numbers, summary(), state_dict / load_state_dict, save / load."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

import gpucnn
from gpucnn import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Sequential, models


# ============================================================================ the zoo, as SPEC.md lists it

VGG_PARAMS = [896, 9248, 0, 18496, 36928, 0, 73856, 147584, 0, 0, 262272, 1290]
VGG_SHAPES = [(32, 32, 32), (32, 32, 32), (32, 16, 16), (64, 16, 16), (64, 16, 16), (64, 8, 8),
              (128, 8, 8), (128, 8, 8), (128, 4, 4), (2048,), (128,), (10,)]


def _hand_count(layer):
    """Parameter count from the layer's shapes: conv K*(C*R*S+1), dense out*(in+1), else 0."""
    if isinstance(layer, Conv2D):
        c = layer.input_shape[0]
        return layer.filters * (c * layer.kernel_size[0] * layer.kernel_size[1] + int(layer.use_bias))
    if isinstance(layer, Dense):
        return layer.units * (layer.input_shape[0] + int(layer.use_bias))
    return 0


def test_cifar10_vgg_parameter_counts_and_shapes():
    model = models.cifar10_vgg(seed=0)
    assert [type(layer).__name__ for layer in model.layers] == (
        ["Conv2D", "Conv2D", "MaxPool2D"] * 3 + ["Flatten", "Dense", "Dense"])
    assert [layer.param_count() for layer in model.layers] == VGG_PARAMS
    assert [_hand_count(layer) for layer in model.layers] == VGG_PARAMS
    assert [layer.output_shape for layer in model.layers] == VGG_SHAPES
    assert model.count_params() == 550_570 == sum(VGG_PARAMS)
    assert sum(p.size for p in model.parameters().values()) == 550_570
    assert model.input_shape == (3, 32, 32)


def test_cifar10_vgg_flops_about_78_mflop():
    model = models.cifar10_vgg(seed=0)
    flops = model.flops()
    assert 77e6 <= flops <= 79e6
    # the multiply-adds of the convolutions and dense layers alone (2 FLOPs each), computed by hand
    macs = 0
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            k, p, q = layer.output_shape
            macs += k * p * q * layer.input_shape[0] * 9
        elif isinstance(layer, Dense):
            macs += layer.units * layer.input_shape[0]
    assert 2 * macs <= flops <= 2 * macs * 1.01


def test_cifar10_vgg_flops_per_layer():
    """Each conv/dense layer: 2 FLOPs per multiply-add, plus at most a bias add and a ReLU per output."""
    model = models.cifar10_vgg(seed=0)
    for layer in model.layers:
        outputs = int(np.prod(layer.output_shape))
        if isinstance(layer, Conv2D):
            macs = outputs * layer.input_shape[0] * 9
        elif isinstance(layer, Dense):
            macs = outputs * layer.input_shape[0]
        else:
            assert layer.flops() <= 4 * int(np.prod(layer.input_shape)), layer.name
            continue
        assert 2 * macs <= layer.flops() <= 2 * macs + 4 * outputs, layer.name
    assert model.layers[-2].flops() >= 2 * 2048 * 128


def test_cifar10_vgg_forward_gives_probabilities():
    model = models.cifar10_vgg(seed=0)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    p = model.forward(x)
    assert p.shape == (2, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    assert np.all(p > 0)
    z = model.forward(x, logits=True)
    e = np.exp(z.astype(np.float64) - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_mnist_cnn_shapes_and_first_layer():
    model = models.mnist_cnn(seed=0)
    assert [layer.output_shape for layer in model.layers] == [
        (32, 28, 28), (32, 14, 14), (64, 14, 14), (64, 7, 7), (128, 7, 7), (128, 3, 3), (1152,), (100,), (10,)]
    first = model.layers[0]
    assert first.params["weight"].shape == (32, 1, 3, 3) and first.params["weight"].size == 288
    assert first.params["bias"].size == 32
    assert int(np.prod(first.output_shape)) == 25_088
    assert int(np.prod(model.layers[1].output_shape)) == 6_272
    assert model.layers[-1].activation == "softmax" and model.layers[-2].units == 100
    assert [layer.param_count() for layer in model.layers] == [_hand_count(layer) for layer in model.layers]
    assert model.count_params() == 320 + 18_496 + 73_856 + 115_300 + 1_010


def test_mnist_cnn_forward_on_real_sized_batch():
    model = models.mnist_cnn(seed=1)
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    p = model.forward(x)
    assert p.shape == (3, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)


def test_lenet_like_counts():
    model = models.lenet_like(seed=0)
    counts = [layer.param_count() for layer in model.layers]
    assert counts == [608, 0, 3216, 0, 0, 48120, 10164, 850]
    assert [_hand_count(layer) for layer in model.layers] == counts
    assert model.layers[4].output_shape == (400,)
    assert [layer.output_shape for layer in model.layers[:4]] == [(8, 28, 28), (8, 14, 14), (16, 10, 10),
                                                                  (16, 5, 5)]
    assert model.count_params() == 608 + 3216 + 48120 + 10164 + 850


def test_digits_cnn_runs_on_digits():
    x, y = gpucnn.data.load_digits()
    model = models.digits_cnn(seed=0)
    assert model.input_shape == x.shape[1:] == (1, 8, 8)
    assert model.count_params() == 151_306
    p = model.predict(x[:20])
    assert p.shape == (20, 10) and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    assert any(isinstance(layer, Dropout) for layer in model.layers)
    # inference ignores dropout: two predictions agree exactly
    np.testing.assert_array_equal(model.predict(x[:20]), p)


def test_zoo_get():
    assert models.get("lenet_like", seed=0).count_params() == 62_958
    with pytest.raises(ValueError, match="unknown model"):
        models.get("resnet50")


# ============================================================================ summary()

def test_summary_text_lists_every_layer():
    model = models.cifar10_vgg(seed=0)
    text = model.summary(print_fn=None)
    for layer in model.layers:
        row = next(line for line in text.splitlines() if line.startswith(layer.name + " "))
        assert type(layer).__name__ in row
        assert str((None,) + layer.output_shape) in row
        assert f"{layer.param_count():,}" in row.split(")", 2)[-1]
    for count in ("896", "9,248", "18,496", "36,928", "73,856", "147,584", "262,272", "1,290"):
        assert count in text
    assert "(None, 32, 32, 32)" in text and "(None, 128, 4, 4)" in text and "(None, 2048)" in text
    assert "Total params: 550,570" in text
    assert "Trainable params: 550,570" in text


def test_summary_prints(capsys):
    text = models.lenet_like(seed=0).summary()
    out = capsys.readouterr().out
    assert out.strip() == text.strip()
    assert "Total params: 62,958" in out
    assert "48,120" in out and "10,164" in out


def test_summary_total_counts_batchnorm_affine_parameters():
    model = Sequential([Conv2D(4, 3), BatchNorm2D(), Flatten(), Dense(2)], input_shape=(1, 5, 5), seed=0)
    text = model.summary(print_fn=None)
    total = (4 * 9 + 4) + (4 + 4) + (2 * 36 + 2)
    assert f"Total params: {total:,}" in text


# ============================================================================ SPEC's dense-layer facts

@pytest.mark.parametrize("hidden", [1, 7])
def test_dense_on_80x80x3_image(hidden):
    no_bias = Sequential([Flatten(), Dense(hidden, use_bias=False)], input_shape=(3, 80, 80), seed=0)
    assert no_bias.count_params() == 19_200 * hidden
    assert no_bias.parameters()["dense.weight"].shape == (hidden, 19_200)
    with_bias = Sequential([Flatten(), Dense(hidden)], input_shape=(3, 80, 80), seed=0)
    assert with_bias.count_params() - hidden == 19_200 * hidden


@pytest.mark.parametrize("hidden", [1, 3])
def test_dense_on_1280x720x3_image(hidden):
    model = Sequential([Flatten(), Dense(hidden, use_bias=False)], input_shape=(3, 720, 1280), seed=0)
    assert model.count_params() == 2_764_800 * hidden
    assert model.layers[0].output_shape == (2_764_800,)


# ============================================================================ state_dict

def _bn_net(seed=0, dtype=np.float32):
    return Sequential([Conv2D(3, 3, padding="same", activation="relu"), BatchNorm2D(), MaxPool2D(2),
                       Conv2D(4, 3), Flatten(), Dense(5, activation="relu"), Dense(3, activation="softmax")],
                      input_shape=(2, 6, 6), seed=seed, dtype=dtype)


STATE_KEYS = ["conv2d.weight", "conv2d.bias", "batch_norm2d.weight", "batch_norm2d.bias",
              "batch_norm2d.running_mean", "batch_norm2d.running_var", "conv2d_1.weight", "conv2d_1.bias",
              "dense.weight", "dense.bias", "dense_1.weight", "dense_1.bias"]


def test_state_dict_keys_are_ordered_weight_before_bias():
    model = _bn_net()
    state = model.state_dict()
    assert list(state) == STATE_KEYS
    assert list(model.parameters()) == [k for k in STATE_KEYS if "running" not in k]
    assert state["conv2d.weight"].shape == (3, 2, 3, 3) and state["conv2d_1.weight"].shape == (4, 3, 3, 3)
    assert state["dense.weight"].shape == (5, 4) and state["dense_1.weight"].shape == (3, 5)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())


def test_state_dict_is_a_copy():
    model = _bn_net()
    state = model.state_dict()
    state["conv2d.weight"][...] = 0
    assert np.abs(model.parameters()["conv2d.weight"]).max() > 0
    assert not np.shares_memory(state["dense.bias"], model.parameters()["dense.bias"])


def test_explicit_layer_names_are_kept():
    model = Sequential([Flatten(name="flat"), Dense(2, name="head")], input_shape=(1, 2, 2), seed=0)
    assert list(model.state_dict()) == ["head.weight", "head.bias"]


def test_grads_keys_equal_parameter_keys():
    model = _bn_net()
    with pytest.raises(RuntimeError):
        model.grads()
    x = np.random.default_rng(0).random((3, 2, 6, 6), dtype=np.float32)
    out = model.forward(x, training=True, logits=True)
    model.backward(np.ones_like(out))
    grads, params = model.grads(), model.parameters()
    assert list(grads) == list(params)
    for k in params:
        assert grads[k].shape == params[k].shape and grads[k].dtype == params[k].dtype


def test_load_state_dict_round_trip_into_fresh_model():
    a, b = _bn_net(seed=1), _bn_net(seed=2)
    x = np.random.default_rng(3).random((4, 2, 6, 6), dtype=np.float32)
    a.forward(x, training=True)  # move the running statistics off their initial values
    assert not np.allclose(a.predict(x), b.predict(x))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.predict(x), a.predict(x))
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)


def test_load_state_dict_lists_every_problem_in_one_error():
    model = _bn_net()
    state = model.state_dict()
    del state["dense.bias"]
    state["extra.weight"] = np.zeros(3, np.float32)
    state["conv2d_1.weight"] = np.zeros((4, 3, 2, 2), np.float32)
    state["dense_1.bias"] = state["dense_1.bias"].astype(np.float64)
    before = model.state_dict()
    with pytest.raises(ValueError) as err:
        model.load_state_dict(state)
    msg = str(err.value)
    for key in ("dense.bias", "extra.weight", "conv2d_1.weight", "dense_1.bias"):
        assert key in msg, key
    assert "missing" in msg and "unexpected" in msg
    # nothing was loaded
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)


# ============================================================================ save / load

def test_save_load_round_trip(tmp_path):
    model = models.lenet_like(seed=4)
    path = tmp_path / "lenet.npz"
    model.save(path)
    loaded = gpucnn.load_model(path)
    assert type(loaded.layers[-1]) is Dense and loaded.name == "lenet_like"
    assert list(loaded.state_dict()) == list(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    x = np.random.default_rng(4).random((3, 3, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # into an existing model of the same architecture
    other = models.lenet_like(seed=5)
    assert not np.array_equal(other.predict(x), model.predict(x))
    other.load(path)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))


def test_saved_file_is_a_plain_npz(tmp_path):
    model = _bn_net(seed=0)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as f:
        files = set(f.files)
        assert set(STATE_KEYS) <= files
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(f[k], v)
    assert zipfile.is_zipfile(path)


def test_save_load_keeps_batchnorm_buffers_and_training_works(tmp_path):
    rng = np.random.default_rng(6)
    model = _bn_net(seed=6)
    x = rng.random((8, 2, 6, 6), dtype=np.float32)
    y = rng.integers(0, 3, 8)
    model.compile(gpucnn.SGD(lr=0.05, momentum=0.9))
    model.fit(x, y, epochs=2, batch_size=4, seed=0, verbose=0)
    rm = model.state_dict()["batch_norm2d.running_mean"]
    assert np.abs(rm).max() > 0
    path = tmp_path / "bn.npz"
    model.save(path)
    loaded = gpucnn.load_model(path)
    np.testing.assert_array_equal(loaded.state_dict()["batch_norm2d.running_mean"], rm)
    np.testing.assert_array_equal(loaded.state_dict()["batch_norm2d.running_var"],
                                  model.state_dict()["batch_norm2d.running_var"])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # the loaded model keeps training
    loaded.compile(gpucnn.SGD(lr=0.05))
    before = loaded.evaluate(x, y)[0]
    loaded.fit(x, y, epochs=3, batch_size=8, seed=0, verbose=0)
    assert loaded.evaluate(x, y)[0] < before


def test_load_into_a_different_architecture_raises(tmp_path):
    path = tmp_path / "lenet.npz"
    models.lenet_like(seed=0).save(path)
    with pytest.raises(ValueError, match="architecture"):
        models.cifar10_vgg(seed=0).load(path)
    # same layer types, different width
    a = Sequential([Flatten(), Dense(4)], input_shape=(1, 2, 2), seed=0)
    b = Sequential([Flatten(), Dense(5)], input_shape=(1, 2, 2), seed=0)
    a.save(tmp_path / "a.npz")
    with pytest.raises(ValueError):
        b.load(tmp_path / "a.npz")


def test_save_then_load_with_a_path_without_suffix(tmp_path):
    model = Sequential([Flatten(), Dense(3)], input_shape=(1, 2, 2), seed=0)
    model.save(tmp_path / "weights")
    loaded = gpucnn.load_model(tmp_path / "weights")
    np.testing.assert_array_equal(loaded.state_dict()["dense.weight"], model.state_dict()["dense.weight"])


def test_load_into_same_architecture_with_another_model_name(tmp_path):
    path = tmp_path / "a.npz"
    Sequential([Flatten(), Dense(4)], input_shape=(1, 2, 2), seed=0, name="first").save(path)
    other = Sequential([Flatten(), Dense(4)], input_shape=(1, 2, 2), seed=1, name="second")
    other.load(path)
    np.testing.assert_array_equal(other.state_dict()["dense.weight"], gpucnn.load_model(path).state_dict()["dense.weight"])


@pytest.mark.parametrize("content", [b"this is not a model", b"PK\x03\x04 broken zip", b""],
                         ids=["text", "broken_zip", "empty"])
def test_corrupt_file_raises_value_error_naming_it(tmp_path, content):
    path = tmp_path / "bad_model.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad_model.npz"):
        gpucnn.load_model(path)
    with pytest.raises(ValueError, match="bad_model.npz"):
        models.lenet_like(seed=0).load(path)


def test_npz_without_architecture_raises(tmp_path):
    path = tmp_path / "weights_only.npz"
    np.savez(path, **models.lenet_like(seed=0).state_dict())
    with pytest.raises(ValueError, match="weights_only.npz"):
        gpucnn.load_model(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        gpucnn.load_model(tmp_path / "nope.npz")


# ============================================================================ input checks on forward

def test_forward_rejects_wrong_shape_and_dtype():
    model = models.digits_cnn(seed=0)
    good = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    assert model.forward(good).shape == (2, 10)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        model.forward(np.zeros((2, 1, 8, 9), np.float32))
    with pytest.raises(ValueError):
        model.forward(np.zeros((1, 8, 8), np.float32))  # no batch axis
    with pytest.raises(ValueError):
        model.forward(np.zeros((2, 8, 8, 1), np.float32))  # NHWC
    with pytest.raises(TypeError, match="float32"):
        model.forward(good.astype(np.float64))
    with pytest.raises(TypeError):
        model.forward((good * 255).astype(np.uint8))


def test_model_dtype_must_be_float():
    with pytest.raises(TypeError):
        Sequential([Flatten()], input_shape=(1, 2, 2), dtype=np.float16)


def test_float64_model_has_float64_parameters():
    model = models.lenet_like(seed=0, dtype=np.float64)
    assert all(v.dtype == np.float64 for v in model.parameters().values())
    a = models.lenet_like(seed=0)
    for k, v in a.parameters().items():  # the same draws, only the storage differs
        np.testing.assert_allclose(model.parameters()[k], v, rtol=1e-6)
