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


# ---- sample weights at their edges ----

def weighted_run(scale, micro_batch=None):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((90, 5)).astype(np.float32)
    y = rng.integers(0, 3, 90)
    w = rng.random(90) * 3
    w[::7] = 0.0
    t = fastbp.Trainer([5, 8, 3], loss="cross_entropy", batch_size=30, seed=0, micro_batch=micro_batch)
    history = t.fit(X, y, epochs=2, sample_weight=w * scale, validation_split=0.2, verbose=0)
    return t.state.params.copy(), history.history


@pytest.mark.parametrize("micro_batch", [None, 7])
def test_weights_scaled_by_any_constant_float64_holds_give_the_same_run(micro_batch):
    """Only the weights' ratios matter: scaled by a power of two the run is bit for bit the same, by any
    other constant from 1e-300 to 1e300 the same to float rounding; never NaN (micro-batch sums of the
    weights once overflowed float32)."""
    params, history = weighted_run(1.0, micro_batch)
    for scale in (2.0 ** -990, 2.0 ** 1000):
        scaled, scaled_history = weighted_run(scale, micro_batch)
        assert np.array_equal(scaled, params) and scaled_history == history
    for scale in (1e-300, 1e-40, 3.0, 1e40, 1e300):
        scaled, scaled_history = weighted_run(scale, micro_batch)
        np.testing.assert_allclose(scaled, params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scaled_history["val_loss"], history["val_loss"], rtol=1e-6)


def test_all_zero_weights_are_refused_in_either_part_of_a_validation_split():
    X, y = np.ones((50, 3)), np.zeros(50, np.int64)
    t = fastbp.Trainer([3, 2], loss="cross_entropy")
    for zero, part in ((slice(40, None), "validation rows"), (slice(None, 40), "training rows")):
        w = np.ones(50)
        w[zero] = 0.0
        with pytest.raises(ValueError, match=f"sample_weight is 0 for every one of the {part}"):
            t.fit(X, y, sample_weight=w, validation_split=0.2, verbose=0)
    assert t.step_count == 0


def test_zero_row_memory_mapped_or_sparse_x_gets_the_message_of_a_zero_row_array(tmp_path):
    import scipy.sparse
    np.save(tmp_path / "empty.npy", np.zeros((0, 5), np.float32))
    mapped = np.load(tmp_path / "empty.npy", mmap_mode="r")
    t = fastbp.Trainer([5, 4, 3], loss="cross_entropy")
    no_labels = np.zeros(0, np.int64)
    for X in (mapped, scipy.sparse.csr_matrix((0, 5), dtype=np.float32)):
        for call in (lambda: t.fit(X, no_labels, verbose=0), lambda: t.predict(X), lambda: t.evaluate(X, no_labels),
                     lambda: t.gradients(X, no_labels), lambda: t.step(X, no_labels)):
            with pytest.raises(ValueError, match="^X has no rows$"):
                call()


def test_estimators_name_sample_weight_in_their_weight_messages():
    pytest.importorskip("sklearn")
    X, y = np.random.default_rng(0).random((40, 3)), np.arange(40) % 2
    with pytest.raises(ValueError, match="sample_weight") as info:
        fastbp.MLPClassifier(max_iter=2).fit(X, y, sample_weight=-np.ones(40))
    assert "weight_decay" not in str(info.value)
    with pytest.raises(ValueError, match="sample_weight this small") as info:
        fastbp.MLPClassifier(max_iter=2).fit(X, y, sample_weight=np.full(40, 1e-300))
    assert "weight_decay" not in str(info.value)
