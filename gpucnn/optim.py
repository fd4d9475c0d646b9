"""Optimizers with PyTorch's update rules and defaults (torch.optim.SGD and Adam).

An optimizer keeps its state (momentum buffers, moment estimates) per
parameter name and updates every parameter of a model in one backend call
(``functional.sgd_step`` / ``adam_step``), so a GPU backend can do it in one launch.
"""
from __future__ import annotations

import math

from . import backend
from . import functional as F


class Optimizer:
    def __init__(self):
        self.state: dict[str, dict] = {}
        self.steps = 0
        self._on = None

    def _states(self, params: dict, names: tuple[str, ...]):
        """Per-parameter state arrays, created as zeros on first use and moved with the backend.

        Returns one list per state name, in the order of params, and the set of keys created now.
        """
        here = backend.current_backend()
        if self._on not in (None, here):
            for st in self.state.values():
                for k in st:
                    st[k] = backend.move(st[k], self._on, here)
        self._on = here
        new = {key for key in params if key not in self.state}
        for key in new:
            self.state[key] = {n: F.zeros_like(params[key]) for n in names}
        return [[self.state[key][n] for key in params] for n in names], new

    def step(self, params: dict, grads: dict) -> None:
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def _finite_nonneg(value) -> bool:
    """0 <= value < inf; False for NaN (PyTorch refuses lr=NaN with its `not 0.0 <= lr` check)."""
    return 0.0 <= value < math.inf


def _check_keys(params, grads):
    if list(params) != list(grads):
        raise ValueError(f"params and grads must have the same keys in the same order, got {list(params)} "
                         f"and {list(grads)}")


class SGD(Optimizer):
    """torch.optim.SGD: lr=1e-3, momentum=0, dampening=0, nesterov=False, weight_decay=0 (L2 on the gradient)."""

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__()
        if not (_finite_nonneg(lr) and _finite_nonneg(momentum) and _finite_nonneg(weight_decay)):
            raise ValueError(f"lr, momentum and weight_decay must be finite and >= 0, got {lr}, {momentum}, "
                             f"{weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0 (as in PyTorch)")
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def step(self, params, grads):
        _check_keys(params, grads)
        (bufs,), new = self._states(params, ("momentum_buffer",))
        self.steps += 1
        # PyTorch starts each momentum buffer from the parameter's first gradient
        for first in (True, False):
            keys = [i for i, key in enumerate(params) if (key in new) == first]
            if keys:
                F.sgd_step([list(params.values())[i] for i in keys], [list(grads.values())[i] for i in keys],
                           [bufs[i] for i in keys], self.lr, self.momentum, self.dampening, self.nesterov,
                           self.weight_decay, first_step=first)


class Adam(Optimizer):
    """torch.optim.Adam: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2 on the gradient)."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__()
        if not (_finite_nonneg(lr) and _finite_nonneg(eps) and _finite_nonneg(weight_decay)) \
                or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay

    def get_config(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}

    def step(self, params, grads):
        _check_keys(params, grads)
        (m, v), _ = self._states(params, ("exp_avg", "exp_avg_sq"))
        self.steps += 1
        F.adam_step(list(params.values()), list(grads.values()), m, v, self.steps, self.lr, self.betas[0],
                    self.betas[1], self.eps, self.weight_decay)


def get_optimizer(spec) -> Optimizer:
    if isinstance(spec, Optimizer):
        return spec
    if spec == "adam":
        return Adam()
    if spec == "sgd":
        return SGD()
    raise ValueError(f"optimizer must be an Optimizer, 'adam' or 'sgd', got {spec!r}")
