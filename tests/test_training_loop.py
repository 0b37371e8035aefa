"""The training loop around the kernels: dropout, clipping, schedules, callbacks, resuming, progress, plots."""
import io
import math

import numpy as np
import pytest

import fastbp
from fastbp import datasets, reference, schedules
from fastbp.callbacks import Callback, EarlyStopping, LambdaCallback, ModelCheckpoint
from fastbp.cpu import dropout
from fastbp.progress import EpochProgress
from conftest import ALL_ACTIVATIONS, per_layer, rel_error


def problem(n=400, seed=0):
    return datasets.make_classification(n_samples=n, n_features=10, n_classes=3, seed=seed)


# ---- dropout ----

@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
def test_dropout_gradients_match_reference_with_the_same_masks(rng, activation):
    sizes, n, rate = [7, 33, 17, 3], 130, 0.3
    activation = per_layer(activation, sizes)
    t = fastbp.Trainer(sizes, activation=activation, loss="cross_entropy", dropout=rate, seed=3)
    X, y = rng.standard_normal((n, 7)), rng.integers(0, 3, n)
    key, threshold = t._dropout_key(), t._dropout.hidden
    masks = [dropout.mask(key, l, n, sizes[l + 1], threshold).astype(np.float64) for l in range(2)]
    keep = 1 - threshold / 2 ** 24
    params = [(W.astype(np.float64), b.astype(np.float64)) for W, b in t.params]
    ref_value, ref_grads = reference.loss_and_gradients(params, X, y, activation, "cross_entropy", masks, 1 - keep)
    value, grads = t.gradients(X, y, training=True)
    assert value == pytest.approx(ref_value, rel=1e-5)
    for (dW, db), (rW, rb) in zip(grads, ref_grads):
        assert rel_error(dW, rW) < 1e-4 and rel_error(db, rb) < 1e-4
    # Outside training there is no dropout, and the masks change from step to step.
    plain_value, _ = t.gradients(X, y)
    assert plain_value == pytest.approx(reference.loss_and_gradients(params, X, y, activation, "cross_entropy")[0],
                                        rel=1e-5)
    t.step(X, y)
    assert not np.array_equal(dropout.mask(t._dropout_key(), 0, n, 33, threshold), masks[0])


@pytest.mark.parametrize("n, micro_batch", [(130, None), (130, 50), (700, None)],
                         ids=["batch", "micro-batches", "pipeline-tiles"])
def test_input_dropout_gradients_match_reference_with_the_same_masks(rng, n, micro_batch, kernel_path):
    """Input dropout (its own rate and masks, dropout.INPUT_LAYER) beside hidden dropout, per-layer
    activations (gelu's stored slopes under a mask): the float64 reference given the same masks, on the
    serial and parallel paths (700 rows of this narrow network take the per-thread pipeline there), whole
    or in micro-batches (each chunk's rows get the masks of their batch positions)."""
    sizes, rate, input_rate = [7, 33, 17, 3], 0.3, 0.2
    t = fastbp.Trainer(sizes, activation=["gelu", "relu"], loss="cross_entropy", dropout=rate,
                       input_dropout=input_rate, seed=3, micro_batch=micro_batch)
    X, y = rng.standard_normal((n, 7)), rng.integers(0, 3, n)
    key, thresholds = t._dropout_key(), t._dropout
    masks = [dropout.mask(key, l, n, sizes[l + 1], thresholds.hidden).astype(np.float64) for l in range(2)]
    input_mask = dropout.mask(key, dropout.INPUT_LAYER, n, 7, thresholds.inputs).astype(np.float64)
    assert 0.7 < input_mask.mean() < 0.9
    params = [(W.astype(np.float64), b.astype(np.float64)) for W, b in t.params]
    ref_value, ref_grads = reference.loss_and_gradients(
        params, X, y, ["gelu", "relu"], "cross_entropy", masks, thresholds.hidden / 2 ** 24,
        input_mask=input_mask, input_rate=thresholds.inputs / 2 ** 24)
    value, grads = t.gradients(X, y, training=True)
    assert value == pytest.approx(ref_value, rel=1e-5)
    for (dW, db), (rW, rb) in zip(grads, ref_grads):
        assert rel_error(dW, rW) < 1e-4 and rel_error(db, rb) < 1e-4
    no_input_drop = reference.loss_and_gradients(params, X, y, ["gelu", "relu"], "cross_entropy", masks,
                                                 thresholds.hidden / 2 ** 24)[0]
    assert abs(no_input_drop - ref_value) > 1e-3 * ref_value  # the input masks did change the loss


