"""Command line: `python -m fastbp [train] ...` trains a model; `python -m fastbp bench ...` benchmarks.

With no data given, train uses a generated 64-feature, 10-class problem (datasets.make_classification).
"""
import argparse
import math
import os
import sys
import time

import numpy as np

from . import datasets
from .options import ACTIVATIONS, LOSSES, OPTIMIZERS


def _train_parser(sub):
    p = sub.add_parser("train", help="train an MLP and report accuracy, loss and samples/s (the default)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="FILE", help="FILE.npz with arrays X, y (or x_train, y_train, x_test, "
                     "y_test), or FILE.npy with X alone (memory-mapped: any size) and --labels")
    src.add_argument("--idx", nargs=2, metavar=("IMAGES", "LABELS"), help="MNIST-style IDX files, raw or .gz")
    src.add_argument("--mnist-dir", metavar="DIR", help="directory holding MNIST's four IDX files")
    p.add_argument("--labels", metavar="FILE.npy", help="y for --data FILE.npy (memory-mapped too)")
    p.add_argument("--hidden", type=int, nargs="*", default=[256], help="hidden widths")
    p.add_argument("--activation", default=["relu"], nargs="+", choices=sorted(ACTIVATIONS), metavar="NAME",
                   help="hidden layers' activation: one for all, or one per --hidden width "
                        f"({', '.join(sorted(ACTIVATIONS))})")
    p.add_argument("--loss", default="cross_entropy", choices=sorted(LOSSES), help="training loss")
    p.add_argument("--huber-delta", type=float, default=1.0, help="the huber loss's delta")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross_entropy's label smoothing")
    p.add_argument("--class-weight", choices=["balanced"], default=None,
                   help="weigh each class inversely to its count in the training rows")
    p.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS), help="update rule")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--batch-size", type=int, default=128, help="rows per training step")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training rows")
    p.add_argument("--seed", type=int, default=0, help="initial weights, shuffling, dropout and the test split")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="share held out for testing when the data has no test split")
    p.add_argument("--validation-split", type=float, default=0.1,
                   help="share of the training rows held out for the per-epoch val_ metrics (0: none)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout rate on hidden layers")
    p.add_argument("--input-dropout", type=float, default=0.0, help="dropout rate on the input features")
    p.add_argument("--max-norm", type=float, default=None, metavar="C",
                   help="after every update, hold each unit's incoming weight vector to norm <= C")
    p.add_argument("--save", metavar="PATH", help="write a checkpoint of the trained model")
    p.add_argument("--plot", metavar="PNG", help="save loss and accuracy curves (needs matplotlib)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the kernels; None: as many as the process may use")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


class _BadArgument(ValueError):
    """A command-line argument that cannot work: one line on stderr, exit status 2, nothing trained."""


def _input_file(value, option):
    if not os.path.exists(value):
        raise _BadArgument(f"{option}: {value} does not exist")
    if os.path.isdir(value):
        raise _BadArgument(f"{option}: {value} is a directory, not a file")


