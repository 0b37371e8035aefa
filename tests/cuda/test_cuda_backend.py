"""The CUDA backend under Numba's CUDA simulator (or a real GPU with FASTBP_TEST_REAL_GPU=1):
every kernel against NumPy and the whole backend against the CPU backend, on sizes that cross tile edges.

The simulator runs each CUDA thread as a Python thread, so sizes stay small; its tiles are 8 x 8
(2 x 2 per thread), so 1, 9, 17 rows or columns already exercise full, partial and single-element tiles.
"""
import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no CUDA device or simulator", allow_module_level=True)

import fastbp  # noqa: E402
from fastbp.cuda import gemm  # noqa: E402
from fastbp.cuda.backend import CudaBackend  # noqa: E402
from conftest import (ACTIVATIONS, ALL_ACTIVATIONS, LOSSES, NEW_LOSSES, loss_options, make_targets,  # noqa: E402
                      per_layer, rel_error)

TILES = gemm.SIMULATOR_TILES if fastbp.cuda.backend._simulated() else gemm.PRODUCTION_TILES


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (17, 9, 3), (9, 17, 10)])
def test_gemm_every_transpose_and_tile_edge(rng, m, n, k):
    for ta in (0, 1):
        for tb in (0, 1):
            A = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
            B = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
            C = np.full((m, n + 1), np.nan, np.float32)  # a column outside the product must stay untouched
            d_C = cuda.to_device(C.ravel())
            gemm.launch(TILES, ta, tb, m, n, k, cuda.to_device(A.ravel()), A.shape[1], cuda.to_device(B.ravel()),
                        B.shape[1], d_C, n + 1)
            out = d_C.copy_to_host().reshape(m, n + 1)
            expected = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B)
            assert rel_error(out[:, :n], expected) < 1e-5
            assert np.isnan(out[:, n]).all()


def pair(sizes, fused=None, **kw):
    gpu = fastbp.Trainer(sizes, seed=0, device="cuda", **kw)
    if fused is not None:
        gpu._backend = CudaBackend(gpu.config, gpu.state, fused=fused)
    return fastbp.Trainer(sizes, seed=0, **kw), gpu


# The fused path runs every activation x loss (poisson: see below). The general path's activation code
# (the GEMM epilogue) and its loss code (loss_delta.py, whose per-row math the fused kernel shares) never
# meet, so six pairs cover every activation and every loss there at a third of the simulator's time.
GENERAL_PAIRS = [("identity", "mse"), ("relu", "cross_entropy"), ("leaky_relu", "bce"), ("tanh", "cross_entropy"),
                 ("sigmoid", "mse"), ("relu", "poisson")]
# Poisson, the newest loss, once per path: its code is the per-row loss, which no activation reaches.
# The newer losses and loss options (huber, its delta, l1, label smoothing) once on each path.
CASES = ([(a, l, True) for a in ACTIVATIONS for l in LOSSES if l != "poisson" or a == "tanh"]
         + [(a, l, False) for a, l in GENERAL_PAIRS]
         + [("tanh", l, True) for l in NEW_LOSSES] + [("relu", l, False) for l in NEW_LOSSES])


@pytest.mark.parametrize("activation, loss, fused", CASES,
                         ids=[f"{a}-{l}-{'fused' if f else 'general'}" for a, l, f in CASES])
def test_backend_matches_cpu(rng, activation, loss, fused):
    """Loss, every gradient, two Adam steps and predictions, on both GPU paths; batch 17 over widths 9
    and 1 crosses tile edges. Tolerance 1e-4 as for the CPU kernels against float64: a nearly cancelling
    sum (an output bias gradient of 1e-4) differs between two float32 summation orders by more than 1e-5
    of itself."""
    loss, options = loss_options(loss)
    out = 3 if loss == "cross_entropy" else 1
    cpu, gpu = pair([5, 9, 1, out] if loss != "cross_entropy" else [5, 9, 3], fused=fused, activation=activation,
                    loss=loss, optimizer="adam", lr=1e-2, **options)
    assert isinstance(gpu._backend, CudaBackend) and gpu._backend.fused == fused
    X, y = rng.standard_normal((17, 5)), make_targets(rng, loss, 17, out)
    (lc, gc), (lg, gg) = cpu.gradients(X, y), gpu.gradients(X, y)
    assert lg == pytest.approx(lc, rel=1e-5)
    for (dWc, dbc), (dWg, dbg) in zip(gc, gg):
        assert rel_error(dWg, dWc) < 1e-4 and rel_error(dbg, dbc) < 1e-4
    for _ in range(2):
        assert gpu.step(X, y) == pytest.approx(cpu.step(X, y), rel=1e-5)
    for (Wc, bc), (Wg, bg) in zip(cpu.params, gpu.params):
        assert rel_error(Wg, Wc) < 1e-4 and rel_error(bg, bc) < 1e-4
    assert rel_error(gpu.predict(X), cpu.predict(X)) < 1e-5
    assert gpu.evaluate(X, y)["loss"] == pytest.approx(cpu.evaluate(X, y)["loss"], rel=1e-5)


