"""The compiled CPU kernels against the float64 reference: forward, loss, every gradient, whole updates."""
import numpy as np
import pytest

import fastbp
from fastbp import reference
from fastbp.cpu import blas
from conftest import (ACTIVATIONS, ALL_ACTIVATIONS, ALL_LOSSES, LOSSES, NEW_ACTIVATIONS, NEW_LOSSES, loss_options,
                      make_targets, per_layer, rel_error)

TOL = 1e-4  # float32 against float64: norm-wise relative error


def architectures(loss):
    """Odd widths (1, 3, 33, 257) in every position; cross_entropy needs at least two classes, and mse and
    bce run with several outputs too (their mean is over rows x outputs)."""
    return [[33, 257, 3, 3], [1, 3, 1, 33, 2 if loss == "cross_entropy" else 1]]


def perturbed_trainer(rng, sizes, activation, loss, **kw):
    """A Trainer with random non-zero biases, so that every part of every gradient is exercised."""
    t = fastbp.Trainer(sizes, activation=activation, loss=loss, seed=int(rng.integers(2 ** 31)), **kw)
    t.set_params([(W, rng.standard_normal(b.shape) * 0.3) for W, b in t.params])
    return t


def as64(params):
    return [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]


@pytest.mark.parametrize("batch", [1, 7, 130])
@pytest.mark.parametrize("loss", ALL_LOSSES)
@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_loss_gradients_and_predictions(rng, activation, loss, batch):
    loss, options = loss_options(loss)
    for sizes in architectures(loss):
        activation = per_layer(activation if isinstance(activation, str) else "mixed", sizes)
        t = perturbed_trainer(rng, sizes, activation, loss, **options)
        X = rng.standard_normal((batch, sizes[0]))
        y = make_targets(rng, loss, batch, sizes[-1])
        params = as64(t.params)
        ref_loss, ref_grads = reference.loss_and_gradients(params, X, y, activation, loss, **options)
        value, grads = t.gradients(X, y)
        assert abs(value - ref_loss) / abs(ref_loss) < TOL
        for (dW, db), (rW, rb) in zip(grads, ref_grads):
            assert rel_error(dW, rW) < TOL
            assert rel_error(db, rb) < TOL
        _, logits = reference.forward(params, X, activation)
        # An output near 0 can be a cancelling sum of O(1) terms (a one-row batch of one output): float32
        # rounding of those terms, 1e-7 of them, is the floor.
        predicted, expected = t.predict(X), reference.output_transform(logits, loss)
        assert rel_error(predicted, expected) < TOL or np.abs(predicted - expected).max() < 1e-6
        assert t.evaluate(X, y)["loss"] == pytest.approx(ref_loss, rel=TOL)


