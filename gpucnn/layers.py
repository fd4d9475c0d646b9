"""Keras-style layers over the op API; input channels are inferred when a model is built.

A layer is first *called* on a symbolic node (``Conv2D(8, 3)(x)``) to wire a
graph and learn its per-sample input shape; the model then *builds* it
(parameters, PyTorch's default initialization, from the model's seeded
generator). At run time ``forward`` keeps what ``backward`` needs and
``backward`` stores the parameter gradients in ``grads`` and returns dx.
Shapes here are per sample (C, H, W) or (features,), as in Keras summaries.
"""
from __future__ import annotations

import math

import numpy as np

from . import functional as F
from . import shapes


class Node:
    """A symbolic tensor of a graph: the output of `layer` applied to `inbound` nodes."""

    def __init__(self, layer: "Layer", inbound: list["Node"], shape: tuple):
        self.layer, self.inbound, self.shape = layer, inbound, tuple(shape)

    def __repr__(self):
        return f"Node({self.layer.name or type(self.layer).__name__}, shape={self.shape})"


class Layer:
    """Base class. Subclasses set `prefix` and implement output_shape, forward, backward."""

    prefix = "layer"
    merge = False  # True for layers taking a list of inputs (Add, Concatenate)
    input_grad = True  # the model sets False where nobody needs dx (a first layer in training)

    def __init__(self, name: str | None = None):
        self.name = name
        self.params: dict = {}  # trainable arrays, weight before bias
        self.buffers: dict = {}  # state that is saved but not trained (running statistics)
        self.grads: dict = {}
        self.input_shape = None
        self.output_shape = None
        self._node = None

    # ----------------------------------------------------------------- graph wiring
    def __call__(self, inputs):
        if self._node is not None:
            raise ValueError(f"layer {self.name or self.prefix} is already used in a graph; make a new layer instead "
                             "(shared layers are not supported)")
        nodes = list(inputs) if self.merge else [inputs]
        if not all(isinstance(n, Node) for n in nodes):
            want = "a list of graph nodes" if self.merge else "a graph node (from Input or another layer)"
            raise TypeError(f"{type(self).__name__} must be called on {want}, got {inputs!r}")
        in_shape = [n.shape for n in nodes] if self.merge else nodes[0].shape
        self.input_shape = in_shape
        self.output_shape = tuple(self.compute_output_shape(in_shape))
        self._node = Node(self, nodes, self.output_shape)
        return self._node

    def compute_output_shape(self, input_shape):
        return input_shape

    def build(self, rng: np.random.Generator, dtype) -> None:
        """Create parameters for the known input shape (default: none)."""

    def get_config(self) -> dict:
        return {}

    # ----------------------------------------------------------------- run
    def forward(self, x, training: bool = False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def _store_grads(self, dw, db):
        self.grads["weight"] = dw
        if "bias" in self.params:
            self.grads["bias"] = db

    def flops(self) -> int:
        """Forward floating-point operations per sample (a multiply-add counts as 2)."""
        return 0

    def param_count(self) -> int:
        return int(sum(np.prod(p.shape) for p in self.params.values()))

    def __repr__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({cfg})"


def _kaiming_uniform(rng, shape, fan_in, dtype):
    """PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (Kaiming-uniform with a=sqrt(5)), bias alike."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


_ACTIVATIONS = (None, "relu", "softmax")


def _check_activation(activation, allowed=_ACTIVATIONS):
    if activation not in allowed:
        raise ValueError(f"activation must be one of {allowed}, got {activation!r}")
    return activation


def _numel(shape) -> int:
    return int(np.prod(shape))


class Input(Node):
    """The graph's entry: a per-sample shape such as (C, H, W)."""

    def __init__(self, shape):
        shape = tuple(int(s) for s in shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"input shape must be positive sizes such as (C, H, W), got {shape}")
        layer = InputLayer()
        layer.input_shape = layer.output_shape = shape
        super().__init__(layer, [], shape)
        layer._node = self


class InputLayer(Layer):
    prefix = "input"

    def forward(self, x, training=False):
        return x


class Conv2D(Layer):
    """2-D convolution (cross-correlation) with K filters of size kernel_size, optional fused ReLU."""

    prefix = "conv2d"

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None, use_bias=True, name=None):
        super().__init__(name)
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(f"filters must be a positive int, got {filters!r}")
        self.filters = filters
        self.kernel_size = shapes.positive_pair(kernel_size, "kernel_size")
        self.strides = shapes.positive_pair(strides, "strides")
        self.padding = padding
        self.activation = _check_activation(activation, (None, "relu"))
        self.use_bias = use_bias
        self._pads = shapes.conv_padding(padding, self.kernel_size, self.strides)

    def get_config(self):
        return {"filters": self.filters, "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding if isinstance(self.padding, str) else list(shapes.pair(self.padding, "padding")),
                "activation": self.activation, "use_bias": self.use_bias}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D needs (C, H, W) inputs, got per-sample shape {input_shape}")
        c, h, w = input_shape
        t, b, l, r = self._pads
        kh, kw = self.kernel_size
        if kh > h + t + b or kw > w + l + r:
            raise ValueError(f"Conv2D kernel {kh}x{kw} is larger than its padded input {h + t + b}x{w + l + r}")
        p = shapes.conv_output_size(h, kh, self.strides[0], t, b)
        q = shapes.conv_output_size(w, kw, self.strides[1], l, r)
        return self.filters, p, q

    def build(self, rng, dtype):
        c = self.input_shape[0]
        kh, kw = self.kernel_size
        fan_in = c * kh * kw
        self.params["weight"] = _kaiming_uniform(rng, (self.filters, c, kh, kw), fan_in, dtype)
        if self.use_bias:
            self.params["bias"] = _kaiming_uniform(rng, (self.filters,), fan_in, dtype)

    @property
    def _torch_padding(self):
        t, b, l, r = self._pads
        return "same" if self.padding == "same" else (t, l)

    def forward(self, x, training=False):
        op = F.conv2d_relu if self.activation == "relu" else F.conv2d
        y = op(x, self.params["weight"], self.params.get("bias"), self.strides, self._torch_padding)
        self._x, self._y = x, y
        return y

    def backward(self, dy, input_relu=False, relu_done=False):
        """input_relu: this layer's input came out of a ReLU whose backward is fused into the data gradient
        (dx is returned for that ReLU's input). relu_done: dy is already the gradient of this layer's
        pre-activation (its consumer applied the ReLU mask)."""
        if self.activation == "relu" and not relu_done:
            dy = F.relu_backward(dy, self._y)
        dx, dw, db = F.conv2d_backward(dy, self._x, self.params["weight"], self.strides, self._torch_padding,
                                       input_grad=self.input_grad, relu_mask=input_relu and self.input_grad)
        self._store_grads(dw, db)
        return dx

    def flops(self):
        c = self.input_shape[0]
        k, p, q = self.output_shape
        out = k * p * q
        return 2 * out * c * self.kernel_size[0] * self.kernel_size[1] + (out if self.use_bias else 0) + (
            out if self.activation else 0)


