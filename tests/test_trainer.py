"""The Trainer's behaviour: determinism, learning, checkpoints, awkward-but-valid input."""
import zlib

import numpy as np
import pytest

import fastbp
from fastbp import datasets


def small_problem(n=600, seed=0):
    X, y = datasets.make_classification(n_samples=n, n_features=12, n_classes=4, seed=seed)
    return X, y


def test_same_seed_gives_same_network_and_bitwise_same_training():
    X, y = small_problem()
    runs = []
    for _ in range(2):
        t = fastbp.Trainer([12, 33, 4], loss="cross_entropy", batch_size=50, seed=7)
        t.fit(X, y, epochs=2, verbose=0)
        runs.append(t.params)
    for (W1, b1), (W2, b2) in zip(*runs):
        assert np.array_equal(W1, W2) and np.array_equal(b1, b2)
    other = fastbp.Trainer([12, 33, 4], loss="cross_entropy", seed=8).params
    assert not np.array_equal(other[0][0], fastbp.Trainer([12, 33, 4], seed=7).params[0][0])


def test_initialisation_scales():
    t = fastbp.Trainer([400, 300, 200, 10], activation="relu", seed=0)
    (W0, b0), (W1, _), (W2, _) = t.params
    assert np.all(b0 == 0)
    assert abs(W0.std() - np.sqrt(2 / 400)) < 0.05 * np.sqrt(2 / 400)        # He for ReLU layers
    assert abs(W2.std() - np.sqrt(2 / 210)) < 0.1 * np.sqrt(2 / 210)         # Glorot for the linear output
    t = fastbp.Trainer([400, 300, 10], activation="tanh", seed=0)
    assert abs(t.params[0][0].std() - np.sqrt(2 / 700)) < 0.05 * np.sqrt(2 / 700)


def test_initial_weights_are_uniform_within_the_limit_and_pinned():
    """He/Glorot *uniform*: every weight within +-limit and half of them within limit/2 (a normal draw of
    the same spread has 61% there and some beyond the limit). And seed 0 gives these very weights on every
    machine: NumPy's PCG64 stream and the float64 -> float32 rounding are the same everywhere."""
    t = fastbp.Trainer([1000, 500, 10], activation="relu", seed=0)
    W0, W1 = t.params[0][0], t.params[1][0]
    for W, limit in ((W0, np.sqrt(6 / 1000)), (W1, np.sqrt(6 / 510))):
        assert np.abs(W).max() <= np.float32(limit)
        assert abs(np.mean(np.abs(W) < limit / 2) - 0.5) < 0.01
    pinned = fastbp.Trainer([3, 4, 2], seed=0).params
    np.testing.assert_array_equal(pinned[0][0][0], np.array([0.38738614, -0.6511415, -1.2983229, -1.3674663],
                                                            np.float32))
    flat = np.concatenate([np.concatenate([W.ravel(), b]) for W, b in pinned])
    assert zlib.crc32(flat.tobytes()) == 3706627189


def test_fit_learns_a_nonlinear_problem():
    X, y = datasets.make_classification(n_samples=6000, n_features=20, n_classes=5, seed=1)
    t = fastbp.Trainer([20, 128, 5], loss="cross_entropy", lr=3e-3, batch_size=64, seed=0)
    before = t.evaluate(X[5000:], y[5000:])
    hist = t.fit(X[:5000], y[:5000], epochs=8, validation_data=(X[5000:], y[5000:]), verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
    assert hist.history["val_accuracy"][-1] >= 0.95
    assert hist.history["val_accuracy"][-1] > before["accuracy"] + 0.4
    assert len(hist.history["val_loss"]) == 8 and hist.epoch == list(range(8))


def test_fit_regression_with_mse_and_bce():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 3))
    y = np.stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], X[:, 0] ** 2], axis=1)
    t = fastbp.Trainer([3, 64, 64, 2], activation="tanh", loss="mse", lr=3e-3, batch_size=32, seed=0)
    first = t.evaluate(X, y)["loss"]
    t.fit(X, y, epochs=15, verbose=0)
    assert t.evaluate(X, y)["loss"] < 0.1 * first
    yb = (X[:, :2] > 0).astype(float)
    t = fastbp.Trainer([3, 32, 2], loss="bce", lr=1e-2, batch_size=32, seed=0)
    t.fit(X, yb, epochs=10, verbose=0)
    assert t.evaluate(X, yb)["accuracy"] > 0.95
    assert ((t.predict(X) >= 0) & (t.predict(X) <= 1)).all()


