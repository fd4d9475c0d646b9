"""gpucnn.viz against independent references: saliency against float64 central differences of the logit,
occlusion against a direct loop of single forward passes, activation maximization rising step by step,
feature maps against the loop oracle, PCA against scikit-learn; the graph hooks it uses
(forward(outputs=...), backward(output=...)); bad arguments refused before any compute; the numba backend
(CUDA simulator without a GPU) giving the NumPy backend's answers on a tiny net; plots and `gpucnn viz`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sequential, viz
from gpucnn import functional as F

import oracle
from helpers import assert_close, numeric_grad

REPO = Path(__file__).resolve().parents[1]


def small_net(seed=0, dtype=np.float64, channels=2):
    """conv(relu) -> pool -> conv -> ReLU layer -> flatten -> dense(relu) -> dropout -> dense(softmax), on 6x6."""
    layers = [Conv2D(3, 3, padding="same", activation="relu"), MaxPool2D(2), Conv2D(4, 2), ReLU(),
              Flatten(), Dense(6, activation="relu"), Dropout(0.5), Dense(5, activation="softmax")]
    return Sequential(layers, input_shape=(channels, 6, 6), seed=seed, dtype=dtype)


def image(seed, shape=(2, 6, 6), dtype=np.float64):
    return np.random.default_rng(seed).random(shape).astype(dtype)


def logit(model, x, target):
    return float(model.forward(x[None], logits=True)[0, target])


# --------------------------------------------------------------------------- graph hooks

def test_forward_outputs_are_the_intermediate_activations():
    model, x = small_net(1), image(11, (3, 2, 6, 6))
    got = model.forward(x, outputs=["conv2d", "max_pool2d", "dense"])
    w, b = model.get_layer("conv2d").params["weight"], model.get_layer("conv2d").params["bias"]
    ref = oracle.relu(oracle.conv2d(x, w, b, pads=(1, 1, 1, 1)))
    assert_close(got["conv2d"], ref, name="conv2d output")
    assert_close(got["max_pool2d"], oracle.max_pool2d(ref, 2)[0], name="pool output")
    assert got["dense"].shape == (3, 6)
    assert_close(model.forward(x, outputs="dense"), got["dense"])
    full = model.forward(x)  # default behaviour unchanged: probabilities of the whole net
    assert full.shape == (3, 5) and np.allclose(full.sum(axis=1), 1)


def test_backward_from_an_intermediate_layer_matches_finite_differences():
    model, x = small_net(2), image(12, (1, 2, 6, 6))
    dy = np.random.default_rng(5).standard_normal((1, 4, 2, 2))
    model.forward(x, outputs="conv2d_1")
    dx = model.backward(dy, output="conv2d_1")
    numeric = numeric_grad(lambda: float(np.sum(model.forward(x, outputs="conv2d_1") * dy)), x)
    assert np.count_nonzero(numeric) > numeric.size // 2
    assert_close(dx, numeric, rtol=1e-5, atol=1e-7, name="dx from conv2d_1")


def test_get_layer_names_the_layers_it_has():
    with pytest.raises(ValueError, match=r"no layer 'conv9'.*\['conv2d', 'max_pool2d'"):
        small_net().get_layer("conv9")


# --------------------------------------------------------------------------- saliency

@pytest.mark.parametrize("target", [None, 3])
def test_saliency_is_the_finite_difference_gradient_of_the_logit(target):
    model, x = small_net(3), image(13)
    sal = viz.saliency(model, x, target=target, reduce=None)
    t = int(np.argmax(model.forward(x[None], logits=True)[0])) if target is None else target
    numeric = numeric_grad(lambda: logit(model, x, t), x)
    assert np.count_nonzero(numeric) > numeric.size // 2
    assert_close(sal, np.abs(numeric), rtol=1e-5, atol=1e-7, name="saliency")
    assert_close(viz.saliency(model, x, target=target), np.abs(numeric).max(axis=0), rtol=1e-5, atol=1e-7,
                 name="saliency, max over channels")


def test_a_pixel_that_cannot_reach_the_output_has_zero_saliency():
    # a 2x2 stride-2 valid conv on 5x5 sees rows and columns 0..3 only: row 4 and column 4 are cut off
    model = Sequential([Conv2D(3, 2, strides=2), Flatten(), Dense(4)], input_shape=(1, 5, 5), seed=4,
                       dtype=np.float64)
    x = image(14, (1, 5, 5))
    sal = viz.saliency(model, x, target=2, reduce=None)[0]
    numeric = np.abs(numeric_grad(lambda: logit(model, x, 2), x))[0]
    assert_close(sal, numeric, rtol=1e-5, atol=1e-7)
    assert np.all(sal[4, :] == 0) and np.all(sal[:, 4] == 0)
    assert np.all(sal[:4, :4] > 0)


# --------------------------------------------------------------------------- occlusion

def occlusion_loop(model, x, patch, stride, target, fill):
    """One forward pass per position, probabilities from the model's own softmax."""
    (ph, pw), (sh, sw) = patch, stride
    _, h, w = x.shape
    rows = []
    for i in range(0, h - ph + 1, sh):
        row = []
        for j in range(0, w - pw + 1, sw):
            occluded = x.copy()
            occluded[:, i:i + ph, j:j + pw] = fill
            row.append(model.forward(occluded[None])[0, target])
        rows.append(row)
    return np.array(rows)


