"""The estimators as scikit-learn's twin: for the same random_state, scikit-learn's run (its initial
weights, early-stopping split, shuffles and batches, drawn from one generator in its order, and its
Adam), in float32: initial networks equal to float32 rounding, loss curves within 1e-3 over the first
epochs, the same n_iter_, validation scores and predictions."""
import warnings

import numpy as np
import pytest
import scipy.sparse

pytest.importorskip("sklearn")
from sklearn import datasets  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier, MLPRegressor as SkRegressor  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import fastbp  # noqa: E402

TWINS = {"classifier": (fastbp.MLPClassifier, SkClassifier), "regressor": (fastbp.MLPRegressor, SkRegressor)}


def scaled(X):
    return StandardScaler().fit_transform(X)


def problems():
    """name -> (kind, X, y): scikit-learn's bundled data sets (standardized; digits cut to 600 rows to keep
    the suite quick), a multi-label problem and a two-target regression."""
    iris, cancer, wine, digits, diabetes = (loader(return_X_y=True) for loader in (
        datasets.load_iris, datasets.load_breast_cancer, datasets.load_wine, datasets.load_digits,
        datasets.load_diabetes))
    X_ml, y_ml = datasets.make_multilabel_classification(n_samples=150, n_features=8, n_classes=3, random_state=0)
    X_2, y_2 = datasets.make_regression(n_samples=120, n_features=6, n_targets=2, noise=5.0, random_state=1)
    return {"iris": ("classifier", scaled(iris[0]), iris[1]),
            "breast_cancer": ("classifier", scaled(cancer[0]), cancer[1]),
            "wine": ("classifier", scaled(wine[0]), wine[1]),
            "digits": ("classifier", scaled(digits[0][:600]), digits[1][:600]),
            "multilabel": ("classifier", scaled(X_ml), y_ml),
            "diabetes": ("regressor", scaled(diabetes[0]), diabetes[1] / diabetes[1].std()),
            "two_targets": ("regressor", scaled(X_2), y_2 / y_2.std())}


PROBLEMS = problems()


def fit_both(kind, X, y, fit=lambda model, X, y: model.fit(X, y), **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return [fit(cls(**params), X, y) for cls in TWINS[kind]]


# One SGD epoch at a learning rate of 1e-30 (no momentum, no penalty) leaves every weight as drawn: the
# network before training, through the public API of both.
UNTRAINED = dict(solver="sgd", learning_rate_init=1e-30, momentum=0.0, alpha=0.0, max_iter=1)


def initial_network(kind, X, y, **params):
    """Both estimators' networks before training."""
    return fit_both(kind, X, y, **UNTRAINED, **params)


def assert_float32_rounding_of(ours, theirs):
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=2 ** -24, atol=0)


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "multilabel", "diabetes", "two_targets"])
@pytest.mark.parametrize("activation", ["relu", "logistic"])
def test_the_initial_network_is_scikit_learns(name, activation):
    kind, X, y = PROBLEMS[name]
    ours, theirs = initial_network(kind, X, y, hidden_layer_sizes=(13, 6), activation=activation,
                                   random_state=42)
    assert_float32_rounding_of(ours, theirs)


@pytest.mark.parametrize("form", ["float32", "csr", "csc", "memory-mapped"])
def test_the_initial_network_whatever_the_form_of_X(form, tmp_path):
    kind, X, y = PROBLEMS["wine"]
    if form == "float32":
        X = X.astype(np.float32)
    elif form in ("csr", "csc"):
        X = np.where(np.abs(X) < 0.5, 0.0, X)
        X = scipy.sparse.csr_matrix(X) if form == "csr" else scipy.sparse.csc_matrix(X)
    else:
        np.save(tmp_path / "X.npy", X)
        X = np.load(tmp_path / "X.npy", mmap_mode="r")
    ours, theirs = initial_network(kind, X, y, hidden_layer_sizes=(9,), random_state=3)
    assert_float32_rounding_of(ours, theirs)


