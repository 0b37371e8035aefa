"""Split steps (cpu/serial.py, split_threads.py, claims.py): each step's batch cut into parts that threads
claim. The same bits whichever threads run the parts, and as the step loop; the one-part path's numbers to
float32 rounding; a non-finite loss, an epoch's part with no rows and bad arguments handled, never a hang
(a Ctrl-C mid chunk: tests/test_chunked_loop.py)."""
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import fastbp
from fastbp import loop
from fastbp.cpu import backend as cpu_backend

pytestmark = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                reason="split steps need two kernel threads (NUMBA_NUM_THREADS >= 2)")


def data(rng, sizes, n, loss):
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    if loss == "cross_entropy":
        return X, rng.integers(0, sizes[-1], n)
    return X, rng.standard_normal((n, sizes[-1])).astype(np.float32)


def train(monkeypatch, sizes, X, y, split=True, shared_steps=1, chunked=True, epochs=2, fit_kw=None, **options):
    """A Trainer(threads=2) fitted with its steps split in two (split=True; 2 rows make a part, any work
    splits) or in one part; shared_steps: the fewest steps a call shares among threads (MIN_SHARED_STEPS)."""
    with monkeypatch.context() as m:
        m.setattr(cpu_backend, "SERIAL_WORK", 2 ** 62)
        m.setattr(cpu_backend, "SPLIT_WORK", 0 if split else 2 ** 62)
        m.setattr(cpu_backend, "MIN_PART_ROWS", 2)
        m.setattr(cpu_backend, "MIN_SHARED_STEPS", shared_steps)
        if not chunked:
            m.setattr(loop, "runs_in_chunks", lambda *a: False)
        t = fastbp.Trainer(sizes, seed=5, threads=2, **options)
        history = t.fit(X, y, epochs=epochs, verbose=0, **(fit_kw or {}))
        parts = t._backend.split_parts(3, options.get("batch_size", 32), t._optimizer_settings())
    return t, history.history, parts


def assert_same_state(a, b):
    for name in ("params", "moment1", "moment2", "grads"):
        np.testing.assert_array_equal(getattr(a.state, name), getattr(b.state, name), err_msg=name)
    assert a.step_count == b.step_count


CASES = {
    # 97 rows in batches of 16: the last batch has one row, so its second part has none.
    "adam_mse_empty_part": ([7, 33, 3], 16, 97, dict(loss="mse")),
    "dropout_input_dropout": ([9, 20, 17, 4], 12, 70, dict(loss="cross_entropy", dropout=0.3, input_dropout=0.2)),
    "adamw_masked_decay": ([5, 24, 3], 10, 64, dict(loss="cross_entropy", optimizer="adamw", weight_decay=0.1,
                                                    decay_biases=False)),
    "sgd_nesterov_gelu": ([6, 12, 12, 2], 9, 50, dict(loss="mse", optimizer="sgd", lr=0.05, momentum=0.9,
                                                      nesterov=True, activation=["gelu", "tanh"])),
}


@pytest.mark.parametrize("case", CASES)
def test_split_steps_are_the_step_loop_bit_for_bit_and_the_one_part_path_to_rounding(rng, monkeypatch, case):
    sizes, batch, n, options = CASES[case]
    X, y = data(rng, sizes, n, options["loss"])
    w = rng.random(n) * 2
    kw = dict(batch_size=batch, fit_kw=dict(sample_weight=w), **options)
    chunks, h_chunks, parts = train(monkeypatch, sizes, X, y, **kw)
    assert parts == 2
    steps, h_steps, _ = train(monkeypatch, sizes, X, y, chunked=False, **kw)
    assert_same_state(chunks, steps)
    assert h_chunks == h_steps
    whole, h_whole, parts = train(monkeypatch, sizes, X, y, split=False, **kw)
    assert parts == 1
    # The parts' gradients add in another order than one batch's: float32 rounding, a few steps on.
    np.testing.assert_allclose(chunks.state.params, whole.state.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h_chunks["loss"], h_whole["loss"], rtol=1e-5)
    assert h_chunks.get("accuracy") == h_whole.get("accuracy")


def test_the_threads_running_the_parts_change_no_bit(rng, monkeypatch):
    """Two threads claiming the parts (every call shared) against the calling thread alone, many times: a
    race (a part read before it is written, a step updated twice) would show as a different bit."""
    sizes = [12, 40, 40, 3]
    X, y = data(rng, sizes, 200, "cross_entropy")
    alone, h_alone, _ = train(monkeypatch, sizes, X, y, shared_steps=2 ** 62, batch_size=20, loss="cross_entropy",
                              dropout=0.1)
    for _ in range(8):
        shared, h_shared, _ = train(monkeypatch, sizes, X, y, batch_size=20, loss="cross_entropy", dropout=0.1)
        assert_same_state(alone, shared)
        assert h_alone == h_shared


