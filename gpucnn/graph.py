"""Models: a DAG of layers (functional style) and Sequential, its chain special case.

    x = Input((1, 8, 8))
    e = Conv2D(8, 3, padding='same', activation='relu')(x)
    d = UpSampling2D(2)(MaxPool2D(2)(e))
    y = Conv2D(1, 1)(Concatenate()([d, e]))
    model = Model(x, y, seed=0)

A model runs on whatever backend is current: its parameters are moved there
once, on the first forward after the backend changed, never per op.
"""
from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np

from . import backend
from . import functional as F
from .layers import LAYERS, Conv2D, Dense, Input, InputLayer, Layer, MaxPool2D, Node, ReLU

FORMAT = "gpucnn-model"
FORMAT_VERSION = 1


def _topological(output: Node) -> list[Node]:
    order, seen = [], set()

    def visit(node):
        if id(node) in seen:
            return
        seen.add(id(node))
        for parent in node.inbound:
            visit(parent)
        order.append(node)

    visit(output)
    return order


class Model:
    """A graph of layers from one Input node to one output node."""

    def __init__(self, inputs: Input, outputs: Node, seed: int | None = None, dtype=np.float32, name: str = "model"):
        if not isinstance(inputs, Input):
            raise TypeError(f"inputs must be an Input node, got {type(inputs).__name__}")
        if not isinstance(outputs, Node):
            raise TypeError(f"outputs must be a graph node, got {type(outputs).__name__}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"model dtype must be float32 (or float64 for gradient checks), got {self.dtype}")
        self.name = name
        self.seed = seed
        self.input = inputs
        self.output = outputs
        self.nodes = _topological(outputs)
        if self.nodes[0] is not inputs or any(isinstance(n, Input) for n in self.nodes[1:]):
            raise ValueError("the output does not depend on the given Input (or depends on another Input)")
        self.input_shape = inputs.shape
        self.layers: list[Layer] = [n.layer for n in self.nodes[1:]]
        self._name_layers()
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            layer.build(rng, self.dtype)
        self._on = backend.host_backend()  # where the parameters live
        self.optimizer = None
        self.history = None

    def _name_layers(self):
        counts: dict[str, int] = {}
        taken = {layer.name for layer in self.layers if layer.name}
        for layer in self.layers:
            if layer.name:
                continue
            while True:
                i = counts.get(layer.prefix, 0)
                counts[layer.prefix] = i + 1
                name = layer.prefix if i == 0 else f"{layer.prefix}_{i}"
                if name not in taken:
                    break
            layer.name = name
            taken.add(name)
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")

    # ----------------------------------------------------------------- backend placement
    def _place(self):
        """Move parameters, buffers and gradients to the current backend (once per change)."""
        here = backend.current_backend()
        if here == self._on:
            return
        for layer in self.layers:
            for store in (layer.params, layer.buffers, layer.grads):
                for k, v in store.items():
                    store[k] = backend.move(v, self._on, here)
        self._on = here

    # ----------------------------------------------------------------- run
    def _check_input(self, x):
        if tuple(x.shape[1:]) != self.input_shape or len(x.shape) != len(self.input_shape) + 1:
            raise ValueError(f"model expects inputs of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")
        if np.dtype(x.dtype) != self.dtype:
            raise TypeError(f"model is {self.dtype} but the input is {np.dtype(x.dtype)}; convert it with "
                            f".astype(np.{self.dtype})")

    def get_layer(self, name: str) -> Layer:
        """The layer called `name` (ValueError listing the model's layers if there is none)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"model {self.name!r} has no layer {name!r}; its layers are "
                         f"{[layer.name for layer in self.layers]}")

    def forward(self, x, training: bool = False, logits: bool = False, outputs=None):
        """Run the graph on a batch x (an array of the current backend, or a host array).

        logits=True stops before a final softmax (a Softmax layer or a Dense
        with activation='softmax'): what softmax_cross_entropy wants.
        outputs: a layer name, or a list of names, to return those layers'
        outputs instead (an array, or a dict name -> array), running only the
        part of the graph they depend on (feature maps, activation maximization).
        """
        wanted = None
        if outputs is not None:
            names = [outputs] if isinstance(outputs, str) else list(outputs)
            wanted = [self.get_layer(name)._node for name in names]
            needed = {id(n) for node in wanted for n in _topological(node)}
        self._check_input(x)
        self._place()
        x = F.asarray(x)
        values = {id(self.input): x}
        fused = self._relu_fusions() if wanted is None else {}  # intermediate outputs asked for: run unfused
        deferred = {id(p) for c, p in fused.values() if isinstance(p.layer, ReLU) and isinstance(c.layer, MaxPool2D)}
        for node in self.nodes[1:]:
            if wanted is not None and id(node) not in needed:
                continue
            layer = node.layer
            inputs = [values[id(n)] for n in node.inbound]
            arg = inputs if layer.merge else inputs[0]
            if node is self.output and getattr(layer, "softmax_output", False):
                values[id(node)] = layer.forward(arg, training, logits=logits)
            elif id(node) in deferred:
                values[id(node)] = layer.forward(arg, training, deferred=True)
            elif node.inbound and id(node.inbound[0]) in deferred:
                values[id(node)] = layer.forward(arg, training, input_relu=True)
            else:
                values[id(node)] = layer.forward(arg, training)
        self._logits = logits
        self._fused = fused
        if wanted is not None:
            return values[id(wanted[0])] if isinstance(outputs, str) else {
                name: values[id(node)] for name, node in zip(names, wanted)}
        return values[id(self.output)]

    __call__ = forward

    def backward(self, dlogits, input_grad: bool = True, output: str | None = None):
        """Backpropagate from the gradient of the output of the last forward.

        When that forward ran with logits=True, dlogits is the gradient with
        respect to the logits (before the final softmax). Stores every
        layer's gradients (see grads()) and returns dx for the input, or None
        with input_grad=False (training skips the first layer's data gradient).
        output: a layer name: dlogits is then the gradient with respect to that
        layer's output (computed by the last forward), and only the layers it
        depends on are run backward.
        """
        start = self.output if output is None else self.get_layer(output)._node
        nodes = self.nodes[1:] if output is None else _topological(start)[1:]
        fused = getattr(self, "_fused", {}) if output is None else {}
        relu_done = {id(p) for _, p in fused.values()}
        grads = {id(start): dlogits}
        for node in reversed(nodes):
            dy = grads.pop(id(node))
            layer = node.layer
            layer.input_grad = input_grad or self.input not in node.inbound
            if node is self.output and getattr(layer, "softmax_output", False):
                dx = layer.backward(dy, logits=self._logits)
            else:
                # a consumer applies its input's ReLU mask (input_relu); that ReLU's producer then skips it
                flags = {"input_relu": True} if id(node) in fused else {}
                if id(node) in relu_done:
                    flags["relu_done"] = True
                dx = layer.backward(dy, **flags)
            for parent, g in zip(node.inbound, dx if layer.merge else [dx]):
                key = id(parent)
                if g is None:
                    continue
                grads[key] = F.add(grads[key], g) if key in grads else g
        return grads.get(id(self.input))

    def _relu_fusions(self) -> dict:
        """{id(consumer node): (consumer, producer)} where a ReLU's backward moves into its one consumer.

        The producer is a ReLU layer or a Conv2D/Dense with activation='relu'
        whose output feeds exactly one layer, a Conv2D (the ReLU mask is applied
        in its data-gradient epilogue) or a MaxPool2D (the mask is applied to the
        pooled gradient; a ReLU *layer* before a pool also moves its forward into
        the pool: relu_max_pool2d). Gradients are the same as unfused, to rounding.
        """
        if getattr(self, "_fusion_plan", None) is None:
            uses = {}
            for node in self.nodes[1:]:
                for parent in node.inbound:
                    uses[id(parent)] = uses.get(id(parent), 0) + 1
            plan = {}
            for node in self.nodes[1:]:
                if not isinstance(node.layer, (Conv2D, MaxPool2D)) or len(node.inbound) != 1:
                    continue
                parent = node.inbound[0]
                if parent is self.input or parent is self.output or uses[id(parent)] != 1:
                    continue
                p = parent.layer
                if isinstance(p, ReLU) or (isinstance(p, (Conv2D, Dense)) and p.activation == "relu"):
                    plan[id(node)] = (node, parent)
            self._fusion_plan = plan
        return self._fusion_plan

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

    def count_params(self) -> int:
        return sum(layer.param_count() for layer in self.layers)

    def flops(self) -> int:
        """Forward FLOPs per sample (multiply-add = 2)."""
        return sum(layer.flops() for layer in self.layers)

    # ----------------------------------------------------------------- summary
    def summary(self, print_fn=print) -> str:
        """A Keras-style table: layer (type), output shape, parameters, forward FLOPs per sample."""
        rows = [("Layer (type)", "Output Shape", "Param #", "FLOPs")]
        rows.append((f"input ({'Input'})", str((None,) + self.input_shape), "0", "0"))
        for layer in self.layers:
            rows.append((f"{layer.name} ({type(layer).__name__})", str((None,) + layer.output_shape),
                         f"{layer.param_count():,}", f"{layer.flops():,}"))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(4)]
        line = "=" * sum(widths)

        def fmt(r):
            return r[0].ljust(widths[0]) + r[1].ljust(widths[1]) + r[2].rjust(widths[2]) + r[3].rjust(widths[3])

        total = self.count_params()
        trainable = sum(int(np.prod(v.shape)) for v in self.parameters().values())
        flops = self.flops()
        text = "\n".join(
            [f'Model: "{self.name}"', line, fmt(rows[0]), line] + [fmt(r) for r in rows[1:]] + [
                line,
                f"Total params: {total:,}",
                f"Trainable params: {trainable:,}",
                f"Non-trainable params: {total - trainable:,}",
                f"Forward FLOPs per sample: {flops:,} ({flops / 1e6:.1f} MFLOP, multiply-add = 2)",
                line,
            ])
        if print_fn is not None:
            print_fn(text)
        return text

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
    def from_config(cls, config: dict, seed: int | None = None) -> "Model":
        """Build the model an architecture record (get_config(), as JSON gives it back) describes.

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
            model = Model(nodes[0], nodes[-1], seed=seed, dtype=config["dtype"], name=config["name"])
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

    # ----------------------------------------------------------------- training (gpucnn.train)
    def compile(self, optimizer="adam"):
        """Choose the optimizer fit() uses: an Optimizer, or 'adam' / 'sgd' with PyTorch's defaults."""
        from .optim import get_optimizer
        self.optimizer = get_optimizer(optimizer)
        return self

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0, shuffle=True,
            seed=None, verbose=1, cuda_graph=False):
        from .train import fit
        return fit(self, x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                   validation_split=validation_split, shuffle=shuffle, seed=seed, verbose=verbose,
                   cuda_graph=cuda_graph)

    def evaluate(self, x, y, batch_size=256):
        from .train import evaluate
        return evaluate(self, x, y, batch_size=batch_size)

    def predict(self, x, batch_size=256):
        from .train import predict
        return predict(self, x, batch_size=batch_size)


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


def load_model(path, seed: int | None = None) -> Model:
    """Rebuild a model saved with Model.save and load its weights.

    Every problem with the file is a ValueError naming it (a missing file is FileNotFoundError): not a
    model file, a malformed architecture record (see Model.from_config), a weight that is not finite,
    missing, unexpected or mis-shaped weights.
    """
    config, state = _read(path)
    try:
        model = Model.from_config(config, seed=seed)
        model.load_state_dict(state)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return model


class Sequential(Model):
    """A plain stack: Sequential([Conv2D(...), MaxPool2D(), ...], input_shape=(C, H, W))."""

    def __init__(self, layers, input_shape, seed: int | None = None, dtype=np.float32, name: str = "sequential"):
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        x = inp = Input(input_shape)
        for layer in layers:
            if not isinstance(layer, Layer) or isinstance(layer, InputLayer):
                raise TypeError(f"Sequential takes layers, got {layer!r}")
            if layer.merge:
                raise TypeError(f"{type(layer).__name__} merges several inputs; build the net with Model instead")
            x = layer(x)
        super().__init__(inp, x, seed=seed, dtype=dtype, name=name)
