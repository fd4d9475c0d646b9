"""The PyTorch twins: each bench case and each training step written with PyTorch's own kernels, the
reference column beside gpucnn's figures (cuDNN and PyTorch's CUDA kernels on a GPU, its CPU kernels on
the CPU, labelled as such). PyTorch is not a gpucnn backend, so its CUDA-event timer lives here.
PyTorch is imported only when a twin runs.
"""
from __future__ import annotations

import os

from ..backend import CpuTimer
from .cases import Case
from .timers import GPU_CLOCK


class TorchCudaEvents:
    """GPU time of a call between two CUDA events on PyTorch's current stream."""

    device, clock = "gpu", GPU_CLOCK

    def sync(self):  # pragma: no cover - needs a GPU
        import torch
        torch.cuda.synchronize()

    def time_ms(self, fn) -> float:  # pragma: no cover - needs a GPU
        import torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))


def torch_impl(case: Case, device: str):
    """(prepare, call) running a case through PyTorch's own kernels on `device` ('cpu' or 'cuda')."""
    import torch
    aten = torch.ops.aten
    st, pad, ks = [case.stride] * 2, [case.pad] * 2, [case.r, case.s]

    def t(a):
        return torch.from_numpy(a).to(device)
    if case.op == "conv2d":
        return (lambda d: (t(d["x"]), t(d["w"]), t(d["b"])),
                lambda x, w, b: torch.nn.functional.conv2d(x, w, b, st, pad))
    if case.op == "conv2d_backward":
        return (lambda d: (t(d["dy"]), t(d["x"]), t(d["w"])),
                lambda dy, x, w: aten.convolution_backward(dy, x, w, [case.k], st, pad, [1, 1], False, [0, 0], 1,
                                                           [True, True, True]))
    if case.op == "max_pool2d":
        return (lambda d: (t(d["x"]),), lambda x: aten.max_pool2d_with_indices(x, ks, st))
    if case.op == "max_pool2d_backward":
        def prep(d):
            x = t(d["x"])
            return t(d["dy"]), x, aten.max_pool2d_with_indices(x, ks, st)[1]
        return prep, lambda dy, x, idx: aten.max_pool2d_with_indices_backward(dy, x, ks, st, [0, 0], [1, 1], False,
                                                                               idx)
    if case.op == "relu":
        return (lambda d: (t(d["x"]),), torch.relu)
    return (lambda d: (t(d["dy"]), t(d["x"])), lambda dy, x: aten.threshold_backward(dy, x, 0))


def torch_reference(device: str):
    """(label, timer, torch device) of PyTorch on a gpucnn device kind, or (None, reason, None)."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed", None
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        return f"PyTorch {torch.__version__} CPU", CpuTimer(), "cpu"
    if not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} has no CUDA here", None
    cudnn = torch.backends.cudnn.version()
    return f"cuDNN {cudnn} / PyTorch {torch.__version__} CUDA", TorchCudaEvents(), "cuda"


class torch_tf32:
    """PyTorch's cuDNN and matmul TF32 switches set as gpucnn.config.allow_tf32 (PyTorch enables cuDNN TF32 by default)."""

    def __init__(self, tdev, enabled):
        self.on = tdev == "cuda"
        self.enabled = enabled

    def __enter__(self):
        if self.on:  # pragma: no cover - needs a GPU
            import torch
            self.old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.enabled

    def __exit__(self, *exc):
        if self.on:  # pragma: no cover - needs a GPU
            import torch
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.old
        return False


def torch_net(name: str):
    """The zoo net `name` built from torch.nn layers (same architecture; PyTorch's own initialization)."""
    from torch import nn
    from .. import models
    layers = []
    for layer in models.get(name, seed=0).layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            layers.append(nn.Conv2d(layer.input_shape[0], layer.filters, layer.kernel_size, layer.strides,
                                    padding=layer.padding))
            layers += [nn.ReLU()] if layer.activation == "relu" else []
        elif kind == "MaxPool2D":
            layers.append(nn.MaxPool2d(layer.pool_size, layer.strides))
        elif kind == "Flatten":
            layers.append(nn.Flatten())
        elif kind == "Dense":  # the final softmax is fused into the loss, as in gpucnn's training
            layers.append(nn.Linear(layer.input_shape[0], layer.units))
            layers += [nn.ReLU()] if layer.activation == "relu" else []
        elif kind == "Dropout":
            layers.append(nn.Dropout(layer.rate))
        else:
            raise ValueError(f"torch_net: no torch counterpart written for {kind}")
    return nn.Sequential(*layers)


def torch_step(name: str, batch: int, device="cpu", graphs=False):
    """A closure running one PyTorch training step of the same net; graphs=True replays a captured CUDA graph."""
    import torch
    from torch import nn
    net = torch_net(name).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    shape = {"cifar10_vgg": (3, 32, 32), "mnist_cnn": (1, 28, 28)}.get(name)
    if shape is None:
        from .. import models
        shape = models.get(name).input_shape
    x = torch.rand((batch,) + tuple(shape), device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss
    if not graphs:
        return step
    # needs a GPU: the whole-network capture of PyTorch's CUDA graphs documentation
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return graph.replay
