"""The float64 reference itself, checked against central finite differences and by hand."""
import numpy as np
import pytest

from fastbp import reference
from conftest import ALL_ACTIVATIONS, ALL_LOSSES, LOSSES, loss_options, make_targets, per_layer, rel_error


def random_params(rng, sizes, scale=0.5):
    return [(rng.standard_normal((a, b)) * scale, rng.standard_normal(b) * scale)
            for a, b in zip(sizes[:-1], sizes[1:])]


def sample_weights(rng, n):
    """Weights in [0, 2) with a zero among them."""
    w = rng.random(n) * 2
    w[n // 2] = 0.0
    return w


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss", ALL_LOSSES)
@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_gradients_match_finite_differences(rng, activation, loss, weighted):
    sizes, n = [4, 5, 3, 3], 6
    activation = per_layer(activation, sizes)
    params = random_params(rng, sizes)
    X = rng.standard_normal((n, sizes[0]))
    y = make_targets(rng, loss, n, sizes[-1])
    w = sample_weights(rng, n) if weighted else None
    loss, options = loss_options(loss)
    _, grads = reference.loss_and_gradients(params, X, y, activation, loss, weights=w, **options)
    h = 1e-6
    for (W, b), (dW, db) in zip(params, grads):
        for p, dp in ((W, dW), (b, db)):
            numeric = np.zeros_like(p)
            for idx in np.ndindex(p.shape):
                saved = p[idx]
                p[idx] = saved + h
                up = reference.loss_and_gradients(params, X, y, activation, loss, weights=w, **options)[0]
                p[idx] = saved - h
                down = reference.loss_and_gradients(params, X, y, activation, loss, weights=w, **options)[0]
                p[idx] = saved
                numeric[idx] = (up - down) / (2 * h)
            assert rel_error(dp, numeric) < 1e-6


@pytest.mark.parametrize("loss", LOSSES)
def test_integer_sample_weights_equal_repeated_rows(rng, loss):
    """Weight k on a row is the row k times over (0: left out): the definition of a weighted mean."""
    sizes, n = [4, 5, 3], 7
    params = random_params(rng, sizes)
    X = rng.standard_normal((n, sizes[0]))
    y = make_targets(rng, loss, n, sizes[-1])
    w = rng.integers(0, 4, n)
    w[0] = 2
    repeated = np.repeat(np.arange(n), w)
    value, grads = reference.loss_and_gradients(params, X, y, "tanh", loss, weights=w.astype(float))
    expected_value, expected = reference.loss_and_gradients(params, X[repeated], y[repeated], "tanh", loss)
    assert value == pytest.approx(expected_value, rel=1e-12)
    for (dW, db), (eW, eb) in zip(grads, expected):
        assert rel_error(dW, eW) < 1e-12 and rel_error(db, eb) < 1e-12
    zero_value, zero_grads = reference.loss_and_gradients(params, X, y, "tanh", loss, weights=np.zeros(n))
    assert zero_value == 0 and all(not dW.any() and not db.any() for dW, db in zero_grads)


def test_losses_by_hand():
    logits = np.array([[2.0, -1.0, 0.5]])
    value, _ = reference.loss_and_output_delta(logits, np.array([2]), "cross_entropy")
    assert value == pytest.approx(np.log(np.exp(logits).sum()) - 0.5)
    value, delta = reference.loss_and_output_delta(logits, np.array([[1.0, 0.0, 1.0]]), "mse")
    assert value == pytest.approx(((logits - [1, 0, 1]) ** 2).mean())
    assert delta == pytest.approx(2 * (logits - [1, 0, 1]) / 3)
    value, _ = reference.loss_and_output_delta(logits, np.array([[1.0, 0.0, 1.0]]), "bce")
    p = 1 / (1 + np.exp(-logits))
    assert value == pytest.approx(-(np.log(p[0, 0]) + np.log(1 - p[0, 1]) + np.log(p[0, 2])) / 3)
    value, delta = reference.loss_and_output_delta(logits, np.array([[1.0, 0.0, 3.0]]), "poisson")
    assert value == pytest.approx((np.exp(logits) - logits * [1, 0, 3]).mean())  # PoissonNLLLoss(log_input=True)
    assert delta == pytest.approx((np.exp(logits) - [1, 0, 3]) / 3)


def test_stable_for_huge_logits():
    logits = np.array([[1e4, -1e4], [-1e4, 1e4]])
    for loss, y in (("cross_entropy", np.array([0, 0])), ("bce", np.array([[1.0, 0.0], [1.0, 0.0]]))):
        value, delta = reference.loss_and_output_delta(logits, y, loss)
        assert np.isfinite(value) and np.isfinite(delta).all()
    assert reference.loss_and_output_delta(logits, np.array([0, 0]), "cross_entropy")[0] == pytest.approx(1e4)


def test_sgd_and_adam_first_steps_by_hand():
    g = np.array([0.5, -2.0])
    p = np.array([1.0, 1.0])
    opt = reference.Optimizer([(p, np.zeros(0))], kind="adam", lr=0.1)
    opt.step([(p, np.zeros(0))], [(g, np.zeros(0))])
    # Adam's first bias-corrected step moves every parameter by lr * sign(g) (up to eps).
    assert p == pytest.approx([0.9, 1.1])
    q = np.array([1.0, 1.0])
    opt = reference.Optimizer([(q, np.zeros(0))], kind="sgd", lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.step([(q, np.zeros(0))], [(g, np.zeros(0))])
    # buf1 = g, buf2 = 0.9 g + g
    assert q == pytest.approx(1.0 - 0.1 * g - 0.1 * 1.9 * g)


@pytest.mark.parametrize("eps", [1e-8, 0.3])
def test_adam_eps_hat_takes_scikit_learns_adam_steps(eps):
    """eps_hat=True is the Adam of Kingma and Ba's algorithm as Keras and scikit-learn write it; checked
    against scikit-learn's own AdamOptimizer over several steps, with an eps large enough to matter, and
    against PyTorch's convention (eps_hat=False), which differs by eps x (1/sqrt(1 - b2^t) - 1)."""
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer
    rng = np.random.default_rng(0)
    p = rng.standard_normal(6)
    q, r = p.copy(), p.copy()
    ours = reference.Optimizer([(q, np.zeros(0))], kind="adam", lr=0.05, eps=eps, eps_hat=True)
    torch_like = reference.Optimizer([(r, np.zeros(0))], kind="adam", lr=0.05, eps=eps)
    theirs = AdamOptimizer([p], learning_rate_init=0.05, epsilon=eps)
    for _ in range(5):
        g = 0.1 * rng.standard_normal(6)
        ours.step([(q, np.zeros(0))], [(g, np.zeros(0))])
        torch_like.step([(r, np.zeros(0))], [(g, np.zeros(0))])
        theirs.update_params([p], [g])
        np.testing.assert_allclose(q, p, rtol=1e-12, atol=1e-14)
    assert np.abs(r - p).max() > (1e-3 if eps == 0.3 else 0.0)


def test_huber_l1_and_label_smoothing_by_hand():
    """The newer losses on one row written out: Huber (delta 1) inside and outside delta, L1, and a smoothed
    cross-entropy against its definition -sum_k q_k log p_k."""
    z, t = np.array([[0.5, 3.0, -2.0]]), np.array([[0.0, 0.0, 0.0]])
    value, delta = reference.loss_and_output_delta(z, t, "huber")
    assert value == pytest.approx((0.125 + 2.5 + 1.5) / 3)
    np.testing.assert_allclose(delta, [[0.5 / 3, 1 / 3, -1 / 3]])
    value, delta = reference.loss_and_output_delta(z, t, "l1")
    assert value == pytest.approx(5.5 / 3)
    np.testing.assert_allclose(delta, [[1 / 3, 1 / 3, -1 / 3]])
    value, delta = reference.loss_and_output_delta(z, np.array([1]), "cross_entropy", label_smoothing=0.3)
    p = np.exp(z[0]) / np.exp(z[0]).sum()
    q = np.array([0.1, 0.8, 0.1])
    assert value == pytest.approx(-(q * np.log(p)).sum())
    np.testing.assert_allclose(delta[0], p - q)
