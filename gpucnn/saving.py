"""A network's state and files: parameters, state_dict/load_state_dict, the architecture record, save/load.

`NetworkState` is a mixin of the graph runner (gpucnn.graph.Network); it reads the runner's `layers`,
`nodes`, `dtype`, `name`, `input_shape` and `_on` (the backend the parameters live on) and builds new
networks with `cls(inputs, outputs, seed=..., dtype=..., name=...)`. Everything read from outside is
checked, not trusted: a malformed architecture record, a file that is not a model file, a weight that is
not finite, missing, unexpected, mis-shaped or mis-typed weights are each a ValueError saying what is
wrong (and, for files, naming the file). `build_from_file` is what gpucnn.load_model runs.
"""
from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np

from . import backend
from . import functional as F
from .layers import LAYERS, Input, Node

FORMAT = "gpucnn-model"
FORMAT_VERSION = 1


class NetworkState:
    """Parameters, gradients, state_dict, architecture record and files of a graph network (a mixin)."""

    # ----------------------------------------------------------------- parameters
    def _entries(self, stores=("params", "buffers")):
        for layer in self.layers:
            for store in stores:
                for k, v in getattr(layer, store).items():
                    yield f"{layer.name}.{k}", layer, store, k, v

    def parameters(self) -> "OrderedDict[str, object]":
        """Trainable arrays (live, on the current backend), keyed like state_dict."""
        return OrderedDict((key, v) for key, _, _, _, v in self._entries(("params",)))

    def grads(self) -> "OrderedDict[str, object]":
        """Gradients of the last backward, with the keys of parameters()."""
        out = OrderedDict()
        for key, layer, _, k, _ in self._entries(("params",)):
            if k not in layer.grads:
                raise RuntimeError("no gradients yet: run forward(..., training=True) and backward() first")
            out[key] = layer.grads[k]
        return out

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter and buffer as a host NumPy copy: 'layer.weight' before 'layer.bias'."""
        return OrderedDict((key, np.array(F.to_numpy(v))) for key, _, _, _, v in self._entries())

    def load_state_dict(self, state: dict) -> None:
        """Strict: missing, unexpected, mis-shaped or mis-typed keys are one error listing them all.

        Like PyTorch's load_state_dict it does not look at the values: NaN and inf load as they are (a
        model may be inspected after diverging). Loading from a file (load(), gpucnn.load_model) refuses
        non-finite weights, naming the tensor and the file.
        """
        entries = list(self._entries())
        expected = {key: v for key, _, _, _, v in entries}
        problems = []
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for k, v in expected.items():
            if k in state:
                got = state[k]
                if tuple(np.shape(got)) != tuple(v.shape):
                    problems.append(f"{k}: expected shape {tuple(v.shape)}, got {tuple(np.shape(got))}")
                elif not hasattr(got, "dtype"):
                    problems.append(f"{k}: expected an array, got {type(got).__name__}")
                elif np.dtype(got.dtype) != self.dtype:
                    problems.append(f"{k}: expected dtype {self.dtype}, got {np.dtype(got.dtype)}")
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        to_backend = backend.get_backend(self._on).asarray
        for key, layer, store, k, _ in entries:
            getattr(layer, store)[k] = to_backend(np.array(state[key]))

    # ----------------------------------------------------------------- architecture and files
    def get_config(self) -> dict:
        index = {id(n): i for i, n in enumerate(self.nodes)}
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "name": self.name, "dtype": self.dtype.name,
            "input_shape": list(self.input_shape),
            "layers": [{"class": type(n.layer).__name__, "name": n.layer.name, "config": n.layer.get_config(),
                        "inbound": [index[id(p)] for p in n.inbound]} for n in self.nodes[1:]],
        }

    @classmethod
    def from_config(cls, config: dict, seed: int | None = None):
        """Build the model an architecture record (get_config(), as JSON gives it back) describes, as a `cls`.

        The record may come from a file made elsewhere, so it is checked, not trusted: every malformed
        record is a ValueError saying what is wrong (never an IndexError, KeyError or TypeError) — a key
        missing or of the wrong type, an unknown layer class or dtype, an input shape that is not positive
        ints, a layer config its class refuses, an `inbound` index that is not an int naming an earlier
        node (0 is the input, i + 1 the i-th layer; negative indices are refused, not counted from the
        end), a merge layer (Add, Concatenate) with fewer than two parents or a plain layer without
        exactly one, and a layer that does not lead to the output (get_config never writes one).
        """
        def bad(what):
            return ValueError(f"malformed {FORMAT} architecture: {what}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(config, dict):
            raise bad(f"expected a JSON object, got {type(config).__name__}")
        if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} architecture: format {config.get('format')!r} "
                             f"v{config.get('version')!r}")
        for key, kind in (("name", str), ("dtype", str), ("input_shape", list), ("layers", list)):
            if key not in config:
                raise bad(f"no {key!r}")
            if not isinstance(config[key], kind):
                raise bad(f"{key!r} must be a {kind.__name__}, got {config[key]!r}")
        if config["dtype"] not in ("float32", "float64"):
            raise bad(f"dtype must be 'float32' or 'float64', got {config['dtype']!r}")
        shape = config["input_shape"]
        if not shape or not all(is_int(s) and s > 0 for s in shape):
            raise bad(f"input_shape must be positive ints such as [C, H, W], got {shape!r}")
        if not config["layers"]:
            raise bad("'layers' is empty")
        nodes: list[Node] = [Input(shape)]
        for i, spec in enumerate(config["layers"]):
            where = f"layer {i}"
            if not isinstance(spec, dict):
                raise bad(f"{where} must be a JSON object, got {spec!r}")
            for key, kind in (("class", str), ("name", str), ("config", dict), ("inbound", list)):
                if key not in spec:
                    raise bad(f"{where} has no {key!r}")
                if not isinstance(spec[key], kind):
                    raise bad(f"{where}: {key!r} must be a {kind.__name__}, got {spec[key]!r}")
            where = f"layer {i} ({spec['class']} {spec['name']!r})"
            if spec["class"] not in LAYERS:
                raise bad(f"{where}: unknown layer class {spec['class']!r}; known: {sorted(LAYERS)}")
            layer_cls = LAYERS[spec["class"]]
            inbound = spec["inbound"]
            if not all(is_int(j) and 0 <= j < len(nodes) for j in inbound):
                raise bad(f"{where}: inbound {inbound!r} must be indices of earlier nodes, ints in "
                          f"[0, {len(nodes) - 1}] (0 is the input)")
            if layer_cls.merge and len(inbound) < 2:
                raise bad(f"{where}: {spec['class']} merges two or more inputs, inbound is {inbound!r}")
            if not layer_cls.merge and len(inbound) != 1:
                raise bad(f"{where}: {spec['class']} takes exactly one input, inbound is {inbound!r}")
            if "name" in spec["config"]:
                raise bad(f"{where}: 'name' belongs beside 'config', not in it")
            parents = [nodes[j] for j in inbound]
            try:
                layer = layer_cls(**spec["config"], name=spec["name"])
                nodes.append(layer(parents if layer.merge else parents[0]))
            except Exception as e:  # the layer's own checks: the config or the input shape it gets
                raise bad(f"{where}: {type(e).__name__}: {e}") from None
        try:
            model = cls(nodes[0], nodes[-1], seed=seed, dtype=config["dtype"], name=config["name"])
        except Exception as e:  # duplicate layer names, a graph whose output does not depend on the input...
            raise bad(f"{type(e).__name__}: {e}") from None
        if len(model.layers) != len(config["layers"]):
            used = {id(layer) for layer in model.layers}
            dead = [n.layer.name for n in nodes[1:] if id(n.layer) not in used]
            raise bad(f"layers {dead} do not lead to the output (the last layer)")
        return model

    def save(self, path) -> None:
        """Write a .npz of plain arrays: every state_dict entry plus the architecture as JSON text."""
        arrays = dict(self.state_dict())
        arrays["__architecture__"] = np.array(json.dumps(self.get_config()))
        with open(path, "wb") as f:  # exactly this path (np.savez would append .npz to a bare name)
            np.savez(f, **arrays)

    def load(self, path) -> None:
        """Load weights saved by save(); refuses a file whose architecture differs from this model's.

        Every refusal is a ValueError naming the file: an architecture that differs (or is malformed), a
        weight that is not finite (NaN or inf, named), missing, unexpected or mis-shaped weights. Nothing
        is loaded unless everything fits.
        """
        config, state = _read(path)
        mine = self.get_config()
        try:
            difference = _first_difference(config, mine)
        except Exception as e:  # a malformed record (a layer without 'class', say) differs from ours
            difference = f"malformed layer record ({type(e).__name__}: {e})"
        if not difference and (json.dumps(dict(config, name=None), sort_keys=True)
                               != json.dumps(dict(mine, name=None), sort_keys=True)):
            difference = "equal values of other JSON types (true for 1, 1.0 for 1): not a record Model.save writes"
        if not difference and not isinstance(config.get("name"), str):
            difference = f"malformed record: the model's 'name' is {config.get('name')!r}, not a string"
        if difference:
            raise ValueError(f"{path}: architecture does not match this model: {difference}")
        try:
            self.load_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _first_difference(saved: dict, mine: dict) -> str | None:
    """The first architectural difference between two configs (the model's name does not count)."""
    for key in ("format", "version", "dtype", "input_shape"):
        if saved.get(key) != mine.get(key):
            return f"{key} is {saved.get(key)!r} in the file, {mine.get(key)!r} here"
    a, b = saved.get("layers", []), mine["layers"]
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"layer {i} is {x['class']} {x['name']!r} {x['config']} in the file, {y['class']} {y['name']!r} {y['config']} here"
    if len(a) != len(b):
        return f"the file has {len(a)} layers, this model {len(b)}"
    return None


def _read(path):
    """(architecture record, arrays) of a file written by Model.save; anything else is a ValueError naming
    the file (a missing file stays FileNotFoundError): not an .npz, no architecture or one that is not a
    JSON object, a weight that is not finite (NaN or inf, named). The file-loading path refuses
    non-finite weights; load_state_dict, like PyTorch's, does not look at values."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable gpucnn model file ({type(e).__name__}: {e})") from None
    if "__architecture__" not in data:
        raise ValueError(f"{path}: no architecture inside; not a file written by Model.save")
    try:
        config = json.loads(str(data.pop("__architecture__")))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: corrupt architecture ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: corrupt architecture (a JSON {type(config).__name__}, not an object)")
    for key, a in data.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
            raise ValueError(f"{path}: {key} is not finite ({nan} NaN, {inf} inf of {a.size} values); "
                             "refusing to load it")
    return config, data


def build_from_file(cls, path, seed: int | None = None):
    """Rebuild the network saved at path as a `cls` (cls.from_config) and load its weights (gpucnn.load_model).

    Every problem with the file is a ValueError naming it (a missing file is FileNotFoundError): not a
    model file, a malformed architecture record (see from_config), a weight that is not finite,
    missing, unexpected or mis-shaped weights.
    """
    config, state = _read(path)
    try:
        model = cls.from_config(config, seed=seed)
        model.load_state_dict(state)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return model
