"""The gpucnn command: train, summary, info, viz, bench."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

DEFAULT_MODEL = {"digits": "digits_cnn", "mnist": "mnist_cnn", "cifar10": "cifar10_vgg"}


def _load_dataset(spec: list[str], seed: int):
    from . import data
    name, rest = spec[0], spec[1:]
    if name not in DEFAULT_MODEL:
        raise SystemExit(f"gpucnn: unknown dataset {name!r}; choose digits, 'mnist DIR' or 'cifar10 DIR'")
    if name == "digits":
        if rest:
            raise SystemExit("gpucnn: the digits dataset is bundled with scikit-learn and takes no directory")
        x, y = data.load_digits()
        return data.train_test_split(x, y, test_size=0.2, seed=seed)
    if len(rest) != 1:
        raise SystemExit(f"gpucnn: --dataset {name} needs the directory holding its files: --dataset {name} DIR")
    loader = data.load_mnist if name == "mnist" else data.load_cifar10
    x_train, y_train = loader(rest[0], "train")
    x_test, y_test = loader(rest[0], "test")
    return x_train, x_test, y_train, y_test


def cmd_train(args) -> int:
    import gpucnn
    from . import models
    start = time.perf_counter()
    backend = gpucnn.use_backend(args.backend).name
    x_train, x_test, y_train, y_test = _load_dataset(args.dataset, args.seed)
    name = args.model or DEFAULT_MODEL[args.dataset[0]]
    model = models.get(name, seed=args.seed)
    if tuple(x_train.shape[1:]) != model.input_shape:
        raise SystemExit(f"gpucnn: model {name} takes inputs {model.input_shape} but dataset {args.dataset[0]} "
                         f"has {tuple(x_train.shape[1:])}")
    opt = gpucnn.Adam(lr=args.lr) if args.optimizer == "adam" else gpucnn.SGD(lr=args.lr, momentum=args.momentum)
    model.compile(opt)
    print(f"training {name} on {args.dataset[0]} ({len(x_train)} train / {len(x_test)} test) with {opt} "
          f"on the {backend} backend", flush=True)
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
              verbose=args.verbose)
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save}")
    loss, acc = model.evaluate(x_test, y_test)
    print(f"{time.perf_counter() - start:.1f} s in all")
    print(f"test accuracy: {acc:.4f} ({round(acc * len(x_test))}/{len(x_test)} held out), test loss: {loss:.4f}")
    return 0


def cmd_summary(args) -> int:
    from . import models
    models.get(args.model).summary()
    return 0


def cmd_info(args) -> int:
    from .backend import info, resolve
    for name, entry in info().items():
        state = f"available, {len(entry['ops'])} ops" if entry["available"] else f"unavailable: {entry['reason']}"
        if entry["available"] and entry["simulated"]:
            state += " (CUDA simulator: kernels run on the CPU, for tests; 'auto' skips it)"
        print(f"{name:6s} {state}")
    print(f"auto   -> {resolve('auto')}")
    from ._blas import describe
    print(f"numpy {np.__version__}: {describe()}")
    return 0


def _viz_image(spec: str, model):
    """--image digits:INDEX (the bundled digits) or an image FILE, as one (C, H, W) input for the model."""
    if spec.startswith("digits:"):
        from . import data
        x, y = data.load_digits()
        index = spec.split(":", 1)[1]
        if not index.isdigit() or int(index) >= len(x):
            raise SystemExit(f"gpucnn: --image digits:INDEX needs an INDEX in 0..{len(x) - 1}, got {spec!r}")
        img, label = x[int(index)], int(y[int(index)])
        if img.shape != model.input_shape:
            raise SystemExit(f"gpucnn: the digits are {img.shape} images but the model takes {model.input_shape}")
        return img.astype(model.dtype), f"digits[{index}], label {label}"
    from pathlib import Path
    if not Path(spec).is_file():
        raise SystemExit(f"gpucnn: --image {spec!r}: no such file (or use digits:INDEX)")
    from skimage import color, io, transform, util
    try:
        img = util.img_as_float(io.imread(spec))
    except Exception as e:
        raise SystemExit(f"gpucnn: cannot read image {spec!r}: {e}") from None
    c, h, w = model.input_shape
    if img.ndim == 3 and img.shape[2] == 4:
        img = color.rgba2rgb(img)
    if c == 1 and img.ndim == 3:
        img = color.rgb2gray(img)
    if c == 3 and img.ndim == 2:
        img = color.gray2rgb(img)
    if c not in (1, 3):
        raise SystemExit(f"gpucnn: the model takes {c}-channel inputs; image files give 1 or 3 channels")
    img = transform.resize(img, (h, w), anti_aliasing=True)
    img = img[None] if c == 1 else img.transpose(2, 0, 1)
    return np.ascontiguousarray(img, dtype=model.dtype), Path(spec).name


def _viz_embedding_data(args, model):
    """Labelled inputs for the embedding: the held-out digits, or --dataset mnist|cifar10 DIR (test set)."""
    from . import data
    if args.dataset:
        name, rest = args.dataset[0], args.dataset[1:]
        if name not in ("mnist", "cifar10") or len(rest) != 1:
            raise SystemExit("gpucnn: --dataset takes 'mnist DIR' or 'cifar10 DIR'")
        x, y = (data.load_mnist if name == "mnist" else data.load_cifar10)(rest[0], "test")
    elif model.input_shape == (1, 8, 8):
        x, y = data.load_digits()
        x, y = data.train_test_split(x, y, test_size=0.2, seed=0)[1::2]
    else:
        raise SystemExit(f"gpucnn: the embedding needs labelled inputs of shape {model.input_shape}: "
                         "--dataset mnist DIR or --dataset cifar10 DIR")
    if tuple(x.shape[1:]) != model.input_shape:
        raise SystemExit(f"gpucnn: the dataset's images are {tuple(x.shape[1:])}, the model takes {model.input_shape}")
    return x[:args.samples].astype(model.dtype), y[:args.samples]


def cmd_viz(args) -> int:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("gpucnn viz draws with matplotlib: pip install 'gpucnn[notebooks]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    import gpucnn
    from . import viz
    from .layers import Conv2D
    try:
        model = gpucnn.load_model(args.model)
    except (OSError, ValueError) as e:
        raise SystemExit(f"gpucnn: --model {args.model}: {e}") from None
    x, what = _viz_image(args.image, model)
    X, labels = _viz_embedding_data(args, model)
    backend = gpucnn.use_backend(args.backend).name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probs = gpucnn.functional.to_numpy(model.forward(x[None]))[0]
    target = int(np.argmax(probs)) if args.target is None else args.target
    title = f"{what}: class {target} (p = {probs[target]:.2f}), {model.name} on {backend}"
    convs = [layer.name for layer in model.layers if isinstance(layer, Conv2D)]
    layer = args.layer or (convs[-1] if convs else viz.last_hidden_layer(model))
    units = model.get_layer(layer).output_shape[0]
    n = min(8, units)
    patch = args.patch or max(1, round(min(model.input_shape[1:]) * 3 / 8))
    figures = {
        "filters": lambda: viz.plot_filters(viz.filters(model), title=f"{model.name}: first-layer filters"),
        "feature_maps": lambda: viz.plot_feature_maps(viz.feature_maps(model, x), image=x, title=title),
        "saliency": lambda: viz.plot_saliency(x, viz.saliency(model, x, target=target), title=title),
        "occlusion": lambda: viz.plot_occlusion(x, viz.occlusion(model, x, patch, args.stride, target=target),
                                                patch, args.stride, title=title),
        "activation_maximization": lambda: viz.plot_activation_maximization(
            [viz.activation_maximization(model, layer, u, steps=args.steps, lr=args.lr, seed=args.seed)
             for u in range(n)], titles=[f"{layer}[{u}]" for u in range(n)],
            title=f"inputs that maximize units of {layer}"),
        f"embedding_{args.method}": lambda: viz.plot_embedding(
            viz.embed(model, X, method=args.method, seed=args.seed), labels,
            title=f"{viz.last_hidden_layer(model)} of {len(X)} held-out images, {args.method.upper()}"),
    }
    for kind, draw in figures.items():
        fig = draw()
        path = out / f"{kind}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(path)
    return 0


def cmd_bench(args) -> int:
    from . import bench
    from .config import tf32
    ops = args.op or list(bench.OPS)
    with tf32(args.tf32):
        doc = bench.run(backends=args.backend, ops=ops, models=[] if args.step_only else args.model,
                        batches=args.batch, sweep=args.sweep and not args.step_only, reference=not args.no_reference,
                        min_repeats=args.repeats, step=not args.no_step, step_models=args.model,
                        step_batch=args.step_batch,
                        progress=not args.no_progress, command="gpucnn " + " ".join(sys.argv[1:]))
    print(bench.format_table(doc))
    if not doc["settings"]["backends_timed"]:
        print("gpucnn bench: no backend could be timed here (see 'skipped' above)", file=sys.stderr)
        return 1
    if args.out:
        for path in bench.write_results(doc, args.out):
            print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .backend import AUTO_ORDER
    from .models import ZOO
    p = argparse.ArgumentParser(prog="gpucnn", description="CNNs on hand-written CUDA kernels, NumPy as reference.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a zoo model and print the held-out test accuracy last")
    t.add_argument("--model", choices=sorted(ZOO), help="default: the dataset's own net (digits: digits_cnn)")
    t.add_argument("--dataset", nargs="+", default=["digits"], metavar="NAME [DIR]",
                   help="digits (bundled, default) | mnist DIR | cifar10 DIR")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    t.add_argument("--backend", default="auto", choices=sorted(AUTO_ORDER) + ["auto"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save", metavar="PATH", help="write the trained model (.npz)")
    t.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1, help="0 silent, 1 progress bar, 2 a line an epoch")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("summary", help="print a zoo model's Keras-style summary")
    s.add_argument("model", choices=sorted(ZOO))
    s.set_defaults(func=cmd_summary)

    i = sub.add_parser("info", help="which backends work here, and why not")
    i.set_defaults(func=cmd_info)

    v = sub.add_parser("viz", help="what a saved model sees: one PNG per kind (filters, feature maps, saliency, "
                                   "occlusion, activation maximization, embedding)")
    v.add_argument("--model", required=True, metavar="PATH", help="a model saved with Model.save / train --save")
    v.add_argument("--image", required=True, metavar="digits:INDEX|FILE", help="a bundled digit or an image file")
    v.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (created)")
    v.add_argument("--target", type=int, help="class for saliency and occlusion (default: the predicted one)")
    v.add_argument("--patch", type=int, help="occlusion patch side (default: 3/8 of the image side, 3 on the digits)")
    v.add_argument("--stride", type=int, default=1, help="occlusion stride (default 1)")
    v.add_argument("--layer", help="layer for activation maximization (default: the last Conv2D)")
    v.add_argument("--steps", type=int, default=100, help="activation maximization steps (default 100)")
    v.add_argument("--lr", type=float, default=0.05, help="activation maximization step, in pixels (default 0.05)")
    v.add_argument("--method", choices=["pca", "tsne"], default="pca", help="embedding method (default pca)")
    v.add_argument("--samples", type=int, default=500, help="images in the embedding (default 500)")
    v.add_argument("--dataset", nargs=2, metavar=("NAME", "DIR"),
                   help="embedding data for non-digits models: mnist DIR | cifar10 DIR (test set)")
    v.add_argument("--backend", default="auto", choices=sorted(AUTO_ORDER) + ["auto"])
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_viz)

    b = sub.add_parser("bench", help="time every op x backend x shape (and whole training steps) beside PyTorch; "
                                     "a table here, JSON + markdown + roofline PNG in --out")
    b.add_argument("--backend", nargs="+", choices=["numpy", "numba", "cupy"],
                   help="backends to time (default: every one that runs here; a simulator is never timed)")
    b.add_argument("--op", nargs="+", choices=["conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward",
                                               "relu", "relu_backward"], help="ops to time (default: all)")
    b.add_argument("--model", nargs="+", choices=["cifar10_vgg", "mnist_cnn"], default=["cifar10_vgg", "mnist_cnn"],
                   help="nets whose conv, pool and ReLU shapes are timed (default: both)")
    b.add_argument("--batch", nargs="+", type=int, default=[1, 32, 128], help="batch sizes (default 1 32 128)")
    b.add_argument("--sweep", action="store_true", help="add a size sweep (H = W from 8 to 128)")
    b.add_argument("--repeats", type=int, default=10, help="at least this many timed repeats per case (default 10)")
    b.add_argument("--step-batch", type=int, default=128, help="batch of the whole-training-step benchmark (128)")
    b.add_argument("--no-step", action="store_true", help="skip the whole-training-step benchmark")
    b.add_argument("--step-only", action="store_true", help="only the whole-training-step benchmark")
    b.add_argument("--no-reference", action="store_true", help="do not time PyTorch beside gpucnn")
    b.add_argument("--tf32", action="store_true", help="run with gpucnn.config.allow_tf32 (CuPy backend; "
                                                       "PyTorch's TF32 switches follow it)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--out", metavar="DIR", help="write <date>_<device>.json, .md and _roofline.png here")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
