"""class_weight in Trainer.fit (Keras': a dict of class index to weight, or "balanced") and in
MLPClassifier (scikit-learn's other classifiers': labels to weights, or "balanced"): each training row's
sample weight times its class's."""
import numpy as np
import pytest

import fastbp
from fastbp import class_weights
from fastbp.estimators import MLPClassifier


def problem(rng, n=120, classes=3):
    X = rng.standard_normal((n, 5)).astype(np.float32)
    y = rng.integers(0, classes, n)
    return X, y


def trained(X, y, loss="cross_entropy", out=3, **fit_options):
    t = fastbp.Trainer([5, 8, out], loss=loss, batch_size=40, seed=4)
    history = t.fit(X, y, epochs=3, verbose=0, **fit_options)
    return t, history


def assert_same(a, b):
    for (W1, b1), (W2, b2) in zip(a.params, b.params):
        np.testing.assert_array_equal(W1, W2)
        np.testing.assert_array_equal(b1, b2)


def test_a_class_weight_is_the_sample_weight_of_its_rows(rng):
    X, y = problem(rng)
    by_class, _ = trained(X, y, class_weight={0: 2.0, 2: 0.5})  # class 1 left out: weight 1
    expected = np.select([y == 0, y == 2], [2.0, 0.5], 1.0)
    by_rows, _ = trained(X, y, sample_weight=expected)
    assert_same(by_class, by_rows)
    # with sample weights, the two multiply
    w = rng.random(len(y)) + 0.5
    both, _ = trained(X, y, class_weight={0: 2.0, 2: 0.5}, sample_weight=w)
    product, _ = trained(X, y, sample_weight=w * expected)
    assert_same(both, product)


def test_balanced_weighs_each_class_inversely_to_its_count(rng):
    X, y = problem(rng)
    y[:60] = 0  # an imbalanced set
    counts = np.bincount(y, minlength=3)
    balanced, _ = trained(X, y, class_weight="balanced")
    by_rows, _ = trained(X, y, sample_weight=(len(y) / (3 * counts))[y])
    assert_same(balanced, by_rows)
    table = class_weights.class_table("balanced", y, 3)
    assert (table * counts).tolist() == pytest.approx([len(y) / 3] * 3)


def test_binary_bce_takes_its_0_1_targets_as_classes_and_refuses_others(rng):
    X, y = problem(rng, classes=2)
    t, _ = trained(X, y.astype(np.float32), loss="bce", out=1, class_weight={1: 3.0})
    expected, _ = trained(X, y.astype(np.float32), loss="bce", out=1, sample_weight=np.where(y == 1, 3.0, 1.0))
    assert_same(t, expected)
    with pytest.raises(ValueError, match="0s and 1s"):
        trained(X, np.full(len(y), 0.5, np.float32), loss="bce", out=1, class_weight={1: 3.0})


def test_validation_split_rows_are_not_class_weighted(rng):
    """As Keras: class_weight weighs the training loss; val_loss is the held-out rows' plain mean."""
    X, y = problem(rng)
    t, history = trained(X, y, class_weight={0: 5.0}, validation_split=0.25)
    assert history.history["val_loss"][-1] == pytest.approx(t.evaluate(X[90:], y[90:])["loss"], rel=1e-6)


def test_bad_class_weights_are_clear_errors(rng):
    X, y = problem(rng)
    cases = [({3: 1.0}, ValueError, "integers 0 .. 2"), ({0: -1.0}, ValueError, ">= 0"),
             ({"a": 1.0}, ValueError, "key 'a'"), ("uniform", ValueError, "'balanced'"),
             ([1.0, 2.0, 3.0], TypeError, "dict"), ({0: 0.0, 1: 0.0, 2: 0.0}, ValueError, "weight of 0")]
    for class_weight, error, words in cases:
        with pytest.raises(error, match=words):
            trained(X, y, class_weight=class_weight)
    with pytest.raises(ValueError, match="class_weight applies to loss='cross_entropy'"):
        fastbp.Trainer([5, 8, 2], loss="mse").fit(X, rng.standard_normal((120, 2)), class_weight={0: 1.0}, verbose=0)
    with pytest.raises(TypeError, match="not to a stream"):
        fastbp.Trainer([5, 8, 3], loss="cross_entropy").fit(iter([(X, y)]), class_weight={0: 1.0}, verbose=0)


def test_estimator_class_weight_by_label(rng):
    X = rng.standard_normal((150, 4))
    labels = np.array(["cat", "dog", "emu"])[rng.integers(0, 3, 150)]
    options = dict(hidden_layer_sizes=(7,), max_iter=5, random_state=0)
    weighted = MLPClassifier(class_weight={"dog": 3.0}, **options).fit(X, labels)
    by_rows = MLPClassifier(**options).fit(X, labels, sample_weight=np.where(labels == "dog", 3.0, 1.0))
    for a, b in zip(weighted.coefs_ + weighted.intercepts_, by_rows.coefs_ + by_rows.intercepts_):
        np.testing.assert_array_equal(a, b)
    balanced = MLPClassifier(class_weight="balanced", **options).fit(X, labels)
    counts = np.array([np.sum(labels == c) for c in balanced.classes_])
    by_counts = MLPClassifier(**options).fit(X, labels, sample_weight=(150 / (3 * counts))[
        np.searchsorted(balanced.classes_, labels)])
    for a, b in zip(balanced.coefs_, by_counts.coefs_):
        np.testing.assert_array_equal(a, b)
    assert MLPClassifier(class_weight="balanced").get_params()["class_weight"] == "balanced"
    with pytest.raises(ValueError, match="not in classes_"):
        MLPClassifier(class_weight={"eel": 2.0}, **options).fit(X, labels)
    with pytest.raises(ValueError, match="partial_fit"):
        MLPClassifier(class_weight="balanced", **options).partial_fit(X, labels, classes=["cat", "dog", "emu"])
