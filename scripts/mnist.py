"""Train a 784-800-10 MLP on MNIST, compared side by side with scikit-learn's and PyTorch's.

    python scripts/mnist.py --mnist-dir DIR   # DIR holds MNIST's four IDX files (raw or .gz)
    python scripts/mnist.py                   # scikit-learn's bundled 8x8 digits instead (64-800-10)

Same architecture, optimizer (Adam, lr 1e-3), batch size and epochs for every implementation; prints
test accuracy, training time and samples/s for each. Nothing is downloaded.
"""
import argparse
import time
import warnings

import numpy as np

import fastbp
from fastbp import datasets


def load(args):
    if args.mnist_dir:
        Xtr, ytr, Xte, yte = datasets.load_mnist_dir(args.mnist_dir)
        if Xte is None:  # the training files only: the last 10,000 of their rows are the test set
            return (Xtr[:-10000], ytr[:-10000], Xtr[-10000:], ytr[-10000:],
                    "MNIST (training files; test: their last 10,000 rows)")
        return Xtr, ytr, Xte, yte, "MNIST"
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("Without --mnist-dir this script trains on scikit-learn's bundled digits, and scikit-learn "
                         "is not installed: pip install 'fastbp[sklearn]', or pass --mnist-dir DIR with MNIST's "
                         "IDX files") from None
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    cut = int(0.8 * len(X))
    return X[:cut], y[:cut], X[cut:], y[cut:], "scikit-learn digits (8x8)"


def run_fastbp(Xtr, ytr, Xte, yte, args):
    t = fastbp.Trainer([Xtr.shape[1], 800, 10], loss="cross_entropy", lr=1e-3, batch_size=args.batch_size, seed=0)
    t.step(Xtr[:args.batch_size], ytr[:args.batch_size])  # compile (or load) the kernels outside the timing
    t = fastbp.Trainer([Xtr.shape[1], 800, 10], loss="cross_entropy", lr=1e-3, batch_size=args.batch_size, seed=0)
    start = time.perf_counter()
    t.fit(Xtr, ytr, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    return t.evaluate(Xte, yte)["accuracy"], seconds


def run_sklearn(Xtr, ytr, Xte, yte, args):
    from sklearn.neural_network import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(800,), batch_size=args.batch_size, learning_rate_init=1e-3,
                        max_iter=args.epochs, alpha=0.0, n_iter_no_change=args.epochs + 1, random_state=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter, expected here
        clf.fit(Xtr, ytr)
    seconds = time.perf_counter() - start
    return clf.score(Xte, yte), seconds


def run_torch(Xtr, ytr, Xte, yte, args):
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(Xtr.shape[1], 800), torch.nn.ReLU(), torch.nn.Linear(800, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    X, y = torch.from_numpy(Xtr), torch.from_numpy(ytr.astype(np.int64))
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), args.batch_size):
            idx = order[i:i + args.batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(Xte)).argmax(1).numpy() == yte).mean()
    return float(accuracy), seconds


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--mnist-dir", help="directory with MNIST's IDX files")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    Xtr, ytr, Xte, yte, name = load(args)
    Xtr, Xte = np.ascontiguousarray(Xtr, np.float32), np.ascontiguousarray(Xte, np.float32)
    print(f"{name}: {len(Xtr)} training and {len(Xte)} test images, {Xtr.shape[1]} features; "
          f"{Xtr.shape[1]}-800-10, Adam lr 1e-3, batch {args.batch_size}, {args.epochs} epochs")
    runners = {"fastbp": run_fastbp, "scikit-learn": run_sklearn, "pytorch": run_torch}
    print(f"{'implementation':<14} {'test accuracy':>13} {'train s':>9} {'samples/s':>11}")
    for label, runner in runners.items():
        try:
            accuracy, seconds = runner(Xtr, ytr, Xte, yte, args)
        except ImportError as exc:
            print(f"{label:<14} skipped ({exc.name} is not installed)")
            continue
        print(f"{label:<14} {accuracy:13.4f} {seconds:9.2f} {len(Xtr) * args.epochs / seconds:11,.0f}")


if __name__ == "__main__":
    main()