def _output_file(value, option):
    """A file train will write at the end: its directory must exist and be writable, and it must not be a
    directory itself, so the run does not end in an error after all its work."""
    if os.path.isdir(value):
        raise _BadArgument(f"{option}: {value} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(folder):
        raise _BadArgument(f"{option}: the directory {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(value) and not os.access(value, os.W_OK)):
        raise _BadArgument(f"{option}: {value} cannot be written (permission denied)")


def _check_arguments(args):
    """Every argument that would fail later, refused before any data is read or kernel compiled."""
    if args.epochs < 1:
        raise _BadArgument(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise _BadArgument(f"--batch-size must be at least 1, got {args.batch_size}")
    if any(width < 1 for width in args.hidden):
        raise _BadArgument(f"--hidden widths must be at least 1, got {args.hidden}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise _BadArgument(f"--lr must be a positive number, got {args.lr}")
    if len(args.activation) not in (1, len(args.hidden)):
        raise _BadArgument(f"--activation takes one name or one per hidden layer ({len(args.hidden)}), got "
                           f"{len(args.activation)}")
    if not 0.0 <= args.dropout < 1.0:
        raise _BadArgument(f"--dropout must lie in [0, 1), got {args.dropout}")
    if not 0.0 <= args.input_dropout < 1.0:
        raise _BadArgument(f"--input-dropout must lie in [0, 1), got {args.input_dropout}")
    if args.max_norm is not None and not (math.isfinite(args.max_norm) and args.max_norm > 0):
        raise _BadArgument(f"--max-norm must be a positive number, got {args.max_norm}")
    if not (math.isfinite(args.huber_delta) and args.huber_delta > 0):
        raise _BadArgument(f"--huber-delta must be a positive number, got {args.huber_delta}")
    if args.huber_delta != 1.0 and args.loss != "huber":
        raise _BadArgument("--huber-delta goes with --loss huber")
    if not 0.0 <= args.label_smoothing <= 1.0:
        raise _BadArgument(f"--label-smoothing must lie in [0, 1], got {args.label_smoothing}")
    if args.label_smoothing and args.loss != "cross_entropy":
        raise _BadArgument("--label-smoothing goes with --loss cross_entropy")
    if args.class_weight and args.loss != "cross_entropy":
        raise _BadArgument("--class-weight goes with --loss cross_entropy")
    if not 0.0 < args.test_fraction < 1.0:
        raise _BadArgument(f"--test-fraction must lie strictly between 0 and 1, got {args.test_fraction}")
    if not 0.0 <= args.validation_split < 1.0:
        raise _BadArgument(f"--validation-split must lie in [0, 1), got {args.validation_split}")
    if args.threads is not None and args.threads < 1:
        raise _BadArgument(f"--threads must be at least 1, got {args.threads}")
    if args.labels and not (args.data and args.data.endswith(".npy")):
        raise _BadArgument("--labels goes with --data FILE.npy")
    if args.data and args.data.endswith(".npy") and not args.labels:
        raise _BadArgument("--data FILE.npy holds X only: give y with --labels FILE.npy")
    for value, option in ((args.data, "--data"), (args.labels, "--labels")):
        if value:
            _input_file(value, option)
    for value in args.idx or ():
        _input_file(value, "--idx")
    if args.mnist_dir and not os.path.isdir(args.mnist_dir):
        raise _BadArgument(f"--mnist-dir: {args.mnist_dir} is not a directory")
    for value, option in ((args.save, "--save"), (args.plot, "--plot")):
        if value:
            _output_file(value, option)


def _mapped_array(path, option, what):
    """A .npy file memory-mapped, checked to hold numbers (not a structured or object array)."""
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError as exc:  # object arrays cannot be mapped (and would need unpickling)
        raise _BadArgument(f"{option}: {path} cannot be read as an array of numbers ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise _BadArgument(f"{option}: {path} is not a .npy array")
    if array.dtype.kind not in "biuf":
        raise _BadArgument(f"{option}: {path} holds dtype {array.dtype}; {what} must be numbers")
    return array


def _load_data(args):
    """(X_train, y_train, X_test, y_test, description)."""
    if args.data and args.data.endswith(".npy"):
        X = _mapped_array(args.data, "--data", "X")
        y = _mapped_array(args.labels, "--labels", "labels")
        if X.ndim != 2:
            raise _BadArgument(f"--data: {args.data} has shape {X.shape}; X must be 2-D (rows, features)")
        if y.ndim not in (1, 2):
            raise _BadArgument(f"--labels: {args.labels} has shape {y.shape}; y must be 1-D or 2-D")
        if len(X) < 2:
            raise _BadArgument(f"--data: {args.data} has {len(X)} rows; training and testing need at least 2")
        if len(X) != len(y):
            raise _BadArgument(f"{args.data} has {len(X)} rows but {args.labels} has {len(y)}")
        # Memory-mapped: the test rows are the file's last ones (a random pick would copy them).
        n_test = _test_rows(args, len(X))
        return (X[:-n_test], y[:-n_test], X[-n_test:], y[-n_test:],
                f"{args.data} (memory-mapped; test rows: the last {n_test})")
    if args.data:
        Xtr, ytr, Xte, yte = datasets.load_npz(args.data)
        name = args.data
    elif args.idx:
        Xtr, ytr = datasets.load_idx(*args.idx)
        Xte = yte = None
        name = args.idx[0]
    elif args.mnist_dir:
        Xtr, ytr, Xte, yte = datasets.load_mnist_dir(args.mnist_dir)
        name = args.mnist_dir
    else:
        X, y = datasets.make_classification(seed=args.seed)
        Xtr, ytr, Xte, yte = X, y, None, None
        name = "generated 64-feature, 10-class problem"
    if len(Xtr) < (2 if Xte is None else 1) or (Xte is not None and len(Xte) < 1):
        raise _BadArgument(f"{name} holds too few rows to train and test on ({len(Xtr)} training rows)")
    if Xte is None:
        order = np.random.default_rng(args.seed).permutation(len(Xtr))
        n_test = _test_rows(args, len(Xtr))
        Xtr, ytr = np.asarray(Xtr), np.asarray(ytr)
        Xte, yte = Xtr[order[:n_test]], ytr[order[:n_test]]
        Xtr, ytr = Xtr[order[n_test:]], ytr[order[n_test:]]
    return Xtr, ytr, Xte, yte, name


def _test_rows(args, n):
    """Rows held out for testing: at least one, and at least one left to train on (n >= 2)."""
    return min(n - 1, max(1, int(round(args.test_fraction * n))))


def _output_width(loss, y):
    y = np.asarray(y)
    if loss == "cross_entropy":
        if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("cross_entropy needs integer class labels in y")
        return int(y.max()) + 1
    return 1 if y.ndim == 1 else y.shape[1]


def train(args):
    from .distributed import launched_world
    from .threads import kernel_threads
    from .trainer import Trainer
    comm = launched_world()  # under mpiexec / srun: data-parallel over the launched ranks
    say = print if comm is None or comm.Get_rank() == 0 else (lambda *a, **k: None)
    if args.plot:  # before training, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError("--plot needs matplotlib: pip install 'fastbp[plot]'") from None
    _check_arguments(args)
    Xtr, ytr, Xte, yte, name = _load_data(args)
    if not isinstance(Xtr, np.memmap):  # images to rows; memory-mapped data stays mapped
        Xtr = np.asarray(Xtr).reshape(len(Xtr), -1)
        Xte = np.asarray(Xte).reshape(len(Xte), -1)
    sizes = [Xtr.shape[1], *args.hidden, _output_width(args.loss, ytr)]
    activation = args.activation[0] if len(args.activation) == 1 else args.activation
    trainer = Trainer(sizes, activation=activation, loss=args.loss, optimizer=args.optimizer, lr=args.lr,
                      batch_size=args.batch_size, seed=args.seed, dropout=args.dropout,
                      input_dropout=args.input_dropout, max_norm=args.max_norm, huber_delta=args.huber_delta,
                      label_smoothing=args.label_smoothing, threads=args.threads,
                      comm=comm)
    say(f"data: {name}: {len(Xtr)} train rows, {len(Xte)} test rows, {Xtr.shape[1]} features")
    count = kernel_threads(trainer.threads)
    threads = f"{count} thread{'s' if count != 1 else ''}"
    ranks = "" if comm is None else f" on {comm.Get_size()} MPI ranks x {threads}"
    say(f"model: {trainer}{ranks}")
    start = time.perf_counter()
    # Per-epoch "val_" metrics come from a validation split of the training rows; the test set is only
    # evaluated once, at the end, and labelled as such.
    try:
        history = trainer.fit(Xtr, ytr, epochs=args.epochs, validation_split=args.validation_split,
                              verbose=0 if args.quiet else 1, class_weight=args.class_weight)
    except KeyboardInterrupt:
        # fit stops between whole steps (guard.py): the state is that of step_count steps, worth keeping.
        where = f"interrupted after epoch {trainer.epochs_done}, step {trainer.step_count}"
        if args.save:
            trainer.save(args.save)  # rank 0 writes
            where += f": saved {args.save}"
        say(f"fastbp: {where}", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - start
    result = trainer.evaluate(Xte, yte)
    summary = f"test loss {result['loss']:.4f}"
    if "accuracy" in result:
        summary = f"test accuracy {result['accuracy']:.4f}  " + summary
    samples = len(Xtr) * args.epochs
    say(f"{summary}  train time {seconds:.2f} s  {samples / seconds:,.0f} samples/s "
          f"(includes first-call compilation and per-epoch evaluation)")
    if args.save:
        trainer.save(args.save)  # rank 0 writes
        say(f"saved {args.save}")
    if args.plot and (comm is None or comm.Get_rank() == 0):
        history.plot(args.plot)
        say(f"plotted {args.plot}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="fastbp", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    _train_parser(sub)
    from .bench import add_parser as add_bench_parser
    add_bench_parser(sub)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["train", *argv]
    args = parser.parse_args(argv)
    try:
        return args.run(args) if hasattr(args, "run") else train(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:  # OSError: unreadable or missing files
        print(f"fastbp: error: {exc}", file=sys.stderr)
        return 2
