"""Seeing inside the network: filters, feature maps, saliency, occlusion, activation maximization, embeddings.

Every function computes with the model's own forward and backward passes, so
on whatever backend is current (``gpucnn.use_backend``), with the same kernels
that train the net; inputs may be host or device arrays, and what comes back
is host NumPy (converted with ``gpucnn.functional.to_numpy`` at the end).
Each ``f`` has a plotting companion ``plot_f`` that draws what ``f`` returned
(matplotlib, imported only there) and returns the figure:

    from gpucnn import viz
    sal = viz.saliency(model, x)               # (H, W): max over channels of |d logit / d pixel|
    viz.plot_saliency(x, sal).savefig("saliency.png")

Choices: the class score is the logit (the input of the final softmax), as in
Simonyan et al. (2014); occlusion reports the softmax probability; activation
maximization takes normalized gradient-ascent steps on the input with an L2
penalty. Bad arguments raise ValueError before anything is computed.
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from . import functional as F
from . import shapes
from .graph import Network
from .layers import Conv2D, Dropout, Softmax

__all__ = [
    "filters", "feature_maps", "saliency", "occlusion", "activation_maximization", "embed", "last_hidden_layer",
    "plot_filters", "plot_feature_maps", "plot_saliency", "plot_occlusion", "plot_activation_maximization",
    "plot_embedding",
]


# --------------------------------------------------------------------------- argument checks

def _check_model(model):
    if not isinstance(model, Network):
        raise ValueError(f"expected a gpucnn Model, got {type(model).__name__}")


def _one_image(model, x):
    """x as a batch of one (1, C, H, W), same array type; ValueError for anything but one image of the model's shape."""
    _check_model(model)
    if not hasattr(x, "shape"):
        raise ValueError(f"x must be an array (one image of shape {model.input_shape}), got {type(x).__name__}")
    shape, want = tuple(x.shape), model.input_shape
    if shape == want:
        x = x.reshape((1,) + want)
    elif shape != (1,) + want:
        raise ValueError(f"x must be one image of shape {want} (or {(1,) + want}), got shape {shape}")
    model._check_input(x)  # dtype
    return x


def _n_classes(model) -> int:
    if len(model.output.shape) != 1:
        raise ValueError(f"class scores need a model whose output is (classes,) per sample; "
                         f"{model.name!r} outputs {model.output.shape}")
    return model.output.shape[0]


def _check_target(target, n):
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, numbers.Integral) or not 0 <= target < n:
        raise ValueError(f"target must be a class index in [0, {n}), got {target!r}")
    return int(target)


def _host(a) -> np.ndarray:
    return np.asarray(F.to_numpy(a))


# --------------------------------------------------------------------------- filters