def test_a_non_finite_loss_stops_a_split_call_before_its_update(rng, monkeypatch):
    """Row 45's target overflows float32 in step 5 (batches of 8, no shuffling): 5 whole steps applied, both
    parts of the failing one left out, as in the step loop."""
    sizes = [3, 9, 1]
    X, y = data(rng, sizes, 96, "mse")
    y[45] = 1e30
    states = []
    for chunked in (True, False):
        with pytest.raises(FloatingPointError, match="at step 6"):
            train(monkeypatch, sizes, X, y, chunked=chunked, batch_size=8, loss="mse", fit_kw=dict(shuffle=False))
        with monkeypatch.context() as m:
            m.setattr(cpu_backend, "SPLIT_WORK", 0)
            m.setattr(cpu_backend, "MIN_PART_ROWS", 2)
            m.setattr(cpu_backend, "MIN_SHARED_STEPS", 1)
            if not chunked:
                m.setattr(loop, "runs_in_chunks", lambda *a: False)
            t = fastbp.Trainer(sizes, seed=5, threads=2, batch_size=8, loss="mse")
            with pytest.raises(FloatingPointError):
                t.fit(X, y, epochs=1, verbose=0, shuffle=False)
        assert t.step_count == 5 and np.isfinite(t.state.params).all()
        states.append(t)
    for name in ("params", "moment1", "moment2"):
        np.testing.assert_array_equal(getattr(states[0].state, name), getattr(states[1].state, name))


def test_estimators_split_their_steps_to_the_same_curve(rng, monkeypatch):
    """MLPClassifier's epochs run whole in one call with each epoch's squared weights (its alpha term): the
    same loss curve to rounding with its steps split in two or not."""
    X, y = data(rng, [10, 0, 4], 300, "cross_entropy")
    curves = []
    for split in (True, False):
        with monkeypatch.context() as m:
            m.setattr(cpu_backend, "SERIAL_WORK", 2 ** 62)
            m.setattr(cpu_backend, "SPLIT_WORK", 0 if split else 2 ** 62)
            m.setattr(cpu_backend, "MIN_SHARED_STEPS", 1)
            model = fastbp.MLPClassifier(hidden_layer_sizes=(30,), batch_size=40, max_iter=6, random_state=0,
                                         alpha=1e-2)
            with pytest.warns(Warning):  # not converged in 6 iterations
                model.fit(X, y)
            curves.append(model.loss_curve_)
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-5)