def test_save_and_load_continue_exactly_as_without_interruption(tmp_path):
    X, y = small_problem()
    full = fastbp.Trainer([12, 17, 4], loss="cross_entropy", batch_size=64, seed=3)
    full.fit(X, y, epochs=4, verbose=0)

    first = fastbp.Trainer([12, 17, 4], loss="cross_entropy", batch_size=64, seed=3)
    first.fit(X, y, epochs=2, verbose=0)
    first.save(tmp_path / "ck.npz")
    resumed = fastbp.Trainer.load(tmp_path / "ck.npz")
    resumed.fit(X, y, epochs=4, initial_epoch=resumed.epochs_done, verbose=0)
    assert resumed.state.step_count == full.state.step_count
    assert resumed.epochs_done == 4
    for (W1, b1), (W2, b2) in zip(full.params, resumed.params):
        assert np.array_equal(W1, W2) and np.array_equal(b1, b2)
    assert resumed.config == full.config


def test_awkward_but_valid_input():
    rng = np.random.default_rng(0)
    t = fastbp.Trainer([5, 9, 3], loss="cross_entropy", batch_size=8, seed=0)
    Xf = np.asfortranarray(rng.standard_normal((11, 5)))                  # float64, Fortran order
    strided = rng.standard_normal((22, 10)).astype(np.float32)[::2, ::2]  # non-contiguous view
    labels32 = rng.integers(0, 3, 11).astype(np.int32)
    for X in (Xf, strided, Xf.tolist()):
        reference_loss = t.gradients(np.ascontiguousarray(X, np.float32), labels32.astype(np.int64))[0]
        assert t.gradients(X, labels32)[0] == pytest.approx(reference_loss, rel=1e-6)
    assert np.isfinite(t.step(Xf[:1], labels32[:1]))                        # a batch of one
    hist = t.fit(Xf, labels32, epochs=1, verbose=0)                           # 11 rows: 8 + 3
    assert t.state.step_count == 1 + 2 and np.isfinite(hist.history["loss"][0])
    t.fit(Xf[:3], labels32[:3], epochs=1, batch_size=100, verbose=0)          # n < batch_size
    assert t.predict(Xf).shape == (11, 3)
    assert np.allclose(t.predict(Xf).sum(axis=1), 1, atol=1e-6)
    assert t.gradients(Xf, labels32.astype(float))[0] == pytest.approx(t.gradients(Xf, labels32)[0])


def test_predict_and_evaluate_in_chunks_match_one_batch():
    rng = np.random.default_rng(1)
    t = fastbp.Trainer([4, 8, 3], loss="cross_entropy", seed=0)
    X = rng.standard_normal((fastbp.trainer.EVAL_CHUNK * 2 + 5, 4))
    y = rng.integers(0, 3, len(X))
    P = t.predict(X)
    assert np.allclose(P[-5:], t.predict(X[-5:]), rtol=1e-6, atol=1e-7)
    m = t.evaluate(X, y)
    assert m["accuracy"] == pytest.approx(np.mean(P.argmax(1) == y))
    assert m["loss"] == pytest.approx(-np.mean(np.log(P[np.arange(len(y)), y])), rel=1e-5)


def test_params_are_copies_and_set_params_round_trips():
    t = fastbp.Trainer([3, 4, 2], seed=0)
    p = t.params
    p[0][0][:] = 99
    assert not np.any(t.params[0][0] == 99)
    new = [(np.full((3, 4), 0.5), np.arange(4.0)), (np.ones((4, 2)), np.zeros(2))]
    t.set_params(new)
    for (W, b), (W2, b2) in zip(t.params, new):
        assert W.dtype == np.float32 and np.array_equal(W, W2) and np.array_equal(b, b2)


def test_divergence_stops_with_last_finite_parameters():
    t = fastbp.Trainer([2, 4, 1], loss="mse", optimizer="sgd", lr=1e30, seed=0)
    X = np.ones((4, 2))
    y = np.ones((4, 1)) * 1e3
    with pytest.raises(FloatingPointError, match="step"):
        for _ in range(20):
            before = t.params
            t.step(X, y)
    for (W, b), (W0, b0) in zip(t.params, before):
        assert np.array_equal(W, W0) and np.array_equal(b, b0)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_step_quick_route_gives_the_general_routes_bits(loss):
    """Trainer.step's route for ready float32 arrays (no conversion, no data source) against the general
    route taken by the same values as float64 and as a Fortran-ordered float32 array: the same losses and
    parameters bit for bit, with dropout and a per-step schedule (both follow the step count)."""
    rng = np.random.default_rng(3)
    sizes = [5, 33, 3]

    def trainer():
        return fastbp.Trainer(sizes, loss=loss, seed=1, dropout=0.2, input_dropout=0.1,
                              schedule=fastbp.schedules.StepDecay(2, gamma=0.5, interval="step"))
    quick, general, fortran = trainer(), trainer(), trainer()
    for n in (1, 3, 33, 1, 3):
        X = rng.standard_normal((n, sizes[0])).astype(np.float32)
        y = rng.integers(0, 3, n) if loss == "cross_entropy" else rng.standard_normal((n, 3)).astype(np.float32)
        losses = [quick.step(X, y), general.step(X.astype(np.float64), y), fortran.step(np.asfortranarray(X), y)]
        assert losses[0] == losses[1] == losses[2]
    assert quick.step_count == general.step_count == fortran.step_count == 5
    for other in (general, fortran):
        for (W, b), (W2, b2) in zip(quick.params, other.params):
            assert np.array_equal(W, W2) and np.array_equal(b, b2)