# SGD at lr 1e-3: at 1e-2 the 257-wide layer below diverges within five steps for about one input draw in
# ten (the float64 reference itself reaches 1e40 and more), and a test must not depend on its draw.
OPTIMIZERS = {
    "sgd": dict(optimizer="sgd", lr=1e-3),
    "sgd_momentum": dict(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": dict(optimizer="sgd", lr=1e-3, momentum=0.8, nesterov=True),
    "adam": dict(optimizer="adam", lr=1e-2),
    "adam_l2": dict(optimizer="adam", lr=1e-2, weight_decay=0.1),
    "adamw": dict(optimizer="adamw", lr=1e-2, weight_decay=0.1),
    "adamw_weights_only": dict(optimizer="adamw", lr=1e-2, weight_decay=0.3, decay_biases=False),
    "sgd_l2_weights_only": dict(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=0.5, decay_biases=False),
    "adam_betas_eps_clip": dict(optimizer="adam", lr=1e-2, betas=(0.8, 0.99), eps=1e-3, clip_norm=0.3),
    "adam_eps_hat": dict(optimizer="adam", lr=1e-2, eps=1e-2, eps_hat=True, weight_decay=0.1),
    "sgd_max_norm": dict(optimizer="sgd", lr=1e-3, momentum=0.9, max_norm=0.5),  # binds on the first step
    "adamw_max_norm_weights_only": dict(optimizer="adamw", lr=1e-2, weight_decay=0.1, decay_biases=False,
                                        max_norm=0.5),
    "adagrad": dict(optimizer="adagrad", lr=1e-2, weight_decay=1e-3),
    "rmsprop": dict(optimizer="rmsprop", lr=1e-3, alpha=0.9),
    "rmsprop_momentum_clip": dict(optimizer="rmsprop", lr=1e-3, momentum=0.9, clip_norm=0.5),
}


@pytest.mark.parametrize("opt, loss, activation",
                         [(o, l, a) for o in OPTIMIZERS for l in LOSSES for a in ACTIVATIONS]
                         # the newer activations and per-layer choice, with two optimizers each (poisson's exp of an
                         # unbounded activation's output diverges under SGD with momentum for some draws)
                         + [(o, l, a) for o in ("adam", "sgd_momentum") for l in LOSSES for a in NEW_ACTIVATIONS
                            if (o, l) != ("sgd_momentum", "poisson")]
                         # the newer losses and loss options. l1's gradient is a sum of signs, often cancelling
                         # to a float32 rounding residue where float64 has 0, which Adam scales up to a step of
                         # lr: l1 runs with SGD (Adam's rule is the same code for every loss, tested above)
                         + [(o, l, a) for o in ("adam", "sgd_momentum") for l in NEW_LOSSES for a in ("relu", "gelu")
                            if (o, l) != ("adam", "l1")]
                         + [("sgd_nesterov", "l1", a) for a in ("relu", "gelu")])
def test_several_updates_match_reference(rng, activation, loss, opt, kernel_path):
    """Five steps on batches of 1, 7 and 130 rows, on the serial and the parallel path: losses, parameters
    and their displacement match float64.

    The displacement is compared at 1e-3 of its size plus the float32 rounding of the stored parameters
    (2^-24 |p| per step), which no float32 implementation can beat; a wrong update rule is off by O(1)."""
    loss, options = loss_options(loss)
    kw = OPTIMIZERS[opt]
    sizes = [33, 3, 257, 3 if loss == "cross_entropy" else 1]
    activation = per_layer(activation, sizes)
    t = perturbed_trainer(rng, sizes, activation, loss, **kw, **options)
    start = as64(t.params)
    c = t.config  # the reference gets every setting the kernels got, defaults included
    ref = reference.Network(start, activation=activation, loss=loss, **options, kind=kw["optimizer"], lr=kw["lr"],
                            weight_decay=c.weight_decay, momentum=c.momentum, nesterov=c.nesterov,
                            betas=tuple(c.betas), eps=c.eps, alpha=c.alpha, clip_norm=c.clip_norm,
                            decay_biases=c.decay_biases, eps_hat=c.eps_hat, max_norm=c.max_norm)
    for batch in (1, 7, 130, 7, 1):
        X = rng.standard_normal((batch, sizes[0]))
        y = make_targets(rng, loss, batch, sizes[-1])
        # A one-row loss can be tiny by chance; it is compared on the scale of a typical loss, 1.
        expected = ref.step(X, y)
        assert abs(t.step(X, y) - expected) < TOL * max(1.0, expected)
    steps = 5
    for (W, b), (rW, rb), (W0, b0) in zip(t.params, ref.params, start):
        for p, rp, p0 in ((W, rW, W0), (b, rb, b0)):
            assert rel_error(p, rp) < TOL
            moved = np.abs(rp - p0).max()
            assert np.abs((p - p0) - (rp - p0)).max() <= 1e-3 * moved + steps * 2.0 ** -24 * np.abs(rp).max()


@pytest.mark.parametrize("m, n, k", [(37, 5, 9), (1, 33, 257), (3, 1, 7), (37, 40, 65)])
def test_gemm_blocks_compose_the_whole_product(rng, m, n, k):
    """Every block split (rows, columns, transposes, strided output) reproduces the full product: through
    small_gemm's loops (the first three shapes: SMALL_MACS or one row) and through BLAS (the last)."""
    for ta in (blas.NO_TRANS, blas.TRANS):
        for tb in (blas.NO_TRANS, blas.TRANS):
            A = rng.standard_normal((k, m) if ta == blas.TRANS else (m, k)).astype(np.float32)
            B = rng.standard_normal((n, k) if tb == blas.TRANS else (k, n)).astype(np.float32)
            expected = (A.T if ta == blas.TRANS else A) @ (B.T if tb == blas.TRANS else B)
            for parts, by_rows in ((3, True), (2, False), (1, True)):
                C = np.full((m, n + 2), np.nan, np.float32)  # 2 extra columns must stay untouched
                for p in range(parts):
                    r0, r1, c0, c1 = 0, m, 0, n
                    if by_rows:
                        r0, r1 = blas.part(m, parts, p)
                    else:
                        c0, c1 = blas.part(n, parts, p)
                    blas.gemm_block(ta, tb, m, n, k, A.ravel(), A.shape[1], B.ravel(), B.shape[1], C.ravel(),
                                    n + 2, r0, r1, c0, c1)
                assert rel_error(C[:, :n], expected) < 1e-5
                assert np.isnan(C[:, n:]).all()


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 32, 9), (1, 1, 33), (33, 1, 1), (5, 17, 6), (9, 3, 33), (3, 257, 1),
                                     (40, 40, 40)])