class Dense(Layer):
    """Fully connected: y = x W^T + b, W of shape (units, in); optional ReLU or softmax."""

    prefix = "dense"

    def __init__(self, units, activation=None, use_bias=True, name=None):
        super().__init__(name)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"units must be a positive int, got {units!r}")
        self.units = units
        self.activation = _check_activation(activation)
        self.use_bias = use_bias

    @property
    def softmax_output(self):
        return self.activation == "softmax"

    def get_config(self):
        return {"units": self.units, "activation": self.activation, "use_bias": self.use_bias}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Dense needs flat (features,) inputs, got per-sample shape {input_shape}; add Flatten()")
        return (self.units,)

    def build(self, rng, dtype):
        fan_in = self.input_shape[0]
        self.params["weight"] = _kaiming_uniform(rng, (self.units, fan_in), fan_in, dtype)
        if self.use_bias:
            self.params["bias"] = _kaiming_uniform(rng, (self.units,), fan_in, dtype)

    def forward(self, x, training=False, logits=False):
        y = F.linear(x, self.params["weight"], self.params.get("bias"))
        self._x = x
        if self.activation == "relu":
            y = F.relu(y)
        elif self.activation == "softmax" and not logits:
            y = F.softmax(y)
        self._y = y
        return y

    def backward(self, dy, logits=False, relu_done=False):
        if self.activation == "relu" and not relu_done:
            dy = F.relu_backward(dy, self._y)
        elif self.activation == "softmax" and not logits:
            dy = F.softmax_backward(dy, self._y)
        dx, dw, db = F.linear_backward(dy, self._x, self.params["weight"])
        self._store_grads(dw, db)
        return dx

    def flops(self):
        n_in = self.input_shape[0]
        extra = {None: 0, "relu": 1, "softmax": 3}[self.activation]
        return 2 * n_in * self.units + (self.units if self.use_bias else 0) + extra * self.units


