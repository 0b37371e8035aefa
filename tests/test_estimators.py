"""fastbp.MLPClassifier / MLPRegressor under scikit-learn's own estimator checks and conventions."""
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits, make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastbp  # noqa: E402

FLOAT32_BLAS = ("float32 matrix products: the last bit of a row's output can depend on which rows are "
                "computed with it (BLAS blocking), beyond this check's rtol of 1e-7")


# Measured: weighted and repeated rows agree to 1e-6 of each probability (float32 sums in another order).
FLOAT32_WEIGHTS = ("float32 kernels: a weighted row and the row repeated add up in different orders, so their "
                   "fits agree to float32 rounding (1e-6 here), not this check's rtol of 1e-7")


def expected_failures(estimator):
    failures = {"check_methods_sample_order_invariance": FLOAT32_BLAS,
                "check_sample_weight_equivalence_on_dense_data": FLOAT32_WEIGHTS,
                "check_sample_weight_equivalence_on_sparse_data": FLOAT32_WEIGHTS}
    if isinstance(estimator, fastbp.MLPRegressor):
        failures["check_methods_subset_invariance"] = FLOAT32_BLAS
    return failures


@parametrize_with_checks([fastbp.MLPClassifier(random_state=0), fastbp.MLPRegressor(random_state=0)],
                         expected_failed_checks=expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_string_labels_pipeline_and_cross_validation():
    X, y = load_digits(return_X_y=True)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    model = make_pipeline(StandardScaler(), fastbp.MLPClassifier(hidden_layer_sizes=(64,), max_iter=30,
                                                                 random_state=0))
    scores = cross_val_score(model, X, names[y], cv=3)
    assert scores.mean() > 0.85
    clf = model.fit(X, names[y])[-1]
    assert list(clf.classes_) == sorted(names) and set(model.predict(X[:20])) <= set(names)
    assert [W.shape for W in clf.coefs_] == [(64, 64), (64, 10)] and [b.shape for b in clf.intercepts_] == [(64,), (10,)]
    assert len(clf.loss_curve_) == clf.n_iter_ and clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.predict_proba(X[:5]).shape == (5, 10) and np.allclose(clf.predict_proba(X[:5]).sum(1), 1)


def test_binary_partial_fit_and_early_stopping():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 4))
    y = np.where(X[:, 0] * X[:, 1] > 0, "same", "different")
    clf = fastbp.MLPClassifier(hidden_layer_sizes=(32,), random_state=0, learning_rate_init=0.01)
    for _ in range(30):
        clf.partial_fit(X, y, classes=["different", "same"])
    assert clf.n_iter_ == 30 and clf.out_activation_ == "logistic" and clf.score(X, y) > 0.9
    with pytest.raises(ValueError, match="classes must be passed"):
        fastbp.MLPClassifier().partial_fit(X, y)
    es = fastbp.MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, n_iter_no_change=3, max_iter=300,
                              random_state=0, learning_rate_init=0.01).fit(X, y)
    assert es.n_iter_ < 300 and len(es.validation_scores_) == es.n_iter_
    assert es.best_validation_score_ == max(es.validation_scores_)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_regressor_multi_output_and_r2():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((800, 3))
    Y = np.stack([np.sin(X[:, 0]) + X[:, 1], X[:, 2] ** 2], axis=1)
    reg = fastbp.MLPRegressor(hidden_layer_sizes=(64, 64), activation="tanh", max_iter=300,
                              learning_rate_init=3e-3, random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (800, 2) and reg.score(X, Y) > 0.95
    single = fastbp.MLPRegressor(hidden_layer_sizes=(16,), max_iter=5, random_state=0).fit(X, Y[:, 0])
    assert single.predict(X).shape == (800,)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_accuracy_comparable_to_scikit_learn_mlp():
    from sklearn.neural_network import MLPClassifier as SkMLP
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    kw = dict(hidden_layer_sizes=(64,), max_iter=40, random_state=0)
    ours = fastbp.MLPClassifier(**kw).fit(X[:1400], y[:1400]).score(X[1400:], y[1400:])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = SkMLP(**kw).fit(X[:1400], y[:1400]).score(X[1400:], y[1400:])
    assert ours > theirs - 0.03


def test_bad_parameters_are_clear_errors():
    X, y = np.zeros((10, 2)), np.arange(10) % 2
    for kwargs, match in ((dict(solver="newton"), "unknown solver"), (dict(activation="mish"), "activation"),
                          (dict(hidden_layer_sizes=(0,)), "hidden_layer_sizes"), (dict(max_iter=0), "max_iter")):
        with pytest.raises(ValueError, match=match):
            fastbp.MLPClassifier(**kwargs).fit(X, y)


def test_options_beyond_the_defaults_reach_the_trainer():
    """scikit-learn's names mapped onto the Trainer: SGD momentum and Nesterov, alpha as weight decay
    alpha / batch_size, 'logistic' as sigmoid, Adam's betas and epsilon."""
    X, y = make_classification(n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=0)
    sgd = fastbp.MLPClassifier(hidden_layer_sizes=(7,), solver="sgd", momentum=0.5, nesterovs_momentum=False,
                        alpha=0.02, batch_size=20, activation="logistic", max_iter=2, random_state=0)
    with pytest.warns(ConvergenceWarning):
        sgd.fit(X, y)
    c = sgd.trainer_.config
    assert (c.optimizer, c.momentum, c.nesterov, c.activation) == ("sgd", 0.5, False, "sigmoid")
    assert c.weight_decay == pytest.approx(0.02 / 20)
    adam = fastbp.MLPClassifier(hidden_layer_sizes=(7,), beta_1=0.8, beta_2=0.95, epsilon=1e-6, max_iter=2, random_state=0)
    with pytest.warns(ConvergenceWarning):
        adam.fit(X, y)
    c = adam.trainer_.config
    assert tuple(c.betas) == (0.8, 0.95) and c.eps == pytest.approx(1e-6)


def test_tol_and_n_iter_no_change_stop_where_scikit_learn_stops():
    """With a tol no epoch can beat, training stops after the epoch count scikit-learn's own MLP stops at."""
    from sklearn.neural_network import MLPClassifier as SklearnMLP
    X, y = make_classification(n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=0)
    for patience in (1, 3):
        options = dict(hidden_layer_sizes=(7,), tol=1e9, n_iter_no_change=patience, max_iter=50, random_state=0)
        theirs = SklearnMLP(**options).fit(X, y)
        ours = fastbp.MLPClassifier(**options).fit(X, y)
        assert ours.n_iter_ == theirs.n_iter_ == patience + 2


@pytest.mark.parametrize("options", [
    dict(tol=1e-2, max_iter=300),  # stops by tol, in groups of up to n_iter_no_change + 1 epochs
    dict(solver="sgd", learning_rate="adaptive", tol=1e-3, max_iter=120),  # rate divided by 5 at group ends
    dict(solver="sgd", learning_rate_init=50.0, max_iter=40),  # diverges mid-group
    dict(max_iter=60, alpha=0.3, n_iter_no_change=2),
    dict(max_iter=60, alpha=0.3, batch_size=50),  # epochs of 50 + 50 + 20 rows
], ids=["tol", "adaptive", "diverges", "alpha", "short-last-batch"])
def test_several_epochs_per_call_give_the_one_epoch_loops_bits(monkeypatch, options):
    """fit runs several epochs per compiled call, its callbacks then seeing each epoch's logs in turn
    (loop.epochs_at_once): the same n_iter_, loss curve (the alpha term's squared weights taken inside the
    call) and weights as one epoch per call."""
    from fastbp import loop
    X, y = make_classification(n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=0)
    runs = []
    for most in (loop.MAX_EPOCHS_AT_ONCE, 1):
        monkeypatch.setattr(loop, "MAX_EPOCHS_AT_ONCE", most)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = fastbp.MLPClassifier(hidden_layer_sizes=(9,), random_state=0, **options).fit(X, y)
        runs.append(est)
    grouped, single = runs
    assert grouped.n_iter_ == single.n_iter_ > 2
    np.testing.assert_array_equal(grouped.loss_curve_, single.loss_curve_)
    for a, b in zip(grouped.coefs_ + grouped.intercepts_, single.coefs_ + single.intercepts_):
        np.testing.assert_array_equal(a, b)


def lbfgs_objective(est, X, y, scale, sample_weight=None):
    """scikit-learn's L-BFGS objective at the estimator's parameters, in float64: the (weighted) data loss
    (x scale) plus alpha / (2 n) x the squared weights (n: the rows, or the sample weights' sum)."""
    from fastbp import reference
    params = [(W.astype(np.float64), b.astype(np.float64)) for W, b in est.trainer_.params]
    targets = est._encode_targets(y, first_call=False)
    loss, _ = reference.loss_and_gradients(params, X, targets, est.trainer_.config.activation, est._loss,
                                           weights=sample_weight)
    n = len(X) if sample_weight is None else sample_weight.sum()
    return loss * scale + est.alpha / (2 * n) * sum(float((W ** 2).sum()) for W, _ in params)


def test_lbfgs_classifier_fits_and_reports_scikit_learns_objective():
    X, y = make_classification(n_samples=150, n_features=6, n_informative=4, n_classes=3, random_state=1)
    X = StandardScaler().fit_transform(X)
    clf = fastbp.MLPClassifier(solver="lbfgs", hidden_layer_sizes=(16,), alpha=1e-2, max_iter=300, random_state=0)
    clf.fit(X, y)
    assert clf.score(X, y) > 0.95
    assert 1 <= clf.n_iter_ <= 300
    assert clf.loss_ == pytest.approx(lbfgs_objective(clf, X, y, 1.0), rel=1e-4)
    assert not hasattr(clf, "partial_fit")  # as scikit-learn: lbfgs is not stochastic
    with pytest.raises(AttributeError, match="partial_fit"):
        clf.partial_fit(X, y)


def test_lbfgs_regressor_objective_is_half_the_squared_error_plus_the_weight_penalty():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.standard_normal(80)
    reg = fastbp.MLPRegressor(solver="lbfgs", hidden_layer_sizes=(8,), alpha=0.5, max_iter=200, random_state=0)
    reg.fit(X, y)
    assert reg.score(X, y) > 0.9
    assert reg.loss_ == pytest.approx(lbfgs_objective(reg, X, y, 0.5), rel=1e-4)
    # The penalty holds back the weights, not the biases: a larger alpha, a smaller sum of squared weights
    # (what it penalizes; their absolute sum need not shrink).
    heavy = fastbp.MLPRegressor(solver="lbfgs", hidden_layer_sizes=(8,), alpha=50.0, max_iter=200,
                                random_state=0).fit(X, y)
    assert sum((W ** 2).sum() for W in heavy.coefs_) < 0.8 * sum((W ** 2).sum() for W in reg.coefs_)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_lbfgs_with_sample_weights_minimizes_the_weighted_objective():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((80, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * rng.standard_normal(80)
    w = rng.random(80) * 3
    reg = fastbp.MLPRegressor(solver="lbfgs", hidden_layer_sizes=(8,), alpha=0.5, max_iter=300, random_state=0)
    reg.fit(X, y, sample_weight=w)
    assert reg.loss_ == pytest.approx(lbfgs_objective(reg, X, y, 0.5, w), rel=1e-4)
    # At the weighted fit's minimum the unweighted objective is higher than the unweighted fit's.
    plain = fastbp.MLPRegressor(solver="lbfgs", hidden_layer_sizes=(8,), alpha=0.5, max_iter=300,
                                random_state=0).fit(X, y)
    assert lbfgs_objective(reg, X, y, 0.5, w) < lbfgs_objective(plain, X, y, 0.5, w)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_sample_weights_take_scikit_learns_steps(solver):
    """A whole-batch epoch with sample weights from the same starting weights: scikit-learn's weighted
    mean loss, and its penalty alpha / (sum of the weights), to float32 rounding."""
    from sklearn.neural_network import MLPClassifier
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    w = rng.random(40) * 4
    w[:5] = 0.0
    models = []
    for cls in (fastbp.MLPClassifier, MLPClassifier):
        model = cls(max_iter=1, warm_start=True, shuffle=False, random_state=0, hidden_layer_sizes=(6,),
                    solver=solver, alpha=1.5, batch_size=40, learning_rate_init=0.05)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
            if not models:
                start = ([W.astype(np.float64) for W in model.coefs_], [b + 0.5 for b in model.intercepts_])
            model.coefs_, model.intercepts_ = [W.copy() for W in start[0]], [b.copy() for b in start[1]]
            model.fit(X, y, sample_weight=w)
        models.append(model)
    ours, theirs = models
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    assert ours.score(X, y, sample_weight=w) == theirs.score(X, y, sample_weight=w)


def test_lbfgs_limits_warn_as_scikit_learn_does():
    X, y = make_classification(n_samples=100, n_features=5, random_state=0)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        est = fastbp.MLPClassifier(solver="lbfgs", hidden_layer_sizes=(5,), max_iter=2, random_state=0).fit(X, y)
    assert est.n_iter_ == 2
    with pytest.warns(ConvergenceWarning, match="max_fun"):
        fastbp.MLPClassifier(solver="lbfgs", hidden_layer_sizes=(5,), max_fun=3, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="max_fun must be a positive integer"):
        fastbp.MLPClassifier(solver="lbfgs", max_fun=0).fit(X, y)


def test_warm_start_continues_from_the_fitted_network():
    X, y = make_classification(n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=0)
    est = fastbp.MLPClassifier(hidden_layer_sizes=(7,), max_iter=3, random_state=0, warm_start=True)
    with pytest.warns(ConvergenceWarning):
        est.fit(X, y)
    first = [W.copy() for W in est.coefs_]
    seen = est.t_
    assert seen == 3 * 120  # samples seen, as scikit-learn counts t_
    est.set_params(learning_rate_init=1e-12, max_iter=1)
    with pytest.warns(ConvergenceWarning):
        est.fit(X, y)
    for W, W0 in zip(est.coefs_, first):  # continued from the fitted weights (a new network would differ)
        np.testing.assert_allclose(W, W0, atol=1e-6)
    assert est.n_iter_ == 1 and est.t_ == seen + 120 and len(est.loss_curve_) == 4
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same classes"):
        est.fit(X[y < 2], y[y < 2])
    cold = fastbp.MLPClassifier(hidden_layer_sizes=(7,), max_iter=1, random_state=1, learning_rate_init=1e-12)
    with pytest.warns(ConvergenceWarning):
        cold.fit(X, y)
        cold.fit(X, y)
    assert cold.t_ == 120  # without warm_start each fit starts again


def test_multilabel_indicator_targets_get_one_sigmoid_per_label():
    from sklearn.datasets import make_multilabel_classification
    from sklearn.neural_network import MLPClassifier as SklearnMLP
    X, Y = make_multilabel_classification(n_samples=200, n_features=8, n_classes=4, random_state=0)
    X = StandardScaler().fit_transform(X)
    clf = fastbp.MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(X, Y)
    assert clf.trainer_.config.loss == "bce" and clf.trainer_.sizes[-1] == 4
    assert clf.out_activation_ == "logistic"
    np.testing.assert_array_equal(clf.classes_, np.arange(4))
    P, pred = clf.predict_proba(X), clf.predict(X)
    assert P.shape == pred.shape == (200, 4) and ((P >= 0) & (P <= 1)).all()
    np.testing.assert_array_equal(pred, (P > 0.5).astype(int))
    theirs = SklearnMLP(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(X, Y)
    assert clf.score(X, Y) > theirs.score(X, Y) - 0.1  # subset accuracy, scikit-learn's own as the yardstick
    # L-BFGS: scikit-learn's multi-label objective sums the labels' losses.
    lb = fastbp.MLPClassifier(solver="lbfgs", hidden_layer_sizes=(16,), alpha=1e-3, max_iter=100, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lb.fit(X, Y)
    assert lb.loss_ == pytest.approx(lbfgs_objective(lb, X, Y, 4.0), rel=1e-4)
    with pytest.raises(ValueError, match="multi-label indicator"):
        fastbp.MLPClassifier(max_iter=1).fit(X, np.stack([Y[:, 0] * 2, Y[:, 1]], axis=1))
    with pytest.raises(ValueError, match="fitted with 4 labels"):
        clf.partial_fit(X, Y[:, 0])


def test_learning_rate_schedules_follow_scikit_learn():
    """invscaling: learning_rate_init / (samples seen + 1) ** power_t after each epoch; adaptive: divided by 5
    each time n_iter_no_change + 1 epochs pass without improvement, stopping once it is below 1e-6 (what
    scikit-learn's own tests of these read from its private _optimizer)."""
    X, y = make_classification(n_samples=60, n_features=5, random_state=0)
    inv = fastbp.MLPClassifier(solver="sgd", learning_rate="invscaling", power_t=0.25, hidden_layer_sizes=(4,),
                               max_iter=3, learning_rate_init=0.1, random_state=0)
    with pytest.warns(ConvergenceWarning):
        inv.fit(X, y)
    assert inv.trainer_.lr == pytest.approx(0.1 / (3 * 60 + 1) ** 0.25)
    adaptive = fastbp.MLPClassifier(solver="sgd", learning_rate="adaptive", tol=1e9, n_iter_no_change=2,
                                    hidden_layer_sizes=(4,), max_iter=3000, learning_rate_init=0.1, random_state=0)
    adaptive.fit(X, y)
    assert adaptive.trainer_.lr < 1e-6
    # The first epoch improves on the initial infinite best loss; then every 3 epochs without improvement
    # the rate / 5, from 0.1 until below 1e-6 (8 times), and the 9th time a stop.
    assert adaptive.n_iter_ == 1 + 3 * 9
    constant = fastbp.MLPClassifier(solver="adam", learning_rate="invscaling", hidden_layer_sizes=(4,), max_iter=2,
                                    random_state=0)
    with pytest.warns(ConvergenceWarning):
        constant.fit(X, y)
    assert constant.trainer_.lr == 1e-3  # schedules are for sgd only, as in scikit-learn
    with pytest.raises(ValueError, match="learning_rate"):
        fastbp.MLPClassifier(learning_rate="cosine").fit(X, y)


def test_a_diverging_loss_is_recorded_not_raised():
    """As scikit-learn: NaN in loss_curve_ (and validation_scores_), a ConvergenceWarning; fastbp stops
    there with finite parameters."""
    X, y = make_classification(n_samples=80, n_features=5, random_state=0)
    reg = fastbp.MLPRegressor(solver="sgd", learning_rate_init=10.0, momentum=0.9, activation="identity",
                              hidden_layer_sizes=(50,), max_iter=50, early_stopping=True, random_state=0)
    with pytest.warns(ConvergenceWarning, match="training stopped"):
        reg.fit(X * 1e3, y * 1e3)
    assert np.isnan(reg.loss_curve_[-1]) and np.isnan(reg.validation_scores_[-1])
    assert all(np.isfinite(W).all() for W in reg.coefs_)


def test_sparse_x_trains_as_its_dense_copy_and_coefs_are_settable():
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 9)) * (rng.random((120, 9)) < 0.3)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    dense = fastbp.MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=0)
    sparse = fastbp.MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dense.fit(X, y)
        sparse.fit(sp.csr_matrix(X), y)
    np.testing.assert_array_equal(sparse.predict_proba(sp.csc_matrix(X)), dense.predict_proba(X))
    sparse.coefs_ = [W * 0 for W in sparse.coefs_]
    sparse.intercepts_ = [b * 0 + 1 for b in sparse.intercepts_]
    assert all((W == 0).all() for W in sparse.coefs_) and all((b == 1).all() for b in sparse.intercepts_)
    # Zero weights, bias 1 on every unit: the one output is sigmoid(1) whatever the row.
    np.testing.assert_allclose(sparse.predict_proba(X)[:, 1], 1 / (1 + np.exp(-1.0)), rtol=1e-6)
    with pytest.raises(ValueError, match="one array per layer"):
        sparse.coefs_ = sparse.coefs_[:1]
    with pytest.raises(ValueError):
        sparse.coefs_ = [np.zeros((2, 2)), np.zeros((6, 1))]


def one_epoch_from_the_same_weights(fastbp_cls, sklearn_cls, X, y, **params):
    """Both estimators' parameters after one more epoch (warm_start) from the same starting weights."""
    models = []
    start = None
    for cls in (fastbp_cls, sklearn_cls):
        model = cls(max_iter=1, warm_start=True, shuffle=False, random_state=0, **params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
            if start is None:
                start = ([W.astype(np.float64) for W in model.coefs_], [b + 0.5 for b in model.intercepts_])
            model.coefs_, model.intercepts_ = [W.copy() for W in start[0]], [b.copy() for b in start[1]]
            model.fit(X, y)
        models.append(model)
    return models


@pytest.mark.parametrize("alpha", [0.0, 2.0])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("task", ["regression", "poisson", "multilabel"])
def test_stochastic_solvers_take_scikit_learns_steps_with_its_alpha(solver, task, alpha):
    """An epoch of whole-batch steps from the same weights: scikit-learn's float64 arithmetic to float32
    rounding, with a large alpha (a penalty on the weights only: biases decayed like weights would be off
    by lr x alpha x b) and the loss scale of squared error (half of fastbp's mse), Poisson deviance and
    multi-label log loss (sums over the outputs of fastbp's means)."""
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 5))
    extra = {}
    if task == "regression":
        y = X @ rng.standard_normal((5, 2)) + 0.1 * rng.standard_normal((40, 2))
        classes = (fastbp.MLPRegressor, MLPRegressor)
    elif task == "poisson":
        y = rng.poisson(np.exp(0.3 * X @ rng.standard_normal((5, 2)))).astype(float)
        classes, extra = (fastbp.MLPRegressor, MLPRegressor), dict(loss="poisson")
    else:
        y = (X @ rng.standard_normal((5, 3)) > 0).astype(int)
        classes = (fastbp.MLPClassifier, MLPClassifier)
    ours, theirs = one_epoch_from_the_same_weights(*classes, X, y, hidden_layer_sizes=(7,), activation="tanh",
                                                   solver=solver, alpha=alpha, batch_size=20,
                                                   learning_rate_init=0.05, momentum=0.5, **extra)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # loss_ takes the penalty at the epoch's first and last weights, scikit-learn at each batch's (_ScikitLearnLoss)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=2e-2 if alpha else 1e-5)


def test_lbfgs_checks_and_converts_the_data_once(monkeypatch):
    """Every L-BFGS evaluation reuses the checked float32 copy of X (not a new check per evaluation)."""
    from fastbp import validation
    calls = []
    features = validation.features
    monkeypatch.setattr(validation, "features", lambda *a, **k: calls.append(1) or features(*a, **k))
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = fastbp.MLPClassifier(solver="lbfgs", hidden_layer_sizes=(5,), max_iter=15, random_state=0).fit(X, y)
    assert clf.n_iter_ > 5 and len(calls) == 1


def test_lbfgs_on_targets_beyond_float32s_squares_warns_instead_of_returning_silently():
    """(1e20)^2 overflows float32 at the initial point: L-BFGS-B stops at once without an error, and the
    network is the untrained one; that must be said, as the stochastic solvers say a diverging loss."""
    rng = np.random.default_rng(0)
    X, y = rng.random((50, 3)), rng.random(50) * 1e20
    with pytest.warns(ConvergenceWarning, match="lbfgs stopped after 0 iteration.*not finite.*scale the data"):
        model = fastbp.MLPRegressor(solver="lbfgs", random_state=0).fit(X, y)
    assert model.n_iter_ == 0 and not np.isfinite(model.loss_)


def test_a_sparse_multilabel_indicator_y_trains_as_the_dense_one_and_predicts_sparse():
    import scipy.sparse
    rng = np.random.default_rng(1)
    X = rng.random((60, 4))
    Y = (rng.random((60, 3)) > 0.5).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        dense = fastbp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, Y)
        sparse = fastbp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(
            X, scipy.sparse.csr_matrix(Y))
    predicted = sparse.predict(X)
    assert scipy.sparse.issparse(predicted)  # as scikit-learn's, trained on a sparse y
    assert np.array_equal(predicted.toarray(), dense.predict(X))
    for (W, b), (W2, b2) in zip(zip(dense.coefs_, dense.intercepts_), zip(sparse.coefs_, sparse.intercepts_)):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