def count_forward_calls(model, monkeypatch):
    calls = []
    original = model.forward

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return calls


@pytest.mark.parametrize("patch,stride,fill", [((2, 3), (2, 1), 0.0), (3, 3, 0.5), (1, 2, -1.0)])
def test_occlusion_matches_a_direct_loop(patch, stride, fill, monkeypatch):
    model, x = small_net(5), image(15)
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ref = occlusion_loop(model, x, (ph, pw), (sh, sw), 1, fill)
    calls = count_forward_calls(model, monkeypatch)
    heat = viz.occlusion(model, x, patch, stride, target=1, fill=fill, batch_size=5)
    assert heat.shape == ((6 - ph) // sh + 1, (6 - pw) // sw + 1) == ref.shape
    assert_close(heat, ref, rtol=1e-10, atol=1e-12, name="occlusion heat map")
    assert np.ptp(heat) > 1e-3  # the patch matters somewhere
    # batched: the unoccluded image and every position in ceil((positions + 1) / 5) calls of up to 5 images
    assert sum(calls) == heat.size + 1 and max(calls) == 5 and len(calls) == -(-(heat.size + 1) // 5)


def test_occlusion_default_target_is_the_predicted_class():
    model, x = small_net(6), image(16)
    predicted = int(np.argmax(model.forward(x[None])[0]))
    assert_close(viz.occlusion(model, x, 2, 2), viz.occlusion(model, x, 2, 2, target=predicted))


def test_an_occluding_patch_equal_to_the_image_leaves_the_score_unchanged():
    model, x = small_net(7), image(17)
    base = model.forward(x[None])[0]
    for target in range(5):
        heat = viz.occlusion(model, x, (2, 3), 1, target=target, fill=x)  # the patch copies the image's own pixels
        assert_close(heat, np.full((5, 4), base[target]), rtol=1e-12, atol=1e-15)
    flat = np.full((2, 6, 6), 0.3)  # a constant image hidden by a patch of its own value
    heat = viz.occlusion(model, flat, 4, 1, target=2, fill=0.3)
    assert_close(heat, np.full((3, 3), model.forward(flat[None])[0, 2]), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- activation maximization

@pytest.mark.parametrize("layer,unit", [("conv2d", 1), ("conv2d_1", 2), ("dense", 4), ("dense_1", 0)])
def test_activation_maximization_raises_the_unit_monotonically(layer, unit):
    model = small_net(8)
    img, hist = viz.activation_maximization(model, layer, unit, steps=25, lr=0.05, seed=3, return_history=True)
    assert img.shape == (2, 6, 6) and hist.shape == (26,)
    assert np.all(np.diff(hist) > 0), hist
    assert hist[-1] > hist[0] + 0.1


def test_activation_maximization_history_is_the_units_activation():
    model = small_net(9)  # conv2d_1 has no fused ReLU (a ReLU layer follows), so its output is the raw unit
    img, hist = viz.activation_maximization(model, "conv2d_1", 3, steps=10, lr=0.05, seed=1, return_history=True)
    assert_close(hist[-1], viz.feature_maps(model, img, ["conv2d_1"])["conv2d_1"][3].mean(), rtol=1e-10)
    again = viz.activation_maximization(model, "conv2d_1", 3, steps=10, lr=0.05, seed=1)
    assert_close(again, img, rtol=0, atol=0)  # the seed decides everything
    clipped = viz.activation_maximization(model, "conv2d_1", 3, steps=10, lr=0.3, seed=1, clip=(0, 1))
    assert clipped.min() >= 0 and clipped.max() <= 1


# --------------------------------------------------------------------------- filters, feature maps, embeddings

def test_filters_grid_holds_each_kernel_scaled_around_mid_grey():
    model = small_net(10)
    w = model.get_layer("conv2d").params["weight"]  # (3, 2, 3, 3): 6 grey tiles
    grid = viz.filters(model, ncols=4)
    assert grid.shape == (2 * 4 - 1, 4 * 4 - 1)
    scale = np.abs(w).max()
    for i in range(6):
        k, c = divmod(i, 2)
        y, x = (i // 4) * 4, (i % 4) * 4
        assert_close(grid[y:y + 3, x:x + 3], 0.5 + 0.5 * w[k, c] / scale)
    assert np.isnan(grid[3, :]).all() and np.isnan(grid[4:, 8:]).all()  # separators, empty cells
    rgb = viz.filters(Sequential([Conv2D(5, 3)], input_shape=(3, 6, 6), seed=0), ncols=8)
    assert rgb.shape == (3, 5 * 4 - 1, 3)


def test_feature_maps_default_to_every_spatial_layer():
    model, x = small_net(11), image(18)
    maps = viz.feature_maps(model, x)
    assert list(maps) == ["conv2d", "max_pool2d", "conv2d_1", "re_lu"]
    w, b = model.get_layer("conv2d").params["weight"], model.get_layer("conv2d").params["bias"]
    assert_close(maps["conv2d"], oracle.relu(oracle.conv2d(x[None], w, b, pads=(1, 1, 1, 1)))[0])
    assert maps["conv2d_1"].shape == (4, 2, 2) and np.any(maps["conv2d_1"] < 0)
    assert list(viz.feature_maps(model, x[None], "dense")) == ["dense"]


def test_embed_pca_matches_scikit_learn_and_tsne_runs():
    from sklearn.decomposition import PCA
    model = small_net(12)
    X = image(19, (40, 2, 6, 6))
    assert viz.last_hidden_layer(model) == "dense"  # Dropout looked through
    feats = model.forward(X, outputs="dense")
    coords = viz.embed(model, X, batch_size=16)
    ref = PCA(2).fit_transform(feats)
    assert_close(np.abs(coords), np.abs(ref), rtol=1e-6, atol=1e-9, name="PCA coordinates")
    signs = np.sign(np.sum(coords * ref, axis=0))
    assert_close(coords, ref * signs, rtol=1e-6, atol=1e-9)
    tsne = viz.embed(model, X, method="tsne", layer="max_pool2d", seed=0)
    assert tsne.shape == (40, 2) and np.all(np.isfinite(tsne)) and np.ptp(tsne) > 0


# --------------------------------------------------------------------------- bad arguments, before any compute

BAD = [
    (lambda m, x: viz.saliency(m, x[0]), "one image of shape"),
    (lambda m, x: viz.saliency(m, x[None, None]), "one image of shape"),
    (lambda m, x: viz.saliency(m, x[:, :5]), "one image of shape"),
    (lambda m, x: viz.saliency(m, x, target=5), "target must be"),
    (lambda m, x: viz.saliency(m, x, reduce="mean"), "reduce"),
    (lambda m, x: viz.feature_maps(m, x, ["conv2d", "nope"]), "no layer 'nope'"),
    (lambda m, x: viz.feature_maps(m, x, []), "empty"),
    (lambda m, x: viz.occlusion(m, x, 7, 1), "larger than the image"),
    (lambda m, x: viz.occlusion(m, x, (2, 7), 1), "larger than the image"),
    (lambda m, x: viz.occlusion(m, x, 2, 0), "stride must be positive"),
    (lambda m, x: viz.occlusion(m, x, 2, (1, -1)), "stride must be positive"),
    (lambda m, x: viz.occlusion(m, x, 0, 1), "patch must be positive"),
    (lambda m, x: viz.occlusion(m, x, 2, 1, fill=np.zeros((3, 6, 6))), "fill must"),
    (lambda m, x: viz.occlusion(m, x[None, None], 2, 1), "one image of shape"),
    (lambda m, x: viz.activation_maximization(m, "dense9", 0), "no layer 'dense9'"),
    (lambda m, x: viz.activation_maximization(m, "conv2d", 3), r"unit must be in \[0, 3\)"),
    (lambda m, x: viz.activation_maximization(m, "dense", -1), r"unit must be in \[0, 6\)"),
    (lambda m, x: viz.activation_maximization(m, "dense", 0, steps=-1), "steps"),
    (lambda m, x: viz.activation_maximization(m, "dense", 0, lr=0), "lr must be positive"),
    (lambda m, x: viz.embed(m, x), "X must be a batch"),
    (lambda m, x: viz.embed(m, np.stack([x] * 4), method="umap"), "method must be"),
    (lambda m, x: viz.embed(m, np.stack([x] * 4), layer="nope"), "no layer 'nope'"),
    (lambda m, x: viz.filters(m.get_layer("dense")), "Conv2D"),
    (lambda m, x: viz.filters(Sequential([Flatten(), Dense(2)], input_shape=(1, 2, 2))), "no Conv2D"),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_arguments_raise_before_any_compute(call, message, monkeypatch):
    model, x = small_net(13), image(20)

    def no_compute(*args, **kwargs):
        raise AssertionError("computed before checking its arguments")

    monkeypatch.setattr(model, "forward", no_compute)
    monkeypatch.setattr(model, "backward", no_compute)
    with pytest.raises(ValueError, match=message):
        call(model, x)


def test_class_scores_need_a_classifier_output():
    model = Sequential([Conv2D(2, 3, padding="same")], input_shape=(1, 4, 4), seed=0, dtype=np.float64)
    with pytest.raises(ValueError, match=r"output is \(classes,\)"):
        viz.saliency(model, image(21, (1, 4, 4)))


# --------------------------------------------------------------------------- every backend present

def tiny_net(seed=0):
    layers = [Conv2D(2, 3, padding="same", activation="relu"), MaxPool2D(2), Flatten(), Dense(6, activation="relu"),
              Dense(3, activation="softmax")]
    return Sequential(layers, input_shape=(1, 4, 4), seed=seed)


NEEDED = ("conv2d_relu", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "relu_backward", "linear",
          "linear_backward", "softmax", "asarray", "to_numpy")


def _backends():
    """numpy, and every other backend that runs here (numba in the CUDA simulator, cupy emulated) with the ops."""
    out = []
    for name, entry in gpucnn.backend.info().items():
        missing = [op for op in NEEDED if op not in entry["ops"]]
        why = (f"{name} backend unavailable: {entry['reason']}" if not entry["available"]
               else f"{name} backend lacks {missing}" if missing else None)
        out.append(pytest.param(name, marks=pytest.mark.skipif(why is not None, reason=str(why))))
    return out


@pytest.fixture(scope="module")
def reference_results():
    with gpucnn.use_backend("numpy"):
        return run_all(tiny_net(3), image(22, (1, 4, 4), np.float32), image(23, (6, 1, 4, 4), np.float32))


def run_all(model, x, X):
    return {
        "saliency": viz.saliency(model, x, reduce=None),
        "occlusion": viz.occlusion(model, x, 2, 2, batch_size=3),
        "feature_maps": viz.feature_maps(model, x)["conv2d"],
        "activation_maximization": viz.activation_maximization(model, "dense", 1, steps=2, lr=0.05),
        "embed": viz.embed(model, X),
        "filters": viz.filters(model),
    }


@pytest.mark.parametrize("name", _backends())
def test_every_backend_gives_the_numpy_answers(name, reference_results):
    with gpucnn.use_backend(name):
        x = F.asarray(image(22, (1, 4, 4), np.float32))  # a device array on the GPU backends: arrays in...
        X = F.asarray(image(23, (6, 1, 4, 4), np.float32))
        got = run_all(tiny_net(3), x, X)
    for key, ref in reference_results.items():
        assert type(got[key]) is np.ndarray, key  # ... host arrays out
        if key == "filters":  # NaN separators
            np.testing.assert_allclose(got[key], ref, rtol=1e-6, equal_nan=True)
        else:
            assert_close(got[key], ref, rtol=2e-4, atol=2e-5, name=f"{name} {key}")


# --------------------------------------------------------------------------- plots and the command

def test_import_gpucnn_viz_does_not_import_matplotlib():
    code = "import sys, gpucnn, gpucnn.viz; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_plot_companions_draw_figures(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    model, x = small_net(14), image(24)
    X, labels = image(25, (12, 2, 6, 6)), np.arange(12) % 3
    figures = {
        "filters": viz.plot_filters(viz.filters(model)),
        "feature_maps": viz.plot_feature_maps(viz.feature_maps(model, x, ["conv2d", "dense"]), image=x),
        "saliency": viz.plot_saliency(x, viz.saliency(model, x)),
        "occlusion": viz.plot_occlusion(x, viz.occlusion(model, x, 2, 2), 2, 2),
        "activation_maximization": viz.plot_activation_maximization(
            [viz.activation_maximization(model, "dense_1", k, steps=2) for k in range(3)], titles=["a", "b", "c"]),
        "embedding": viz.plot_embedding(viz.embed(model, X), labels, title="pca"),
    }
    for name, fig in figures.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


KINDS = ("filters", "feature_maps", "saliency", "occlusion", "activation_maximization", "embedding_pca")


@pytest.fixture(scope="module")
def saved_digits_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("viz") / "digits.npz"
    gpucnn.models.digits_cnn(seed=0).save(path)
    return path


def test_cli_viz_writes_one_png_per_kind(saved_digits_model, tmp_path):
    pytest.importorskip("matplotlib")
    from gpucnn import cli
    assert cli.main(["viz", "--model", str(saved_digits_model), "--image", "digits:7", "--out", str(tmp_path),
                     "--steps", "5", "--samples", "60", "--backend", "numpy"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{kind}.png" for kind in KINDS)
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_viz_takes_an_image_file(saved_digits_model, tmp_path):
    pytest.importorskip("matplotlib")
    from skimage import io
    from gpucnn import cli
    photo = tmp_path / "photo.png"
    io.imsave(photo, (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8), check_contrast=False)
    out = tmp_path / "out"
    assert cli.main(["viz", "--model", str(saved_digits_model), "--image", str(photo), "--out", str(out),
                     "--steps", "3", "--samples", "40", "--backend", "numpy"]) == 0
    assert len(list(out.glob("*.png"))) == len(KINDS)


@pytest.mark.parametrize("spec,message", [("digits:5000", "digits:INDEX"), ("digits:x", "digits:INDEX"),
                                          ("/no/such/file.png", "no such")])
def test_cli_viz_bad_image(saved_digits_model, tmp_path, spec, message, capsys):
    pytest.importorskip("matplotlib")
    from gpucnn import cli
    with pytest.raises(SystemExit) as e:
        cli.main(["viz", "--model", str(saved_digits_model), "--image", spec, "--out", str(tmp_path)])
    assert message in str(e.value)
    assert not list(tmp_path.glob("*.png"))