def test_offset_key_gives_a_part_of_a_batch_the_masks_of_its_rows_in_the_whole_batch():
    """What MPI ranks (and micro-batches) rely on: rows k.. of a batch under offset_key(key, k)."""
    threshold = dropout.threshold(0.5)
    for key in (0, 12345, 2 ** 63 - 1 - (5 << 24)):  # the last one wraps around 2^63
        whole = dropout.mask(key, 1, 40, 9, threshold)
        for k in (1, 17, 33):
            np.testing.assert_array_equal(dropout.mask(dropout.offset_key(key, k), 1, 40 - k, 9, threshold), whole[k:])


def test_dropout_masks_have_the_requested_rate_and_no_pattern():
    threshold = dropout.threshold(0.25)
    m = dropout.mask(12345, 0, 2000, 64, threshold)
    assert abs(1 - m.mean() - 0.25) < 0.01
    assert abs(m[:, :32].mean() - m[:, 32:].mean()) < 0.02 and abs(m[::2].mean() - m[1::2].mean()) < 0.02
    assert not np.array_equal(m, dropout.mask(12345, 1, 2000, 64, threshold))


def test_dropout_is_off_at_predict_time_and_training_still_learns():
    X, y = problem(1500)
    t = fastbp.Trainer([10, 64, 64, 3], loss="cross_entropy", dropout=0.2, lr=3e-3, seed=0)
    P1, P2 = t.predict(X), t.predict(X)
    assert np.array_equal(P1, P2)
    hist = t.fit(X, y, epochs=8, verbose=0)
    assert hist.history["loss"][-1] < 0.6 * hist.history["loss"][0] and t.evaluate(X, y)["accuracy"] > 0.8


# ---- gradient clipping ----

def test_clipping_bounds_the_update_like_pytorch_clip_grad_norm():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 5)), rng.standard_normal((20, 2)) * 100
    t = fastbp.Trainer([5, 8, 2], loss="mse", optimizer="sgd", lr=1.0, clip_norm=0.5, seed=0)
    _, grads = t.gradients(X, y)
    norm = math.sqrt(sum((g.astype(np.float64) ** 2).sum() for pair in grads for g in pair))
    assert norm > 0.5
    before = t.state.params.copy()
    t.step(X, y)
    moved = np.linalg.norm((t.state.params - before).astype(np.float64))
    assert moved == pytest.approx(0.5, rel=1e-5)  # lr * clipped norm


# ---- schedules ----

def test_schedule_formulas():
    assert schedules.StepDecay(3, gamma=0.5).lr(1.0, 7) == 0.25
    assert schedules.ExponentialDecay(0.9).lr(2.0, 2) == pytest.approx(2.0 * 0.81)
    cos = schedules.CosineWarmup(total=110, warmup=10, min_lr=0.1)
    assert cos.lr(1.0, 0) == pytest.approx(0.1) and cos.lr(1.0, 9) == pytest.approx(1.0)
    assert cos.lr(1.0, 60) == pytest.approx(0.55) and cos.lr(1.0, 110) == cos.lr(1.0, 500) == pytest.approx(0.1)
    plateau = schedules.ReduceOnPlateau(monitor="loss", factor=0.5, patience=1)
    lrs = []
    for value in (1.0, 0.9, 0.95, 0.93, 0.92, 0.91):
        plateau.on_epoch_end({"loss": value})
        lrs.append(plateau.lr(1.0, 0))
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="interval"):
        schedules.StepDecay(2, interval="batch")
    with pytest.raises(ValueError, match="warmup"):
        schedules.CosineWarmup(total=5, warmup=5)


def test_trainer_follows_epoch_and_step_schedules():
    X, y = problem(100)
    t = fastbp.Trainer([10, 8, 3], loss="cross_entropy", lr=0.1, batch_size=50, seed=0,
                       schedule=schedules.StepDecay(1, gamma=0.5))
    hist = t.fit(X, y, epochs=3, verbose=0)
    assert hist.history["lr"] == [0.1, 0.05, 0.025]
    seen = []
    t = fastbp.Trainer([10, 8, 3], loss="cross_entropy", lr=0.1, batch_size=50, seed=0,
                       schedule=schedules.CosineWarmup(total=4, warmup=2))
    cb = LambdaCallback(lambda epoch, logs, trainer: seen.append(trainer.lr))
    t.fit(X, y, epochs=2, verbose=0, callbacks=[cb])  # two steps per epoch
    assert seen == [pytest.approx(0.1), pytest.approx(0.05)]  # steps 1 and 3: warm-up end, then cosine half-way


