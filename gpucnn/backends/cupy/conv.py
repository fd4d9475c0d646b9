"""Launchers for kernels/conv.cu: convolution forward, data, weight and bias gradients (implicit GEMM).

Tile shape, split-K and vector width are chosen here, from the problem's GEMM
sizes (_runtime.gemm_plan); the math mode (exact FP32 or TF32
tensor cores) from gpucnn.config.allow_tf32.
"""
from __future__ import annotations

from .._base import register
from . import _runtime as rt

B = "cupy"
_BOOL = ("false", "true")
DIRECT_S = (3,)   # filter widths of the direct kernels (kernels/conv.cu, conv2d_*_direct<S>; 5 compiles too)
DIRECT_TILE = (8, 32)   # output rows x columns a block of conv2d_fwd_direct takes (direct::TH, TW)
DIRECT_WGRAD_ROWS = 4   # the weight gradient's tile height (direct::WTH)


K = rt.Family("conv", [f"conv2d_{d}<{bm}, {bn}, {tf}, {_BOOL[fast]}>" for d in ("fwd", "dgrad", "wgrad")
                       for fast in (False, True) for tf in _BOOL for bm, bn in rt.gemm_tiles(fast, tf)]
              + [f"conv2d_{d}_direct<{s}>" for d in ("fwd", "wgrad") for s in DIRECT_S]
              + ["conv_weight_gemm<false>", "conv_weight_gemm<true>", "splitk_reduce", "splitk_epilogue",
                 "conv2d_bias_grad"])


def _dims(x_shape, w_shape, out_shape, stride, pads):
    """The kernels' ConvDims. Their index arithmetic reaches the padded input's far edge (oh*sh - pt + r),
    so the padded sizes must fit 32-bit integers too, not only each argument."""
    n, c, h, w = x_shape
    k, _, r, s = w_shape
    p, q = out_shape[2:]
    if max(h + pads[0] + pads[1], w + pads[2] + pads[3]) > rt.INT32_MAX:
        raise ValueError(f"the padded input ({h + pads[0] + pads[1]} x {w + pads[2] + pads[3]}) does not fit the "
                         "cupy backend's 32-bit index arithmetic")
    return tuple(rt.i32(v) for v in (n, c, h, w, k, r, s, p, q, stride[0], stride[1], pads[0], pads[2]))


def _gemm_weights_shape(w_shape, flip: bool) -> tuple[int, int]:
    """The shape of _gemm_weights' matrix: (R*S*C, K) for the forward, (R*S*K, C) flipped, N padded to 4."""
    kf, c, r, s = (int(v) for v in w_shape)
    ci, nn = (kf, c) if flip else (c, kf)
    return r * s * ci, rt.ceil_div(nn, 4) * 4


def _check_gemm_weights(op, w_shape, flips) -> None:
    """Refuse, before any launch, filters whose GEMM matrix (padded) would not fit 32-bit indexing."""
    for flip in flips:
        rows, cols = _gemm_weights_shape(w_shape, flip)
        if rows * cols > rt.INT32_MAX:
            raise ValueError(f"{op}: the filters of shape {tuple(w_shape)} as a GEMM matrix ({rows:,} x {cols}, "
                             f"the filter count padded to a multiple of 4) would have more than {rt.INT32_MAX:,} "
                             "elements, the kernels' 32-bit indexing")


def _gemm_weights(w, flip: bool):
    """The filters as the forward's (flip False) or the data gradient's (flipped, transposed) K x N matrix
    (kernels/conv.cu, conv_weight_gemm), N padded to a multiple of 4."""
    kf, c, r, s = w.shape
    wg = rt.empty(_gemm_weights_shape(w.shape, flip))
    K.launch(f"conv_weight_gemm<{_BOOL[flip]}>", *rt.grid_1d(wg.size),
             (w, wg, rt.i32(kf), rt.i32(c), rt.i32(r * s), rt.i32(wg.shape[1])))
    return wg


def _taps(channels: int, r: int, s: int) -> bool:
    """The forward gather's fast path: BK channels a K step, one filter tap a step (a 32-bit tap mask)."""
    return channels % rt.GEMM_BK == 0 and r * s < 32


def _direct(c, r, s, kf, stride, limit):
    """A first layer (C*R*S <= 32, stride 1, S of DIRECT_S, at most `limit` filters) in exact FP32: the direct
    kernels, which beat an implicit GEMM whose K is that short. TF32 mode keeps the GEMM (tensor cores)."""
    return (rt.math_mode() == "false" and tuple(stride) == (1, 1) and s in DIRECT_S and c * r * s <= 32
            and kf <= limit)