@pytest.mark.parametrize("fused, loss", [(True, "cross_entropy"), (False, "mse")], ids=["fused", "general"])
def test_sample_weights_match_cpu(rng, fused, loss):
    """Weighted loss, gradients, steps and evaluate on both GPU paths (the CPU backend is checked against the
    float64 reference in tests/cpu); a zero weight among them. The weighting is the same per-row code for
    every loss (loss_delta.weighted_row_loss_and_delta), so one loss per path."""
    out = 3 if loss == "cross_entropy" else 2
    cpu, gpu = pair([5, 9, out], fused=fused, activation="tanh", loss=loss, optimizer="sgd", lr=0.1, momentum=0.9)
    X, y = rng.standard_normal((17, 5)), make_targets(rng, loss, 17, out)
    w = rng.random(17) * 2
    w[3] = 0.0
    (lc, gc), (lg, gg) = cpu.gradients(X, y, sample_weight=w), gpu.gradients(X, y, sample_weight=w)
    assert lg == pytest.approx(lc, rel=1e-5)
    for (dWc, dbc), (dWg, dbg) in zip(gc, gg):
        assert rel_error(dWg, dWc) < 1e-4 and rel_error(dbg, dbc) < 1e-4
    for _ in range(2):
        assert gpu.step(X, y, sample_weight=w) == pytest.approx(cpu.step(X, y, sample_weight=w), rel=1e-5)
    for (Wc, bc), (Wg, bg) in zip(cpu.params, gpu.params):
        assert rel_error(Wg, Wc) < 1e-4 and rel_error(bg, bc) < 1e-4
    assert gpu.evaluate(X, y, sample_weight=w)["loss"] == pytest.approx(cpu.evaluate(X, y, sample_weight=w)["loss"],
                                                                        rel=1e-5)


