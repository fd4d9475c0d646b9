"""The gpucnn command: train, summary, info, viz, bench, kernels.

Every mistake the user can fix (an argument, a missing or malformed file, a
backend that cannot run here) ends the command with one line on stderr,
``gpucnn: error: <message>``, and exit status 1; ``--debug`` or
``GPUCNN_DEBUG=1`` shows the traceback instead. Usage errors are argparse's
(usage, then the error, status 2).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

DEFAULT_MODEL = {"digits": "digits_cnn", "mnist": "mnist_cnn", "cifar10": "cifar10_vgg"}


class CLIError(Exception):
    """A mistake in the command's arguments or inputs: main() reports it as one line, exit status 1."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise CLIError(message)


def _check_dataset(spec: list[str]) -> None:
    name, rest = spec[0], spec[1:]
    _require(name in DEFAULT_MODEL, f"unknown dataset {name!r}; choose digits, 'mnist DIR' or 'cifar10 DIR'")
    if name == "digits":
        _require(not rest, "the digits dataset is bundled with scikit-learn and takes no directory")
    else:
        _require(len(rest) == 1, f"--dataset {name} needs the directory holding its files: --dataset {name} DIR")


def _load_dataset(spec: list[str], seed: int):
    from . import data
    _check_dataset(spec)
    name, rest = spec[0], spec[1:]
    if name == "digits":
        x, y = data.load_digits()
        return data.train_test_split(x, y, test_size=0.2, seed=seed)
    loader = data.load_mnist if name == "mnist" else data.load_cifar10
    x_train, y_train = loader(rest[0], "train")
    x_test, y_test = loader(rest[0], "test")
    return x_train, x_test, y_train, y_test