def test_reduce_on_plateau_needs_what_it_monitors():
    X, y = problem(100)
    t = fastbp.Trainer([10, 3], loss="cross_entropy", seed=0, schedule=schedules.ReduceOnPlateau())
    with pytest.raises(ValueError, match="val_loss.*validation_data"):
        t.fit(X, y, epochs=1, verbose=0)


# ---- resuming ----

def test_resume_is_bitwise_identical_with_every_feature_on(tmp_path):
    X, y = problem(300)
    kw = dict(sizes=[10, 16, 16, 3], loss="cross_entropy", optimizer="adamw", batch_size=32, dropout=0.2,
              clip_norm=1.0, seed=5, schedule=None)
    fit_kw = dict(validation_split=0.2, verbose=0)

    def make():  # min_delta this large: no epoch counts as an improvement, so the plateau fires
        return fastbp.Trainer(**dict(kw, schedule=schedules.ReduceOnPlateau(patience=1, factor=0.5, min_delta=10)))

    full = make()
    h_full = full.fit(X, y, epochs=6, **fit_kw)
    part = make()
    part.fit(X, y, epochs=3, **fit_kw)
    part.save(tmp_path / "mid.npz")
    resumed = fastbp.Trainer.load(tmp_path / "mid.npz")
    h_rest = resumed.fit(X, y, epochs=6, initial_epoch=3, **fit_kw)
    assert np.array_equal(full.state.params, resumed.state.params)
    assert np.array_equal(full.state.moment2, resumed.state.moment2)
    assert h_full.history["lr"][3:] == h_rest.history["lr"]
    assert len(set(h_full.history["lr"])) >= 3  # the schedule changed lr, before and after the resume
    assert h_rest.epoch == [3, 4, 5]


# ---- callbacks ----

def test_early_stopping_restores_the_best_weights():
    X, y = problem(600)
    Xv, yv = problem(200, seed=1)
    snapshots = {}
    record = LambdaCallback(lambda epoch, logs, t: snapshots.__setitem__(epoch, (logs["val_loss"], t.params)))
    stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    # A learning rate this large makes validation loss worsen after a few epochs.
    t = fastbp.Trainer([10, 64, 3], loss="cross_entropy", lr=0.05, batch_size=16, seed=0)
    hist = t.fit(X, y, epochs=40, validation_data=(Xv, yv), verbose=0, callbacks=[record, stop])
    assert stop.stopped_epoch is not None and len(hist.epoch) < 40
    best_epoch = min(snapshots, key=lambda e: snapshots[e][0])
    assert stop.best_epoch == best_epoch and best_epoch < hist.epoch[-1]
    for (W, b), (bW, bb) in zip(t.params, snapshots[best_epoch][1]):
        assert np.array_equal(W, bW) and np.array_equal(b, bb)


def test_model_checkpoint_best_and_last(tmp_path):
    X, y = problem(300)
    t = fastbp.Trainer([10, 16, 3], loss="cross_entropy", lr=0.05, seed=0)
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy", save_best_only=True)
    last = ModelCheckpoint(tmp_path / "epoch{epoch:02d}.npz", save_best_only=False)
    hist = t.fit(X, y, epochs=4, validation_split=0.25, verbose=0, callbacks=[best, last])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz"] + [f"epoch{e:02d}.npz" for e in (1, 2, 3, 4)]
    assert np.array_equal(fastbp.Trainer.load(tmp_path / "epoch04.npz").state.params, t.state.params)
    assert best.best == max(hist.history["val_accuracy"])


def test_model_checkpoint_keeps_the_best_epochs_weights_and_names_files_by_metrics(tmp_path):
    X, y = problem(300)
    snapshots = {}
    record = LambdaCallback(lambda epoch, logs, t: snapshots.__setitem__(epoch, (logs["val_loss"], t.state.params.copy())))
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss", save_best_only=True)
    named = ModelCheckpoint(tmp_path / "m-{epoch:02d}-{val_loss:.4f}-{accuracy:.3f}.npz")
    # At this learning rate the validation loss goes up and down: the best is epoch 4 of 8.
    t = fastbp.Trainer([10, 32, 3], loss="cross_entropy", lr=0.05, batch_size=16, seed=0)
    hist = t.fit(X, y, epochs=8, validation_split=0.25, verbose=0, callbacks=[record, best, named])
    best_epoch = min(snapshots, key=lambda e: snapshots[e][0])
    assert best_epoch != hist.epoch[-1]  # the best file is not simply the last state
    np.testing.assert_array_equal(fastbp.Trainer.load(tmp_path / "best.npz").state.params, snapshots[best_epoch][1])
    for epoch in hist.epoch:
        logs = {k: v[epoch] for k, v in hist.history.items()}
        name = f"m-{epoch + 1:02d}-{logs['val_loss']:.4f}-{logs['accuracy']:.3f}.npz"
        assert fastbp.Trainer.load(tmp_path / name).epochs_done == epoch + 1


