"""The per-thread pipeline for narrow networks (cpu/pipeline.py) against the float64 reference and against
the layer-at-a-time kernels: every activation x loss, batches with ragged last tiles, 1 and 2 threads,
dropout, and whole optimizer steps."""
import numba
import numpy as np
import pytest

import fastbp
from fastbp import reference
from fastbp.cpu import pipeline
from conftest import ALL_ACTIVATIONS, ALL_LOSSES, LOSSES, loss_options, make_targets, per_layer, rel_error

TOL = 1e-4


def as64(params):
    return [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]


def trainer(rng, sizes, activation, loss, **kw):
    t = fastbp.Trainer(sizes, activation=activation, loss=loss, seed=int(rng.integers(2 ** 31)), **kw)
    t.set_params([(W, rng.standard_normal(b.shape) * 0.3) for W, b in t.params])
    return t


def long_batch(threads):
    """Two full tiles per thread and a ragged one: the smallest batch that takes the pipeline, plus 37."""
    return 2 * pipeline.TILE_ROWS * threads + 37


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    if request.param > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs 2 Numba threads")
    before = numba.get_num_threads()
    numba.set_num_threads(request.param)
    yield request.param
    numba.set_num_threads(before)


def test_pipeline_is_chosen_for_narrow_layers_and_long_batches():
    assert pipeline.fits([32, 64, 64, 64, 64, 16], 16384, 2)
    assert not pipeline.fits([32, 64, 16], 2 * pipeline.TILE_ROWS * 2 - 1, 2)  # too short: layer at a time
    assert not pipeline.fits([784, 800, 10], 8192, 2)  # too wide


@pytest.mark.parametrize("loss", ALL_LOSSES)
@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_pipeline_gradients_match_reference(rng, activation, loss, threads):
    loss, options = loss_options(loss)
    out = 3 if loss == "cross_entropy" else 2
    sizes = [33, 65, 1, 3, out]  # widths 1, 3, 33, 65: no tile or vector width divides them
    activation = per_layer(activation, sizes)
    n = long_batch(threads)
    assert pipeline.fits(sizes, n, threads)
    t = trainer(rng, sizes, activation, loss, **options)
    X, y = rng.standard_normal((n, sizes[0])), make_targets(rng, loss, n, out)
    ref_loss, ref_grads = reference.loss_and_gradients(as64(t.params), X, y, activation, loss, **options)
    value, grads = t.gradients(X, y)
    assert value == pytest.approx(ref_loss, rel=TOL)
    for (dW, db), (rW, rb) in zip(grads, ref_grads):
        assert rel_error(dW, rW) < TOL and rel_error(db, rb) < TOL
    # fit's accuracy comes from the step's per-row hits, computed on the parameters before the update.
    _, logits = reference.forward(as64(t.params), X, activation)
    t.step(X, y)
    if loss == "cross_entropy":
        assert t._backend.last_hits(n) == np.sum(np.argmax(logits, axis=1) == y)
    elif loss == "bce":
        expected_hits = np.mean((logits > 0) == (y >= 0.5), axis=1).sum()
        assert t._backend.last_hits(n) == pytest.approx(expected_hits, abs=1e-9)


def test_pipeline_matches_layerwise_kernels_with_dropout(rng, threads, monkeypatch):
    """Same masks (hashed from batch row indices, not tile positions), same numbers to float32 rounding."""
    sizes = [9, 64, 33, 4]
    n = long_batch(threads)
    X, y = rng.standard_normal((n, 9)), rng.integers(0, 4, n)
    fused = fastbp.Trainer(sizes, loss="cross_entropy", seed=3, dropout=0.3, activation="relu")
    value, grads = fused.gradients(X, y, training=True)
    monkeypatch.setattr(pipeline, "fits", lambda *args: False)
    layerwise = fastbp.Trainer(sizes, loss="cross_entropy", seed=3, dropout=0.3, activation="relu")
    expected_value, expected = layerwise.gradients(X, y, training=True)
    assert value == pytest.approx(expected_value, rel=1e-6)
    for (dW, db), (eW, eb) in zip(grads, expected):
        assert rel_error(dW, eW) < 1e-5 and rel_error(db, eb) < 1e-5


def test_pipeline_steps_match_reference(rng, threads):
    """Three Adam steps with weight decay: loss and parameters follow the float64 reference."""
    sizes = [5, 17, 17, 2]
    n = long_batch(threads)
    t = trainer(rng, sizes, "tanh", "mse", optimizer="adam", lr=1e-2, weight_decay=1e-3)
    ref = reference.Network(as64(t.params), activation="tanh", loss="mse", kind="adam", lr=1e-2, weight_decay=1e-3)
    for _ in range(3):
        X, y = rng.standard_normal((n, 5)), rng.standard_normal((n, 2))
        assert t.step(X, y) == pytest.approx(ref.step(X, y), rel=TOL)
    for (W, b), (rW, rb) in zip(t.params, ref.params):
        assert rel_error(W, rW) < TOL and rel_error(b, rb) < TOL


def test_pipeline_is_deterministic(rng, threads):
    sizes = [8, 32, 3]
    n = long_batch(threads)
    X, y = rng.standard_normal((n, 8)), rng.integers(0, 3, n)
    runs = [fastbp.Trainer(sizes, loss="cross_entropy", seed=0).gradients(X, y)[1] for _ in range(2)]
    for (W1, b1), (W2, b2) in zip(*runs):
        assert np.array_equal(W1, W2) and np.array_equal(b1, b2)


@pytest.mark.parametrize("loss", LOSSES)
def test_pipeline_sample_weighted_gradients_match_reference(rng, loss, threads):
    out = 3 if loss == "cross_entropy" else 2
    sizes = [33, 65, 3, out]
    n = long_batch(threads)
    assert pipeline.fits(sizes, n, threads)
    t = trainer(rng, sizes, "relu", loss)
    X, y = rng.standard_normal((n, sizes[0])), make_targets(rng, loss, n, out)
    w = rng.random(n) * 3
    w[::7] = 0.0
    ref_loss, ref_grads = reference.loss_and_gradients(as64(t.params), X, y, "relu", loss, weights=w)
    value, grads = t.gradients(X, y, sample_weight=w)
    assert value == pytest.approx(ref_loss, rel=TOL)
    for (dW, db), (rW, rb) in zip(grads, ref_grads):
        assert rel_error(dW, rW) < TOL and rel_error(db, rb) < TOL
