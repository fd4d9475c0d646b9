"""The gpucnn command: train, summary, info."""
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
