"""A Trainer in the field: several threads, forked and spawned workers, Ctrl-C at any moment.

Crashes and hangs run in a subprocess with a timeout; races are given many chances to happen."""
import os
import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np
import pytest

import fastbp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(source, timeout=180, env=None):
    """Runs Python source as a script in a fresh interpreter (a file, so that spawned workers can import
    its functions); returns its stdout. Fails on a non-zero exit or a hang."""
    full_env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
    full_env.pop("NUMBA_ENABLE_CUDASIM", None)
    with tempfile.TemporaryDirectory() as folder:
        script = os.path.join(folder, "script.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(source))
        try:
            proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=timeout,
                                  env=full_env)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"hung for {timeout} s; output so far: {exc.stdout!r} {exc.stderr!r}")
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.stdout


def data(rng, n=300, d=12, k=4):
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, :k].argmax(axis=1)).astype(np.int64)
    return X, y


def in_a_thread(fn):
    result = []
    th = threading.Thread(target=lambda: result.append(fn()))
    th.start()
    th.join()
    return result[0]


def test_concurrent_predicts_are_bitwise_equal_to_sequential(rng):
    X, y = data(rng, n=5000)
    t = fastbp.Trainer([12, 64, 4], loss="cross_entropy", seed=0, batch_size=64)
    t.fit(X, y, epochs=1, verbose=0)
    # Different inputs per thread, two chunk sizes (one over EVAL_CHUNK): a shared workspace would mix them.
    inputs = [X[:64], X[100:164] * 2, X, X[:4097], X[7:71] - 1, X[:1], X[::3], X[::-1]]
    # The sequential reference comes from a thread other than the main one: once OpenBLAS has started its
    # own thread pool, its single-threaded SGEMM rounds differently in the thread that started the pool
    # (measured: 2.9e-6 on a 4096 x 13 x 64 product, independent of fastbp). Every other thread agrees.
    expected = in_a_thread(lambda: [t.predict(x) for x in inputs])
    main = [t.predict(x) for x in inputs]
    assert all(np.allclose(m, e, rtol=1e-5, atol=1e-6) for m, e in zip(main, expected))
    mismatches, errors = [], []

    def serve(i):
        try:
            for _ in range(15):
                if not np.array_equal(t.predict(inputs[i]), expected[i]):
                    mismatches.append(i)
        except Exception as exc:  # surfaced below: a thread's exception would otherwise be lost
            errors.append(exc)
    threads = [threading.Thread(target=serve, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and not mismatches


def test_evaluate_and_gradients_from_threads_match_sequential(rng):
    X, y = data(rng)
    t = fastbp.Trainer([12, 32, 4], loss="cross_entropy", seed=1)
    expected_eval, (expected_loss, expected_grads) = in_a_thread(
        lambda: (t.evaluate(X, y), t.gradients(X[:50], y[:50])))
    results = []

    def work():
        for _ in range(10):
            loss, grads = t.gradients(X[:50], y[:50])
            results.append(t.evaluate(X, y) == expected_eval and loss == expected_loss
                           and all(np.array_equal(a[0], b[0]) for a, b in zip(grads, expected_grads)))
    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(results) == 40 and all(results)


def test_training_from_a_second_thread_is_a_clear_error(rng):
    X, y = data(rng, n=2000)
    t = fastbp.Trainer([12, 32, 4], loss="cross_entropy", seed=0, batch_size=8)
    started, errors = threading.Event(), []

    class Signal(fastbp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs, trainer):
            started.set()

    def second():
        started.wait(60)
        for call in (lambda: t.fit(X, y, epochs=1, verbose=0, batch_size=17), lambda: t.step(X[:5], y[:5])):
            try:
                call()
            except RuntimeError as exc:
                errors.append(str(exc))
    th = threading.Thread(target=second)
    th.start()
    t.fit(X, y, epochs=40, verbose=0, callbacks=[Signal()])
    th.join()
    assert len(errors) == 2 and all("another thread is training" in e for e in errors)
    # The model trained exactly its own 40 epochs' steps, nothing interleaved.
    assert t.step_count == 40 * 250


def test_predict_during_fit_sees_whole_steps(rng):
    """A predict from another thread while fit runs returns the outputs of some whole number of steps."""
    X, y = data(rng, n=256)
    t = fastbp.Trainer([12, 16, 4], loss="cross_entropy", seed=3, batch_size=32, optimizer="sgd", lr=0.05)
    snapshots = {}

    class Record(fastbp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs, trainer):
            snapshots[trainer.step_count] = trainer.predict(X[:20])
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(t.predict(X[:20]))
    th = threading.Thread(target=watch)
    th.start()
    t.fit(X, y, epochs=100, verbose=0, shuffle=False, callbacks=[Record()])  # long enough for the watcher
    done.set()
    th.join()
    # Replay: every step's outputs, from a fresh model fed the same batches.
    replay = fastbp.Trainer([12, 16, 4], loss="cross_entropy", seed=3, batch_size=32, optimizer="sgd", lr=0.05)
    every_step = [replay.predict(X[:20])]
    for _ in range(100):
        for start in range(0, 256, 32):
            replay.step(X[start:start + 32], y[start:start + 32])
            every_step.append(replay.predict(X[:20]))
    for k, out in snapshots.items():
        assert np.array_equal(out, every_step[k])
    assert seen and all(any(np.array_equal(s, e) for e in every_step) for s in seen[::max(1, len(seen) // 50)])


def test_two_trainers_in_two_threads_match_sequential(rng):
    X, y = data(rng, n=1024)
    kw = dict(sizes=[12, 160, 4], loss="cross_entropy", batch_size=256)  # wide enough for the layer path

    def train(seed, out):
        t = fastbp.Trainer(seed=seed, **kw)
        t.fit(X, y, epochs=3, verbose=0)
        out[seed] = t.params
    sequential, concurrent = {}, {}
    for seed in range(4):
        train(seed, sequential)
    threads = [threading.Thread(target=train, args=(seed, concurrent)) for seed in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for seed in range(4):
        for (W1, b1), (W2, b2) in zip(sequential[seed], concurrent[seed]):
            assert np.array_equal(W1, W2) and np.array_equal(b1, b2)


WORKER = """
import multiprocessing as mp
import numpy as np
import fastbp

def work(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, 10)).astype(np.float32)
    y = X[:, :3].argmax(axis=1)
    t = fastbp.Trainer([10, 200, 3], loss="cross_entropy", seed=seed, batch_size=64)
    t.fit(X, y, epochs=2, verbose=0)
    return t.evaluate(X, y)["loss"]
"""


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_process_pool_after_training_in_the_parent(method):
    out = run_script(WORKER + f"""
if __name__ == "__main__":
    parent = work(0)  # the parent has run every kind of kernel before the pool starts
    with mp.get_context("{method}").Pool(2) as pool:
        losses = pool.map(work, range(4))
    assert losses[0] == parent, (losses[0], parent)
    print("ok", fastbp.Trainer([2, 2]).predict(np.ones((1, 2))).shape)
""", timeout=120)
    assert out.startswith("ok")


def test_joblib_workers_honour_their_thread_limit():
    out = run_script("""
import joblib
from fastbp import threads

def limit():
    return threads.limit()

print(joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(limit)() for _ in range(2)))
""", timeout=120)
    assert out.strip() == "[1, 1]"  # loky gives each of 2 workers on 2 cores NUMBA_NUM_THREADS=1


INTERRUPT = """
import os, signal, threading, time
import numpy as np
import fastbp

rng = np.random.default_rng(0)
X = rng.standard_normal((512, 16)).astype(np.float32)
y = X[:, :4].argmax(axis=1)
KW = dict(sizes=[16, 48, 48, 4], loss="cross_entropy", seed=5, batch_size=64, dropout=0.2)
landed = 0
for attempt in range(TRIES):
    t = fastbp.Trainer(**KW)
    t.fit(X, y, epochs=1, verbose=0, shuffle=False)  # compiled and warm
    delay = float(np.random.default_rng(attempt).uniform(0.0, 0.05))
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        t.fit(X, y, epochs=1000, verbose=0, shuffle=False)
    except KeyboardInterrupt:
        landed += 1
    timer.join()
    # Replay step_count steps on the same batches: the state must be exactly theirs.
    ref = fastbp.Trainer(**KW)
    for k in range(t.step_count):
        start = (k % 8) * 64
        ref.step(X[start:start + 64], y[start:start + 64])
    for (W, b), (Wr, br) in zip(t.params, ref.params):
        assert np.array_equal(W, Wr) and np.array_equal(b, br), ("state is not that of", t.step_count, "steps")
    assert np.array_equal(t.state.moment2, ref.state.moment2)
print("interrupted", landed)
"""


def test_ctrl_c_during_fit_leaves_the_state_of_whole_steps():
    out = run_script(INTERRUPT.replace("TRIES", "20"), timeout=300)
    assert int(out.split()[-1]) >= 15  # the interrupt did land inside fit (not before or after it)


@pytest.mark.parametrize("chosen, expected", [(None, "tbb"), ("tbb", "tbb"), ("omp", "omp"),
                                              ("workqueue", "workqueue")])
def test_threading_layer_is_tbb_unless_the_user_chose(chosen, expected):
    """fastbp picks TBB (the wheel's library loaded by path); a layer the user names is kept, TBB included."""
    if chosen is None and os.environ.get("NUMBA_THREADING_LAYER"):
        pytest.skip("this test run names a threading layer itself")
    env = {"NUMBA_THREADING_LAYER": chosen} if chosen else {}
    out = run_script("""
import numpy as np
import fastbp
from fastbp.cpu import threading_layer
fastbp.Trainer([3, 4, 2], seed=0).predict(np.ones((5, 3)))
print(threading_layer.name())
""", timeout=120, env=env)
    assert out.strip() == expected


def test_two_trainers_in_two_threads_on_the_workqueue_layer():
    """Numba's workqueue layer aborts the process when two threads enter it at once; fastbp makes those
    calls take turns (the layer a user names is kept, so this must hold there too)."""
    out = run_script("""
import threading
import numpy as np
import fastbp
from fastbp.cpu import threading_layer

rng = np.random.default_rng(0)
X = rng.standard_normal((2048, 16)).astype(np.float32)
y = X[:, :4].argmax(axis=1)

def train(seed):
    fastbp.Trainer([16, 160, 4], loss="cross_entropy", seed=seed, batch_size=64).fit(X, y, epochs=3, verbose=0)
threads = [threading.Thread(target=train, args=(s,)) for s in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(threading_layer.name())
""", timeout=180, env={"NUMBA_THREADING_LAYER": "workqueue"})
    assert out.strip() == "workqueue"


def test_threadpoolctl_limits_the_kernels():
    from threadpoolctl import threadpool_info, threadpool_limits

    from fastbp import threads
    fastbp.Trainer([3, 2])  # its backend loads Numba's threading layer
    assert any(info["internal_api"] == "numba" for info in threadpool_info())
    full = threads.limit()
    with threadpool_limits(1):
        assert threads.limit() == 1
    with threadpool_limits(1, user_api="openmp"):  # scikit-learn's idiom for OpenMP-style pools
        assert threads.limit() == 1
    assert threads.limit() == full


def test_threads_option(rng):
    X, y = data(rng, n=600)
    with pytest.raises(ValueError, match="threads"):
        fastbp.Trainer([12, 4], threads=0)
    with pytest.raises(ValueError, match="maximum"):
        fastbp.Trainer([12, 4], threads=10 ** 6)
    one = fastbp.Trainer([12, 64, 4], loss="cross_entropy", seed=0, threads=1)
    one.fit(X, y, epochs=2, verbose=0)
    two = fastbp.Trainer([12, 64, 4], loss="cross_entropy", seed=0)
    two.fit(X, y, epochs=2, verbose=0)
    for (W1, _), (W2, _) in zip(one.params, two.params):
        assert np.allclose(W1, W2, rtol=1e-4, atol=1e-5)  # the same training, up to the order of sums
    assert one.threads == 1 and pickle_round_trip(one).threads == 1


def pickle_round_trip(obj):
    import pickle
    return pickle.loads(pickle.dumps(obj))


def _predict_in_worker(trainer_and_X):
    trainer, X = trainer_and_X
    return trainer.predict(X)


def test_a_trained_trainer_travels_through_joblib_and_multiprocessing(tmp_path):
    """joblib.dump/load and a multiprocessing pool (the Trainer pickled to the worker and back): the copy
    predicts the same numbers and trains on exactly as the original does."""
    import multiprocessing
    joblib = pytest.importorskip("joblib")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    t = fastbp.Trainer([5, 12, 3], loss="cross_entropy", optimizer="adam", batch_size=16, seed=0, dropout=0.1)
    t.fit(X, y, epochs=2, verbose=0)
    joblib.dump(t, tmp_path / "t.joblib")
    copy = joblib.load(tmp_path / "t.joblib")
    np.testing.assert_array_equal(copy.predict(X), t.predict(X))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        from_worker, = pool.map(_predict_in_worker, [(t, X)])
    np.testing.assert_array_equal(from_worker, t.predict(X))
    t.fit(X, y, epochs=1, verbose=0)
    copy.fit(X, y, epochs=1, verbose=0)  # moments, step count, RNG and dropout seed travelled too
    np.testing.assert_array_equal(copy.state.params, t.state.params)
