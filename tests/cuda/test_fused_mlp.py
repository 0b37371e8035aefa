"""The fused narrow-network path (fused_mlp.py) and the split-k weight gradient (weight_grad.py) under the
CUDA simulator, against the float64 reference and against the general path, at the issue's odd sizes:
1, 17 and 129 rows (the simulator's fused tiles are 4 rows: full, partial and single-row tiles), widths
1 and 33 (fused) and 130 (too wide: the general path, chosen automatically)."""
import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
if not cuda.is_available():
    pytest.skip("no CUDA device or simulator", allow_module_level=True)

import fastbp  # noqa: E402
from fastbp import reference  # noqa: E402
from fastbp.cuda import fused_mlp, gemm  # noqa: E402
from fastbp.cuda.backend import CudaBackend, _simulated  # noqa: E402
from fastbp.cuda.weight_grad import WeightGradient  # noqa: E402
from conftest import make_targets, rel_error  # noqa: E402

TOL = 1e-4


def as64(params):
    return [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]


def cuda_trainer(sizes, fused, **kw):
    t = fastbp.Trainer(sizes, seed=1, device="cuda", **kw)
    t._backend = CudaBackend(t.config, t.state, fused=fused)
    return t


def test_path_is_chosen_by_width():
    assert fused_mlp.fits([33, 1, 33, 3]) and fused_mlp.fits([128, 128, 16])
    assert not fused_mlp.fits([130, 3]) and not fused_mlp.fits([3, 129, 3])
    assert fastbp.Trainer([4, 33, 2], device="cuda")._backend.fused
    assert not fastbp.Trainer([130, 3], device="cuda")._backend.fused
    with pytest.raises(ValueError, match="fused path takes widths up to 128"):
        CudaBackend(fastbp.Trainer([130, 3]).config, fastbp.Trainer([130, 3]).state, fused=True)


@pytest.mark.parametrize("loss, n", [("mse", 1), ("cross_entropy", 1), ("bce", 1), ("mse", 17),
                                     ("cross_entropy", 17), ("bce", 17), ("cross_entropy", 129)])
def test_fused_gradients_and_outputs_match_reference(rng, loss, n):
    out = 3 if loss != "bce" else 2
    sizes = [33, 1, 33, out]
    t = cuda_trainer(sizes, fused=True, activation="tanh", loss=loss)
    # Random biases too, so that a lost bias row or ones column would show.
    t.set_params([(W, rng.standard_normal(b.shape)) for W, b in t.params])
    X, y = rng.standard_normal((n, sizes[0])), make_targets(rng, loss, n, out)
    params = as64(t.params)
    ref_loss, ref_grads = reference.loss_and_gradients(params, X, y, "tanh", loss)
    value, grads = t.gradients(X, y)
    assert value == pytest.approx(ref_loss, rel=TOL)
    for (dW, db), (rW, rb) in zip(grads, ref_grads):
        assert rel_error(dW, rW) < TOL and rel_error(db, rb) < TOL
    _, logits = reference.forward(params, X, "tanh")
    assert rel_error(t.predict(X), reference.output_transform(logits, loss)) < TOL
    assert t.evaluate(X, y)["loss"] == pytest.approx(ref_loss, rel=TOL)


def test_wide_layer_takes_general_path_and_matches_reference(rng):
    t = fastbp.Trainer([130, 2, 3], seed=2, device="cuda", activation="relu", loss="cross_entropy")
    assert not t._backend.fused
    X, y = rng.standard_normal((17, 130)), rng.integers(0, 3, 17)
    ref_loss, ref_grads = reference.loss_and_gradients(as64(t.params), X, y, "relu", "cross_entropy")
    value, grads = t.gradients(X, y)
    assert value == pytest.approx(ref_loss, rel=TOL)
    for (dW, db), (rW, rb) in zip(grads, ref_grads):
        assert rel_error(dW, rW) < TOL and rel_error(db, rb) < TOL


@pytest.mark.parametrize("options", [dict(optimizer="adam", lr=1e-2, dropout=0.25),
                                     dict(optimizer="sgd", lr=0.1, momentum=0.9, clip_norm=0.05)])
def test_fused_and_general_paths_train_alike(rng, options):
    """Two steps on 13 rows with dropout or clipping: both GPU paths follow the CPU backend."""
    sizes = [6, 9, 9, 2]
    cpu = fastbp.Trainer(sizes, seed=1, activation="leaky_relu", loss="cross_entropy", **options)
    paths = [cuda_trainer(sizes, fused, activation="leaky_relu", loss="cross_entropy", **options)
             for fused in (True, False)]
    X, y = rng.standard_normal((13, 6)), rng.integers(0, 2, 13)
    for _ in range(2):
        expected = cpu.step(X, y)
        for t in paths:
            assert t.step(X, y) == pytest.approx(expected, rel=1e-5)
    for t in paths:
        for (Wc, bc), (Wg, bg) in zip(cpu.params, t.params):
            assert rel_error(Wg, Wc) < TOL and rel_error(bg, bc) < TOL


def test_fused_results_are_deterministic(rng):
    sizes = [5, 9, 3]
    X, y = rng.standard_normal((29, 5)), rng.integers(0, 3, 29)
    runs = []
    for _ in range(2):
        t = cuda_trainer(sizes, fused=True, loss="cross_entropy", dropout=0.2)
        t.fit(X, y, epochs=1, batch_size=11, verbose=0)
        runs.append(t.params)
    for (W1, b1), (W2, b2) in zip(*runs):
        assert np.array_equal(W1, W2) and np.array_equal(b1, b2)


@pytest.mark.parametrize("n, fan_in, fan_out", [(1, 1, 1), (37, 3, 9), (64, 9, 17)])
def test_split_k_weight_gradient(rng, n, fan_in, fan_out):
    """[A, 1]^T @ delta through the split-k product and the ordered sum of partials, against NumPy."""
    tiles = gemm.SIMULATOR_TILES if _simulated() else gemm.PRODUCTION_TILES
    weight_grad = WeightGradient(tiles, target_blocks=16, min_chunk=tiles[2], threads=8)
    _, chunks = weight_grad.chunking(fan_in + 1, fan_out, n)
    assert (chunks > 1) == (n >= 2 * tiles[2])  # the larger cases really split
    A = np.hstack([rng.standard_normal((n, fan_in)), np.ones((n, 1))]).astype(np.float32)
    delta = rng.standard_normal((n, fan_out + 2)).astype(np.float32)  # row stride wider than the product
    grad = cuda.to_device(np.full((fan_in + 1) * fan_out, np.nan, np.float32))
    partials = cuda.device_array(max(1, weight_grad.partial_size([fan_in, fan_out], n)), np.float32)
    weight_grad(n, fan_in, fan_out, cuda.to_device(A.ravel()), cuda.to_device(delta.ravel()), fan_out + 2, grad,
                partials)
    expected = A.astype(np.float64).T @ delta[:, :fan_out]
    assert rel_error(grad.copy_to_host().reshape(fan_in + 1, fan_out), expected) < 1e-5