def test_gemm_into_scales_the_old_result_by_beta_on_both_paths(rng, m, n, k):
    """C = op(A) op(B) + beta C for beta 0 (C's old contents, NaN here, never read), 1 and 0.5, with strided
    C rows, every transpose; small_gemm's loops (all but the last shape) and BLAS agree with NumPy."""
    for ta in (blas.NO_TRANS, blas.TRANS):
        for tb in (blas.NO_TRANS, blas.TRANS):
            A = rng.standard_normal((k, m) if ta == blas.TRANS else (m, k)).astype(np.float32)
            B = rng.standard_normal((n, k) if tb == blas.TRANS else (k, n)).astype(np.float32)
            product = (A.T if ta == blas.TRANS else A).astype(np.float64) @ (B.T if tb == blas.TRANS else B)
            for beta in (0.0, 1.0, 0.5):
                old = np.full((m, n + 1), np.nan, np.float32) if beta == 0 else \
                    rng.standard_normal((m, n + 1)).astype(np.float32)
                C = old.copy()
                blas.gemm_into(ta, tb, m, n, k, A.ravel(), A.shape[1], B.ravel(), B.shape[1], np.float32(beta),
                               C.ravel(), n + 1)
                expected = product + (0 if beta == 0 else beta * old[:, :n])
                assert np.abs(C[:, :n] - expected).max() < 1e-5 * (1 + np.abs(expected).max())
                np.testing.assert_array_equal(C[:, n], old[:, n])  # the column past each row untouched


def test_gemm_refuses_operands_that_do_not_fit():
    a = np.zeros(6, np.float32)
    c = np.zeros(4, np.float32)
    with pytest.raises(IndexError):
        blas.gemm(blas.NO_TRANS, blas.NO_TRANS, 2, 2, 3, a, 3, a[:5], 2, c, 2)  # B needs 6 elements
    with pytest.raises(IndexError):
        blas.gemm(blas.NO_TRANS, blas.NO_TRANS, 2, 2, 3, a, 3, a, 2, c[:3], 2)  # C needs 4


def test_huge_logits_stay_finite(rng):
    """Fused softmax-CE and sigmoid-BCE never overflow, whatever the logits."""
    for loss in ("cross_entropy", "bce"):
        t = fastbp.Trainer([2, 2], activation="identity", loss=loss, seed=0)
        t.set_params([(np.array([[1e4, -1e4], [-1e4, 1e4]]), np.zeros(2))])
        X = np.array([[1.0, 0.0], [0.0, 1.0]])
        y = np.array([1, 1]) if loss == "cross_entropy" else np.array([[0.0, 1.0], [1.0, 0.0]])
        value, grads = t.gradients(X, y)
        ref_value, _ = reference.loss_and_gradients(as64(t.params), X, y, "identity", loss)
        assert np.isfinite(value) and value == pytest.approx(ref_value, rel=1e-6)
        assert all(np.isfinite(g).all() for pair in grads for g in pair)