def filters(layer, ncols: int = 8) -> np.ndarray:
    """A conv layer's kernels as one image grid (the first Conv2D when given a Model).

    Weights w (K, C, R, S) are mapped to 0.5 + 0.5 * w / max|w| (one scale for
    the whole layer: 0.5 is a zero weight, brighter positive, darker negative).
    Three input channels give K colour tiles (grid of shape (rows, cols, 3));
    otherwise each filter's C channels are K*C grey tiles, filter by filter.
    Tiles are laid out ncols to a row with 1-pixel NaN separators.
    """
    if isinstance(layer, Network):
        convs = [lay for lay in layer.layers if isinstance(lay, Conv2D)]
        if not convs:
            raise ValueError(f"model {layer.name!r} has no Conv2D layer")
        layer = convs[0]
    if not isinstance(layer, Conv2D):
        raise ValueError(f"filters() takes a Conv2D layer or a Model, got {type(layer).__name__}")
    if not isinstance(ncols, numbers.Integral) or ncols <= 0:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    if "weight" not in layer.params:
        raise ValueError(f"layer {layer.name!r} is not built yet (make it part of a Model)")
    w = _host(layer.params["weight"]).astype(np.float64)
    k, c, r, s = w.shape
    scale = np.abs(w).max() or 1.0
    v = 0.5 + 0.5 * w / scale
    tiles = v.transpose(0, 2, 3, 1) if c == 3 else v.reshape(k * c, r, s)
    n = len(tiles)
    cols = min(int(ncols), n)
    rows = math.ceil(n / cols)
    grid = np.full((rows * (r + 1) - 1, cols * (s + 1) - 1) + tiles.shape[3:], np.nan)
    for i, tile in enumerate(tiles):
        y, x = (i // cols) * (r + 1), (i % cols) * (s + 1)
        grid[y:y + r, x:x + s] = tile
    return grid


# --------------------------------------------------------------------------- feature maps

def feature_maps(model, x, layers=None) -> "OrderedDict[str, np.ndarray]":
    """The outputs of the chosen layers for one image x (C, H, W): an ordered dict name -> host array.

    layers: a list of layer names (or one name); default every layer whose
    output is a (C, H, W) map, except Dropout (the identity at inference).
    Runs one forward pass, in inference mode, up to the deepest layer asked for.
    """
    xb = _one_image(model, x)
    if layers is None:
        layers = [lay.name for lay in model.layers if len(lay.output_shape) == 3 and not isinstance(lay, Dropout)]
        if not layers:
            raise ValueError(f"model {model.name!r} has no layer with a (C, H, W) output; name the layers")
    elif isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: name at least one layer")
    for name in layers:
        model.get_layer(name)  # ValueError listing the layers
    out = model.forward(xb, training=False, outputs=layers)
    return OrderedDict((name, _host(out[name])[0]) for name in layers)


# --------------------------------------------------------------------------- saliency

def saliency(model, x, target=None, reduce: str | None = "max") -> np.ndarray:
    """|d score_target / d x| for one image x (C, H, W), through the model's own backward pass.

    The class score is the logit of class `target` (the input of the final
    softmax, as in Simonyan, Vedaldi & Zisserman 2014: the softmax would mix
    in the other classes). target defaults to the predicted class.
    reduce='max' returns the (H, W) maximum over channels (Simonyan et al.);
    reduce=None the (C, H, W) absolute gradient. Inference mode (no dropout).
    Stores parameter gradients in the model as any backward does.
    """
    xb = _one_image(model, x)
    n = _n_classes(model)
    target = _check_target(target, n)
    if reduce not in ("max", None):
        raise ValueError(f"reduce must be 'max' or None, got {reduce!r}")
    logits = model.forward(xb, training=False, logits=True)
    if target is None:
        target = int(np.argmax(_host(logits)[0]))
    onehot = np.zeros((1, n), model.dtype)
    onehot[0, target] = 1
    dx = model.backward(F.asarray(onehot), input_grad=True)
    g = np.abs(_host(dx)[0])
    return g.max(axis=0) if reduce == "max" else g


# --------------------------------------------------------------------------- occlusion

def occlusion(model, x, patch, stride, target=None, fill=0.0, batch_size: int = 256) -> np.ndarray:
    """The probability of class `target` with a patch hidden at each position: a (P, Q) heat map.

    The patch (int or (h, w)) slides over the image with `stride` (int or
    pair); P = (H - h) // stride + 1 positions down, Q across. Entry [i, j] is
    softmax(logits)[target] for the image with rows i*sh .. i*sh+h-1 and
    columns j*sw .. j*sw+w-1 replaced by `fill` (a number, or an array that
    broadcasts to (C, H, W) whose pixels are copied in: e.g. a blurred
    image). target defaults to the class predicted for the unoccluded image.
    The occluded images go through the model in batches of batch_size, not one
    forward call per position.
    """
    xb = _one_image(model, x)
    n = _n_classes(model)
    target = _check_target(target, n)
    c, h, w = model.input_shape
    ph, pw = shapes.positive_pair(patch, "patch")
    sh, sw = shapes.positive_pair(stride, "stride")
    if ph > h or pw > w:
        raise ValueError(f"patch {ph}x{pw} is larger than the image {h}x{w}")
    if not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    try:
        fill_img = np.broadcast_to(np.asarray(_host(fill) if hasattr(fill, "shape") else fill, model.dtype), (c, h, w))
    except ValueError:
        raise ValueError(f"fill must be a number or broadcast to the image shape {(c, h, w)}, "
                         f"got shape {np.shape(fill)}") from None
    image = _host(xb)[0]
    p, q = (h - ph) // sh + 1, (w - pw) // sw + 1
    positions = [(i * sh, j * sw) for i in range(p) for j in range(q)]
    total = len(positions) + 1  # the unoccluded image first: it names the default target
    probs = np.empty((total, n), np.float64)
    for start in range(0, total, int(batch_size)):
        stop = min(start + int(batch_size), total)
        batch = np.repeat(image[None], stop - start, axis=0)
        for b, k in enumerate(range(start, stop)):
            if k:
                y0, x0 = positions[k - 1]
                batch[b, :, y0:y0 + ph, x0:x0 + pw] = fill_img[:, y0:y0 + ph, x0:x0 + pw]
        logits = model.forward(batch, training=False, logits=True)
        probs[start:stop] = _host(F.softmax(logits))
    if target is None:
        target = int(np.argmax(probs[0]))
    return probs[1:, target].reshape(p, q)


# --------------------------------------------------------------------------- activation maximization

@contextmanager
def _without_relu(layer, on: bool):
    """Run a layer with a fused ReLU as its linear part only (its pre-activation), for the duration."""
    saved = getattr(layer, "activation", None)
    if on and saved == "relu":
        layer.activation = None
    try:
        yield
    finally:
        if on and saved == "relu":
            layer.activation = saved


def activation_maximization(model, layer: str, unit: int, steps: int = 100, lr: float = 0.05, seed=0, *,
                            l2: float = 1e-3, clip=None, x0=None, pre_relu: bool = True,
                            return_history: bool = False):
    """An input that maximizes one unit of a layer, by gradient ascent on the input.

    The objective is the unit's activation (the mean over its map for a
    (C, H, W) output: channel `unit`; the value for a (features,) output; the
    logit for the final layer) minus l2/2 * ||x||^2, a small regularizer
    (Simonyan et al. 2014). For a Conv2D or Dense with a fused ReLU the
    activation is taken before the ReLU (pre_relu=True, as Lucid's "pre_relu"
    objectives): after it, a unit that is off at the start has zero gradient
    and would never move. Gradients come from the model's backward pass
    (``Model.backward(..., output=layer)``). Each step moves x by
    lr * g / rms(g), a normalized step, so lr is in pixel units whatever the
    layer's scale. The start is grey noise 0.5 + 0.1 * N(0, 1) drawn from seed
    (or x0); clip=(lo, hi) keeps pixels in a range after each step.
    Returns the image (C, H, W); with return_history=True also the unit's
    activation before each step and after the last (steps + 1 values).
    """
    _check_model(model)
    lay = model.get_layer(layer)
    size = lay.output_shape[0]
    if isinstance(unit, bool) or not isinstance(unit, numbers.Integral) or not 0 <= unit < size:
        raise ValueError(f"unit must be in [0, {size}) for layer {layer!r} of output shape {lay.output_shape}, "
                         f"got {unit!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not isinstance(lr, numbers.Real) or not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not isinstance(l2, numbers.Real) or l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2!r}")
    if clip is not None and (len(clip) != 2 or not clip[0] < clip[1]):
        raise ValueError(f"clip must be None or (lo, hi) with lo < hi, got {clip!r}")
    if x0 is None:
        rng = np.random.default_rng(seed)
        x = (0.5 + 0.1 * rng.standard_normal(model.input_shape)).astype(model.dtype)
    else:
        x = np.array(_host(_one_image(model, x0))[0], dtype=model.dtype)
    if clip is not None:
        x = np.clip(x, clip[0], clip[1])
    shape = (1,) + tuple(lay.output_shape)
    per_unit = int(np.prod(lay.output_shape[1:]))
    seed_grad = np.zeros(shape, model.dtype)
    seed_grad[0, unit] = 1.0 / per_unit
    seed_grad = F.asarray(seed_grad)
    history = []
    for step in range(steps + 1):
        with _without_relu(lay, pre_relu):
            act = model.forward(x[None], training=False, logits=True, outputs=layer)
            history.append(float(_host(act)[0, unit].mean()))
            if step == steps:
                break
            dx = model.backward(seed_grad, input_grad=True, output=layer)
        g = _host(dx)[0].astype(np.float64) - l2 * x
        x = (x + lr * g / (np.sqrt(np.mean(g * g)) + 1e-12)).astype(model.dtype)
        if clip is not None:
            x = np.clip(x, clip[0], clip[1])
    return (x, np.array(history)) if return_history else x


# --------------------------------------------------------------------------- embeddings

def last_hidden_layer(model) -> str:
    """The name of the layer feeding the output layer (Dropout skipped; a final Softmax layer is looked through)."""
    _check_model(model)
    node = model.output
    if isinstance(node.layer, Softmax):
        node = node.inbound[0]
    while True:
        if len(node.inbound) != 1:
            raise ValueError(f"cannot tell the last hidden layer of {model.name!r}: name it with layer=")
        node = node.inbound[0]
        if node is model.input:
            raise ValueError(f"model {model.name!r} has no hidden layer before its output")
        if not isinstance(node.layer, Dropout):
            return node.layer.name


def embed(model, X, method: str = "pca", layer: str | None = None, seed=0, batch_size: int = 256,
          perplexity: float | None = None) -> np.ndarray:
    """The vectors of a layer (default: the last hidden layer) for a batch X, in 2-D: an (N, 2) array.

    method='pca': projection on the first two principal axes (SVD of the
    centred vectors; each axis signed so that its largest loading is positive).
    method='tsne': scikit-learn's t-SNE (init='pca', random_state=seed,
    perplexity min(30, (N - 1) / 3) unless given). Plot by class with plot_embedding.
    """
    _check_model(model)
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    if not hasattr(X, "shape") or tuple(X.shape[1:]) != model.input_shape or len(X.shape) != len(model.input_shape) + 1:
        raise ValueError(f"X must be a batch of shape (N, {', '.join(map(str, model.input_shape))}), "
                         f"got {getattr(X, 'shape', type(X).__name__)}")
    n = X.shape[0]
    if n < 3:
        raise ValueError(f"embedding needs at least 3 samples, got {n}")
    layer = last_hidden_layer(model) if layer is None else model.get_layer(layer).name
    if not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    model._check_input(X[:1])
    feats = np.concatenate([
        _host(model.forward(X[i:i + batch_size], training=False, outputs=layer)).reshape(min(batch_size, n - i), -1)
        for i in range(0, n, int(batch_size))]).astype(np.float64)
    if method == "pca":
        centred = feats - feats.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axes = vt[:2]
        axes = axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
        coords = centred @ axes.T
        if coords.shape[1] < 2:  # a one-feature layer
            coords = np.concatenate([coords, np.zeros((n, 2 - coords.shape[1]))], axis=1)
        return coords
    from sklearn.manifold import TSNE
    perplexity = min(30.0, (n - 1) / 3) if perplexity is None else perplexity
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats)


