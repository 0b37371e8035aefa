"""Options and data that used to slip through: each is a clear error before any kernel runs, or harmless.

Memory-safety cases run in a subprocess: before the fix they crashed the interpreter."""
import resource

import numpy as np
import pytest

import fastbp
from test_concurrency import run_script


@pytest.mark.parametrize("options, match", [
    (dict(dropout=0.99999998), "dropout"),
    (dict(dropout=1.0), "dropout"),
    (dict(eps=1e-50), "eps"),
    (dict(eps=1e-40), "eps"),  # subnormal in float32: the kernels flush it to zero
    (dict(lr=1e39), "lr"),
    (dict(weight_decay=1e39), "weight_decay"),
    (dict(clip_norm=1e39), "clip_norm"),
])
def test_options_beyond_float32_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        fastbp.Trainer([4, 8, 3], **options)


def test_dropout_at_its_largest_allowed_rate_trains():
    t = fastbp.Trainer([4, 8, 3], loss="cross_entropy", dropout=fastbp.options.MAX_DROPOUT, seed=0)
    X = np.random.default_rng(0).standard_normal((16, 4))
    t.step(X, np.arange(16) % 3)  # no crash inside the kernel
    assert np.isfinite(t.predict(X)).all()


def test_lr_set_later_is_checked_too():
    t = fastbp.Trainer([4, 3])
    with pytest.raises(ValueError, match="lr"):
        t.lr = 1e39


def test_overflowing_update_is_reported_truthfully():
    """An update that overflows float32 leaves non-finite parameters; the next error must say so, not claim
    the parameters hold finite values."""
    rng = np.random.default_rng(1)
    t = fastbp.Trainer([4, 8, 1], optimizer="sgd", lr=3e38, seed=0)
    X, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 1)) * 100
    with pytest.raises(FloatingPointError, match="NaN or infinity"):
        for _ in range(3):
            t.step(X, y)


def test_set_params_refuses_values_that_overflow_float32():
    t = fastbp.Trainer([2, 3])
    with pytest.raises(ValueError, match="float32"):
        t.set_params([(np.full((2, 3), 1e39), np.zeros(3))])
    assert np.isfinite(t.state.params).all()


def test_infinite_loss_is_an_error_in_evaluate_and_gradients_as_in_step():
    t = fastbp.Trainer([2, 1], seed=0)
    t.set_params([(np.full((2, 1), 1e19, np.float32), np.zeros(1, np.float32))])
    X, y = np.ones((3, 2)), np.zeros((3, 1))  # outputs 2e19: their squares overflow float32
    for call in (t.evaluate, t.gradients, t.step):
        with pytest.raises(FloatingPointError):
            call(X, y)


def test_a_batch_whose_single_row_exceeds_the_memory_budget_is_refused_before_converting_it():
    X = np.broadcast_to(np.zeros((1, 64)), (10 ** 8, 64))  # 51 GB as float64, yet no memory at all
    y = np.broadcast_to(np.zeros(1, np.int64), (10 ** 8,))
    t = fastbp.Trainer([64, 64, 10], loss="cross_entropy", memory_budget=100)  # one row needs 832 bytes
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for call in (t.step, t.gradients, lambda X, y: t.fit(X, y, batch_size=10 ** 8, verbose=0)):
        with pytest.raises(MemoryError, match="one row of this network needs 832 bytes of memory"):
            call(X, y)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: nothing converted


def test_messages_point_newcomers_to_the_right_option():
    t = fastbp.Trainer([4, 8, 3])  # default loss: mse
    with pytest.raises(ValueError, match="cross_entropy"):
        t.fit(np.zeros((5, 4)), np.array([0, 1, 2, 1, 0]), verbose=0)
    with pytest.raises(TypeError, match="MLPClassifier"):
        fastbp.Trainer([4, 8, 3], loss="cross_entropy").fit(np.zeros((3, 4)), np.array(["a", "b", "c"]),
                                                           verbose=0)
    with pytest.raises(TypeError, match="MLPClassifier"):
        fastbp.Trainer([4, 8, 3], loss="cross_entropy").fit(np.zeros((3, 4)),
                                                           np.array(["a", "b", "c"], dtype=object), verbose=0)


def test_labels_changed_after_validation_never_reach_the_kernels():
    """A callback relabelling y in place (pseudo-labelling), with values far out of range and equal to
    the class count, on training and validation labels: training goes on with the labels that were
    checked, and the process does not crash."""
    out = run_script("""
import numpy as np
import fastbp

rng = np.random.default_rng(0)
X = rng.standard_normal((400, 6)).astype(np.float32)
y = X[:, :3].argmax(axis=1).astype(np.int64)
yv = y[:100].copy()

class Relabel(fastbp.callbacks.Callback):
    def on_epoch_end(self, epoch, logs, trainer):
        y[:] = 10 ** 12 if epoch % 2 else 3   # 3 == the class count
        yv[:] = -(10 ** 12)

t = fastbp.Trainer([6, 16, 3], loss="cross_entropy", seed=0, batch_size=32)
ref = fastbp.Trainer([6, 16, 3], loss="cross_entropy", seed=0, batch_size=32)
h = t.fit(X, y, epochs=4, verbose=0, validation_data=(X[:100], yv), callbacks=[Relabel()])
y_clean = X[:, :3].argmax(axis=1).astype(np.int64)
href = ref.fit(X, y_clean, epochs=4, verbose=0, validation_data=(X[:100], y_clean[:100]))
assert h.history == href.history, (h.history, href.history)
print("ok")
""")
    assert out.strip() == "ok"


def test_loss_kernel_guards_labels_it_was_not_shown():
    """Defence in depth below validation: the compiled loss never indexes with an out-of-range label; the
    loss is NaN, so a step skips its update."""
    t = fastbp.Trainer([3, 5, 4], loss="cross_entropy", seed=0)
    X = np.ones((6, 3), np.float32)
    rows = np.arange(6, dtype=np.int64)
    before = t.state.params.copy()
    for bad in (4, -1, 10 ** 12):
        labels = np.array([0, 1, bad, 2, 3, 0], np.int64)
        assert np.isnan(t._backend.loss_value(X, labels, None, rows))
        settings = t._optimizer_settings()
        assert np.isnan(t._backend.train_step(X, labels, None, rows, settings))
    assert np.array_equal(t.state.params, before)