def test_bad_arguments_raise_in_every_thread_instead_of_hanging():
    """Every check runs before a thread claims a task: a call with too short a learning-rate array raises
    (in the caller and its helper alike) and returns, rather than one thread waiting on the other's task."""
    script = textwrap.dedent("""
        import numpy as np, fastbp
        from fastbp.cpu import backend, split_threads
        from fastbp.cpu.dropout import NO_DROPOUT
        t = fastbp.Trainer([4, 8, 2], loss="mse", threads=2, batch_size=16)
        b = t._backend
        backend.SPLIT_WORK, backend.MIN_PART_ROWS, backend.MIN_SHARED_STEPS = 0, 2, 1
        X = np.zeros((64, 4), np.float32)
        targets = np.zeros((64, 2), np.float32)
        try:
            b.train_steps(X, None, targets, None, np.arange(64), 16, 4, t._optimizer_settings(), np.zeros(2), 0,
                          NO_DROPOUT, np.zeros((3, 4)))
        except IndexError as e:
            print("raised:", e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "raised: run_steps: order, lrs or the step outputs are shorter than n_steps" in out.stdout


def test_a_retired_helper_leaves_the_call_to_the_first_thread(rng, monkeypatch):
    """claims.RETIRE set (as a thread sets it after waiting about a millisecond for a descheduled one): a
    thread that joins second claims nothing, the first runs every task; the same bits as the parts run
    alone. And the backend then runs its split calls on one thread for a while (ALONE_SECONDS)."""
    import threading
    from fastbp.cpu import claims as claim_slots, split_threads
    sizes = [6, 20, 3]
    X, y = data(rng, sizes, 64, "cross_entropy")
    alone, _, _ = train(monkeypatch, sizes, X, y, shared_steps=2 ** 62, epochs=1, batch_size=16,
                        loss="cross_entropy")
    seen = {}

    def retiring(run_steps, threads, args, claims, n_steps):
        """run_split with RETIRE set before any thread joins, the helper joining second (after the caller
        finished), and the caller's return value checked."""
        claims[:] = 0
        claims[claim_slots.RETIRE] = 1
        done = run_steps(*args)
        helper = threading.Thread(target=lambda: seen.setdefault("helper", run_steps(*args)))
        helper.start()
        helper.join()
        seen["joined"] = int(claims[claim_slots.JOINED])
        return done
    with monkeypatch.context() as m:
        m.setattr(split_threads, "run_split", retiring)
        retired, _, _ = train(monkeypatch, sizes, X, y, epochs=1, batch_size=16, loss="cross_entropy")
    assert seen["joined"] == 2 and seen["helper"] == 4  # it joined, claimed nothing, and returned
    assert_same_state(alone, retired)
    assert retired._backend._share_after > 0  # RETIRE seen: the next calls keep to one thread



def test_time_alone_doubles_with_each_retirement_and_starts_over_after_clean_sharing(rng, monkeypatch):
    """After a retirement, split calls keep to one thread for FIRST_ALONE_SECONDS, twice as long after each
    further one up to ALONE_SECONDS (a CPU busy with other jobs); CLEAN_SECONDS of shared calls without one
    start over (a quiet machine's passing hiccup), shorter clean sharing does not. A scripted clock and
    run_split (RETIRE set or not after the calling thread ran every task)."""
    import types
    from fastbp.cpu import claims as claim_slots, split_threads
    sizes = [6, 20, 3]
    X, y = data(rng, sizes, 64, "cross_entropy")
    clock, retiring, shared = [100.0], [True], []

    def scripted(run_steps, threads, args, claims, n_steps):
        claims[:] = 0
        done = run_steps(*args)
        shared.append(threads > 1)
        claims[claim_slots.RETIRE] = int(threads > 1 and retiring[0])
        return done
    monkeypatch.setattr(split_threads, "run_split", scripted)
    monkeypatch.setattr(cpu_backend, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    for name, value in (("SERIAL_WORK", 2 ** 62), ("SPLIT_WORK", 0), ("MIN_PART_ROWS", 2), ("MIN_SHARED_STEPS", 1)):
        monkeypatch.setattr(cpu_backend, name, value)
    t = fastbp.Trainer(sizes, loss="cross_entropy", seed=5, threads=2, batch_size=16)
    backend = t._backend

    def epoch_at(when, retire):
        """An epoch at clock time `when`: whether any of its calls shared the threads."""
        clock[0], retiring[0] = when, retire
        shared.clear()
        t.fit(X, y, epochs=1, verbose=0)
        return any(shared)

    first, longest = cpu_backend.FIRST_ALONE_SECONDS, cpu_backend.ALONE_SECONDS
    now, expected = 100.0, first
    while True:  # retirements in a row: each time alone twice the last, up to ALONE_SECONDS
        assert epoch_at(now, True)
        assert backend._alone_seconds == pytest.approx(expected)
        assert not epoch_at(now + 0.99 * expected, True)  # alone until then
        now += expected
        if expected == longest:
            break
        expected = min(longest, 2 * expected)
    clean = cpu_backend.CLEAN_SECONDS
    assert epoch_at(now, False) and epoch_at(now + clean / 2, False)  # clean, but not for long enough
    assert epoch_at(now + clean / 2, True) and backend._alone_seconds == longest
    now += clean / 2 + longest
    assert epoch_at(now, False) and epoch_at(now + 1.01 * clean, False)  # CLEAN_SECONDS of clean sharing
    assert epoch_at(now + 1.01 * clean, True) and backend._alone_seconds == pytest.approx(first)


def test_two_trainers_splitting_steps_from_two_threads_at_once(rng, monkeypatch):
    """Each Trainer's split calls share one pool of helper threads: from two Python threads at once (a helper
    busy with the other Trainer's call starts late, finds nothing left and returns), each gets the bits it
    gets alone, several times over."""
    import threading
    sizes = [10, 48, 3]
    X, y = data(rng, sizes, 240, "cross_entropy")
    alone = [train(monkeypatch, sizes, X, y, batch_size=24, loss="cross_entropy", dropout=d)[0] for d in (0.0, 0.2)]
    monkeypatch.setattr(cpu_backend, "SERIAL_WORK", 2 ** 62)
    monkeypatch.setattr(cpu_backend, "SPLIT_WORK", 0)
    monkeypatch.setattr(cpu_backend, "MIN_PART_ROWS", 2)
    monkeypatch.setattr(cpu_backend, "MIN_SHARED_STEPS", 1)
    for _ in range(4):
        trainers = [fastbp.Trainer(sizes, seed=5, threads=2, batch_size=24, loss="cross_entropy", dropout=d)
                    for d in (0.0, 0.2)]
        threads = [threading.Thread(target=t.fit, args=(X, y), kwargs=dict(epochs=2, verbose=0)) for t in trainers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive()
        for t, a in zip(trainers, alone):
            assert_same_state(t, a)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork")
def test_split_steps_in_a_forked_child():
    """The parent's helper pool does not survive a fork: a child started after the parent split its steps
    gets its own pool (register_at_fork), and the same bits as the parent's fit of the same network."""
    script = textwrap.dedent("""
        import multiprocessing, numpy as np, fastbp
        from fastbp.cpu import backend
        backend.SPLIT_WORK, backend.MIN_PART_ROWS, backend.MIN_SHARED_STEPS = 0, 2, 1
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((96, 6)).astype(np.float32), rng.integers(0, 3, 96)

        def fitted(_=None):
            t = fastbp.Trainer([6, 20, 3], loss="cross_entropy", batch_size=16, seed=1, threads=2)
            t.fit(X, y, epochs=3, verbose=0)
            return t.state.params.copy()

        parent = fitted()  # starts the helper pool here
        with multiprocessing.get_context("fork").Pool(1) as pool:
            child = pool.map(fitted, [0])[0]
        print("same" if np.array_equal(parent, child) else "different")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "same"
