"""fastbp.MLPClassifier / MLPRegressor under scikit-learn's own estimator checks and conventions."""
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


def expected_failures(estimator):
    failures = {"check_methods_sample_order_invariance": FLOAT32_BLAS}
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
    for kwargs, match in ((dict(solver="lbfgs"), "no 'lbfgs'"), (dict(activation="softplus"), "activation"),
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