def test_the_same_draws_from_a_shared_generator_and_from_the_global_one():
    """A RandomState instance (or None: numpy's global generator) is drawn from as scikit-learn draws:
    the same networks, and the generator left in the same state after a fit with early stopping and
    shuffles."""
    kind, X, y = PROBLEMS["iris"]
    params = dict(hidden_layer_sizes=(8,), max_iter=3, early_stopping=True)
    states = []
    models = []
    for cls in TWINS[kind]:
        generator = np.random.RandomState(5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            models.append(cls(random_state=generator, **params).fit(X, y))
        states.append(generator.randint(2 ** 31))
    assert states[0] == states[1]
    np.testing.assert_allclose(models[0].loss_curve_, models[1].loss_curve_, rtol=1e-5)
    global_state = np.random.get_state()
    try:
        networks = []
        for cls in TWINS[kind]:
            np.random.seed(11)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                networks.append(cls(hidden_layer_sizes=(8,), **UNTRAINED).fit(X, y))
        assert_float32_rounding_of(*networks)
    finally:
        np.random.set_state(global_state)


LOSS_CURVE_RTOL = 1e-3


@pytest.mark.parametrize("early_stopping", [False, True], ids=["training-loss", "early-stopping"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("name", ["iris", "breast_cancer", "digits", "multilabel", "diabetes", "two_targets"])
def test_loss_curves_follow_scikit_learns_for_ten_epochs(name, solver, early_stopping):
    kind, X, y = PROBLEMS[name]
    ours, theirs = fit_both(kind, X, y, hidden_layer_sizes=(32,), solver=solver, max_iter=10, random_state=0,
                            early_stopping=early_stopping, batch_size=32, learning_rate_init=0.01)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=LOSS_CURVE_RTOL)
    assert ours.n_iter_ == theirs.n_iter_ == 10
    if early_stopping:
        # accuracy on the same validation rows (R^2 for the regressors)
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, atol=0.02)
        assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_, abs=0.02)
    assert ours.score(X, y) == pytest.approx(theirs.score(X, y), abs=0.02)


@pytest.mark.parametrize("early_stopping", [False, True], ids=["training-loss", "early-stopping"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("name", ["iris", "diabetes"])
def test_loss_curves_with_sample_weights_follow_scikit_learns(name, solver, early_stopping):
    """Each batch's loss the weighted mean of its rows', the epoch's the mean of its batches' weighted by
    their rows, as scikit-learn reports it; weights of 0 among them."""
    kind, X, y = PROBLEMS[name]
    w = np.random.default_rng(1).random(len(y)) * 3
    w[::7] = 0.0
    ours, theirs = fit_both(kind, X, y, fit=lambda model, X, y: model.fit(X, y, sample_weight=w),
                            hidden_layer_sizes=(32,), solver=solver, max_iter=10, random_state=0,
                            early_stopping=early_stopping, batch_size=32, learning_rate_init=0.01)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=LOSS_CURVE_RTOL)
    if early_stopping:
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, atol=0.02)


@pytest.mark.parametrize("params", [
    dict(solver="adam"),
    dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05),
    dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, nesterovs_momentum=False),
    dict(solver="adam", early_stopping=True, n_iter_no_change=3),
], ids=["adam", "sgd-adaptive", "sgd-invscaling", "adam-early-stopping"])
def test_tolerance_based_stopping_ends_at_scikit_learns_epoch(params):
    kind, X, y = PROBLEMS["iris"]
    ours, theirs = fit_both(kind, X, y, hidden_layer_sizes=(16,), max_iter=300, random_state=0, tol=1e-3,
                            **params)
    assert ours.n_iter_ == theirs.n_iter_ < 300
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-3)
    assert np.array_equal(ours.predict(X), theirs.predict(X))


def test_unshuffled_partial_fit_and_warm_start_follow_scikit_learn():
    kind, X, y = PROBLEMS["wine"]
    params = dict(hidden_layer_sizes=(16,), random_state=2, batch_size=20, learning_rate_init=0.01)

    def three_partial_fits(model, X, y):  # an integer random_state starts afresh on each call, as theirs
        for _ in range(3):
            model.partial_fit(X, y, classes=np.unique(y))
        return model
    ours, theirs = fit_both(kind, X, y, fit=three_partial_fits, **params)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=LOSS_CURVE_RTOL)

    def warm_started(model, X, y):
        model.set_params(warm_start=True, max_iter=4)
        return model.fit(X, y).fit(X, y)
    ours, theirs = fit_both(kind, X, y, fit=warm_started, shuffle=False, **params)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=LOSS_CURVE_RTOL)
    assert ours.n_iter_ == theirs.n_iter_ == 4


