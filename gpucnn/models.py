"""The model zoo: the networks of the source material, exactly as SPEC.md lists them.

Each returns a Sequential whose last layer is Dense(10, activation='softmax'),
as in the Keras code of the material; training feeds the logits before that
softmax to the fused softmax_cross_entropy (see Model.forward).
"""
from __future__ import annotations

import numpy as np

from .model import Sequential
from .layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D


def cifar10_vgg(seed=None, dtype=np.float32) -> Sequential:
    """32x32x3 -> 10: three VGG blocks of two 'same' 3x3 convs (32, 64, 128) + 2x2 max pool; 550,570 params."""
    layers = []
    for filters in (32, 64, 128):
        layers += [Conv2D(filters, 3, padding="same", activation="relu"),
                   Conv2D(filters, 3, padding="same", activation="relu"),
                   MaxPool2D(2)]
    layers += [Flatten(), Dense(128, activation="relu"), Dense(10, activation="softmax")]
    return Sequential(layers, input_shape=(3, 32, 32), seed=seed, dtype=dtype, name="cifar10_vgg")


def mnist_cnn(seed=None, dtype=np.float32) -> Sequential:
    """28x28x1 -> 10: 'same' 3x3 conv (32, 64, 128) + ReLU + 2x2 max pool each, dense 100, softmax 10."""
    layers = []
    for filters in (32, 64, 128):
        layers += [Conv2D(filters, 3, padding="same", activation="relu"), MaxPool2D(2)]
    layers += [Flatten(), Dense(100, activation="relu"), Dense(10, activation="softmax")]
    return Sequential(layers, input_shape=(1, 28, 28), seed=seed, dtype=dtype, name="mnist_cnn")


def lenet_like(seed=None, dtype=np.float32) -> Sequential:
    """32x32x3 -> 10: conv 8@5x5, pool, conv 16@5x5, pool, dense 120, 84, 10 (LeNet-5 with ReLU and max pool)."""
    layers = [Conv2D(8, 5, activation="relu"), MaxPool2D(2),
              Conv2D(16, 5, activation="relu"), MaxPool2D(2),
              Flatten(), Dense(120, activation="relu"), Dense(84, activation="relu"),
              Dense(10, activation="softmax")]
    return Sequential(layers, input_shape=(3, 32, 32), seed=seed, dtype=dtype, name="lenet_like")


def digits_cnn(seed=None, dtype=np.float32) -> Sequential:
    """8x8x1 -> 10, for scikit-learn's bundled digits (Keras' MNIST example, shrunk): 151,306 params.

    Two 'same' 3x3 convs (32, 64) + ReLU, 2x2 max pool, dropout 0.25, dense 128
    + ReLU, dropout 0.5, softmax 10. About 98% on the held-out fifth of the
    digits after 20 epochs of Adam (lr 2e-3, batch 32): `gpucnn train`.
    """
    layers = [Conv2D(32, 3, padding="same", activation="relu"),
              Conv2D(64, 3, padding="same", activation="relu"), MaxPool2D(2), Dropout(0.25),
              Flatten(), Dense(128, activation="relu"), Dropout(0.5), Dense(10, activation="softmax")]
    return Sequential(layers, input_shape=(1, 8, 8), seed=seed, dtype=dtype, name="digits_cnn")


ZOO = {"cifar10_vgg": cifar10_vgg, "mnist_cnn": mnist_cnn, "lenet_like": lenet_like, "digits_cnn": digits_cnn}


def get(name: str, **kwargs) -> Sequential:
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; the zoo has {', '.join(ZOO)}")
    return ZOO[name](**kwargs)
