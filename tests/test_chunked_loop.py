"""fit's epochs in compiled chunks (loop.py, cpu/serial.py) against the step-at-a-time loop: the same steps,
bit for bit, whatever the options, the chunk sizes, a stop by a callback, a non-finite loss or a Ctrl-C."""
import sys
import textwrap

import numba
import numpy as np
import pytest

import fastbp
from conftest import interrupted_child
from fastbp import loop, schedules
from fastbp.callbacks import LambdaCallback
from fastbp.cpu import backend as cpu_backend


def data(rng, sizes, n, loss):
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    if loss == "cross_entropy":
        return X, rng.integers(0, sizes[-1], n)
    if loss == "bce":
        return X, rng.random((n, sizes[-1]))
    return X, rng.standard_normal((n, sizes[-1])).astype(np.float32)


def fit(chunked, monkeypatch, sizes, X, y, epochs=2, fit_kw=None, **options):
    """(trainer, history, the most steps one compiled call took) of a fit in chunks or step by step."""
    calls = []
    train_steps = cpu_backend.CpuBackend.train_steps

    def counted(self, *args):
        calls.append(args[6])  # n_steps
        return train_steps(self, *args)
    with monkeypatch.context() as m:
        m.setattr(cpu_backend.CpuBackend, "train_steps", counted)
        if not chunked:
            m.setattr(loop, "runs_in_chunks", lambda *a: False)
        t = fastbp.Trainer(sizes, seed=11, **options)
        history = t.fit(X, y, epochs=epochs, verbose=0, **(fit_kw or {}))
    return t, history.history, max(calls, default=0)


def assert_same_state(a, b):
    for name in ("params", "moment1", "moment2"):
        np.testing.assert_array_equal(getattr(a.state, name), getattr(b.state, name), err_msg=name)
    assert a.step_count == b.step_count and a.lr == b.lr


CASES = {
    "adam_online": ([8, 32, 1], 1, dict(loss="mse")),
    "dropout_tail_batch": ([16, 33, 17, 4], 7, dict(loss="mse", dropout=0.3)),
    "step_schedule_nesterov": ([9, 20, 3], 5, dict(loss="cross_entropy", optimizer="sgd", lr=0.05, momentum=0.9,
                                                   nesterov=True, schedule=schedules.CosineWarmup(
                                                       total=60, warmup=7, interval="step"))),
    "epoch_schedule_rmsprop": ([9, 20, 3], 8, dict(loss="cross_entropy", optimizer="rmsprop", momentum=0.5,
                                                   schedule=schedules.StepDecay(step_size=1, gamma=0.5))),
    "adamw_clip_weights_only": ([5, 7, 3], 6, dict(loss="bce", optimizer="adamw", weight_decay=0.3, clip_norm=0.2,
                                                   decay_biases=False)),
    "adagrad_poisson": ([4, 6, 2], 3, dict(loss="poisson", optimizer="adagrad", lr=0.01)),
}


@pytest.mark.parametrize("case", CASES)
def test_fit_in_chunks_is_the_step_loop_bit_for_bit(rng, monkeypatch, case):
    sizes, batch, options = CASES[case]
    X, y = data(rng, sizes, 101, options["loss"])
    if options["loss"] == "poisson":
        y = np.abs(y)
    a, ha, most_a = fit(True, monkeypatch, sizes, X, y, batch_size=batch, **options)
    b, hb, most_b = fit(False, monkeypatch, sizes, X, y, batch_size=batch, **options)
    assert most_a > 1 and most_b <= 1  # chunks of several steps against one step per call
    assert_same_state(a, b)
    assert ha == hb  # losses, accuracies and learning rates, every bit