# --------------------------------------------------------------------------- plotting companions

def _pyplot():
    import matplotlib.pyplot as plt
    return plt


def _display(img):
    """A (C, H, W) image as something imshow takes: (H, W) grey or (H, W, 3) colour scaled into [0, 1]."""
    img = np.asarray(_host(img), np.float64)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3 and img.shape[0] == 1:
        return img[0], "gray"
    if img.ndim == 3 and img.shape[0] == 3:
        img = img.transpose(1, 2, 0)
        lo, hi = img.min(), img.max()
        return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img), None
    if img.ndim == 3:
        return img.mean(axis=0), "gray"
    return img, "gray"


def plot_filters(grid, title: str | None = "first-layer filters"):
    """Draw filters()' grid (grey: dark negative, mid-grey zero, bright positive)."""
    plt = _pyplot()
    grid = np.asarray(grid)
    fig, ax = plt.subplots(figsize=(max(3, grid.shape[1] / 4), max(2, grid.shape[0] / 4) + 0.5))
    if grid.ndim == 3:
        ax.imshow(np.where(np.isnan(grid), 1.0, grid), interpolation="nearest")
    else:
        cmap = plt.get_cmap("gray").with_extremes(bad="white")
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_feature_maps(maps, max_channels: int = 8, image=None, title: str | None = None):
    """Draw feature_maps()' result: one row per layer, its first max_channels channels (each scaled alone)."""
    plt = _pyplot()
    rows = len(maps) + (image is not None)
    fig, axes = plt.subplots(rows, max_channels, figsize=(1.3 * max_channels, 1.4 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    r = 0
    if image is not None:
        img, cmap = _display(image)
        axes[0, 0].imshow(img, cmap=cmap, interpolation="nearest")
        axes[0, 0].set_title("input", fontsize=8)
        r = 1
    for name, a in maps.items():
        a = np.asarray(a)
        if a.ndim == 1:  # a (features,) layer: one strip
            axes[r, 0].imshow(a[None, :], cmap="viridis", aspect="auto", interpolation="nearest")
            axes[r, 0].set_title(f"{name} {a.shape}", fontsize=8, loc="left")
        else:
            for ch in range(min(max_channels, a.shape[0])):
                axes[r, ch].imshow(a[ch], cmap="viridis", interpolation="nearest")
                axes[r, ch].set_title(f"{name}[{ch}]" if ch == 0 else f"[{ch}]", fontsize=8)
        r += 1
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_saliency(image, sal, title: str | None = None):
    """The image beside its saliency map (brighter: the class score is more sensitive to that pixel)."""
    plt = _pyplot()
    sal = np.asarray(sal)
    if sal.ndim == 3:
        sal = sal.max(axis=0)
    fig, axes = plt.subplots(1, 2, figsize=(6.5, 3.2))
    img, cmap = _display(image)
    axes[0].imshow(img, cmap=cmap, interpolation="nearest")
    axes[0].set_title("input")
    im = axes[1].imshow(sal, cmap="hot", interpolation="nearest")
    axes[1].set_title("saliency |d logit / d pixel|")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_occlusion(image, heat, patch, stride, title: str | None = None):
    """The image beside occlusion()'s heat map, each value drawn over the centre of its patch position."""
    plt = _pyplot()
    heat = np.asarray(heat)
    ph, pw = shapes.positive_pair(patch, "patch")
    sh, sw = shapes.positive_pair(stride, "stride")
    img, cmap = _display(image)
    fig, axes = plt.subplots(1, 2, figsize=(6.5, 3.2))
    axes[0].imshow(img, cmap=cmap, interpolation="nearest")
    axes[0].set_title("input")
    # cell (i, j) covers the patch centre i*sh + (ph-1)/2 ± sh/2 (in pixel coordinates)
    p, q = heat.shape
    cy, cx = (ph - 1) / 2, (pw - 1) / 2
    extent = (cx - sw / 2, cx + (q - 1) * sw + sw / 2, cy + (p - 1) * sh + sh / 2, cy - sh / 2)
    axes[1].imshow(img, cmap=cmap, interpolation="nearest", alpha=0.35)
    im = axes[1].imshow(heat, cmap="jet_r", vmin=0, vmax=1, extent=extent, alpha=0.75, interpolation="nearest")
    axes[1].set_xlim(-0.5, img.shape[1] - 0.5)
    axes[1].set_ylim(img.shape[0] - 0.5, -0.5)
    axes[1].set_title(f"class probability, {ph}x{pw} patch hidden")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_activation_maximization(images, titles=None, title: str | None = None):
    """One image or a list of images from activation_maximization(), side by side."""
    plt = _pyplot()
    if hasattr(images, "shape") and np.ndim(images) == 3:
        images = [images]
    images = list(images)
    fig, axes = plt.subplots(1, len(images), figsize=(1.8 * len(images) + 0.5, 2.3), squeeze=False)
    for k, (ax, img) in enumerate(zip(axes[0], images)):
        im, cmap = _display(img)
        ax.imshow(im, cmap=cmap, interpolation="nearest")
        ax.set_xticks([])  # a frame, no ticks: white pixels stay visible against the figure
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[k], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_embedding(coords, labels=None, title: str | None = None):
    """embed()'s (N, 2) points, coloured and labelled by class."""
    plt = _pyplot()
    coords = np.asarray(coords)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=8)
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, cls in enumerate(classes):
            pts = coords[labels == cls]
            ax.scatter(pts[:, 0], pts[:, 1], s=8, color=cmap(i % cmap.N), label=str(cls))
            centre = np.median(pts, axis=0)
            ax.annotate(str(cls), centre, fontsize=12, weight="bold", ha="center", va="center")
        ax.legend(title="class", fontsize=7, markerscale=2, loc="best")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