def _gemm(name, fast, m, n, kk, args_before, out, args_after, epilogue=None):
    """Launch a forward-shaped conv GEMM (M x N, K = kk) into `out`, split over K when the plan says so:
    raw partials into a workspace, then splitk_epilogue (bias, ReLU, mask) into `out`."""
    bm, bn, splits, per = rt.gemm_plan(m, n, kk, rt.gemm_tiles(fast, rt.math_mode()))
    target = out if splits == 1 else rt.empty((splits,) + out.shape)
    K.launch(name.format(bm=bm, bn=bn), (rt.ceil_div(m, bm), rt.ceil_div(n, bn), splits), rt.gemm_threads(bm, bn),
             (*args_before, target, *args_after(per)))
    if splits > 1:
        bias, inner, channels, relu, mask = epilogue
        K.launch("splitk_epilogue", *rt.grid_1d(out.size),
                 (target, out, rt.i32(out.size), rt.i32(splits), bias, rt.i32(inner), rt.i32(channels), rt.i32(relu),
                  mask))


def _forward(op, x, w, b, stride, pads, out_shape, relu):
    x, w, b = rt.operand(op, "x", x), rt.operand(op, "w", w), rt.operand(op, "b", b)
    _check_gemm_weights(op, w.shape, (False,))
    dims = _dims(x.shape, w.shape, out_shape, stride, pads)
    y = rt.empty(out_shape)
    if y.size == 0:
        return y
    kf, c, r, s = w.shape
    pq = out_shape[2] * out_shape[3]
    if c == 0:  # no input channels: the epilogue of an empty sum (the bias, ReLU'd), no GEMM
        K.launch("splitk_epilogue", *rt.grid_1d(y.size),
                 (rt.NULL, y, rt.i32(y.size), rt.i32(0), rt.ptr(b), rt.i32(pq), rt.i32(kf), rt.i32(relu), rt.NULL))
        return y
    if _direct(c, r, s, kf, stride, 64):
        n, _, h, wd = x.shape
        p, q = out_shape[2:]
        tiles = rt.ceil_div(p, DIRECT_TILE[0]) * rt.ceil_div(q, DIRECT_TILE[1])
        K.launch(f"conv2d_fwd_direct<{s}>", (tiles, n), (rt.ceil_div(kf, 8) * 32,),
                 (x, w, rt.ptr(b), y, rt.i32(relu), *(rt.i32(v) for v in (c, h, wd, kf, r, p, q, pads[0], pads[2]))))
        return y
    taps = _taps(c, r, s)
    name = f"conv2d_fwd<{{bm}}, {{bn}}, {rt.math_mode()}, {_BOOL[taps]}>"
    _gemm(name, taps, out_shape[0] * pq, kf, c * r * s, (x, _gemm_weights(w, False), rt.ptr(b)), y,
          lambda per: (rt.i32(relu), rt.i32(per), *dims), (rt.ptr(b), pq, kf, relu, rt.NULL))
    return y


@register("conv2d", B)
def conv2d(x, w, b, stride, pads, out_shape):
    return _forward("conv2d", x, w, b, stride, pads, out_shape, relu=False)


@register("conv2d_relu", B)
def conv2d_relu(x, w, b, stride, pads, out_shape):
    return _forward("conv2d_relu", x, w, b, stride, pads, out_shape, relu=True)


