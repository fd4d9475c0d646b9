"""Bench cases: one op on one shape (``Case``), the zoo's shapes and a size sweep, their host inputs,
their minimum FLOP counts and compulsory bytes, the rates those give, and the case run through gpucnn.

A multiply-add is 2 FLOPs; every input is read once and every output written once, 4 bytes per float32
(max-pool indices are not counted).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F

OPS = ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "relu", "relu_backward")
BENCH_MODELS = ("cifar10_vgg", "mnist_cnn")
F32 = 4  # bytes


@dataclass(frozen=True)
class Case:
    """One op on one shape. Input x is (n, c, h, w); conv: k filters r x s; pool: window r x s, stride `stride`."""

    op: str
    n: int
    c: int
    h: int
    w: int
    k: int = 0
    r: int = 1
    s: int = 1
    stride: int = 1
    pad: int = 0
    source: str = ""

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; benchmarked ops: {', '.join(OPS)}")

    @property
    def family(self) -> str:
        return self.op.replace("_backward", "")

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.family == "relu":
            return self.h, self.w
        pad = self.pad if self.family == "conv2d" else 0
        return (self.h + 2 * pad - self.r) // self.stride + 1, (self.w + 2 * pad - self.s) // self.stride + 1

    @property
    def x_size(self) -> int:
        return self.n * self.c * self.h * self.w

    @property
    def y_size(self) -> int:
        p, q = self.out_hw
        return self.n * (self.k if self.family == "conv2d" else self.c) * p * q

    @property
    def flops(self) -> int:
        """Floating-point operations (multiply-add = 2; max = 1; bias add = 1 per output)."""
        macs = self.y_size * self.c * self.r * self.s if self.family == "conv2d" else 0
        if self.op == "conv2d":
            return 2 * macs + self.y_size                 # products and sums, bias
        if self.op == "conv2d_backward":
            return 2 * macs + 2 * macs + self.y_size      # dx, dw, db
        if self.op == "max_pool2d":
            return self.y_size * (self.r * self.s - 1)    # comparisons
        if self.op == "max_pool2d_backward":
            return 0                                      # a scatter through the recorded indices
        return self.x_size                                # relu: a max; relu_backward: a select

    @property
    def bytes(self) -> int:
        """Compulsory memory traffic: every input read once, every output written once (float32)."""
        wsize = self.k * self.c * self.r * self.s
        if self.op == "conv2d":
            return F32 * (self.x_size + wsize + self.k + self.y_size)
        if self.op == "conv2d_backward":       # read dy, x, w; write dx, dw, db
            return F32 * (self.y_size + self.x_size + wsize + self.x_size + wsize + self.k)
        if self.op == "max_pool2d":            # read x, write y
            return F32 * (self.x_size + self.y_size)
        if self.op == "max_pool2d_backward":   # read dy, write dx
            return F32 * (self.y_size + self.x_size)
        if self.op == "relu":
            return F32 * 2 * self.x_size
        return F32 * 3 * self.x_size           # relu_backward: read dy, x; write dx

    @property
    def shape_text(self) -> str:
        x = f"{self.n}x{self.c}x{self.h}x{self.w}"
        if self.family == "conv2d":
            return f"{x} k{self.k} {self.r}x{self.s} s{self.stride} p{self.pad}"
        if self.family == "max_pool2d":
            return f"{x} {self.r}x{self.s} s{self.stride}"
        return x


def model_cases(model_names=BENCH_MODELS, batches=(1, 32, 128), ops=OPS) -> list[Case]:
    """The conv, pool and ReLU shapes of the named zoo nets at each batch size (duplicates dropped)."""
    from .. import models
    from ..layers import Conv2D, MaxPool2D
    out, seen = [], set()

    def add(case):
        key = asdict(case) | {"source": ""}
        if case.op in ops and tuple(key.items()) not in seen:
            seen.add(tuple(key.items()))
            out.append(case)

    for name in model_names:
        if name not in BENCH_MODELS:
            raise ValueError(f"bench takes models {', '.join(BENCH_MODELS)}, got {name!r}")
        net = models.get(name, seed=0)
        for batch in batches:
            for layer in net.layers:
                if not isinstance(layer, (Conv2D, MaxPool2D)):
                    continue
                c, h, w = layer.input_shape
                src = f"{name} {layer.name}"
                if isinstance(layer, Conv2D):
                    if layer.kernel_size[0] != layer.kernel_size[1] or layer.strides[0] != layer.strides[1]:
                        raise ValueError(f"{src}: bench cases take square kernels and strides")
                    pt, pb, pl, pr = layer._pads
                    if not pt == pb == pl == pr:
                        raise ValueError(f"{src}: bench cases take symmetric padding, got {layer._pads}")
                    common = dict(n=batch, c=c, h=h, w=w, k=layer.filters, r=layer.kernel_size[0],
                                  s=layer.kernel_size[1], stride=layer.strides[0], pad=pt, source=src)
                    add(Case("conv2d", **common))
                    add(Case("conv2d_backward", **common))
                    if layer.activation == "relu":
                        k, p, q = layer.output_shape
                        add(Case("relu", batch, k, p, q, source=src + " relu"))
                        add(Case("relu_backward", batch, k, p, q, source=src + " relu"))
                elif isinstance(layer, MaxPool2D):
                    common = dict(n=batch, c=c, h=h, w=w, r=layer.pool_size[0], s=layer.pool_size[1],
                                  stride=layer.strides[0], source=src)
                    add(Case("max_pool2d", **common))
                    add(Case("max_pool2d_backward", **common))
    return out


def sweep_cases(sizes=(8, 16, 32, 64, 128), batch=8, channels=32, ops=OPS) -> list[Case]:
    """A size sweep: a 'same' 3x3 conv, a 2x2 max pool and ReLU on batch x channels x size x size."""
    out = []
    for size in sizes:
        for op in ops:
            fam = op.replace("_backward", "")
            if fam == "conv2d":
                out.append(Case(op, batch, channels, size, size, k=channels, r=3, s=3, pad=1, source="sweep"))
            elif fam == "max_pool2d":
                out.append(Case(op, batch, channels, size, size, r=2, s=2, stride=2, source="sweep"))
            else:
                out.append(Case(op, batch, channels, size, size, source="sweep"))
    return out


def rates(flops: int, nbytes: int, seconds: float, ceilings: dict | None, tf32: bool = False) -> dict:
    """FLOP/s and bytes/s of a case and their percentages of the device's measured ceilings."""
    if seconds <= 0:
        raise ValueError(f"a time must be positive, got {seconds}")
    flop_s, byte_s = flops / seconds, nbytes / seconds
    peak_f = peak_b = None
    if ceilings:
        peak_f = ceilings.get("tf32_flop_per_s") if tf32 else ceilings.get("fp32_flop_per_s")
        peak_b = ceilings.get("copy_byte_per_s")
    return {
        "flop_per_s": flop_s,
        "byte_per_s": byte_s,
        "intensity": flops / nbytes if nbytes else None,
        "pct_peak_flops": 100.0 * flop_s / peak_f if peak_f and flops else None,
        "pct_peak_bandwidth": 100.0 * byte_s / peak_b if peak_b else None,
    }