class _Pool2D(Layer):
    def __init__(self, pool_size=2, strides=None, name=None):
        super().__init__(name)
        self.pool_size = shapes.positive_pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else shapes.positive_pair(strides, "strides")

    def get_config(self):
        return {"pool_size": list(self.pool_size), "strides": list(self.strides)}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} needs (C, H, W) inputs, got per-sample shape {input_shape}")
        c, h, w = input_shape
        if self.pool_size[0] > h or self.pool_size[1] > w:
            raise ValueError(f"pool window {self.pool_size} is larger than the input {h}x{w}")
        return (c, shapes.conv_output_size(h, self.pool_size[0], self.strides[0]),
                shapes.conv_output_size(w, self.pool_size[1], self.strides[1]))

    def flops(self):
        return _numel(self.output_shape) * self.pool_size[0] * self.pool_size[1]


class MaxPool2D(_Pool2D):
    prefix = "max_pool2d"

    def forward(self, x, training=False, input_relu=False):
        """input_relu: x has not been through the ReLU before this pool yet; apply it here (fused)."""
        pool = F.relu_max_pool2d if input_relu else F.max_pool2d
        y, self._idx = pool(x, self.pool_size, self.strides, return_indices=True)
        self._x, self._y = x, y
        return y

    def backward(self, dy, input_relu=False):
        """input_relu: return the gradient for the input of the ReLU before this pool: dy is masked where
        the pooled output is 0 (on the pooled tensor: a quarter of the work of masking the input)."""
        if input_relu:
            dy = F.relu_backward(dy, self._y)
        return F.max_pool2d_backward(dy, self._x, self.pool_size, self.strides, indices=self._idx)


class AvgPool2D(_Pool2D):
    prefix = "avg_pool2d"

    def forward(self, x, training=False):
        self._x = x
        return F.avg_pool2d(x, self.pool_size, self.strides)

    def backward(self, dy):
        return F.avg_pool2d_backward(dy, self._x, self.pool_size, self.strides)


class UpSampling2D(Layer):
    """Nearest-neighbour upsampling: each value repeated size x size (the reverse of pooling)."""

    prefix = "up_sampling2d"

    def __init__(self, size=2, name=None):
        super().__init__(name)
        self.size = shapes.positive_pair(size, "size")

    def get_config(self):
        return {"size": list(self.size)}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"UpSampling2D needs (C, H, W) inputs, got per-sample shape {input_shape}")
        c, h, w = input_shape
        return c, h * self.size[0], w * self.size[1]

    def forward(self, x, training=False):
        return F.upsample_nearest2d(x, self.size)

    def backward(self, dy):
        return F.upsample_nearest2d_backward(dy, self.size)


class ReLU(Layer):
    prefix = "re_lu"

    def forward(self, x, training=False, deferred=False):
        """deferred: the max pool after this layer applies the ReLU (relu_max_pool2d); pass x through."""
        self._y = x if deferred else F.relu(x)
        return self._y

    def backward(self, dy, relu_done=False):
        return dy if relu_done else F.relu_backward(dy, self._y)

    def flops(self):
        return _numel(self.output_shape)


class Softmax(Layer):
    """Softmax over the features (or channels) axis; training uses the fused loss on its input."""

    prefix = "softmax"
    softmax_output = True

    def forward(self, x, training=False, logits=False):
        if logits:
            return x
        self._y = F.softmax(x)
        return self._y

    def backward(self, dy, logits=False):
        return dy if logits else F.softmax_backward(dy, self._y)

    def flops(self):
        return 3 * _numel(self.output_shape)


class Flatten(Layer):
    prefix = "flatten"

    def compute_output_shape(self, input_shape):
        return (_numel(input_shape),)

    def forward(self, x, training=False):
        self._shape = tuple(x.shape)
        return x.reshape(x.shape[0], _numel(x.shape[1:]))  # explicit sizes: device arrays take no -1

    def backward(self, dy):
        return dy.reshape(self._shape)


class Dropout(Layer):
    """Inverted dropout with rate `rate`; identity in inference. Masks come from the model's seed."""

    prefix = "dropout"

    def __init__(self, rate=0.5, name=None):
        super().__init__(name)
        if not 0 <= rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self._rng = np.random.default_rng()

    def get_config(self):
        return {"rate": self.rate}

    def build(self, rng, dtype):
        self._rng = np.random.default_rng(rng.integers(2**63))

    # Data-parallel training (gpucnn.distributed) sets rows = (offset, global batch size): this rank's batch
    # is rows offset.. of the step's global batch. The step's seed is drawn as in one process, the mask is
    # drawn on the host for the global batch's first offset + len(x) rows and this rank keeps its own rows,
    # so a sample's mask depends on the seed, the step and its place in the global batch, not on the rank
    # or the number of ranks (NumPy's generator fills in order: the first rows of a longer draw are the
    # shorter draw, and on the NumPy backend one rank's mask is exactly F.dropout's).
    rows = None

    def forward(self, x, training=False):
        seed = int(self._rng.integers(2**63)) if training else None
        if training and self.rows is not None and self.rate > 0:
            offset, _ = self.rows
            dtype = np.dtype(x.dtype)
            keep = np.random.default_rng(seed).random((offset + x.shape[0],) + tuple(x.shape[1:]), dtype=dtype)
            mask = (keep[offset:] >= self.rate).astype(dtype) / dtype.type(1 - self.rate)
            self._mask = F.asarray(mask)
            return F.dropout_backward(x, self._mask)
        y, self._mask = F.dropout(x, self.rate, training=training, seed=seed)
        return y

    def backward(self, dy):
        return F.dropout_backward(dy, self._mask)