@pytest.mark.parametrize("name", ["iris", "diabetes"])
def test_lbfgs_starts_from_scikit_learns_point_and_follows_it(name):
    kind, X, y = PROBLEMS[name]
    ours, theirs = fit_both(kind, X, y, hidden_layer_sizes=(8,), solver="lbfgs", max_iter=15, random_state=0)
    assert ours.n_iter_ == theirs.n_iter_ == 15
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-3)


def test_sparse_and_memory_mapped_X_train_as_the_dense_array(tmp_path):
    kind, X, y = PROBLEMS["wine"]
    X = np.where(np.abs(X) < 0.5, 0.0, X)
    np.save(tmp_path / "X.npy", X)
    params = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=4, batch_size=25, early_stopping=True)
    theirs = fit_both(kind, X, y, **params)[1]
    for form in (scipy.sparse.csr_matrix(X), scipy.sparse.csc_matrix(X), np.load(tmp_path / "X.npy", mmap_mode="r")):
        ours = fit_both(kind, form, y, **params)[0]
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=LOSS_CURVE_RTOL)
        assert ours.validation_scores_ == theirs.validation_scores_


def test_a_batch_size_beyond_the_rows_warns_and_is_clipped_as_scikit_learn():
    kind, X, y = PROBLEMS["iris"]
    with pytest.warns(UserWarning, match="larger than sample size. It is going to be clipped"):
        fastbp.MLPClassifier(hidden_layer_sizes=(4,), batch_size=1000, max_iter=1).fit(X, y)


def test_early_stopping_on_a_memory_mapped_X_reads_its_rows_without_copying_them(tmp_path, monkeypatch):
    """The split's training and validation rows are read from the file batch by batch (a copy of the
    training rows would take 58 MB here; NumPy's allocations are what tracemalloc sees). The up-front
    checks read 4 MB at a time here (64 MB by default, as large as this file)."""
    import tracemalloc
    from fastbp import sources
    monkeypatch.setattr(sources, "CHECK_CHUNK_BYTES", 4 * 2 ** 20)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20_000, 400))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    np.save(tmp_path / "X.npy", X)
    del X
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    model = fastbp.MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, early_stopping=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(mapped[:500], y[:500])  # the kernels loaded (their Python objects) before measuring
        tracemalloc.start()
        try:
            model.fit(mapped, y)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 25 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MB: the split copied the rows"
    in_memory = fit_both("classifier", np.asarray(mapped), y, hidden_layer_sizes=(8,), max_iter=2,
                         early_stopping=True, random_state=0)[0]
    np.testing.assert_allclose(model.loss_curve_, in_memory.loss_curve_, rtol=1e-6)
    assert model.validation_scores_ == in_memory.validation_scores_


@pytest.mark.parametrize("part", ["training", "validation"])
def test_early_stopping_refuses_a_split_part_whose_weights_are_all_zero(part):
    """Before any step, naming sample_weight (scikit-learn raises from its scorer after the first epoch)."""
    kind, X, y = PROBLEMS["breast_cancer"]
    split = fastbp.MLPClassifier(hidden_layer_sizes=(4,), early_stopping=True, random_state=0, max_iter=1)
    # The validation rows the twin split draws: the rows whose weight moves validation_scores_.
    from sklearn.model_selection import train_test_split
    generator = np.random.RandomState(0)
    generator.uniform(size=X.shape[1] * 4 + 4 + 4 + 1)  # the initial network's draws come first
    train, val = train_test_split(np.arange(len(y)), random_state=generator, test_size=0.1,
                                  stratify=(y == 1)[:, None])
    w = np.ones(len(y))
    w[val if part == "validation" else train] = 0.0
    with pytest.raises(ValueError, match=f"sample_weight is 0 for every one of the {{}} {part} rows".format(
            val.size if part == "validation" else train.size)):
        split.fit(X, y, sample_weight=w)