@pytest.mark.parametrize("activation", ["relu", ("gelu", "silu")], ids=["relu", "gelu-silu"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
def test_a_row_of_weight_zero_counts_for_nothing_whatever_its_values(rng, fused, activation):
    """A weight-0 row whose inputs overflow a network's activations (and whose target overflows the
    squared error): gradients and steps equal to those with harmless values in that row, on both GPU
    paths (clear_weightless_rows, which also clears gelu's and silu's stored slopes, NaN at an infinite
    Z; tests/cpu has the CPU backend's)."""
    X, y = rng.standard_normal((13, 5)), rng.standard_normal((13, 2))
    w = rng.random(13) + 0.5
    w[4] = 0.0
    hostile_X, hostile_y = X.copy(), y.copy()
    hostile_X[4] = 3e38
    hostile_y[4] = 3e38
    harmless_X = X.copy()
    harmless_X[4] = 0.0
    runs = []
    for data in ((hostile_X, hostile_y), (harmless_X, y)):
        _, gpu = pair([5, 9, 7, 2], fused=fused, activation=activation, loss="mse", optimizer="adam", lr=1e-2)
        value, grads = gpu.gradients(*data, sample_weight=w)
        runs.append((value, grads, gpu.step(*data, sample_weight=w), gpu.params))
    (v1, g1, s1, p1), (v2, g2, s2, p2) = runs
    assert np.isfinite(v1) and v1 == v2 and s1 == s2
    for (a, b), (c, d) in zip(g1 + p1, g2 + p2):
        assert np.array_equal(a, c) and np.array_equal(b, d)


@pytest.mark.parametrize("options", [
    dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    dict(optimizer="adamw", lr=1e-2, weight_decay=0.1, clip_norm=0.1),
    dict(optimizer="adamw", lr=1e-2, weight_decay=0.5, decay_biases=False),
    dict(optimizer="sgd", lr=0.05, weight_decay=0.5, decay_biases=False),
    dict(optimizer="adagrad", lr=0.05),
    dict(optimizer="rmsprop", lr=1e-2, momentum=0.5, dropout=0.3),
    # dropout over stored slopes (gelu) and slopes from A (elu), per layer, on both paths
    # with input dropout (its own masks) and the max-norm constraint after every update
    dict(optimizer="adam", lr=1e-2, dropout=0.3, activation=["gelu", "elu"], input_dropout=0.2, max_norm=0.8),
    dict(optimizer="adam", lr=1e-2, dropout=0.3, activation=["elu", "gelu_tanh"], fused=False, input_dropout=0.2,
         max_norm=0.8),
])
def test_optimizers_clipping_and_dropout_match_cpu(rng, options):
    cpu, gpu = pair([4, 9, 9, 2], **{"activation": "tanh", "loss": "cross_entropy", **options})
    X, y = rng.standard_normal((9, 4)), rng.integers(0, 2, 9)
    for _ in range(3):
        assert gpu.step(X, y) == pytest.approx(cpu.step(X, y), rel=1e-5)
    for (Wc, bc), (Wg, bg) in zip(cpu.params, gpu.params):
        assert rel_error(Wg, Wc) < 1e-4 and rel_error(bg, bc) < 1e-4


def test_trainer_api_on_cuda(tmp_path, rng):
    X, y = fastbp.datasets.make_classification(n_samples=40, n_features=4, n_classes=2, seed=0)
    cpu, gpu = pair([4, 9, 2], loss="cross_entropy", batch_size=16)
    hc = cpu.fit(X, y, epochs=2, validation_split=0.25, verbose=0)
    hg = gpu.fit(X, y, epochs=2, validation_split=0.25, verbose=0)
    assert np.allclose(hg.history["loss"], hc.history["loss"], rtol=1e-5)
    assert hg.history["val_accuracy"] == hc.history["val_accuracy"]
    gpu.save(tmp_path / "g.npz")
    again = fastbp.Trainer.load(tmp_path / "g.npz")
    assert isinstance(again._backend, CudaBackend)
    assert np.array_equal(again.predict(X[:3]), gpu.predict(X[:3]))
    params = [(W * 0.5, b + 1) for W, b in cpu.params]
    gpu.set_params(params)
    cpu.set_params(params)
    assert rel_error(gpu.predict(X), cpu.predict(X)) < 1e-5
    with pytest.raises(FloatingPointError):
        big = fastbp.Trainer([4, 2], loss="mse", optimizer="sgd", lr=1e30, device="cuda", seed=0)
        before = big.params
        for _ in range(5):
            before = big.params
            big.step(np.ones((2, 4)), np.full((2, 2), 1e3))
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(big.params, before))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_whole_adam_steps_match_the_float64_reference(rng, activation, fused):
    """Every activation, and one per layer, on both GPU paths: two whole steps (forward, loss, backward,
    Adam with weight decay) against reference.Network in float64, not against the CPU backend."""
    from fastbp import reference
    activation = per_layer(activation, [5, 9, 4, 3])
    _, gpu = pair([5, 9, 4, 3], fused=fused, activation=activation, loss="cross_entropy", optimizer="adam", lr=1e-2,
                  weight_decay=0.01)
    start = [(W.astype(np.float64), b.astype(np.float64)) for W, b in gpu.params]
    ref = reference.Network(start, activation=activation, loss="cross_entropy", kind="adam", lr=1e-2,
                            weight_decay=0.01)
    for batch in (7, 1):
        X, y = rng.standard_normal((batch, 5)), rng.integers(0, 3, batch)
        assert gpu.step(X, y) == pytest.approx(ref.step(X, y), rel=1e-4)
    for (W, b), (rW, rb) in zip(gpu.params, ref.params):
        assert rel_error(W, rW) < 1e-4 and rel_error(b, rb) < 1e-4


class Interface:
    """Only __cuda_array_interface__, as CuPy arrays and PyTorch CUDA tensors offer it (no numba type)."""

    def __init__(self, device_array):
        self._keep = device_array
        self.__cuda_array_interface__ = device_array.__cuda_array_interface__


@pytest.mark.skipif(fastbp.cuda.backend._simulated(),
                    reason="Numba's CUDA simulator has no __cuda_array_interface__; runs on a real GPU "
                           "(FASTBP_TEST_REAL_GPU=1)")
def test_arrays_given_through_the_cuda_array_interface(rng):
    X = rng.standard_normal((20, 4)).astype(np.float32)
    y = rng.integers(0, 3, 20).astype(np.int64)
    host, device = pair([4, 6, 3], loss="cross_entropy", batch_size=8)
    host.fit(X, y, epochs=2, verbose=0)
    device.fit(Interface(cuda.to_device(X)), Interface(cuda.to_device(y)), epochs=2, verbose=0)
    for (Wh, bh), (Wd, bd) in zip(host.params, device.params):
        assert rel_error(Wd, Wh) < 1e-5 and rel_error(bd, bh) < 1e-5
    np.testing.assert_allclose(device.predict(Interface(cuda.to_device(X))), device.predict(X), rtol=1e-6)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        device.fit(Interface(cuda.to_device(bad)), Interface(cuda.to_device(y)), verbose=0)