def _check_train_args(args) -> None:
    """Everything about train's arguments that can be known before any work."""
    _require(args.epochs >= 1, f"--epochs must be a positive integer, got {args.epochs}")
    _require(args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}")
    _require(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a finite number > 0, got {args.lr}")
    if args.momentum is not None:
        _require(args.optimizer == "sgd", f"--momentum applies to --optimizer sgd only, not {args.optimizer} "
                                          "(Adam has no momentum setting)")
        _require(math.isfinite(args.momentum) and args.momentum >= 0,
                 f"--momentum must be a finite number >= 0, got {args.momentum}")
    _require(args.threads is None or args.threads >= 1, f"--threads must be at least 1, got {args.threads}")
    _require(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    _require(not args.sync_bn or args.distributed,
             "--sync-bn synchronizes batch-norm statistics over the ranks of a --distributed run; add --distributed "
             "(under mpiexec)")
    _check_dataset(args.dataset)
    if args.save:
        _check_save_path(args.save)


def _check_save_path(path: str) -> None:
    """Fail now, not after training, when --save PATH cannot be written.

    PATH must not be a folder, and its nearest existing ancestor must be a folder that takes a new file
    (tried for real: a file is created there and removed). Missing folders are made when saving.
    """
    import tempfile
    from pathlib import Path
    target = Path(path)
    _require(not target.is_dir(), f"--save {path}: is a folder; give a file name, such as {target / 'model.npz'}")
    folder = target.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    _require(folder.is_dir(), f"--save {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".gpucnn-save-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CLIError(f"--save {path}: cannot write in {folder} ({e.strerror or e})") from None
    _require(not target.exists() or os.access(target, os.W_OK), f"--save {path}: the file is not writable")


def cmd_train(args) -> int:
    _check_train_args(args)
    if not args.distributed:
        return _train(args, None)
    from . import distributed as dist
    try:
        rank, size = dist.init()
    except dist.DistributedError as e:
        raise CLIError(str(e)) from None
    _require(args.batch_size % size == 0,
             f"--batch-size {args.batch_size} is the global batch and must divide evenly over the {size} ranks "
             f"(give a multiple of {size})")
    if rank == 0:  # a rank killed outright cannot speak: mpiexec names its PID, this line the rank
        print(f"gpucnn: {size} ranks (rank=pid@host): {dist.rank_map()}", file=sys.stderr, flush=True)
    with dist.guard():  # an exception on any rank: 'gpucnn: error: rank R failed: ...' and every rank aborts
        try:
            return _train(args, dist)
        except dist.DistributedError as e:  # raised alike on every rank (a different model or dataset)
            raise CLIError(str(e)) from None


def _train(args, dist) -> int:
    """gpucnn train; dist: gpucnn.distributed under --distributed (every rank trains, rank 0 reports and saves)."""
    from contextlib import nullcontext

    import gpucnn
    from . import models
    from ._blas import blas_threads
    lead = dist is None or dist.rank() == 0
    say = print if lead else (lambda *a, **k: None)
    start = time.perf_counter()
    backend = gpucnn.use_backend(args.backend).name
    x_train, x_test, y_train, y_test = _load_dataset(args.dataset, args.seed)
    name = args.model or DEFAULT_MODEL[args.dataset[0]]
    model = models.get(name, seed=args.seed)
    _require(tuple(x_train.shape[1:]) == model.input_shape,
             f"model {name} takes inputs {model.input_shape} but dataset {args.dataset[0]} "
             f"has {tuple(x_train.shape[1:])}")
    momentum = 0.9 if args.momentum is None else args.momentum
    opt = gpucnn.Adam(lr=args.lr) if args.optimizer == "adam" else gpucnn.SGD(lr=args.lr, momentum=momentum)
    model.compile(opt)
    threads = args.threads
    if dist is not None and not threads:  # ranks sharing a machine share its cores: no oversubscription
        threads = max(1, len(os.sched_getaffinity(0)) // dist.local_size()) if hasattr(os, "sched_getaffinity") \
            else max(1, (os.cpu_count() or 1) // dist.local_size())
    if threads:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=threads)
    else:
        limits = nullcontext()
    with limits:
        threads = blas_threads()
        blas = f", {threads} BLAS thread{'s' if threads != 1 else ''}" if threads else ""
        ranks = ""
        if dist is not None:
            comm = dist.communicator()
            ranks = (f", {dist.size()} ranks over {comm.kind.upper()} (global batch {args.batch_size}, "
                     f"{args.batch_size // dist.size()} per rank)")
        say(f"training {name} on {args.dataset[0]} ({len(x_train)} train / {len(x_test)} test) with {opt} "
            f"on the {backend} backend{blas}{ranks}", flush=True)
        model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                  verbose=args.verbose if lead else 0, distributed=dist is not None, sync_batchnorm=args.sync_bn)
        if args.save and lead:  # only rank 0 writes
            from pathlib import Path
            Path(args.save).absolute().parent.mkdir(parents=True, exist_ok=True)
            model.save(args.save)
            say(f"saved to {args.save}")
        if dist is None:
            loss, acc = model.evaluate(x_test, y_test)
        else:  # each rank its share, the sums reduced
            from .train import evaluate
            loss, acc = evaluate(model, x_test, y_test, distributed=True)
    say(f"{time.perf_counter() - start:.1f} s in all")
    say(f"test accuracy: {acc:.4f} ({round(acc * len(x_test))}/{len(x_test)} held out), test loss: {loss:.4f}")
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
    from ._driver import describe as driver
    print(f"blas   {describe()} (numpy {np.__version__}; gpucnn train --threads N sets the threads)")
    print(f"cuda   {driver()}")
    from .distributed import mpi_describe, nccl_describe
    print(f"mpi    {mpi_describe()} (gpucnn train --distributed under mpiexec; pip install -e '.[mpi]')")
    print(f"nccl   {nccl_describe()} (gradients of GPU arrays under --distributed)")
    return 0


def _viz_image(spec: str, model):
    """--image digits:INDEX (the bundled digits) or an image FILE, as one (C, H, W) input for the model."""
    if spec.startswith("digits:"):
        from . import data
        x, y = data.load_digits()
        index = spec.split(":", 1)[1]
        _require(index.isdigit() and int(index) < len(x),
                 f"--image digits:INDEX needs an INDEX in 0..{len(x) - 1}, got {spec!r}")
        img, label = x[int(index)], int(y[int(index)])
        _require(img.shape == model.input_shape,
                 f"the digits are {img.shape} images but the model takes {model.input_shape}")
        return img.astype(model.dtype), f"digits[{index}], label {label}"
    from pathlib import Path
    _require(Path(spec).is_file(), f"--image {spec!r}: no such file (or use digits:INDEX)")
    from skimage import color, io, transform, util
    try:
        img = util.img_as_float(io.imread(spec))
    except Exception as e:
        raise CLIError(f"cannot read image {spec!r}: {e}") from None
    c, h, w = model.input_shape
    if img.ndim == 3 and img.shape[2] == 4:
        img = color.rgba2rgb(img)
    if c == 1 and img.ndim == 3:
        img = color.rgb2gray(img)
    if c == 3 and img.ndim == 2:
        img = color.gray2rgb(img)
    _require(c in (1, 3), f"the model takes {c}-channel inputs; image files give 1 or 3 channels")
    img = transform.resize(img, (h, w), anti_aliasing=True)
    img = img[None] if c == 1 else img.transpose(2, 0, 1)
    return np.ascontiguousarray(img, dtype=model.dtype), Path(spec).name


def _viz_embedding_data(args, model):
    """Labelled inputs for the embedding: the held-out digits, or --dataset mnist|cifar10 DIR (test set).

    None when there are none (a model that does not take digits, and no --dataset): the embedding is skipped.
    """
    from . import data
    if args.dataset:
        name, rest = args.dataset[0], args.dataset[1:]
        _require(name in ("mnist", "cifar10") and len(rest) == 1, "--dataset takes 'mnist DIR' or 'cifar10 DIR'")
        x, y = (data.load_mnist if name == "mnist" else data.load_cifar10)(rest[0], "test")
    elif model.input_shape == (1, 8, 8):
        x, y = data.load_digits()
        x, y = data.train_test_split(x, y, test_size=0.2, seed=0)[1::2]
    else:
        return None
    _require(tuple(x.shape[1:]) == model.input_shape,
             f"the dataset's images are {tuple(x.shape[1:])}, the model takes {model.input_shape}")
    return x[:args.samples].astype(model.dtype), y[:args.samples]


def _check_viz_args(args) -> None:
    for flag in ("stride", "patch", "steps", "samples"):
        value = getattr(args, flag)
        _require(value is None or value >= 1, f"--{flag} must be at least 1, got {value}")
    _require(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a finite number > 0, got {args.lr}")
    _require(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")


def cmd_viz(args) -> int:
    _check_viz_args(args)
    try:
        import matplotlib
    except ImportError:
        raise CLIError("viz draws with matplotlib: pip install 'gpucnn[notebooks]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pathlib import Path

    import gpucnn
    from . import viz
    from .layers import Conv2D
    try:
        model = gpucnn.load_model(args.model)
    except (OSError, ValueError, KeyError, TypeError) as e:  # a file that is not a model, or a broken one
        message = f"{type(e).__name__} {e}" if isinstance(e, KeyError) else _one_line(e)
        if message.startswith(str(args.model)):
            raise CLIError(f"--model {message}") from None
        raise CLIError(message if str(args.model) in message else f"--model {args.model}: {message}") from None
    x, what = _viz_image(args.image, model)
    embedding = _viz_embedding_data(args, model)
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
    }
    if embedding is not None:
        X, labels = embedding
        figures[f"embedding_{args.method}"] = lambda: viz.plot_embedding(
            viz.embed(model, X, method=args.method, seed=args.seed), labels,
            title=f"{viz.last_hidden_layer(model)} of {len(X)} held-out images, {args.method.upper()}")
    for kind, draw in figures.items():
        fig = draw()
        path = out / f"{kind}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        print(path)
    if embedding is None:
        print(f"gpucnn: embedding_{args.method}.png skipped: it needs labelled images of shape {model.input_shape}; "
              "add --dataset mnist DIR or --dataset cifar10 DIR", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    for flag, values in (("repeats", [args.repeats]), ("step-batch", [args.step_batch]), ("batch", args.batch)):
        _require(all(v >= 1 for v in values), f"--{flag} must be at least 1, got {' '.join(map(str, values))}")
    from . import bench
    from .config import tf32
    ops = args.op or list(bench.OPS)
    timed, skipped = bench.plan_backends(args.backend)
    if not timed:  # refuse before any work (the cases, the model column): nothing here can be timed
        for s in skipped:
            print(f"skipped {s['backend']}: {s['reason']}")
        _require(False, "no backend could be timed here (see 'skipped' above)")
    with tf32(args.tf32):
        doc = bench.run(backends=args.backend, ops=ops, models=[] if args.step_only else args.model,
                        batches=args.batch, sweep=args.sweep and not args.step_only, reference=not args.no_reference,
                        min_repeats=args.repeats, step=not args.no_step, step_models=args.model,
                        step_batch=args.step_batch,
                        progress=not args.no_progress, command="gpucnn " + " ".join(sys.argv[1:]))
    print(bench.format_table(doc))
    _require(doc["settings"]["backends_timed"], "no backend could be timed here (see 'skipped' above)")
    if args.out:
        for path in bench.write_results(doc, args.out):
            print(path)
    return 0


def cmd_kernels(args) -> int:
    """The static kernel model (gpucnn.perf): one row per launch of a training step; every figure a model."""
    from . import perf
    from .perf import sass
    why = sass.missing()
    _require(why is None, why or "")
    _require(args.batch >= 1, f"--batch must be at least 1, got {args.batch}")
    rows, gpu = perf.run(args.model, args.batch, args.gpu, tf32=args.tf32, backend=args.backend, graph=args.graph)
    if args.compare:
        from .perf import compare
        measured = compare.read_ncu(args.compare)
        print(compare.format_compare(compare.match(rows, measured), gpu))
        return 0
    print(perf.format_report(rows, gpu, args.model, args.batch, args.tf32, args.backend, args.graph))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .backend import names as backend_names
    from .models import ZOO
    p = argparse.ArgumentParser(prog="gpucnn", description="CNNs on hand-written CUDA kernels, NumPy as reference.",
                                epilog="A mistake ends the command with one line, 'gpucnn: error: ...', and exit "
                                       "status 1; --debug (or GPUCNN_DEBUG=1) shows the traceback instead.")
    debug_help = "on an error, show the traceback instead of one line (also GPUCNN_DEBUG=1)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command too (gpucnn train --debug)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, **kwargs):
        return sub.add_parser(name, parents=[common], **kwargs)

    t = add("train", help="train a zoo model and print the held-out test accuracy last")
    t.add_argument("--model", choices=sorted(ZOO), help="default: the dataset's own net (digits: digits_cnn)")
    t.add_argument("--dataset", nargs="+", default=["digits"], metavar="NAME [DIR]",
                   help="digits (bundled, default) | mnist DIR | cifar10 DIR")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    t.add_argument("--momentum", type=float, help="SGD momentum (default 0.9; sgd only)")
    t.add_argument("--backend", default="auto", choices=backend_names() + ["auto"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save", metavar="PATH", help="write the trained model (.npz); checked before training, "
                                                  "missing folders are made")
    t.add_argument("--threads", type=int, metavar="N", help="BLAS/OpenMP threads for the run (threadpoolctl; "
                                                           "default: the library's own, see gpucnn info; under "
                                                           "--distributed the cores over the ranks on the machine)")
    t.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                   help="0 silent, 1 progress bar (a line an epoch when stderr is not a terminal), 2 a line an "
                        "epoch on stdout")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI job: mpiexec -n N gpucnn train --distributed "
                        "(--batch-size is then the global batch, a multiple of N; see README, Distributed training)")
    t.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch norm normalizes with the global batch's statistics (PyTorch's "
                        "SyncBatchNorm; two small blocking allreduces per batch-norm layer and step) instead of "
                        "each rank's own")
    t.set_defaults(func=cmd_train)

    s = add("summary", help="print a zoo model's Keras-style summary")
    s.add_argument("model", choices=sorted(ZOO))
    s.set_defaults(func=cmd_summary)

    i = add("info", help="which backends work here, and why not")
    i.set_defaults(func=cmd_info)

    v = add("viz", help="what a saved model sees: one PNG per kind (filters, feature maps, saliency, "
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
                   help="embedding data for non-digits models: mnist DIR | cifar10 DIR (test set); without it "
                        "their embedding is skipped")
    v.add_argument("--backend", default="auto", choices=backend_names() + ["auto"])
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=cmd_viz)

    b = add("bench", help="time every op x backend x shape (and whole training steps) beside PyTorch; "
                          "a table here, JSON + markdown + roofline PNG in --out")
    b.add_argument("--backend", nargs="+", choices=backend_names(),
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

    k = add("kernels", help="a static model of every kernel launch of a training step (no GPU needed: nvcc + "
                            "cuobjdump): resources, occupancy, main-loop mix, predicted time; all model output")
    k.add_argument("--model", choices=sorted(ZOO), default="cifar10_vgg", help="zoo model (default cifar10_vgg)")
    k.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    k.add_argument("--gpu", choices=["h200", "h100", "a100"], default="h200", help="GPU modelled (default h200)")
    k.add_argument("--backend", choices=["cupy", "numba"], default="cupy",
                   help="backend whose kernels are modelled: cupy (kernels/*.cu through nvcc) or numba (its "
                        "@cuda.jit kernels through numba-cuda's NVVM and ptxas; FP32 only)")
    k.add_argument("--tf32", action="store_true", help="GEMMs on TF32 tensor cores (gpucnn.config.allow_tf32)")
    k.add_argument("--graph", action="store_true", help="the step's launches as the kernel nodes of a replayed CUDA "
                                                        "graph (as fit runs it) instead of eager launches")
    k.add_argument("--compare", metavar="NCU_CSV", help="put each launch's model beside Nsight Compute's measurement "
                                                        "of the same step (ncu --csv --page raw; gpu_proof.sh profile)")
    k.set_defaults(func=cmd_kernels)
    return p


def _one_line(error: BaseException) -> str:
    """The error's message on one line, without a leading 'gpucnn: ' (main adds 'gpucnn: error: ')."""
    text = str(error.code) if isinstance(error, SystemExit) else str(error)
    if isinstance(error, OSError) and error.strerror and error.filename:  # not "[Errno 2] ...: 'path'"
        text = f"{error.filename}: {error.strerror}"
    text = " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(error).__name__
    for prefix in ("gpucnn: error: ", "gpucnn: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the gpucnn command; returns its exit status.

    A mistake the user can fix (CLIError, ValueError, TypeError, OSError, BackendError, a SystemExit with a
    message) raises SystemExit('gpucnn: error: <one line>'): Python prints that line to stderr and exits
    with status 1. With --debug or GPUCNN_DEBUG=1 the original exception propagates, traceback and all.
    Output cut short by a closed pipe (gpucnn info | head -1) ends quietly.
    """
    from .backend import BackendError
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("GPUCNN_DEBUG", "") not in ("", "0")
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
        return status
    except BrokenPipeError:
        # as the Python docs advise (signal module, note on SIGPIPE): point stdout at devnull so the flush at
        # exit does not fail again, and end with status 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except SystemExit as e:
        if debug or e.code is None or isinstance(e.code, int):
            raise
        raise SystemExit(f"gpucnn: error: {_one_line(e)}") from None
    except (CLIError, ValueError, TypeError, OSError, BackendError) as e:
        if debug:
            raise
        raise SystemExit(f"gpucnn: error: {_one_line(e)}") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