def test_step_quick_route_refuses_bad_batches_before_any_update():
    """What the quick route checks itself (X is float32 and C-ordered, so it skips the conversion's checks):
    each refusal names the problem and leaves the parameters and the step count as they were."""
    t = fastbp.Trainer([4, 8, 3], loss="cross_entropy", seed=0)
    X = np.ones((3, 4), np.float32)
    t.step(X, np.array([0, 1, 2]))
    before = t.params
    bad = [(np.where(np.eye(3, 4, dtype=bool), np.float32(np.nan), X), np.array([0, 1, 2]), "X contains NaN"),
           (np.full((3, 4), np.inf, np.float32), np.array([0, 1, 2]), "X contains NaN or infinity"),
           (X, np.array([0, 3, 1]), "label 3 out of range"),
           (X, np.array([0, -1, 1]), "label -1 out of range"),
           (X, np.array([0.0, 1.5, 1.0]), "non-integer"),
           (X, np.array([0, 1]), "2 labels but X has 3 rows"),
           (np.ones((3, 5), np.float32), np.array([0, 1, 2]), "5 features per row")]
    for xb, yb, message in bad:
        with pytest.raises(ValueError, match=message):
            t.step(xb, yb)
    assert t.step_count == 1
    for (W, b), (W0, b0) in zip(t.params, before):
        assert np.array_equal(W, W0) and np.array_equal(b, b0)
    r = fastbp.Trainer([4, 2], loss="bce", seed=0)
    with pytest.raises(ValueError, match=r"bce must lie in \[0, 1\]"):
        r.step(X, np.full((3, 2), 2.0, np.float32))
    with pytest.raises(ValueError, match="y contains NaN"):
        r.step(X, np.full((3, 2), np.nan, np.float32))
    assert r.step_count == 0


def test_lr_can_change_between_steps():
    t = fastbp.Trainer([2, 2], optimizer="sgd", lr=0.1, seed=0)
    t.lr = 0.0
    before = t.params
    t.step(np.ones((1, 2)), np.ones((1, 2)))
    assert np.array_equal(before[0][0], t.params[0][0])
    with pytest.raises(ValueError, match="lr"):
        t.lr = float("nan")


def test_cuda_without_a_gpu_is_a_clear_error():
    """Outside the simulator, on a machine without an NVIDIA GPU (like CI's), device="cuda" says so."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print('GPU', cuda.is_available())"],
                           env=env, capture_output=True, text=True, timeout=120)
    if "GPU True" in probe.stdout:  # only a GPU that is really there skips: any failure fails below
        pytest.skip("a CUDA GPU is available here")  # device="cuda" then works, tested in tests/cuda
    code = ("import fastbp\n"
            "try:\n    fastbp.Trainer([2, 2], device='cuda')\n"
            "except RuntimeError as e:\n    print('RuntimeError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "needs an NVIDIA GPU" in out.stdout and "device='cpu'" in out.stdout


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_decay_biases_false_decays_the_weights_only(device):
    """A zero gradient leaves weight decay alone: SGD moves W by -lr wd W and, with decay_biases=False,
    leaves b where it is (with the default True, b decays too, as torch.optim's weight_decay does)."""
    if device == "cuda":
        pytest.importorskip("numba.cuda")
    for decay_biases, expected_b in ((False, 2.0), (True, 1.0)):
        t = fastbp.Trainer([2, 1], loss="mse", optimizer="sgd", lr=0.5, weight_decay=1.0, device=device,
                           decay_biases=decay_biases)
        t.set_params([(np.ones((2, 1)), np.array([2.0]))])
        t.step(np.zeros((3, 2)), np.full((3, 1), 2.0))  # predictions equal the targets: no gradient
        (W, b), = t.params
        assert np.array_equal(W, np.full((2, 1), 0.5, np.float32))
        assert b[0] == expected_b