def test_custom_callbacks_and_stop_training():
    class Stopper:  # no base class: the protocol is the methods
        def __init__(self):
            self.calls = []

        def on_epoch_end(self, epoch, logs, trainer):
            self.calls.append((epoch, sorted(logs)))
            if epoch == 1:
                trainer.stop_training = True

    X, y = problem(100)
    stopper = Stopper()
    hist = fastbp.Trainer([10, 3], loss="cross_entropy", seed=0).fit(X, y, epochs=5, verbose=0, callbacks=[stopper])
    assert stopper.calls == [(0, ["accuracy", "loss"]), (1, ["accuracy", "loss"])] and hist.epoch == [0, 1]
    with pytest.raises(TypeError, match="not a callback"):
        fastbp.Trainer([10, 3], loss="cross_entropy").fit(X, y, callbacks=[object()])
    assert issubclass(EarlyStopping, Callback)


# ---- fit options ----

def test_validation_split_initial_epoch_and_accuracy():
    X, y = problem(200)
    t = fastbp.Trainer([10, 3], loss="cross_entropy", seed=0)
    hist = t.fit(X, y, epochs=3, initial_epoch=1, validation_split=0.25, verbose=0)
    assert hist.epoch == [1, 2] and set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert hist.history["val_loss"][-1] == pytest.approx(t.evaluate(X[150:], y[150:])["loss"])
    assert 0 <= hist.history["accuracy"][0] <= 1
    with pytest.raises(ValueError, match="not both"):
        t.fit(X, y, validation_split=0.2, validation_data=(X, y))
    with pytest.raises(ValueError, match="initial_epoch"):
        t.fit(X, y, epochs=2, initial_epoch=2)
    with pytest.raises(ValueError, match="validation_split"):
        t.fit(X, y, validation_split=1.5)
    with pytest.raises(ValueError, match="verbose"):
        t.fit(X, y, verbose=3)


def test_progress_bar_on_a_terminal_and_lines_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    p = EpochProgress(1, epochs=2, n_samples=100, stream=out)
    p.start_epoch(0)
    for _ in range(4):
        p.batch_done(25, 0.5)
    p.end_epoch(0, {"loss": 0.5}, 0.01)
    assert "epoch 1/2" in out.getvalue() and "100/100" in out.getvalue() and "loss" in out.getvalue()
    plain = io.StringIO()
    p = EpochProgress(1, epochs=2, n_samples=100, stream=plain)
    p.start_epoch(0)
    p.end_epoch(0, {"loss": 0.5}, 0.01)
    assert plain.getvalue().startswith("epoch 1/2: loss 0.5000")
    silent = io.StringIO()
    p = EpochProgress(0, epochs=2, n_samples=100, stream=silent)
    p.start_epoch(0)
    p.end_epoch(0, {"loss": 0.5}, 0.01)
    assert silent.getvalue() == ""


def test_history_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = problem(200)
    hist = fastbp.Trainer([10, 8, 3], loss="cross_entropy", seed=0).fit(X, y, epochs=3, validation_split=0.2,
                                                                        verbose=0)
    fig = hist.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 2


# ---- what the README promises about the loop ----

def test_train_begin_and_end_are_called_once_around_the_epochs():
    X, y = problem(100)
    calls = []

    class Record(Callback):
        def on_train_begin(self, trainer):
            calls.append(("begin", trainer.epochs_done))

        def on_epoch_end(self, epoch, logs, trainer):
            calls.append(("epoch", epoch))

        def on_train_end(self, trainer):
            calls.append(("end", trainer.epochs_done))
    fastbp.Trainer([10, 8, 3], loss="cross_entropy", seed=0).fit(X, y, epochs=3, verbose=0, callbacks=[Record()])
    assert calls == [("begin", 0), ("epoch", 0), ("epoch", 1), ("epoch", 2), ("end", 3)]