def test_first_adam_step_is_lr_times_sign_to_the_last_bit(rng):
    """Adam's first bias-corrected step is lr * g / (|g| + eps): a sign step. Computed carelessly in
    float32 (1 - float32(0.999) is off by 1.3e-5 relative) it lands several ulps away."""
    t = fastbp.Trainer([33, 257, 3], activation="tanh", loss="mse", optimizer="adam", lr=1e-2, seed=1)
    X, y = rng.standard_normal((7, 33)), rng.standard_normal((7, 3))
    before = t.state.params.astype(np.float64)
    t.gradients(X, y)
    g = t.state.grads.astype(np.float64)
    t.step(X, y)
    expected = before - 1e-2 * g / (np.abs(g) + 1e-8)
    # Two ulps of the operands p and lr; the careless form is off by lr * 6e-6 = 6e-8.
    assert np.all(np.abs(t.state.params - expected) <= 2.0 ** -22 * (np.abs(before) + 1e-2))


@pytest.mark.parametrize("threads", [1, 2])
def test_tiles_and_thread_splits_match_reference(rng, threads):
    """A batch spanning several delta-propagation tiles per thread, under different thread counts."""
    import numba
    from fastbp.cpu.delta_backward import TILE_ROWS
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    n = 2 * TILE_ROWS * threads + 37
    t = perturbed_trainer(rng, [5, 19, 3, 4], "tanh", "cross_entropy")
    X, y = rng.standard_normal((n, 5)), rng.integers(0, 4, n)
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        value, grads = t.gradients(X, y)
    finally:
        numba.set_num_threads(saved)
    ref_value, ref_grads = reference.loss_and_gradients(as64(t.params), X, y, "tanh", "cross_entropy")
    assert value == pytest.approx(ref_value, rel=TOL)
    for (dW, db), (rW, rb) in zip(grads, ref_grads):
        assert rel_error(dW, rW) < TOL and rel_error(db, rb) < TOL


def test_flush_to_zero_inside_kernels_only():
    """Subnormals are flushed inside fastbp's parallel loops (denormals.py) and nowhere else."""
    from numba import njit
    from fastbp.cpu.denormals import _X86, flush_denormals, restore

    @njit
    def halve(x, out, flush):
        saved = flush_denormals() if flush else 0
        for i in range(x.size):
            out[i] = x[i] * np.float32(0.5)
        if flush:
            restore(saved)

    x, out = np.full(4, 1e-38, np.float32), np.zeros(4, np.float32)
    halve(x, out, True)
    assert np.all(out == 0) if _X86 else True
    halve(x, out, False)
    assert np.all(out > 0)  # the thread's previous mode came back
    t = fastbp.Trainer([3, 4, 2], loss="cross_entropy", seed=0)
    t.step(np.ones((4, 3)), np.zeros(4, int))
    assert np.float32(1e-38) * np.float32(0.5) > 0  # the caller's floating-point mode is untouched