def test_sample_weights_with_zero_rows_in_chunks(rng, monkeypatch):
    sizes = [6, 12, 3]
    X, y = data(rng, sizes, 90, "cross_entropy")
    w = rng.random(90) * 2
    w[::7] = 0.0
    w[40:50] = 0.0  # a whole batch of weight 0: loss 0, no gradient
    runs = [fit(chunked, monkeypatch, sizes, X, y, fit_kw=dict(sample_weight=w), batch_size=10,
                loss="cross_entropy") for chunked in (True, False)]
    assert_same_state(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_chunk_boundaries_change_nothing(rng, monkeypatch):
    """One step per chunk, or as many as fit chooses: the same bits."""
    sizes = [8, 16, 2]
    X, y = data(rng, sizes, 203, "mse")
    a, ha, _ = fit(True, monkeypatch, sizes, X, y, batch_size=4, loss="mse", dropout=0.2)
    with monkeypatch.context() as m:
        m.setattr(loop, "FIRST_CHUNK_STEPS", 1)
        m.setattr(loop, "CHUNK_SECONDS", 1e-9)
        b, hb, most = fit(True, monkeypatch, sizes, X, y, batch_size=4, loss="mse", dropout=0.2)
    assert most == 1
    assert_same_state(a, b)
    assert ha == hb


def test_a_callback_that_stops_training(rng, monkeypatch):
    sizes = [8, 16, 2]
    X, y = data(rng, sizes, 64, "mse")

    def stop_after_first(epoch, logs, trainer):
        trainer.stop_training = True
    runs = [fit(chunked, monkeypatch, sizes, X, y, epochs=5, batch_size=4, loss="mse",
                fit_kw=dict(callbacks=[LambdaCallback(on_epoch_end=stop_after_first)])) for chunked in (True, False)]
    assert runs[0][0].step_count == runs[1][0].step_count == 16
    assert_same_state(runs[0][0], runs[1][0])


def test_a_non_finite_loss_mid_chunk_keeps_the_steps_before_it(rng, monkeypatch):
    """Row 37's target makes its batch's loss overflow float32: step 9 of batches of 4 (no shuffling). Both
    loops raise there, with 9 whole steps applied and the failing one not."""
    sizes = [3, 5, 1]
    X, y = data(rng, sizes, 80, "mse")
    y[37] = 1e30
    states = []
    for chunked in (True, False):
        with pytest.raises(FloatingPointError, match="at step 10"):
            fit(chunked, monkeypatch, sizes, X, y, batch_size=4, loss="mse", fit_kw=dict(shuffle=False))
        t = fastbp.Trainer(sizes, seed=11, batch_size=4, loss="mse")
        with monkeypatch.context() as m:
            if not chunked:
                m.setattr(loop, "runs_in_chunks", lambda *a: False)
            with pytest.raises(FloatingPointError):
                t.fit(X, y, epochs=1, verbose=0, shuffle=False)
        assert t.step_count == 9 and np.isfinite(t.state.params).all()
        states.append(t)
    assert_same_state(*states)


@pytest.mark.parametrize("n", [40, 43], ids=["whole-batches", "short-last-batch"])
def test_whole_epochs_at_once_are_the_step_loop_bit_for_bit(rng, monkeypatch, n):
    """No callback, no validation: several epochs per compiled call, each with its shorter last batch. The
    same bits as the step loop and as one epoch per call: parameters, moments, each epoch's loss and
    accuracy; with dropout, sample weights and a shuffle each epoch (its draws taken up front, in the same
    order)."""
    sizes = [6, 12, 3]
    X, y = data(rng, sizes, n, "cross_entropy")
    w = rng.random(n)
    kw = dict(epochs=9, fit_kw=dict(sample_weight=w), batch_size=8, loss="cross_entropy", dropout=0.2)
    grouped, h_grouped, most = fit(True, monkeypatch, sizes, X, y, **kw)
    assert most > -(-n // 8)  # more steps in one call than an epoch has
    with monkeypatch.context() as m:
        m.setattr(loop, "MAX_EPOCHS_AT_ONCE", 1)
        single, h_single, most_single = fit(True, monkeypatch, sizes, X, y, **kw)
    assert most_single <= n // 8
    stepwise, h_stepwise, _ = fit(False, monkeypatch, sizes, X, y, **kw)
    for other, h_other in ((single, h_single), (stepwise, h_stepwise)):
        assert_same_state(grouped, other)
        assert h_grouped == h_other
    assert grouped.epochs_done == 9 and len(h_grouped["loss"]) == 9


def test_a_callback_of_the_users_gets_its_epochs_one_at_a_time(rng, monkeypatch):
    """A callback sees the parameters of its own epoch's end (any callback without _epochs_ahead: fit runs
    one epoch per call for it), the same as with the step loop."""
    sizes = [6, 12, 3]
    X, y = data(rng, sizes, 40, "cross_entropy")
    seen = {True: [], False: []}
    for chunked in (True, False):
        cb = LambdaCallback(lambda epoch, logs, trainer, c=chunked: seen[c].append(trainer._flat_params()))
        _, _, most = fit(chunked, monkeypatch, sizes, X, y, epochs=4, batch_size=8, loss="cross_entropy",
                         fit_kw=dict(callbacks=[cb]))
        assert most <= 40 // 8
    assert len(seen[True]) == 4 and all(np.array_equal(a, b) for a, b in zip(seen[True], seen[False]))


def test_a_callback_that_breaks_its_epochs_ahead_promise_is_an_error(rng, monkeypatch):
    """A callback that allows several epochs at once (_epochs_ahead) but stops training before the last of
    them: fit says so rather than leaving trained epochs out of the history."""
    class Broken:
        def _epochs_ahead(self, trainer):
            return 5

        def on_epoch_end(self, epoch, logs, trainer):
            trainer.stop_training = True
    sizes = [6, 12, 3]
    X, y = data(rng, sizes, 40, "cross_entropy")
    with pytest.raises(RuntimeError, match="_epochs_ahead"):
        fit(True, monkeypatch, sizes, X, y, epochs=9, batch_size=8, loss="cross_entropy",
            fit_kw=dict(callbacks=[Broken()]))


def test_what_takes_chunks():
    small = fastbp.Trainer([8, 32, 1], batch_size=1)
    assert small._backend.takes_serial_path(1)
    wide = fastbp.Trainer([256, 1024, 10], batch_size=512)
    assert not wide._backend.takes_serial_path(512) or wide._backend.threads == 1 or \
        fastbp.threads.kernel_threads(None) == 1
    assert fastbp.Trainer([256, 1024, 10], threads=1)._backend.takes_serial_path(512)
    # micro-batches, memory-mapped data and MPI keep the step loop
    X = np.zeros((40, 8), np.float32)
    t = fastbp.Trainer([8, 4, 1], batch_size=8, micro_batch=3)
    assert not loop.runs_in_chunks(t, t._source(X, np.zeros(40)), 8)
    t = fastbp.Trainer([8, 4, 1], batch_size=8)
    assert loop.runs_in_chunks(t, t._source(X, np.zeros(40)), 8)


class _FakeBlas:
    def __init__(self, architecture):
        self.architecture = architecture


@pytest.mark.parametrize("kernels, expected", [(["SkylakeX", "SkylakeX"], cpu_backend.SERIAL_WORK_AVX512),
                                               (["Cooperlake"], cpu_backend.SERIAL_WORK_AVX512),
                                               (["SkylakeX", "Haswell"], cpu_backend.SERIAL_WORK_OTHER),
                                               (["Haswell"], cpu_backend.SERIAL_WORK_OTHER),
                                               ([None], cpu_backend.SERIAL_WORK_OTHER),  # not an OpenBLAS
                                               ([], cpu_backend.SERIAL_WORK_OTHER)])
def test_serial_work_follows_the_blas_kernels(monkeypatch, kernels, expected):
    """The one-thread crossover and the W^T copies are the ones measured for the loaded BLAS's kernels;
    SERIAL_WORK overrides the crossover."""
    monkeypatch.setattr(cpu_backend, "SERIAL_WORK", None)
    monkeypatch.setattr(cpu_backend, "_avx512_blas", None)
    monkeypatch.setattr(cpu_backend, "blas_libraries", lambda: [_FakeBlas(k) for k in kernels])
    assert cpu_backend.serial_work() == expected
    monkeypatch.setattr(cpu_backend, "COPY_WEIGHTS", None)  # W^T copies only where they were measured to pay
    assert cpu_backend.copies_weights() == (expected == cpu_backend.SERIAL_WORK_AVX512)
    t = fastbp.Trainer([32, 256, 256, 1], batch_size=64, loss="mse")  # 4.77 M multiply-adds per step
    assert t._backend.takes_serial_path(64) == (expected > 64 * t._backend._macs_per_row
                                                 or t._backend.threads == 1 or fastbp.threads.kernel_threads(None) == 1)
    monkeypatch.setattr(cpu_backend, "SERIAL_WORK", 123)
    assert cpu_backend.serial_work() == 123


def test_micro_batches_train_step_by_step_to_the_same_numbers(rng, monkeypatch):
    sizes = [8, 16, 2]
    X, y = data(rng, sizes, 60, "mse")
    whole, _, _ = fit(True, monkeypatch, sizes, X, y, batch_size=12, loss="mse", optimizer="sgd", lr=0.1)
    micro, _, most = fit(True, monkeypatch, sizes, X, y, batch_size=12, micro_batch=5, loss="mse", optimizer="sgd",
                         lr=0.1)
    assert most == 0  # no chunks: each step's micro-batches are summed in Python
    assert whole.step_count == micro.step_count
    np.testing.assert_allclose(micro.state.params, whole.state.params, rtol=1e-5, atol=1e-6)


CTRL_C_CHILD = textwrap.dedent("""
    import sys, numpy as np, fastbp
    from fastbp.cpu import backend
    {setup}
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4096, 8)).astype(np.float32)
    y = rng.standard_normal((4096, 1)).astype(np.float32)
    options = dict(batch_size={batch}, seed=5, dropout=0.1, threads={threads})
    t = fastbp.Trainer([8, 32, 1], **options)
    t.fit(X[:64], y[:64], epochs=1, verbose=0)  # compiled (or loaded) before the parent starts counting
    assert t._backend.split_parts(3, {batch}, t._optimizer_settings()) == {parts}
    print("training", flush=True)
    try:
        t.fit(X, y, epochs=10 ** 6, verbose=0)
        print("finished?!")
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    # Replay the same number of steps one Trainer.step at a time: the same bits, or the state was torn.
    steps = t.step_count
    r = fastbp.Trainer([8, 32, 1], **options)
    r.fit(X[:64], y[:64], epochs=1, verbose=0)
    while r.step_count < steps:
        order = r._rng.permutation(4096)
        for start in range(0, 4096, {batch}):
            if r.step_count == steps:
                break
            r.step(X[order[start:start + {batch}]], y[order[start:start + {batch}]])
    same = all(np.array_equal(getattr(t.state, k), getattr(r.state, k)) for k in ("params", "moment1", "moment2"))
    print("whole steps" if same else "torn", steps, flush=True)
""")
# One-row steps on the serial path; and steps of 16 rows split in two parts that two threads share
# (cpu/serial.py's split steps, forced on for a network this small).
CTRL_C_PATHS = {"one_part": dict(setup="", batch=1, threads=None, parts=1),
                "split": dict(setup="backend.SPLIT_WORK, backend.MIN_PART_ROWS, backend.MIN_SHARED_STEPS = 0, 2, 1",
                              batch=16, threads=2, parts=2)}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
@pytest.mark.parametrize("path", CTRL_C_PATHS)
def test_ctrl_c_mid_chunk_leaves_a_whole_number_of_steps(path):
    """A Ctrl-C during a chunk (on the split path, while the helper thread still runs its parts) lands after
    the chunk's whole steps: the state is that of a step loop stopped there."""
    options = CTRL_C_PATHS[path]
    if options["threads"] and numba.config.NUMBA_NUM_THREADS < options["threads"]:
        pytest.skip("split steps need two kernel threads (NUMBA_NUM_THREADS >= 2)")
    returncode, out, err = interrupted_child(CTRL_C_CHILD.format(**options))
    assert returncode == 0, err
    verdict, steps = out.split()[-3:-1], int(out.split()[-1])
    assert " ".join(verdict) == "whole steps" and steps > 64 // options["batch"] + 100


def test_a_first_fit_says_it_compiles_and_compiles_before_the_first_epoch(rng, monkeypatch, capsys):
    """When the step's entry point is neither compiled nor cached, a verbose fit says so before its first
    epoch, and prepare() compiles it then (not counted in the epoch's samples/s); otherwise not a word."""
    sizes = [8, 16, 2]
    X, y = data(rng, sizes, 64, "mse")
    prepared = []
    for needs in (True, False):
        t = fastbp.Trainer(sizes, batch_size=8, seed=0)
        monkeypatch.setattr(t._backend, "needs_compiling", lambda n: needs)
        monkeypatch.setattr(t._backend, "prepare", lambda n, real=t._backend.prepare: (prepared.append(n), real(n)))
        t.fit(X, y, epochs=1, verbose=2)
        out = capsys.readouterr().out
        assert ("compiling the kernels" in out) == needs
        if needs:
            assert out.index("compiling") < out.index("epoch 1/1")
    assert prepared == [8, 8]
    # Really compiled: the entry point a step of 8 rows takes has a signature in this process now.
    assert not t._backend.needs_compiling(8)
