"""The network: a DAG of layers from one Input to one output, run forward and backward.

    x = Input((1, 8, 8))
    e = Conv2D(8, 3, padding='same', activation='relu')(x)
    d = UpSampling2D(2)(MaxPool2D(2)(e))
    y = Conv2D(1, 1)(Concatenate()([d, e]))
    net = Network(x, y, seed=0)

`Network` is the graph runner (building the layers, naming them, placing their arrays on a backend,
forward and backward, summary). It inherits its state and files from gpucnn.saving.NetworkState
(parameters, state_dict/load_state_dict, get_config/from_config, save/load) and asks gpucnn.fusion
for the ReLU fusion plan it runs. It knows nothing of training: the user-facing gpucnn.Model and
gpucnn.Sequential (gpucnn/model.py, a floor above) subclass it and add Keras' compile/fit/evaluate/predict.

A network runs on whatever backend is current: its parameters are moved there
once, on the first forward after the backend changed, never per op.
"""
from __future__ import annotations

import numpy as np

from . import backend
from . import functional as F
from . import fusion
from .layers import Input, InputLayer, Layer, Node
from .saving import NetworkState


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


def chain(layers, input_shape) -> tuple[Input, Node]:
    """(input, output) of a plain stack of layers on an Input of input_shape: what Sequential builds."""
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
    return inp, x


class Network(NetworkState):
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
        deferred = fusion.deferred_relus(fused)
        for node in self.nodes[1:]:
            if wanted is not None and id(node) not in needed:
                continue
            layer = node.layer
            inputs = [values[id(n)] for n in node.inbound]
            arg = inputs if layer.merge else inputs[0]
            if node is self.output and getattr(layer, "softmax_output", False):
                values[id(node)] = layer.forward(arg, training, logits=logits)
            else:
                values[id(node)] = layer.forward(arg, training, **fusion.forward_flags(node, deferred))
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
                dx = layer.backward(dy, **fusion.backward_flags(node, fused, relu_done))
            for parent, g in zip(node.inbound, dx if layer.merge else [dx]):
                key = id(parent)
                if g is None:
                    continue
                grads[key] = F.add(grads[key], g) if key in grads else g
        return grads.get(id(self.input))

    # ----------------------------------------------------------------- fusion plan (gpucnn.fusion)
    def _relu_fusions(self) -> dict:
        """{id(consumer node): (consumer, producer)}: the ReLUs whose work moves into their one consumer.

        Planned once by gpucnn.fusion.relu_fusions (see there); `_fusion_plan = {}` turns fusion off.
        """
        if getattr(self, "_fusion_plan", None) is None:
            self._fusion_plan = fusion.relu_fusions(self.nodes, self.input, self.output)
        return self._fusion_plan

    # ----------------------------------------------------------------- size
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