@pytest.mark.parametrize("n, m", [(1, 1), (3, 10), (65, 3), (257, 33)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_blocks_match_the_row_function(rng, n, m, smoothing):
    """cross_entropy_rows (the training steps' blocks of rows, exps vectorized) against cross_entropy_row and
    the sample-weight rule, rows in any block split: loss, hits and delta to float32 rounding; a label out
    of range gives a NaN loss and a zero delta, a row of weight 0 a loss of 0 and a zero delta."""
    from fastbp.cpu.loss_delta import cross_entropy_row, cross_entropy_rows
    z = (4 * rng.standard_normal((n, m))).astype(np.float32)
    labels = rng.integers(0, m, n + 4)
    labels[0] = m  # out of range
    rows = 1 + rng.permutation(n + 3)[:n].astype(np.int64)
    rows[0] = 0  # batch row 0: the bad label; batch row n // 2 (n > 1): weight 0
    weights = rng.random(n + 4) + 0.1
    weights[rows[n // 2]] = 0.0 if n > 1 else weights[rows[n // 2]]
    scale = 1.0 / weights[rows].sum()
    expected_loss, expected_hits, expected_delta = np.zeros(n), np.zeros(n), np.zeros((n, m), np.float32)
    for i in range(n):
        w = weights[rows[i]]
        acc, expected_hits[i] = cross_entropy_row(z[i], expected_delta[i], rows[i], m, labels, smoothing,
                                                  np.float32(w * scale), w != 0)
        expected_loss[i] = 0.0 if w == 0 else acc * w
    for split in (1, 2, 3):
        delta, row_loss, row_hits = z.copy(), np.full(n, np.nan), np.full(n, np.nan)  # in place, as the steps
        for b in range(split):
            cross_entropy_rows(delta.ravel(), delta.ravel(), b * n // split, (b + 1) * n // split, m, labels,
                               weights, rows, smoothing, scale, row_loss, row_hits)
        np.testing.assert_array_equal(row_hits, expected_hits)
        assert np.isnan(row_loss[0]) and np.isnan(expected_loss[0]) and not delta[0].any()
        assert (row_loss[n // 2] == 0 and not delta[n // 2].any()) if n > 1 else True
        np.testing.assert_allclose(row_loss[1:], expected_loss[1:], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(delta, expected_delta, rtol=1e-5, atol=1e-6 * np.abs(expected_delta).max())


@pytest.mark.parametrize("loss", LOSSES)
def test_predict_and_evaluate_apply_no_dropout(rng, loss):
    """A Trainer with dropout 0.5: predict and evaluate are the reference's forward pass without masks."""
    sizes = [7, 33, 3 if loss == "cross_entropy" else 2]
    t = perturbed_trainer(rng, sizes, "relu", loss, dropout=0.5)
    X = rng.standard_normal((40, sizes[0]))
    y = make_targets(rng, loss, 40, sizes[-1])
    params = as64(t.params)
    _, logits = reference.forward(params, X, "relu")
    assert rel_error(t.predict(X), reference.output_transform(logits, loss)) < TOL
    ref_loss, _ = reference.loss_and_gradients(params, X, y, "relu", loss)
    assert t.evaluate(X, y)["loss"] == pytest.approx(ref_loss, rel=TOL)


@pytest.mark.parametrize("sizes", [[5, 130, 3], [5, 19, 19, 3]], ids=["wide-layer", "narrow-forced"])
@pytest.mark.parametrize("batch", [549, 1061])
def test_layer_at_a_time_kernels_over_long_batches(rng, monkeypatch, sizes, batch):
    """The layer-at-a-time kernels (the mnist_bigbatch and wide path) on long batches against float64:
    a hidden width over the pipeline's 128, and a narrow network with the pipeline switched off."""
    from fastbp.cpu import pipeline
    monkeypatch.setattr(pipeline, "fits", lambda dims, n, threads: False)
    for activation in ("relu", "tanh"):
        t = perturbed_trainer(rng, sizes, activation, "cross_entropy")
        X = rng.standard_normal((batch, sizes[0]))
        y = rng.integers(0, sizes[-1], batch)
        ref_loss, ref_grads = reference.loss_and_gradients(as64(t.params), X, y, activation, "cross_entropy")
        value, grads = t.gradients(X, y)
        assert abs(value - ref_loss) / abs(ref_loss) < TOL
        for (dW, db), (rW, rb) in zip(grads, ref_grads):
            assert rel_error(dW, rW) < TOL and rel_error(db, rb) < TOL


def test_a_skipped_adam_step_leaves_moments_and_step_count_alone(rng):
    t = perturbed_trainer(rng, [4, 9, 2], "relu", "mse", optimizer="adam", lr=1e-2)
    X = rng.standard_normal((8, 4))
    t.step(X, rng.standard_normal((8, 2)))
    before = [a.copy() for a in (t.state.params, t.state.moment1, t.state.moment2)]
    huge = np.full((8, 2), 3e38)  # the squared error overflows: the loss is inf
    with pytest.raises(FloatingPointError, match="the update was not applied"):
        t.step(X, huge)
    for saved, now in zip(before, (t.state.params, t.state.moment1, t.state.moment2)):
        np.testing.assert_array_equal(now, saved)
    assert t.step_count == 1


def weights_with_zeros(rng, n):
    """Sample weights in [0, 3) with one 0 (a row that must not count) when there are several rows."""
    w = rng.random(n) * 3
    if n > 1:
        w[n // 2] = 0.0
    return w


@pytest.mark.parametrize("batch", [1, 3, 33, 257])
@pytest.mark.parametrize("loss", LOSSES)
def test_sample_weighted_loss_gradients_and_steps_match_reference(rng, loss, batch, kernel_path):
    """The weighted mean loss (sum w_i loss_i / sum w_i) and its gradient, then two whole SGD steps on
    weighted batches (SGD: Adam's first steps, about lr x sign(g), would amplify float32 rounding in
    near-zero gradient entries), against the float64 reference; evaluate's loss is the weighted mean too."""
    sizes = [33, 3, 257, 3 if loss == "cross_entropy" else 2]
    t = perturbed_trainer(rng, sizes, "tanh", loss, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01)
    X = rng.standard_normal((batch, sizes[0]))
    y = make_targets(rng, loss, batch, sizes[-1])
    w = weights_with_zeros(rng, batch)
    ref_loss, ref_grads = reference.loss_and_gradients(as64(t.params), X, y, "tanh", loss, weights=w)
    value, grads = t.gradients(X, y, sample_weight=w)
    assert value == pytest.approx(ref_loss, rel=TOL)
    for (dW, db), (rW, rb) in zip(grads, ref_grads):
        assert rel_error(dW, rW) < TOL and rel_error(db, rb) < TOL
    assert t.evaluate(X, y, sample_weight=w)["loss"] == pytest.approx(ref_loss, rel=TOL)
    ref = reference.Network(as64(t.params), activation="tanh", loss=loss, kind="sgd", lr=0.05, momentum=0.9,
                            weight_decay=0.01)
    for _ in range(2):
        assert t.step(X, y, sample_weight=w) == pytest.approx(ref.step(X, y, w), rel=TOL)
    for (W, b), (rW, rb) in zip(t.params, ref.params):
        assert rel_error(W, rW) < TOL and rel_error(b, rb) < TOL


@pytest.mark.parametrize("n, options", [(40, {}), (40, {"micro_batch": 16}), (600, {})],
                         ids=["batch", "micro-batches", "pipeline-tiles"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ["relu", ("gelu", "silu")], ids=["relu", "gelu-silu"])
def test_a_row_of_weight_zero_counts_for_nothing_whatever_its_values(rng, loss, n, options, activation, kernel_path):
    """Rows of weight 0 whose inputs (and targets) are at float32's edge, so that their forward pass
    overflows: the loss, gradients, steps and evaluate are bit for bit those with harmless values in
    those rows (before: 0 x inf = NaN, and every step of the batch was refused). 600 rows of a narrow
    network take the per-thread pipeline on the parallel path. gelu and silu store act'(Z), NaN at an
    infinite Z: those rows' slopes are cleared too."""
    out = 3 if loss == "cross_entropy" else 2
    X = rng.standard_normal((n, 6))
    y = make_targets(rng, loss, n, out)
    w = rng.random(n) * 2
    w[[3, 17]] = 0.0
    hostile_X, hostile_y = X.copy(), np.array(y, copy=True)
    hostile_X[3] = 3e38
    hostile_X[17, 0] = -3e38
    if loss in ("mse", "poisson"):
        hostile_y[17] = 3e38
    harmless_X = X.copy()
    harmless_X[[3, 17]] = 0.0
    runs = []
    for data in ((hostile_X, hostile_y), (harmless_X, y)):
        t = fastbp.Trainer([6, 9, 7, out], activation=activation, loss=loss, optimizer="adam", lr=1e-2, seed=2,
                           **options)
        value, grads = t.gradients(*data, sample_weight=w)
        steps = [t.step(*data, sample_weight=w) for _ in range(3)]
        runs.append((value, grads, steps, t.params, t.evaluate(*data, sample_weight=w)["loss"]))
    (v1, g1, s1, p1, e1), (v2, g2, s2, p2, e2) = runs
    assert np.isfinite(v1) and v1 == v2 and s1 == s2 and e1 == e2
    for (a, b), (c, d) in zip(g1 + p1, g2 + p2):
        assert np.array_equal(a, c) and np.array_equal(b, d)


def test_sample_weights_are_checked_and_unit_weights_change_nothing(rng):
    t = perturbed_trainer(rng, [4, 5, 3], "relu", "cross_entropy")
    X, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    for bad, message in (([1.0] * 5, "one weight per row"), ([1, 1, -1, 1, 1, 1], "non-negative"),
                         ([1, np.nan, 1, 1, 1, 1], "finite"), (np.zeros(6), "0 for every row"),
                         (np.ones((6, 1)), "1-D")):
        with pytest.raises(ValueError, match=message):
            t.step(X, y, sample_weight=bad)
    assert t.step_count == 0
    assert t.gradients(X, y, sample_weight=np.ones(6))[0] == t.gradients(X, y)[0]
    # A weight of 0 leaves its row out: the same as not giving it.
    w = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    kept = w > 0
    value, grads = t.gradients(X, y, sample_weight=w)
    value_kept, grads_kept = t.gradients(X[kept], y[kept])
    assert value == pytest.approx(value_kept, rel=1e-6)
    for (dW, db), (kW, kb) in zip(grads, grads_kept):
        assert rel_error(dW, kW) < 1e-6 and rel_error(db, kb) < 1e-6


@pytest.mark.parametrize("sizes, activations", [([3, 1], ["identity"]), ([5, 33, 3], ["relu", "identity"]),
                                                ([4, 7, 9, 2], ["tanh", "gelu", "identity"])])
@pytest.mark.parametrize("n", [1, 3, 257])
def test_offsets_match_accepts_the_layout_and_nothing_else(sizes, activations, n):
    """serial.run_steps checks the workspace layout its caller passes (it allocates nothing, so it cannot
    compute its own): dense_forward.offsets_match must accept exactly activation_offsets and slope_offsets,
    and refuse a layout with any one entry off by one, or for other rows."""
    from fastbp.cpu.activations import slope_offsets
    from fastbp.cpu.dense_forward import activation_offsets, offsets_match
    from fastbp.options import ACTIVATIONS as CODES
    dims = np.array(sizes, np.int64)
    codes = np.array([CODES[a] for a in activations], np.int64)
    act_off = activation_offsets(dims, n)
    slope_off = slope_offsets(dims, codes, n, act_off[-1])
    assert offsets_match(dims, codes, n, act_off, slope_off)
    assert not offsets_match(dims, codes, n + 1, act_off, slope_off)
    assert not offsets_match(dims, codes, n, act_off[:-1], slope_off)
    assert not offsets_match(dims, codes, n, act_off, slope_off[:-1])
    for which, offsets in (("act", act_off), ("slope", slope_off)):
        for i in range(offsets.size):
            for delta in (-1, 1):
                changed = offsets.copy()
                changed[i] += delta
                pair = (changed, slope_off) if which == "act" else (act_off, changed)
                assert not offsets_match(dims, codes, n, *pair), (which, i, delta)


@pytest.mark.parametrize("wrong", ["other_rows", "copy_of_another_size"])
def test_run_steps_refuses_a_layout_that_is_not_the_workspaces(wrong):
    """A layout that is not the workspace's (for one row fewer, or with a W^T copy one element short of W's
    size: step.py) raises IndexError before any step."""
    from fastbp.cpu import backend
    t = fastbp.Trainer([4, 8, 3], loss="cross_entropy", batch_size=8, seed=0)
    X = np.zeros((8, 4), np.float32)
    labels = np.zeros(8, np.int64)
    t.step(X, labels)
    before = t.state.params.copy()
    ws = t._backend._workspaces.get(8)
    good = ws.layout
    if wrong == "other_rows":
        ws.layout = backend.Workspace(t.state.dims, t._backend.activations, 7).layout
    else:
        ws.layout = (good[0], good[1], np.array([0, 0, 8 * 3 - 1], np.int64))
    try:
        with pytest.raises(IndexError, match="act_off, slope_off or weight_t_off"):
            t.step(X, labels)
    finally:
        ws.layout = good
    np.testing.assert_array_equal(t.state.params, before)
