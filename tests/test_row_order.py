"""fit(shuffle=...) (row_order.py): True, False, or a function giving each epoch's order of the rows."""
import numpy as np
import pytest

import fastbp
from fastbp import loop


def data(n=103, width=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, width)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.3)


def flat(t):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in t.params])


class Orders:
    """A shuffle function: a seeded permutation per epoch, remembered."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.given = []

    def __call__(self, n):
        self.given.append(self.rng.permutation(n))
        return self.given[-1]


@pytest.mark.parametrize("path", ["chunks", "steps", "memory-mapped"])
def test_each_epoch_takes_the_functions_order(path, monkeypatch, tmp_path):
    """Two epochs with an order function are, bit for bit, two unshuffled epochs on the rows put in those
    orders: on the compiled chunks, the step-at-a-time loop and a memory-mapped file read batch by batch."""
    X, y = data()
    if path == "steps":
        monkeypatch.setattr(loop, "runs_in_chunks", lambda *a: False)
    source = X
    if path == "memory-mapped":
        np.save(tmp_path / "X.npy", X)
        source = np.load(tmp_path / "X.npy", mmap_mode="r")
    options = dict(sizes=[5, 9, 3], loss="cross_entropy", lr=0.05, batch_size=10, seed=4)
    orders = Orders(7)
    t = fastbp.Trainer(**options)
    history = t.fit(source, y, epochs=2, verbose=0, shuffle=orders)
    assert len(orders.given) == 2 and not np.array_equal(*orders.given)
    reordered = fastbp.Trainer(**options)
    losses = [reordered.fit(X[o], y[o], epochs=1, verbose=0, shuffle=False).history["loss"][0]
              for o in orders.given]
    assert np.array_equal(flat(t), flat(reordered))
    assert history.history["loss"] == losses


@pytest.mark.parametrize("order, kind, message", [
    (lambda n: np.arange(n - 1), ValueError, r"must have shape \(103,\), one entry per row, got shape \(102,\)"),
    (lambda n: np.arange(n).reshape(1, -1), ValueError, r"got shape \(1, 103\)"),
    (lambda n: np.arange(n) + 1, ValueError, r"outside 0..102 \(min 1, max 103\)"),
    (lambda n: np.arange(n) - 1, ValueError, r"outside 0..102 \(min -1, max 101\)"),
    (lambda n: np.arange(n) // 2, ValueError, r"every row 0..102 exactly once; it repeats or misses some"),
    (lambda n: np.arange(n, dtype=np.float64), TypeError, "integer array of row numbers, got dtype float64"),
    (lambda n: [str(i) for i in range(n)], TypeError, "integer array of row numbers, got dtype <U3"),
])
def test_a_wrong_order_is_refused_before_any_step(order, kind, message):
    X, y = data()
    t = fastbp.Trainer([5, 9, 3], loss="cross_entropy", batch_size=10, seed=4)
    before = flat(t)
    with pytest.raises(kind, match=message):
        t.fit(X, y, epochs=2, verbose=0, shuffle=order)
    assert t.step_count == 0 and np.array_equal(flat(t), before)


@pytest.mark.parametrize("shuffle", ["yes", 1, None, np.arange(5)])
def test_shuffle_must_be_a_bool_or_a_function(shuffle):
    X, y = data()
    t = fastbp.Trainer([5, 9, 3], loss="cross_entropy", batch_size=10, seed=4)
    with pytest.raises(TypeError, match="shuffle must be True, False or a function order"):
        t.fit(X, y, verbose=0, shuffle=shuffle)
    assert t.step_count == 0


def test_numpy_bools_and_unshuffled_rows():
    X, y = data()
    runs = []
    for shuffle in (False, np.False_):
        t = fastbp.Trainer([5, 9, 3], loss="cross_entropy", batch_size=10, seed=4)
        t.fit(X, y, epochs=2, verbose=0, shuffle=shuffle)
        runs.append(flat(t))
    in_order = fastbp.Trainer([5, 9, 3], loss="cross_entropy", batch_size=10, seed=4)
    in_order.fit(X, y, epochs=2, verbose=0, shuffle=lambda n: np.arange(n, dtype=np.int32))
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], flat(in_order))
