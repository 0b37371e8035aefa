"""Bad input: a clear exception naming the problem, raised before any kernel runs, state untouched."""
import re

import numpy as np
import pytest

import fastbp


@pytest.fixture
def trainer():
    return fastbp.Trainer([4, 5, 3], loss="cross_entropy", seed=0)


def snapshot(t):
    s = t.state
    return s.params.copy(), s.moment1.copy(), s.moment2.copy(), s.step_count


def assert_untouched(t, snap):
    params, m1, m2, steps = snapshot(t)
    assert np.array_equal(params, snap[0]) and np.array_equal(m1, snap[1]) and np.array_equal(m2, snap[2])
    assert steps == snap[3]


X_OK = np.zeros((6, 4))
Y_OK = np.array([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("X, y, error, match", [
    (np.zeros((6, 3)), Y_OK, ValueError, "3 features.*takes 4"),
    (np.zeros(24), Y_OK, ValueError, "2-D"),
    (np.zeros((6, 4, 1)), Y_OK, ValueError, "2-D"),
    (np.zeros((0, 4)), Y_OK[:0], ValueError, "no rows"),
    (X_OK, Y_OK[:5], ValueError, "5 labels but X has 6 rows"),
    (np.where(np.eye(6, 4) > 0, np.nan, 0.0), Y_OK, ValueError, "NaN or infinity"),
    (np.full((6, 4), np.inf), Y_OK, ValueError, "NaN or infinity"),
    (np.full((6, 4), 1e300), Y_OK, ValueError, "converted to float32"),
    (X_OK, np.array([0, 1, 2, 3, 1, 2]), ValueError, "label 3 out of range"),
    (X_OK, np.array([0, 1, -1, 0, 1, 2]), ValueError, "label -1 out of range"),
    (X_OK, np.array([0, 1, 0.5, 0, 1, 2]), ValueError, "non-integer"),
    (X_OK, np.array([0, 1, np.nan, 0, 1, 2]), ValueError, "NaN"),
    (X_OK, np.eye(6, 3), ValueError, "one-hot"),
    (X_OK, np.array(["a", "b", "c", "a", "b", "c"]), TypeError, "real numbers"),
    (np.array([["a"] * 4] * 6), Y_OK, TypeError, "real numbers"),
    (np.zeros((6, 4), complex), Y_OK, TypeError, "complex"),
    ([[1, 2], [3]], Y_OK, TypeError, "numeric array|real numbers"),
])
def test_bad_data_is_refused_before_any_kernel(trainer, X, y, error, match):
    snap = snapshot(trainer)
    for call in (trainer.step, trainer.fit, trainer.evaluate, trainer.gradients):
        with pytest.raises(error, match=match):
            call(X, y)
        assert_untouched(trainer, snap)
    if "label" not in match and "one-hot" not in match and y is Y_OK:
        with pytest.raises(error, match=match):
            trainer.predict(X)


@pytest.mark.parametrize("shape, order", [((70000,), "C"), ((9000, 17), "C"), ((9000, 17), "F"), ((3, 40000), "C")])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_check_finite_finds_any_bad_element_in_large_arrays(shape, order, value):
    """Arrays larger than a check block, contiguous or not (checked a block of rows at a time): a bad element
    anywhere, in the first block, a middle one or the last element, is found and named by its index."""
    from fastbp.validation import check_finite
    arr = np.ones(shape, np.float32, order=order)
    check_finite(arr, "X")
    check_finite(arr[::2], "X")  # a strided view
    for flat_index in (0, arr.size // 2 + 7, arr.size - 1):
        index = np.unravel_index(flat_index, shape)
        bad = arr.copy(order=order)
        bad[index] = value
        expected = (int(index[0]) + 5, *(int(i) for i in index[1:]))  # row 0 is the caller's row 5
        with pytest.raises(ValueError, match=re.escape(f"first at index {expected}")):
            check_finite(bad, "X", first_row=5)


def test_regression_and_bce_targets():
    t = fastbp.Trainer([2, 3], loss="mse", seed=0)
    with pytest.raises(ValueError, match=r"shape \(n_samples, 3\)"):
        t.step(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        t.step(np.zeros((4, 2)), np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="4 rows but X has 5"):
        t.step(np.zeros((5, 2)), np.zeros((4, 3)))
    b = fastbp.Trainer([2, 1], loss="bce", seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        b.step(np.zeros((3, 2)), np.array([0.0, 1.0, 2.0]))
    assert np.isfinite(b.step(np.zeros((3, 2)), np.array([0, 1, 1])))  # (n,) targets for one output


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(activation="relu6"), ValueError, "unknown activation 'relu6'; valid: elu, gelu, gelu_tanh, identity"),
    (dict(activation=["relu", "relu"]), ValueError, "activation lists 2 names, but the network has 1 hidden layer "),
    (dict(activation=(3,)), ValueError, "unknown activation 3"),
    (dict(activation={"relu"}), TypeError, "a list of one name per hidden layer"),
    (dict(input_dropout=1.0), ValueError, "input_dropout must be <= "),
    (dict(max_norm=0.0), ValueError, "max_norm must be > 0"),
    (dict(max_norm=float("inf")), ValueError, "max_norm must be a finite number"),
    (dict(huber_delta=1.5), ValueError, "huber_delta applies to loss='huber'"),
    (dict(loss="huber", huber_delta=-1.0), ValueError, "huber_delta must be > 0"),
    (dict(loss="mse", label_smoothing=0.1), ValueError, "label_smoothing applies to loss='cross_entropy'"),
    (dict(loss="cross_entropy", label_smoothing=1.5), ValueError, "label_smoothing must be <= 1"),
    (dict(loss="hinge"), ValueError, "unknown loss 'hinge'; valid: bce, cross_entropy, huber, l1, mse"),
    (dict(optimizer="lbfgs"), ValueError, "unknown optimizer 'lbfgs'; valid: adagrad, adam, adamw, rmsprop, sgd"),
    (dict(device="tpu"), ValueError, "unknown device 'tpu'; valid: cpu, cuda"),
    (dict(sizes=[4, 0, 3]), ValueError, "positive"),
    (dict(sizes=[4, -2, 3]), ValueError, "positive"),
    (dict(sizes=[4]), ValueError, "at least an input and an output"),
    (dict(sizes=[4, 2.5, 3]), TypeError, "integer"),
    (dict(sizes="784,10"), TypeError, "list of layer widths"),
    (dict(batch_size=0), ValueError, "batch_size must be positive"),
    (dict(batch_size=-5), ValueError, "batch_size must be positive"),
    (dict(lr=-1e-3), ValueError, "lr must be >= 0"),
    (dict(lr=float("nan")), ValueError, "lr must be a finite number"),
    (dict(lr="fast"), ValueError, "lr must be a finite number"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(optimizer="sgd", momentum=1.5), ValueError, "momentum"),
    (dict(optimizer="adam", momentum=0.9), ValueError, "momentum applies to optimizer='sgd'"),
    (dict(optimizer="sgd", nesterov=True), ValueError, "nesterov"),
    (dict(betas=(0.9, 1.5)), ValueError, "betas"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(sizes=[4, 1], loss="cross_entropy"), ValueError, "at least 2 output classes"),
])
def test_bad_options_name_the_problem(kwargs, error, match):
    args = dict(sizes=[4, 5, 3], loss="cross_entropy")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fastbp.Trainer(**args)


def test_bad_fit_arguments(trainer):
    snap = snapshot(trainer)
    for kwargs, match in ((dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"),
                          (dict(validation_data=np.zeros((2, 4))), "validation_data must be a pair"),
                          (dict(validation_data=(np.zeros((2, 3)), [0, 1])), "validation X has 3 features")):
        with pytest.raises((ValueError, TypeError), match=match):
            trainer.fit(X_OK, Y_OK, **kwargs)
        assert_untouched(trainer, snap)


def test_set_params_checks_everything_before_copying(trainer):
    snap = snapshot(trainer)
    good = trainer.params
    cases = [
        (good[:1], ValueError, "1 layers but the network has 2"),
        ([(good[0][0].T, good[0][1]), good[1]], ValueError, "PyTorch's Linear.weight"),
        ([good[0], (good[1][0], np.zeros(4))], ValueError, r"b has shape \(4,\), expected \(3,\)"),
        ([good[0], (np.full_like(good[1][0], np.nan), good[1][1])], ValueError, "NaN"),
        ([good[0], good[1][0]], TypeError, r"params\[1\] must be a \(W, b\) pair"),
        (5, TypeError, "list of"),
    ]
    for params, error, match in cases:
        with pytest.raises(error, match=match):
            trainer.set_params(params)
        assert_untouched(trainer, snap)


def test_sparse_input_trains_as_its_dense_copy():
    """A SciPy sparse batch is densified row by row (sources.Rows), not refused: the same step as dense."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X = np.random.default_rng(0).standard_normal(X_OK.shape) * np.eye(*X_OK.shape)
    a, b = (fastbp.Trainer([4, 5, 3], loss="cross_entropy", seed=0) for _ in range(2))
    assert a.step(scipy_sparse.csr_matrix(X), Y_OK) == b.step(X, Y_OK)
    np.testing.assert_array_equal(a.state.params, b.state.params)


def test_blas_thread_setting_survives_concurrent_trainers():
    import threading
    from threadpoolctl import threadpool_info
    from fastbp.threads import blas_libraries
    before = [lib.num_threads for lib in blas_libraries()]
    errors = []

    def train(seed):
        try:
            t = fastbp.Trainer([4, 16, 3], loss="cross_entropy", seed=seed)
            for _ in range(50):
                t.step(np.random.default_rng(seed).standard_normal((8, 4)), np.arange(8) % 3)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(s,)) for s in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert [lib.num_threads for lib in blas_libraries()] == before
    assert threadpool_info()  # the libraries are still there and answer


def test_more_hostile_input():
    t = fastbp.Trainer([3, 4, 2], loss="cross_entropy", seed=0)
    X = np.zeros((5, 3))
    with pytest.raises(FloatingPointError, match="not finite"):
        t.predict(np.full((2, 3), 3e38))  # finite float32 inputs whose activations overflow
    with pytest.raises(ValueError, match="reshape"):
        t.predict(np.zeros(3))
    assert np.isfinite(t.step(X.astype(object), np.array([0, 1, 0, 1, 0], dtype=object)))
    with pytest.raises(TypeError, match="Python objects"):
        t.step(np.array([["a"] * 3] * 5, dtype=object), np.zeros(5, int))
    with pytest.raises(TypeError, match="list of callbacks"):
        t.fit(X, np.zeros(5, int), callbacks=5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        t.save("/nonexistent-fastbp-dir/model.npz")


def test_blas_runs_single_threaded_while_the_kernels_run(monkeypatch, kernel_path):
    """Seen from inside the compiled call (either entry point): every BLAS library at one thread; around it,
    the user's setting."""
    from threadpoolctl import threadpool_limits
    from fastbp.cpu import serial, step
    from fastbp.threads import blas_libraries
    seen = []

    def observing(compiled):
        def observed(*args):
            seen.append([lib.num_threads for lib in blas_libraries()])
            return compiled(*args)
        return observed
    module, name = (serial, "run_steps_for") if kernel_path == "serial" else (step, "run_for")
    variant_of = getattr(module, name)
    monkeypatch.setattr(module, name, lambda uses: observing(variant_of(uses)))
    t = fastbp.Trainer([4, 128, 3], loss="cross_entropy", seed=0)
    # Wide enough that the serial path calls BLAS on these rows (narrower steps make no BLAS call, and
    # leave its threads alone).
    assert t._backend._blas_free_rows < len(X_OK)
    with threadpool_limits(limits=2, user_api="blas"):
        outside = [lib.num_threads for lib in blas_libraries()]
        t.step(X_OK, np.arange(len(X_OK)) % 3)
        t.predict(X_OK)
        assert [lib.num_threads for lib in blas_libraries()] == outside
    assert outside and all(n == 2 for n in outside)  # so that one thread inside means something
    assert len(seen) == 2 and all(n == 1 for counts in seen for n in counts)


def test_blas_is_single_threaded_for_calls_from_any_thread():
    """OpenBLAS ignores its process-wide thread count when set from a thread other than the main one
    (threads.py): products inside blas_single_threaded, from three threads at once, must still all be the
    single-threaded product (a multithreaded one rounds differently for this shape)."""
    import threading
    from fastbp.cpu import blas
    from fastbp.threads import blas_single_threaded
    rng = np.random.default_rng(0)
    m, n, k = 256, 160, 13
    A, B = rng.standard_normal(m * k).astype(np.float32), rng.standard_normal(k * n).astype(np.float32)

    def product():
        C = np.zeros(m * n, np.float32)
        blas.gemm(blas.NO_TRANS, blas.NO_TRANS, m, n, k, A, k, B, n, C, n)
        return C
    with blas_single_threaded():
        single = product()
    differing = []

    def calls():
        with blas_single_threaded():
            for _ in range(100):
                if not np.array_equal(product(), single):
                    differing.append(1)
    threads = [threading.Thread(target=calls) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not differing


def test_poisson_targets_must_be_non_negative():
    t = fastbp.Trainer([3, 2], loss="poisson", seed=0)
    X = np.zeros((4, 3))
    y = np.ones((4, 2))
    y[2, 1] = -0.5
    with pytest.raises(ValueError, match="poisson must be non-negative.*row 2"):
        t.step(X, y)
    y[2, 1] = 3.0
    assert np.isfinite(t.step(X, y))
    np.testing.assert_allclose(t.predict(X), np.exp(t._backend.logits(X.astype(np.float32), np.arange(4))), rtol=1e-6)
