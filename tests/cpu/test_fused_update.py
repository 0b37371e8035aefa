"""The optimizer update fused into the pass that completes the gradient (weight_grad.first_layer_step,
add_partials_and_update) gives the numbers of the gradient followed by the separate update, on every way the
threads share layer 0's product, for every optimizer: the gradient bit for bit, the update to the rounding
of a fused multiply-add (the compiler fuses them in vectorized code, and where a span starts decides which
elements take it). Clipping keeps the separate path."""
import numba
import numpy as np
import pytest

import fastbp
from fastbp.cpu import pipeline, weight_grad
from conftest import make_targets

# (sizes, batch): which path layer 0's gradient takes with two threads.
PATHS = {
    "blocks-by-rows": ([300, 257, 3], 33),
    "blocks-by-columns": ([3, 33, 2], 1),
    "split-batch": ([5, 7, 3], 130),
    "single-layer": ([4, 3], 7),
    "pipeline": ([5, 19, 3], 1061),
}
OPTIMIZERS = {
    "adam": dict(optimizer="adam", lr=1e-2, weight_decay=1e-3),
    "adamw": dict(optimizer="adamw", lr=1e-2),
    "sgd_nesterov": dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adagrad": dict(optimizer="adagrad", lr=0.1),
    "rmsprop_momentum": dict(optimizer="rmsprop", lr=1e-3, momentum=0.9),
}


def state_arrays(t):
    s = t.state
    return [s.params, s.grads, s.moment1, s.moment2]


def separate_step(t, X, y):
    """The gradient, then the update through its own entry point (step.run_update), as the MPI path does."""
    labels = y if t.config.loss == "cross_entropy" else None
    targets = None if labels is not None else y
    rows = np.arange(X.shape[0], dtype=np.int64)
    loss = t._backend.loss_and_gradients(X, labels, targets, rows)
    t._backend.apply_update(t._optimizer_settings())
    t.state.step_count += 1
    return loss


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("path", PATHS)
def test_fused_step_equals_gradient_then_update(rng, path, opt, threads):
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    sizes, batch = PATHS[path]
    loss = "cross_entropy" if sizes[-1] > 2 else "mse"
    fused, separate = (fastbp.Trainer(sizes, loss=loss, seed=3, threads=threads, **OPTIMIZERS[opt])
                       for _ in range(2))
    if path == "pipeline":
        assert pipeline.fits(fused.state.dims, batch, threads)
    elif threads == 2 and path == "split-batch":
        assert weight_grad.split_batch(batch, sizes[0], sizes[1], threads)
    for _ in range(3):  # each step from the same state (a rounding apart grows with the steps in RMSprop)
        for mine, theirs in zip(state_arrays(separate), state_arrays(fused)):
            mine[:] = theirs
        X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        y = make_targets(rng, loss, batch, sizes[-1])
        y = y.astype(np.int64) if loss == "cross_entropy" else y.astype(np.float32)
        assert fused.step(X, y) == separate_step(separate, X, y)
        np.testing.assert_array_equal(fused.state.grads, separate.state.grads)
        for a, b in zip(state_arrays(fused), state_arrays(separate)):
            np.testing.assert_allclose(a, b, rtol=2.5e-7, atol=2.5e-7 * np.abs(b).max())  # a rounding
    assert not np.array_equal(fused.state.params, fastbp.Trainer(sizes, loss=loss, seed=3).state.params)
    assert fused.step_count == 3


def test_clipped_steps_take_the_separate_update(rng):
    """With clip_norm the update needs the whole gradient's norm first: the same numbers as the separate
    path, and the clipping is applied (a step differs from the unclipped one)."""
    sizes, batch = [20, 30, 4], 9
    X = rng.standard_normal((batch, 20)).astype(np.float32) * 10
    y = rng.integers(0, 4, batch)
    clipped, separate, unclipped = (fastbp.Trainer(sizes, loss="cross_entropy", seed=1, optimizer="sgd", lr=0.1, clip_norm=c)
                                    for c in (0.01, 0.01, None))
    clipped.step(X, y)
    separate_step(separate, X, y.astype(np.int64))
    unclipped.step(X, y)
    np.testing.assert_allclose(clipped.state.params, separate.state.params, rtol=4e-6, atol=1e-9)
    assert not np.allclose(clipped.state.params, unclipped.state.params)
