"""Worst relative errors of fastbp (float32) against the float64 reference and against PyTorch.

For every activation x loss x optimizer: gradients on fresh random batches at odd sizes, then ten
training steps; prints the worst norm-wise relative error seen for each comparison.
"""
import itertools

import numpy as np

import fastbp
from fastbp import peers, reference
from fastbp.options import ACTIVATIONS, LOSSES


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def targets(rng, loss, n, width):
    if loss == "cross_entropy":
        return rng.integers(0, width, n)
    return rng.random((n, width)) if loss == "bce" else rng.standard_normal((n, width))


def main():
    rng = np.random.default_rng(2026)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    worst = {"gradients vs float64 reference": 0.0, "params after 10 steps vs float64 reference": 0.0,
             "params after 10 steps vs PyTorch": 0.0, "losses over 10 steps vs PyTorch": 0.0,
             "PyTorch's own params after 10 steps vs float64 reference": 0.0}
    optimizers = [dict(optimizer="adam", lr=1e-2), dict(optimizer="adamw", lr=1e-2, weight_decay=0.1),
                  dict(optimizer="sgd", lr=0.01, momentum=0.9)]
    for activation, loss, opt in itertools.product(ACTIVATIONS, LOSSES, optimizers):
        out = 3 if loss == "cross_entropy" else 1
        sizes = [33, 257, 3, out]
        t = fastbp.Trainer(sizes, activation=activation, loss=loss, seed=0, **opt)
        start = [(W.astype(np.float64), b.astype(np.float64)) for W, b in t.params]
        for n in (1, 7, 130):
            X = rng.standard_normal((n, sizes[0]))
            y = targets(rng, loss, n, out)
            _, grads = t.gradients(X, y)
            _, ref_grads = reference.loss_and_gradients(start, X, y, activation, loss)
            for g, r in zip(grads, ref_grads):
                worst["gradients vs float64 reference"] = max(worst["gradients vs float64 reference"],
                                                              rel(g[0], r[0]), rel(g[1], r[1]))
        ref = peers.numpy_peer(t.config, start, dtype=np.float64)
        torch_step, model = peers.torch_peer(t.config, t.params) if have_torch else (None, None)
        for step in range(10):
            n = (7, 130, 1)[step % 3]
            X = rng.standard_normal((n, sizes[0])).astype(np.float32)
            y = targets(rng, loss, n, out)
            y = y.astype(np.int64) if loss == "cross_entropy" else y.astype(np.float32)
            ours = t.step(X, y)
            ref.step(X, y)
            if have_torch:
                theirs = torch_step(X, y)
                worst["losses over 10 steps vs PyTorch"] = max(worst["losses over 10 steps vs PyTorch"],
                                                               abs(ours - theirs) / max(abs(theirs), 1e-30))
        for (W, b), (rW, rb) in zip(t.params, ref.params):
            key = "params after 10 steps vs float64 reference"
            worst[key] = max(worst[key], rel(W, rW), rel(b, rb))
        if have_torch:
            for (W, b), (tW, tb), (rW, rb) in zip(t.params, peers.torch_params(model), ref.params):
                key = "params after 10 steps vs PyTorch"
                worst[key] = max(worst[key], rel(W, tW), rel(b, tb))
                key = "PyTorch's own params after 10 steps vs float64 reference"
                worst[key] = max(worst[key], rel(tW, rW), rel(tb, rb))
    print(f"{len(ACTIVATIONS) * len(LOSSES) * len(optimizers)} configurations "
          f"(activation x loss x optimizer), sizes {sizes[:-1] + ['out']}, batches 1, 7, 130")
    for key, value in worst.items():
        if "PyTorch" in key and not have_torch:
            print(f"{key}: skipped (PyTorch not installed)")
        else:
            print(f"worst relative error, {key}: {value:.2e}")


if __name__ == "__main__":
    main()