class BatchNorm2D(Layer):
    """Batch normalization per channel (PyTorch's BatchNorm2d: momentum 0.1, eps 1e-5, affine)."""

    prefix = "batch_norm2d"

    def __init__(self, momentum=0.1, eps=1e-5, name=None):
        super().__init__(name)
        self.momentum, self.eps = float(momentum), float(eps)

    def get_config(self):
        return {"momentum": self.momentum, "eps": self.eps}

    def compute_output_shape(self, input_shape):
        if len(input_shape) not in (1, 3):
            raise ValueError(f"BatchNorm2D needs (C, H, W) or (features,) inputs, got {input_shape}")
        return input_shape

    def build(self, rng, dtype):
        c = self.input_shape[0]
        self.params["weight"] = np.ones(c, dtype)
        self.params["bias"] = np.zeros(c, dtype)
        self.buffers["running_mean"] = np.zeros(c, dtype)
        self.buffers["running_var"] = np.ones(c, dtype)

    # Data-parallel training with synchronized statistics (fit(..., distributed=True, sync_batchnorm=True))
    # sets sync to an object with allreduce(v) (a blocking sum of a host float64 vector over the ranks) and
    # dy_scale (see F.sync_batch_norm_backward); training steps then normalize with the global batch's
    # statistics (F.sync_batch_norm). None: this rank's own batch, as always.
    sync = None

    def forward(self, x, training=False):
        self._sync = self.sync if training else None
        if self._sync is not None:
            y, self._mean, self._invstd, self._count, rm, rv = F.sync_batch_norm(
                x, self.buffers["running_mean"], self.buffers["running_var"], self.params["weight"],
                self.params["bias"], self._sync.allreduce, momentum=self.momentum, eps=self.eps)
            self.buffers["running_mean"], self.buffers["running_var"] = rm, rv
        else:
            y, self._mean, self._invstd = F.batch_norm(
                x, self.buffers["running_mean"], self.buffers["running_var"], self.params["weight"],
                self.params["bias"], training=training, momentum=self.momentum, eps=self.eps)
        self._x, self._training = x, training
        return y

    def backward(self, dy):
        if self._sync is not None:
            dx, self.grads["weight"], self.grads["bias"] = F.sync_batch_norm_backward(
                dy, self._x, self.params["weight"], self._mean, self._invstd, self._count, self._sync.allreduce,
                dy_scale=self._sync.dy_scale)
            return dx
        dx, self.grads["weight"], self.grads["bias"] = F.batch_norm_backward(
            dy, self._x, self.params["weight"], self._mean, self._invstd, training=self._training)
        return dx

    def flops(self):
        return 4 * _numel(self.output_shape)


class Add(Layer):
    """Elementwise sum of inputs of one shape (residual connections)."""

    prefix = "add"
    merge = True

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 2 or any(s != input_shape[0] for s in input_shape):
            raise ValueError(f"Add needs two or more inputs of one shape, got {input_shape}")
        return input_shape[0]

    def forward(self, xs, training=False):
        y = xs[0]
        for x in xs[1:]:
            y = F.add(y, x)
        return y

    def backward(self, dy):
        return [dy] * len(self.input_shape)

    def flops(self):
        return (len(self.input_shape) - 1) * _numel(self.output_shape)


class Concatenate(Layer):
    """Concatenation along channels of (C_i, H, W) inputs (U-Net style skip connections)."""

    prefix = "concatenate"
    merge = True

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 2 or any(len(s) != 3 or s[1:] != input_shape[0][1:] for s in input_shape):
            raise ValueError(f"Concatenate needs two or more (C, H, W) inputs with equal H, W, got {input_shape}")
        return (sum(s[0] for s in input_shape),) + tuple(input_shape[0][1:])

    def forward(self, xs, training=False):
        return F.concat(xs)

    def backward(self, dy):
        return F.concat_backward(dy, [s[0] for s in self.input_shape])


LAYERS = {cls.__name__: cls for cls in (Conv2D, Dense, MaxPool2D, AvgPool2D, UpSampling2D, ReLU, Softmax, Flatten,
                                        Dropout, BatchNorm2D, Add, Concatenate)}
