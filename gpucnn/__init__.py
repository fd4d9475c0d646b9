"""gpucnn: a convolutional neural network library whose every hot op is a kernel you can read.

    import gpucnn
    from gpucnn import functional as F
    gpucnn.use_backend('auto')        # or 'numpy', 'numba', 'cupy'; also a context manager
    model = gpucnn.models.digits_cnn(seed=0)
"""
from . import config, data, functional, models, optim
from ._blas import describe as blas_info
from .backend import BackendError, available_backends, current_backend, info, use_backend
from .model import Model, Sequential, load_model
from .layers import (Add, AvgPool2D, BatchNorm2D, Concatenate, Conv2D, Dense, Dropout, Flatten, Input, MaxPool2D,
                     ReLU, Softmax, UpSampling2D)
from .optim import SGD, Adam

from ._version import __version__

__all__ = [
    "config", "functional", "models", "optim", "data", "use_backend", "current_backend", "available_backends", "info",
    "BackendError", "blas_info", "Model", "Sequential", "load_model", "Input", "Conv2D", "Dense", "MaxPool2D", "AvgPool2D",
    "UpSampling2D", "ReLU", "Flatten", "Dropout", "BatchNorm2D", "Softmax", "Add", "Concatenate", "SGD", "Adam",
]
