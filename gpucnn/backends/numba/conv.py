"""Convolution as Numba CUDA kernels: forward (naive and tiled, fused bias + ReLU) and backward.

Layouts: x (N, C, H, W), w (K, C, R, S) applied as a cross-correlation (no
flip), b (K,), y (N, K, P, Q). stride is (sh, sw); pads is (top, bottom, left,
right) zero padding, possibly asymmetric ('same' with an even kernel). The
launchers take exactly the arguments of the NumPy backend's functions and
return Numba device arrays of the input dtype.

Kernels, numbered as in llm.c, each with its launch geometry in one function (named as in
kernels/conv.cu, whose conv2d_fwd, conv2d_dgrad, conv2d_wgrad and conv2d_bias_grad do the same jobs
as implicit GEMMs):

  1. conv2d_fwd_naive   one thread per output element (grid-stride loop); kept
                        as the simple reference the tiled kernel is tested against.
  2. conv2d_fwd         the default. A block computes a tile of output pixels
                        (up to TILE_P x TILE_Q) for TILE_K output channels: one
                        thread per (pixel, channel). Input channels go in chunks
                        of TILE_C; for each chunk the block stages the input patch
                        its windows read (halo included, any stride and padding,
                        zeros outside the image) and the matching filter slice in
                        shared memory, then every thread accumulates from shared
                        memory. Kernels too large for the shared tiles are walked
                        in chunks of filter rows/columns. Epilogue: bias, then
                        ReLU when `relu` is set (conv2d_relu).
  3. conv2d_dgrad       dx as a gather, one thread per dx element: dx[n,c,h,w] =
                        sum over k, r, s of dy[n,k,p,q] * w[k,c,r,s] for the output
                        positions p = (h + top - r) / sh (and q likewise) that are
                        integral and in range. No atomics.
  4. conv2d_wgrad       one block per (k, c); the threads stride over the N*P*Q
                        output positions accumulating every filter tap (r, s) of
                        a chunk of DW_TAPS taps, then one shared-memory tree
                        reduction (`_common.tree_sum`) sums the partial products
                        of all those taps.
  5. conv2d_bias_grad   one block per k, the same tree reduction over N*P*Q.

Float32 discipline: no float literal appears in a kernel. Accumulators start
from `zero`, an argument of the array dtype (x.dtype.type(0)), so float32 stays
float32 and float64 (gradient checks) stays float64. Shared arrays need a
compile-time dtype, so kernels 2, 4 and 5 are built per dtype by a small cached
factory; the sizes of all shared arrays are the module-level constants below.
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda

from .._base import register
from . import _common
from ._common import tree_sum

B = "numba"

# --------------------------------------------------------------------------- tile sizes (compile-time)
#
# Small on purpose: the CUDA simulator runs every thread as a Python thread.
# On a real GPU larger tiles (8x8 pixels x 8-16 channels) would amortize the
# staging better; change the constants, nothing else depends on their values
# (except SMEM_IN >= 1 and SMEM_F >= 1).

TILE_P = 4  # output rows per block
TILE_Q = 4  # output columns per block
TILE_K = 4  # output channels per block
TILE_C = 4  # input channels staged per step
SMEM_IN = 12  # side of the shared input patch: (tile - 1) * stride + filter chunk must fit
SMEM_F = 5  # side of the shared filter chunk (larger kernels are walked in chunks)
RED_THREADS = 128  # most threads of a reduction block (kernels 4, 5): a power of two
RED_MIN_ITEMS = 4  # small reductions use fewer threads, each summing at least this many terms
DW_TAPS = 9  # filter taps (r, s) reduced together by kernel 4 (3x3 in one pass)




# --------------------------------------------------------------------------- 1. forward, naive

@cuda.jit(cache=True)
def conv2d_fwd_naive(x, w, b, has_bias, relu, out, sh, sw, pt, pl, zero):
    """out[n,k,p,q] = sum_{c,r,s} x[n, c, p*sh + r - pt, q*sw + s - pl] * w[k,c,r,s] (+ b[k], ReLU)."""
    n_, c_, h_, w_ = x.shape
    k_, _, r_, s_ = w.shape
    _, _, p_, q_ = out.shape
    start = cuda.grid(1)
    for i in range(start, out.size, cuda.gridsize(1)):
        q = i % q_
        p = (i // q_) % p_
        k = (i // (q_ * p_)) % k_
        n = i // (q_ * p_ * k_)
        acc = zero
        for c in range(c_):
            for r in range(r_):
                h = p * sh + r - pt
                if h >= 0 and h < h_:
                    for s in range(s_):
                        wi = q * sw + s - pl
                        if wi >= 0 and wi < w_:
                            acc += x[n, c, h, wi] * w[k, c, r, s]
        if has_bias:
            acc += b[k]
        if relu and acc < zero:
            acc = zero
        out[n, k, p, q] = acc


def _geometry_fwd_naive(out_shape):
    return _common.grid_1d(int(np.prod(out_shape)))


# --------------------------------------------------------------------------- 2. forward, tiled

@functools.lru_cache(maxsize=None)
def conv2d_fwd(dtype):
    """The tiled forward kernel for `dtype` (float32 or float64); compiled once per dtype.

    Block: (tw, th, tk) threads, thread (tx, ty, tz) owns output pixel
    (p0 + ty, q0 + tx) of channel k0 + tz. Grid: (N * k_groups, p tiles, q tiles).
    rt, st: filter rows/columns per shared chunk, chosen by the launcher so that
    (th - 1) * sh + rt <= SMEM_IN and rt <= SMEM_F (columns likewise).
    """
    nbtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def kernel(x, w, b, has_bias, relu, out, sh, sw, pt, pl, k_groups, rt, st, zero):
        patch = cuda.shared.array((TILE_C, SMEM_IN, SMEM_IN), nbtype)
        filt = cuda.shared.array((TILE_K, TILE_C, SMEM_F, SMEM_F), nbtype)
        n_, c_, h_, w_ = x.shape
        k_, _, r_, s_ = w.shape
        _, _, p_, q_ = out.shape

        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tz = cuda.threadIdx.z
        tw = cuda.blockDim.x
        th = cuda.blockDim.y
        tk = cuda.blockDim.z
        tid = (tz * th + ty) * tw + tx
        nthreads = tw * th * tk

        n = cuda.blockIdx.x // k_groups
        k0 = (cuda.blockIdx.x % k_groups) * tk
        p0 = cuda.blockIdx.y * th
        q0 = cuda.blockIdx.z * tw
        k = k0 + tz
        p = p0 + ty
        q = q0 + tx
        h0 = p0 * sh - pt  # input row of the tile's first window (may lie in the padding)
        w0 = q0 * sw - pl

        acc = zero
        for c0 in range(0, c_, TILE_C):
            cn = min(TILE_C, c_ - c0)
            for r0 in range(0, r_, rt):
                rn = min(rt, r_ - r0)
                ph = (th - 1) * sh + rn  # patch rows this chunk reads
                for s0 in range(0, s_, st):
                    sn = min(st, s_ - s0)
                    pw = (tw - 1) * sw + sn
                    # stage the input patch (zeros outside the image: the padding)
                    for i in range(tid, cn * ph * pw, nthreads):
                        cc = i // (ph * pw)
                        ii = (i // pw) % ph
                        jj = i % pw
                        h = h0 + r0 + ii
                        wi = w0 + s0 + jj
                        v = zero
                        if n < n_ and h >= 0 and h < h_ and wi >= 0 and wi < w_:
                            v = x[n, c0 + cc, h, wi]
                        patch[cc, ii, jj] = v
                    # stage the filter slice: tk channels x cn inputs x rn x sn taps
                    for i in range(tid, tk * cn * rn * sn, nthreads):
                        kk = i // (cn * rn * sn)
                        cc = (i // (rn * sn)) % cn
                        rr = (i // sn) % rn
                        ss = i % sn
                        v = zero
                        if k0 + kk < k_:
                            v = w[k0 + kk, c0 + cc, r0 + rr, s0 + ss]
                        filt[kk, cc, rr, ss] = v
                    cuda.syncthreads()
                    for cc in range(cn):
                        for rr in range(rn):
                            for ss in range(sn):
                                acc += patch[cc, ty * sh + rr, tx * sw + ss] * filt[tz, cc, rr, ss]
                    cuda.syncthreads()  # before the next chunk overwrites the tiles

        if n < n_ and k < k_ and p < p_ and q < q_:
            if has_bias:
                acc += b[k]
            if relu and acc < zero:
                acc = zero
            out[n, k, p, q] = acc

    return kernel


def _geometry_fwd(out_shape, w_shape, stride):
    """(grid, block, k_groups, rt, st) for the tiled forward kernel.

    The pixel tile shrinks below TILE_P x TILE_Q only when a large stride would
    not fit even one filter row of every window in SMEM_IN: (th - 1) * sh + 1 <= SMEM_IN.
    """
    n, k, p, q = out_shape
    _, _, r, s = w_shape
    sh, sw = stride
    th = max(1, min(TILE_P, p, (SMEM_IN - 1) // sh + 1))
    tw = max(1, min(TILE_Q, q, (SMEM_IN - 1) // sw + 1))
    tk = max(1, min(TILE_K, k))
    rt = max(1, min(r, SMEM_F, SMEM_IN - (th - 1) * sh))
    st = max(1, min(s, SMEM_F, SMEM_IN - (tw - 1) * sw))
    k_groups = math.ceil(k / tk)
    grid = (n * k_groups, math.ceil(p / th), math.ceil(q / tw))
    return grid, (tw, th, tk), k_groups, rt, st


# --------------------------------------------------------------------------- forward launchers

def _bias_arg(b, dtype):
    """(bias device array, has_bias): a 1-element placeholder when there is no bias."""
    if b is None:
        return _common.zeros((1,), dtype), False
    return _common.device(b), True


def _forward(x, w, b, stride, pads, out_shape, relu, kernel="tiled"):
    x, w = _common.device(x), _common.device(w)
    dtype = np.dtype(x.dtype)
    bias, has_bias = _bias_arg(b, dtype)
    out = _common.empty(out_shape, dtype)
    if out.size == 0:
        return out
    sh, sw = int(stride[0]), int(stride[1])
    pt, pl = int(pads[0]), int(pads[2])
    zero = dtype.type(0)
    if kernel == "naive":
        grid, block = _geometry_fwd_naive(out_shape)
        conv2d_fwd_naive[grid, block](x, w, bias, has_bias, relu, out, sh, sw, pt, pl, zero)
    elif kernel == "tiled":
        grid, block, k_groups, rt, st = _geometry_fwd(out_shape, w.shape, (sh, sw))
        conv2d_fwd(dtype)[grid, block](x, w, bias, has_bias, relu, out, sh, sw, pt, pl, k_groups, rt, st, zero)
    else:
        raise ValueError(f"unknown conv2d kernel {kernel!r}; choose 'naive' or 'tiled'")
    return out


def conv2d_naive(x, w, b, stride, pads, out_shape, relu=False):
    """Kernel 1 on the conv2d arguments (for tests and comparisons; conv2d uses kernel 2)."""
    return _forward(x, w, b, stride, pads, out_shape, relu, kernel="naive")


def conv2d_tiled(x, w, b, stride, pads, out_shape, relu=False):
    return _forward(x, w, b, stride, pads, out_shape, relu, kernel="tiled")


@register("conv2d", B)
def conv2d(x, w, b, stride, pads, out_shape):
    return _forward(x, w, b, stride, pads, out_shape, relu=False)


@register("conv2d_relu", B)
def conv2d_relu(x, w, b, stride, pads, out_shape):
    return _forward(x, w, b, stride, pads, out_shape, relu=True)


# --------------------------------------------------------------------------- 3. backward, data (gather)

@cuda.jit(cache=True)
def conv2d_dgrad(dy, w, dx, sh, sw, pt, pl, zero):
    """dx[n,c,h,wi] = sum over k, r, s with p = (h + pt - r) / sh and q = (wi + pl - s) / sw
    integral and inside the output, of dy[n,k,p,q] * w[k,c,r,s]."""
    n_, c_, h_, w_ = dx.shape
    k_, _, r_, s_ = w.shape
    _, _, p_, q_ = dy.shape
    start = cuda.grid(1)
    for i in range(start, dx.size, cuda.gridsize(1)):
        wi = i % w_
        h = (i // w_) % h_
        c = (i // (w_ * h_)) % c_
        n = i // (w_ * h_ * c_)
        acc = zero
        for r in range(r_):
            hp = h + pt - r  # = p * sh for the output row p whose window puts tap r on row h
            if hp >= 0 and hp % sh == 0 and hp // sh < p_:
                p = hp // sh
                for s in range(s_):
                    wq = wi + pl - s
                    if wq >= 0 and wq % sw == 0 and wq // sw < q_:
                        q = wq // sw
                        for k in range(k_):
                            acc += dy[n, k, p, q] * w[k, c, r, s]
        dx[n, c, h, wi] = acc


def _geometry_dgrad(x_shape):
    return _common.grid_1d(int(np.prod(x_shape)))


# --------------------------------------------------------------------------- 4, 5. backward, weight and bias

@functools.lru_cache(maxsize=None)
def conv2d_wgrad(dtype):
    """Kernel 4 for `dtype`: block (k, c) = blockIdx.x computes dw[k, c, :, :], where
    dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*sh + r - pt, q*sw + s - pl] (zero in the padding).

    The R*S filter taps go in chunks of DW_TAPS: each thread strides over the N*P*Q output
    positions, reads dy once per position and accumulates every tap of the chunk in its own
    column of the shared buffer; one tree reduction then sums all the chunk's taps together.
    """
    nbtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def kernel(dy, x, dw, sh, sw, pt, pl, zero):
        buf = cuda.shared.array((DW_TAPS, RED_THREADS), nbtype)
        n_, c_, h_, w_ = x.shape
        k_, _, r_, s_ = dw.shape
        _, _, p_, q_ = dy.shape
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        k = cuda.blockIdx.x // c_
        c = cuda.blockIdx.x % c_
        m = n_ * p_ * q_
        taps = r_ * s_
        for t0 in range(0, taps, DW_TAPS):
            tn = min(DW_TAPS, taps - t0)
            for t in range(tn):
                buf[t, tid] = zero
            if k < k_:
                for j in range(tid, m, nthreads):
                    q = j % q_
                    p = (j // q_) % p_
                    n = j // (q_ * p_)
                    g = dy[n, k, p, q]
                    for t in range(tn):
                        r = (t0 + t) // s_
                        s = (t0 + t) % s_
                        h = p * sh + r - pt
                        wi = q * sw + s - pl
                        if h >= 0 and h < h_ and wi >= 0 and wi < w_:
                            buf[t, tid] += g * x[n, c, h, wi]
            tree_sum(buf, tid, nthreads, tn)
            if k < k_:
                for t in range(tid, tn, nthreads):
                    dw[k, c, (t0 + t) // s_, (t0 + t) % s_] = buf[t, 0]
            cuda.syncthreads()  # the sums are read before the next chunk overwrites buf

    return kernel


@functools.lru_cache(maxsize=None)
def conv2d_bias_grad(dtype):
    """Kernel 5 for `dtype`: block k = blockIdx.x; db[k] = sum_{n,p,q} dy[n,k,p,q]."""
    nbtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def kernel(dy, db, zero):
        buf = cuda.shared.array((1, RED_THREADS), nbtype)
        n_, k_, p_, q_ = dy.shape
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        k = cuda.blockIdx.x
        m = n_ * p_ * q_
        acc = zero
        if k < k_:
            for j in range(tid, m, nthreads):
                q = j % q_
                p = (j // q_) % p_
                n = j // (q_ * p_)
                acc += dy[n, k, p, q]
        buf[0, tid] = acc
        tree_sum(buf, tid, nthreads, 1)
        if tid == 0 and k < k_:
            db[k] = buf[0, 0]

    return kernel


def _reduction_threads(m):
    """Threads per reduction block: a power of two, at most RED_THREADS, giving each thread
    at least RED_MIN_ITEMS of the m summed positions when m is small."""
    t = 1
    while t < RED_THREADS and t * RED_MIN_ITEMS < m:
        t *= 2
    return t


def _geometry_wgrad(dy_shape, w_shape):
    n, k, p, q = dy_shape
    return (w_shape[0] * w_shape[1],), (_reduction_threads(n * p * q),)


def _geometry_bias_grad(dy_shape):
    n, k, p, q = dy_shape
    return (k,), (_reduction_threads(n * p * q),)


@register("conv2d_backward", B)
def conv2d_backward(dy, x, w, stride, pads, input_grad=True, relu_mask=False):
    dy, x, w = _common.device(dy), _common.device(x), _common.device(w)
    dtype = np.dtype(x.dtype)
    zero = dtype.type(0)
    sh, sw = int(stride[0]), int(stride[1])
    pt, pl = int(pads[0]), int(pads[2])
    dx = None
    if input_grad:
        dx = _common.empty(x.shape, dtype)
        if dx.size:
            grid, block = _geometry_dgrad(x.shape)
            conv2d_dgrad[grid, block](dy, w, dx, sh, sw, pt, pl, zero)
    dw = _common.empty(w.shape, dtype)
    if dw.size:
        grid, block = _geometry_wgrad(dy.shape, w.shape)
        conv2d_wgrad(dtype)[grid, block](dy, x, dw, sh, sw, pt, pl, zero)
    db = _common.empty((w.shape[0],), dtype)
    if db.size:
        grid, block = _geometry_bias_grad(dy.shape)
        conv2d_bias_grad(dtype)[grid, block](dy, db, zero)
    if relu_mask and dx is not None:  # the ReLU that produced x: not fused here, one more elementwise pass
        from .elementwise import relu_backward
        dx = relu_backward(dx, x)
    return dx, dw, db