# --------------------------------------------------------------------------- inputs and implementations

def host_inputs(case: Case, rng) -> dict:
    """One set of float32 host arrays for a case (normal draws: no zeros, no ties to speak of)."""
    p, q = case.out_hw
    ch_out = case.k if case.family == "conv2d" else case.c
    d = {"x": rng.standard_normal((case.n, case.c, case.h, case.w), dtype=np.float32),
         "dy": rng.standard_normal((case.n, ch_out, p, q), dtype=np.float32)}
    if case.family == "conv2d":
        d["w"] = rng.standard_normal((case.k, case.c, case.r, case.s), dtype=np.float32) * 0.1
        d["b"] = rng.standard_normal(case.k, dtype=np.float32)
    return d


def input_bytes(case: Case) -> int:
    names = {"conv2d": ("x", "w", "b"), "conv2d_backward": ("dy", "x", "w"), "max_pool2d": ("x",),
             "max_pool2d_backward": ("dy", "x"), "relu": ("x",), "relu_backward": ("dy", "x")}[case.op]
    p, q = case.out_hw
    sizes = {"x": case.x_size, "dy": case.y_size, "w": case.k * case.c * case.r * case.s, "b": case.k}
    return F32 * sum(sizes[n] for n in names) or F32


def gpucnn_impl(case: Case):
    """(prepare, call) running a case through gpucnn.functional on the current backend."""
    st, pad, ks = case.stride, case.pad, (case.r, case.s)
    if case.op == "conv2d":
        return (lambda d: (F.asarray(d["x"]), F.asarray(d["w"]), F.asarray(d["b"])),
                lambda x, w, b: F.conv2d(x, w, b, stride=st, padding=pad))
    if case.op == "conv2d_backward":
        return (lambda d: (F.asarray(d["dy"]), F.asarray(d["x"]), F.asarray(d["w"])),
                lambda dy, x, w: F.conv2d_backward(dy, x, w, stride=st, padding=pad))
    if case.op == "max_pool2d":
        return (lambda d: (F.asarray(d["x"]),), lambda x: F.max_pool2d(x, ks, st, return_indices=True))

    if case.op == "max_pool2d_backward":
        def prep(d):
            x = F.asarray(d["x"])
            return F.asarray(d["dy"]), x, F.max_pool2d(x, ks, st, return_indices=True)[1]
        return prep, lambda dy, x, idx: F.max_pool2d_backward(dy, x, ks, st, indices=idx)
    if case.op == "relu":
        return (lambda d: (F.asarray(d["x"]),), F.relu)
    return (lambda d: (F.asarray(d["dy"]), F.asarray(d["x"])), F.relu_backward)