def test_constant_schedule_and_the_interval_override():
    X, y = problem(64)
    constant = fastbp.Trainer([10, 8, 3], loss="cross_entropy", lr=0.01, batch_size=16, seed=0,
                              schedule=schedules.Constant(interval="step"))
    assert constant.fit(X, y, epochs=2, verbose=0).history["lr"] == [0.01, 0.01]
    per_step = fastbp.Trainer([10, 8, 3], loss="cross_entropy", lr=0.01, batch_size=16, seed=0,
                              schedule=schedules.StepDecay(2, gamma=0.5, interval="step"))
    per_step.fit(X, y, epochs=1, verbose=0)  # 4 steps: lr 0.01, 0.01, 0.005, 0.005 (as the 4th step used)
    assert per_step.lr == pytest.approx(0.005)
    per_step.step(X[:16], y[:16])  # the 5th step: 2 halvings
    assert per_step.lr == pytest.approx(0.0025)


def test_verbose_2_prints_one_line_per_epoch(capsys):
    X, y = problem(64)
    fastbp.Trainer([10, 8, 3], loss="cross_entropy", seed=0).fit(X, y, epochs=3, verbose=2, validation_split=0.25)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("val_accuracy" in line and "samples/s" in line for line in lines)


def test_shuffle_false_takes_the_rows_in_order():
    X, y = problem(70)
    in_order = fastbp.Trainer([10, 8, 3], loss="cross_entropy", batch_size=16, seed=0)
    in_order.fit(X, y, epochs=1, shuffle=False, verbose=0)
    by_hand = fastbp.Trainer([10, 8, 3], loss="cross_entropy", batch_size=16, seed=0)
    for start in range(0, 70, 16):
        by_hand.step(X[start:start + 16], y[start:start + 16])
    np.testing.assert_array_equal(in_order.state.params, by_hand.state.params)
    shuffled = fastbp.Trainer([10, 8, 3], loss="cross_entropy", batch_size=16, seed=0)
    shuffled.fit(X, y, epochs=1, verbose=0)
    assert not np.array_equal(shuffled.state.params, by_hand.state.params)


def test_a_step_uses_the_masks_that_gradients_training_true_reports():
    """gradients(training=True) shows the next step's dropout masks: plain SGD then moves every parameter by
    exactly -lr times that gradient (and a gradient without dropout would not match)."""
    X, y = problem(40)
    t = fastbp.Trainer([10, 16, 3], loss="cross_entropy", optimizer="sgd", lr=0.5, dropout=0.5, seed=0)
    before = [(W.astype(np.float64), b.astype(np.float64)) for W, b in t.params]
    _, with_masks = t.gradients(X, y, training=True)
    _, without = t.gradients(X, y)
    t.step(X, y)
    for (W, b), (W0, b0), (dW, db), (dW_plain, _) in zip(t.params, before, with_masks, without):
        np.testing.assert_allclose(W, W0 - 0.5 * dW, rtol=0, atol=1e-6)
        np.testing.assert_allclose(b, b0 - 0.5 * db, rtol=0, atol=1e-6)
    assert not np.allclose(with_masks[0][0], without[0][0])


def test_fit_with_sample_weights_logs_weighted_losses_and_splits_the_weights(rng):
    """fit's epoch loss averages its batches by their weights; validation_split holds out the last rows'
    weights with them, and validation_data may carry its own, so val_loss is evaluate's weighted loss."""
    X = rng.standard_normal((80, 4))
    y = rng.integers(0, 3, 80)
    w = rng.random(80) * 2
    t = fastbp.Trainer([4, 9, 3], loss="cross_entropy", optimizer="sgd", lr=0.0, batch_size=20, seed=0)
    history = t.fit(X, y, epochs=1, validation_split=0.25, sample_weight=w, verbose=0, shuffle=False)
    # lr=0: every batch sees the same parameters, so the epoch loss is the weighted loss over the 60 rows.
    assert history.history["loss"][0] == pytest.approx(t.evaluate(X[:60], y[:60], sample_weight=w[:60])["loss"],
                                                       rel=1e-6)
    assert history.history["val_loss"][0] == pytest.approx(
        t.evaluate(X[60:], y[60:], sample_weight=w[60:])["loss"], rel=1e-6)
    assert history.history["val_loss"][0] != pytest.approx(t.evaluate(X[60:], y[60:])["loss"], rel=1e-3)
    history = t.fit(X[:60], y[:60], epochs=1, validation_data=(X[60:], y[60:], w[60:]), sample_weight=w[:60],
                    verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(
        t.evaluate(X[60:], y[60:], sample_weight=w[60:])["loss"], rel=1e-6)
    with pytest.raises(TypeError, match="sample_weight applies to arrays"):
        t.fit([(X[:10], y[:10])], sample_weight=w[:10], verbose=0)
