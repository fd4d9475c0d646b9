"""The user-facing models: gpucnn.Model and gpucnn.Sequential, the network plus Keras' training front.

    model = gpucnn.Sequential([Conv2D(32, 3, activation='relu'), Flatten(), Dense(10)], input_shape=(1, 8, 8))
    model.compile('adam').fit(x, y, epochs=2)
    model.save('net.npz'); same = gpucnn.load_model('net.npz')

Why this module: the network (gpucnn.graph.Network: running the graph, its fusion plan, its state and
files) sits below training, and training (gpucnn.train: the loop, evaluate, predict) runs any network
it is given. The Keras-style class that has both — compile/fit/evaluate/predict as methods — needs
both, so it lives here, a floor above graph and train: graph never imports train, and the imports
run one way (models, cli -> model -> train, graph -> layers, optim, ...; viz needs only the network
and imports graph). Everything a network does is inherited unchanged; this module only adds the
optimizer and history a model trains with. `load_model` builds this Model.
"""
from __future__ import annotations

import numpy as np

from .graph import Network, chain
from .layers import Input, Node
from .optim import get_optimizer
from .saving import build_from_file


class Model(Network):
    """A graph of layers from one Input node to one output node, trainable Keras-style.

    Model(inputs, outputs, seed=None, dtype=np.float32, name='model'): see gpucnn.graph.Network for
    forward/backward, parameters, state_dict, summary, save/load; here compile, fit, evaluate, predict.
    """

    def __init__(self, inputs: Input, outputs: Node, seed: int | None = None, dtype=np.float32, name: str = "model"):
        super().__init__(inputs, outputs, seed=seed, dtype=dtype, name=name)
        self.optimizer = None  # compile() chooses it; fit() compiles with 'adam' when nothing did
        self.history = None  # the History of the last fit()

    # ----------------------------------------------------------------- training (gpucnn.train)
    # gpucnn.train (and tqdm with it) is imported on first use, as before the split: `import gpucnn` stays light.
    def compile(self, optimizer="adam"):
        """Choose the optimizer fit() uses: an Optimizer, or 'adam' / 'sgd' with PyTorch's defaults."""
        self.optimizer = get_optimizer(optimizer)
        return self

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0, shuffle=True,
            seed=None, verbose=1, cuda_graph=False, distributed=False, bucket_bytes=None, sync_batchnorm=False):
        from . import train
        return train.fit(self, x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                         validation_split=validation_split, shuffle=shuffle, seed=seed, verbose=verbose,
                         cuda_graph=cuda_graph, distributed=distributed, bucket_bytes=bucket_bytes,
                         sync_batchnorm=sync_batchnorm)

    def evaluate(self, x, y, batch_size=256):
        from . import train
        return train.evaluate(self, x, y, batch_size=batch_size)

    def predict(self, x, batch_size=256):
        from . import train
        return train.predict(self, x, batch_size=batch_size)


class Sequential(Model):
    """A plain stack: Sequential([Conv2D(...), MaxPool2D(), ...], input_shape=(C, H, W))."""

    def __init__(self, layers, input_shape, seed: int | None = None, dtype=np.float32, name: str = "sequential"):
        inp, out = chain(layers, input_shape)
        super().__init__(inp, out, seed=seed, dtype=dtype, name=name)

    @classmethod
    def from_config(cls, config: dict, seed: int | None = None) -> Model:
        """An architecture record describes a graph: it comes back as a Model, as gpucnn.load_model gives it."""
        return Model.from_config(config, seed=seed)


def load_model(path, seed: int | None = None) -> Model:
    """Rebuild a model saved with Model.save and load its weights.

    Every problem with the file is a ValueError naming it (a missing file is FileNotFoundError): not a
    model file, a malformed architecture record (see Model.from_config), a weight that is not finite,
    missing, unexpected or mis-shaped weights.
    """
    return build_from_file(Model, path, seed=seed)