# the weight gradient's runs (kernels/conv.cu, ConvWgrad): each thread of a tile loads, per K step, a run
# of consecutive (r, s, c) rows of A and of filters of B; BLOCKED when C and K are multiples of them
def _wgrad_blocked(c, kf, bm, bn):
    threads = rt.GEMM_THREADS[(bm, bn)]
    return c % (bm * rt.GEMM_BK // threads) == 0 and kf % (bn * rt.GEMM_BK // threads) == 0


@register("conv2d_backward", B)
def conv2d_backward(dy, x, w, stride, pads, input_grad=True, relu_mask=False):
    """(dx, dw, db). relu_mask: x came out of a ReLU, so dx is zeroed where x <= 0 (the ReLU's backward, fused)."""
    op = "conv2d_backward"
    dy, x, w = rt.operand(op, "dy", dy), rt.operand(op, "x", x), rt.operand(op, "w", w)
    _check_gemm_weights(op, w.shape, (True,) if input_grad else ())
    dims = _dims(x.shape, w.shape, dy.shape, stride, pads)
    nimg, c, h, wd = x.shape
    kf, _, r, s = w.shape
    pq = dy.shape[2] * dy.shape[3]
    mode = rt.math_mode()

    db = rt.empty((kf,))
    dw = rt.empty(w.shape)
    dx = rt.empty(x.shape) if input_grad else None
    if dy.size == 0:  # no batch or no filters: zero gradients
        db.fill(0)
    else:  # bias gradient: K blocks, times enough image groups to give every SM two blocks, reduced after
        groups = max(1, min(nimg, rt.ceil_div(2 * rt.sm_count(), kf), 65535))
        part = db if groups == 1 else rt.empty((groups, kf))
        K.launch("conv2d_bias_grad", (kf, groups), (rt.THREADS,), (dy, part, rt.i32(nimg), rt.i32(kf), rt.i32(pq)))
        if groups > 1:
            K.launch("splitk_reduce", *rt.grid_1d(kf), (part, db, rt.i32(kf), rt.i32(groups)))
    if dy.size == 0 or x.size == 0:  # nothing to multiply (no batch, channels or filters): zero gradients
        for g in (dw, dx):
            if g is not None:
                g.fill(0)
        return dx, dw, db

    if _direct(c, r, s, kf, stride, 32):
        _wgrad_direct(x, dy, dw, pads)
    else:
        _wgrad_gemm(x, dy, w, dw, dims, mode)

    if input_grad:  # data gradient: M = N*H*W, N = C, K = R*S*K; stride 1: the forward over flipped filters
        fwd = tuple(stride) == (1, 1) and _taps(kf, r, s)
        mask = x if relu_mask else rt.NULL
        _gemm(f"conv2d_dgrad<{{bm}}, {{bn}}, {mode}, {_BOOL[fwd]}>", fwd, nimg * h * wd, c, kf * r * s,
              (dy, _gemm_weights(w, True), mask), dx, lambda per: (rt.i32(per), *dims),
              (rt.NULL, 1, 1, 0, mask))
    return dx, dw, db


def _wgrad_direct(x, dy, dw, pads):
    """dw of a first layer by conv2d_wgrad_direct: one partial a block (tiles of 4 x 32 output pixels), then
    splitk_reduce. G threads share a (filter group, channel, filter row) role, as many as fit 256 threads."""
    n, c, h, wd = x.shape
    kf, _, r, s = dw.shape
    p, q = dy.shape[2:]
    roles = rt.ceil_div(kf, 8) * c * r
    share = next(g for g in (8, 4, 2, 1) if roles * g <= 256)
    tiles = n * rt.ceil_div(p, DIRECT_WGRAD_ROWS) * rt.ceil_div(q, DIRECT_TILE[1])
    blocks = min(tiles, 4 * rt.sm_count())
    part = rt.empty((blocks,) + dw.shape)
    K.launch(f"conv2d_wgrad_direct<{s}>", (blocks,), (rt.ceil_div(roles * share, 32) * 32,),
             (x, dy, part, *(rt.i32(v) for v in (n, c, h, wd, kf, r, p, q, pads[0], pads[2], share))))
    K.launch("splitk_reduce", *rt.grid_1d(dw.size), (part, dw, rt.i32(dw.size), rt.i32(blocks)))


def _wgrad_gemm(x, dy, w, dw, dims, mode):
    """dw as an implicit GEMM: M = R*S*C, N = K, K = N*P*Q, split over K as planned."""
    nimg, c = x.shape[:2]
    kf = w.shape[0]
    m, n, kk = w[0].size, kf, nimg * dy.shape[2] * dy.shape[3]
    bm, bn, splits, per = rt.gemm_plan(m, n, kk, rt.gemm_tiles(True, mode))
    blocked = _wgrad_blocked(c, kf, bm, bn)
    if not blocked:
        bm, bn, splits, per = rt.gemm_plan(m, n, kk, rt.gemm_tiles(False, mode))
        blocked = _wgrad_blocked(c, kf, bm, bn)
    ws = dw if splits == 1 else rt.empty((splits,) + w.shape)
    K.launch(f"conv2d_wgrad<{bm}, {bn}, {mode}, {_BOOL[blocked]}>", (rt.ceil_div(m, bm), rt.ceil_div(n, bn), splits),
             rt.gemm_threads(bm, bn), (x, dy, ws, rt.i32(per), *dims))
    if splits > 1:
        K.launch("splitk_reduce", *rt.grid_1d(dw.size), (ws, dw, rt.i32(dw.size), rt.i32(splits)))
