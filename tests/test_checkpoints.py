"""Checkpoints from elsewhere: a malformed architecture record or a non-finite weight in a file written by
Model.save is a ValueError naming the file (never an IndexError, KeyError or TypeError), and a good file
still round-trips.

Each case writes a real checkpoint with Model.save, then rewrites the .npz with NumPy: the architecture JSON
corrupted in one way, or one weight made NaN/inf.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import gpucnn
from gpucnn import Add, Concatenate, Conv2D, Dense, Flatten, Input, MaxPool2D, Model, UpSampling2D


def _net(seed=0):
    """Every kind of wiring: a chain, a branch, a Concatenate and an Add (two merges), a flat head.

    Node indices (what `inbound` points at): 0 input, 1 conv2d, 2 max_pool2d, 3 up_sampling2d,
    4 concatenate, 5 conv2d_1, 6 add, 7 flatten, 8 dense; config["layers"][i] is node i + 1.
    """
    x = Input((1, 8, 8))
    e = Conv2D(2, 3, padding="same", activation="relu")(x)
    d = UpSampling2D(2)(MaxPool2D(2)(e))
    c = Concatenate()([d, e])
    a = Add()([Conv2D(2, 1)(c), e])
    y = Dense(3)(Flatten()(a))
    return Model(x, y, seed=seed, name="wired")


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "good.npz"
    _net().save(path)
    return path


def _arrays(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _write(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _corrupt_architecture(src, dst, mutate=None, raw=None):
    """dst: src with its architecture JSON changed by mutate(config) (in place), or replaced by raw text."""
    arrays = _arrays(src)
    if raw is None:
        config = json.loads(str(arrays["__architecture__"]))
        mutate(config)
        raw = json.dumps(config)
    arrays["__architecture__"] = np.array(raw)
    _write(dst, arrays)
    return dst


def _set(*keys_and_value):
    """A mutation setting config[k1][k2]... = value."""
    *keys, value = keys_and_value

    def mutate(config):
        target = config
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return mutate


def _delete(*keys):
    def mutate(config):
        target = config
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return mutate


def _insert_dead_layer(config):
    # a ReLU reading conv2d that nothing reads: Model.save never writes one (every layer leads to the output)
    config["layers"].insert(7, {"class": "ReLU", "name": "dead", "config": {}, "inbound": [1]})


# (id, mutation, a word the message must contain)
CORRUPTIONS = [
    # wiring: inbound pointing at a layer that does not exist
    ("inbound_out_of_range", _set("layers", 1, "inbound", [99]), "inbound"),
    ("inbound_negative", _set("layers", 7, "inbound", [-1]), "inbound"),  # would silently mean "the previous"
    ("inbound_negative_merge", _set("layers", 5, "inbound", [5, -8]), "inbound"),
    ("inbound_points_forward", _set("layers", 1, "inbound", [3]), "inbound"),
    ("inbound_points_at_itself", _set("layers", 1, "inbound", [2]), "inbound"),
    ("inbound_string", _set("layers", 1, "inbound", ["1"]), "inbound"),
    ("inbound_float", _set("layers", 1, "inbound", [1.0]), "inbound"),
    ("inbound_bool", _set("layers", 1, "inbound", [True]), "inbound"),  # True == 1 to Python
    ("inbound_not_a_list", _set("layers", 1, "inbound", 1), "inbound"),
    ("inbound_empty", _set("layers", 1, "inbound", []), "inbound"),
    ("merge_with_one_parent", _set("layers", 3, "inbound", [3]), "Concatenate"),
    ("plain_layer_with_two_parents", _set("layers", 4, "inbound", [4, 1]), "Conv2D"),
    ("dead_layer", _insert_dead_layer, "dead"),
    # missing keys
    ("no_layers", _delete("layers"), "layers"),
    ("no_input_shape", _delete("input_shape"), "input_shape"),
    ("no_dtype", _delete("dtype"), "dtype"),
    ("no_name", _delete("name"), "name"),
    ("no_format", _delete("format"), "format"),
    ("layer_without_class", _delete("layers", 0, "class"), "class"),
    ("layer_without_name", _delete("layers", 0, "name"), "name"),
    ("layer_without_config", _delete("layers", 0, "config"), "config"),
    ("layer_without_inbound", _delete("layers", 0, "inbound"), "inbound"),
    # wrong types
    ("layers_a_dict", _set("layers", {"0": {}}), "layers"),
    ("layers_empty", _set("layers", []), "layers"),
    ("layer_a_list", _set("layers", 0, ["Conv2D"]), "layer 0"),
    ("class_a_list", _set("layers", 0, "class", ["Conv2D"]), "class"),
    ("unknown_class", _set("layers", 0, "class", "Conv3D"), "Conv3D"),
    ("layer_name_an_int", _set("layers", 0, "name", 5), "name"),
    ("duplicate_layer_names", _set("layers", 4, "name", "conv2d"), "conv2d"),
    ("layer_config_a_list", _set("layers", 0, "config", [2, 3]), "config"),
    ("model_name_a_list", _set("name", ["wired"]), "name"),
    # layer configs the layer class refuses
    ("conv_filters_zero", _set("layers", 0, "config", "filters", 0), "filters"),
    ("conv_unknown_argument", _set("layers", 0, "config", "filterz", 2), "filterz"),
    ("config_repeats_the_name", _set("layers", 0, "config", "name", "x"), "name"),
    ("conv_bad_padding", _set("layers", 0, "config", "padding", "sometimes"), "padding"),
    ("pool_window_a_string", _set("layers", 1, "config", "pool_size", "big"), "pool_size"),
    ("dense_units_a_string", _set("layers", 7, "config", "units", "3"), "units"),
    # input shape and dtype
    ("input_shape_2d", _set("input_shape", [1, 8]), "Conv2D"),
    ("input_shape_zero", _set("input_shape", [0, 8, 8]), "input_shape"),
    ("input_shape_float", _set("input_shape", [1.5, 8, 8]), "input_shape"),
    ("input_shape_string", _set("input_shape", "1,8,8"), "input_shape"),
    ("input_shape_not_the_weights", _set("input_shape", [1, 4, 4]), "dense.weight"),
    ("dtype_unknown", _set("dtype", "float99"), "dtype"),
    ("dtype_integer", _set("dtype", "int32"), "dtype"),
    ("dtype_a_number", _set("dtype", 32), "dtype"),
]


@pytest.mark.parametrize("mutate, word", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_malformed_architecture_is_a_value_error_naming_the_file(saved, tmp_path, mutate, word):
    path = _corrupt_architecture(saved, tmp_path / "corrupt.npz", mutate)
    with pytest.raises(ValueError) as e:
        gpucnn.load_model(path)
    assert str(path) in str(e.value)
    assert word in str(e.value)
    # into an existing model: refused too (as an architecture that differs), naming the file
    model = _net(seed=1)
    before = model.state_dict()
    with pytest.raises(ValueError) as e:
        model.load(path)
    assert str(path) in str(e.value)
    for k, v in model.state_dict().items():  # nothing was loaded
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("raw", ["[1, 2]", "null", "5", '"text"', "[" * 100_000 + "]" * 100_000],
                         ids=["list", "null", "number", "string", "deeply_nested"])
def test_architecture_that_is_not_an_object_is_a_value_error_naming_the_file(saved, tmp_path, raw):
    path = _corrupt_architecture(saved, tmp_path / "corrupt.npz", raw=raw)
    for load in (gpucnn.load_model, _net(seed=1).load):
        with pytest.raises(ValueError) as e:
            load(path)
        assert str(path) in str(e.value)


@pytest.mark.parametrize("key, value", [("conv2d.weight", np.nan), ("dense.bias", np.inf),
                                        ("conv2d_1.weight", -np.inf)])
def test_non_finite_weight_is_refused_naming_the_tensor_and_the_file(saved, tmp_path, key, value):
    arrays = _arrays(saved)
    arrays[key].flat[1] = value
    path = tmp_path / "poisoned.npz"
    _write(path, arrays)
    for load in (gpucnn.load_model, _net(seed=1).load):
        with pytest.raises(ValueError) as e:
            load(path)
        assert str(path) in str(e.value) and key in str(e.value)
        assert "finite" in str(e.value)


def test_weights_of_the_wrong_shape_are_a_value_error_naming_the_file(saved, tmp_path):
    arrays = _arrays(saved)
    arrays["dense.weight"] = arrays["dense.weight"][:, :-1].copy()
    path = tmp_path / "short.npz"
    _write(path, arrays)
    for load in (gpucnn.load_model, _net(seed=1).load):
        with pytest.raises(ValueError) as e:
            load(path)
        assert str(path) in str(e.value) and "dense.weight" in str(e.value)


def test_good_checkpoint_round_trips(saved):
    model = _net()
    loaded = gpucnn.load_model(saved)
    assert loaded.name == "wired" and loaded.get_config() == model.get_config()
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    other = _net(seed=1)
    other.load(saved)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
    # a hand-made config of plain JSON values builds the same net (from_config is not only for our files)
    rebuilt = Model.from_config(json.loads(json.dumps(model.get_config())), seed=0)
    np.testing.assert_array_equal(rebuilt.predict(x), model.predict(x))
